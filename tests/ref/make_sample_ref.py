"""Reference for `opendit sample`: a 20-step DDIM loop with classifier-free guidance driven by diffusers'
DDIMScheduler, on a tiny random DiTTransformer2DModel, from fixed noise and labels.

Writes OUTDIR/weights.safetensors (diffusers names), OUTDIR/noise.safetensors ('noise') and
OUTDIR/expected.safetensors ('samples', 'labels'). The diffusers model is made an official DiT as in
make_dit_ref.py (one shared embedder, timestep frequencies divided by half). Guidance is applied to all 4 eps
channels (opendit's default); the variance channels are not used by DDIM.
"""
import os
import sys

import torch
from diffusers import DDIMScheduler, DiTTransformer2DModel
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from refcache import mark_done, outdir_from_argv, up_to_date  # noqa: E402

CLASSES, PER_CLASS, NUM_CLASSES, SCALE, STEPS = [1, 3, 7], 2, 10, 4.0, 20


def main():
    outdir = outdir_from_argv()
    if up_to_date(outdir, __file__):
        return
    torch.manual_seed(99)
    model = DiTTransformer2DModel(
        num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2, sample_size=8,
        patch_size=2, activation_fn="gelu-approximate", num_embeds_ada_norm=NUM_CLASSES, norm_eps=1e-6).eval()
    emb0 = model.transformer_blocks[0].norm1.emb
    for block in model.transformer_blocks:
        block.norm1.emb.load_state_dict(emb0.state_dict())
        block.norm1.emb.time_proj.downscale_freq_shift = 0
    labels = torch.tensor([c for c in CLASSES for _ in range(PER_CLASS)])
    n = len(labels)
    noise = torch.randn(n, 4, 8, 8)
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                          clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")
    sched.set_timesteps(STEPS)
    x = noise.clone()
    null = torch.full_like(labels, NUM_CLASSES)
    with torch.no_grad():
        for t in sched.timesteps:
            out = model(torch.cat([x, x]), timestep=torch.full((2 * n,), int(t)),
                        class_labels=torch.cat([labels, null])).sample
            cond, uncond = out[:, :4].chunk(2)
            eps = uncond + SCALE * (cond - uncond)
            x = sched.step(eps, t, x, eta=0.0).prev_sample
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(outdir, "weights.safetensors"))
    save_file({"noise": noise}, os.path.join(outdir, "noise.safetensors"))
    save_file({"samples": x.contiguous(), "labels": labels}, os.path.join(outdir, "expected.safetensors"))
    mark_done(outdir, __file__)


if __name__ == "__main__":
    main()
