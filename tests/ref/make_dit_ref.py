"""Reference DiT forward passes from diffusers' DiTTransformer2DModel (random weights), for tests/models.

For each configuration writes OUTDIR/<name>/weights.safetensors (diffusers key names, as diffusers saves them) and
OUTDIR/<name>/io.safetensors (x, t, y and diffusers' output `out`).

Two adjustments make the diffusers network the official DiT, which opendit implements:
- diffusers keeps one timestep/label embedder per block; DiT has one. Every block's copy is set to block 0's.
- diffusers' DiT timestep features use frequencies exp(-ln(10000) k / (half - 1)) (downscale_freq_shift = 1);
  the official DiT divides by half. The shift is set to 0 on every block.
"""
import os
import sys

import torch
from diffusers import DiTTransformer2DModel
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from refcache import mark_done, outdir_from_argv, up_to_date  # noqa: E402

CONFIGS = {
    # name: (depth, hidden, heads, patch, in_channels, input_size, num_classes, learn_sigma, batch)
    "tiny": (2, 64, 4, 2, 3, 8, 10, False, 5),
    "s2": (12, 384, 6, 2, 4, 32, 1000, True, 4),  # DiT-S/2 at 256^2
}


def make(outdir: str, name: str, depth, hidden, heads, patch, cin, size, classes, learn_sigma, batch):
    torch.manual_seed(1234)
    model = DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=hidden // heads, in_channels=cin,
        out_channels=2 * cin if learn_sigma else cin, num_layers=depth, sample_size=size, patch_size=patch,
        activation_fn="gelu-approximate", num_embeds_ada_norm=classes, norm_eps=1e-6,
    ).eval()
    # Default init leaves adaLN and output layers random (not DiT's zeros): every path contributes to the output.
    emb0 = model.transformer_blocks[0].norm1.emb
    for block in model.transformer_blocks:
        block.norm1.emb.load_state_dict(emb0.state_dict())
        block.norm1.emb.time_proj.downscale_freq_shift = 0
    x = torch.randn(batch, cin, size, size)
    t = torch.tensor([0.0, 1.0, 999.0, 437.25, 12.5][:batch])      # integer and fractional timesteps
    y = torch.tensor([0, classes, classes - 1, 3, classes][:batch])  # label num_classes is the null class
    with torch.no_grad():
        out = model(x, timestep=t, class_labels=y).sample
    d = os.path.join(outdir, name)
    os.makedirs(d, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(d, "weights.safetensors"))
    # The official DiT's parameter count: diffusers' minus the duplicated embedders, plus the pos_embed buffer.
    sd = model.state_dict()
    emb_numel = sum(v.numel() for k, v in sd.items() if k.startswith("transformer_blocks.0.norm1.emb."))
    num_params = sum(v.numel() for v in sd.values()) - (depth - 1) * emb_numel + model.pos_embed.pos_embed.numel()
    save_file({"x": x, "t": t, "y": y, "out": out.contiguous(), "num_params": torch.tensor([num_params])},
              os.path.join(d, "io.safetensors"))


def main():
    outdir = outdir_from_argv()
    if up_to_date(outdir, __file__):
        return
    torch.set_num_threads(2)
    for name, cfg in CONFIGS.items():
        make(outdir, name, *cfg)
    mark_done(outdir, __file__)


if __name__ == "__main__":
    main()
