"""End-to-end checks of weight import/export: tools/convert_dit_pt.py (official .pt) and `opendit convert`
(diffusers folders and files, both directions), including the files they must refuse.

usage: test_convert.py OPENDIT_BINARY SOURCE_DIR
"""
import os
import pickle
import subprocess
import sys
import tempfile

import torch
from diffusers import DiTTransformer2DModel
from safetensors.torch import load_file, save_file

BIN, SRC = sys.argv[1], sys.argv[2]
PY = sys.executable
TINY = ["--set", "model.preset=custom", "--set", "model.depth=2", "--set", "model.hidden_size=64",
        "--set", "model.num_heads=4", "--set", "model.patch_size=2", "--set", "model.in_channels=4",
        "--set", "model.input_size=8", "--set", "model.num_classes=10"]
results = {"passed": 0, "failed": 0}


def check(name, ok, detail=""):
    results["passed" if ok else "failed"] += 1
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else f"\n     {detail}"))


def run(*args):
    p = subprocess.run(list(args), capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def official_state_dict(depth=2, d=64, p=2, c=4, grid=4, classes=10, learn_sigma=True):
    """Random tensors under the official DiT names and shapes (ROADMAP/REFERENCE key table)."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    out = 2 * c if learn_sigma else c
    sd = {"pos_embed": r(1, grid * grid, d), "x_embedder.proj.weight": r(d, c, p, p), "x_embedder.proj.bias": r(d),
          "t_embedder.mlp.0.weight": r(d, 256), "t_embedder.mlp.0.bias": r(d), "t_embedder.mlp.2.weight": r(d, d),
          "t_embedder.mlp.2.bias": r(d), "y_embedder.embedding_table.weight": r(classes + 1, d)}
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update({b + "attn.qkv.weight": r(3 * d, d), b + "attn.qkv.bias": r(3 * d), b + "attn.proj.weight": r(d, d),
                   b + "attn.proj.bias": r(d), b + "mlp.fc1.weight": r(4 * d, d), b + "mlp.fc1.bias": r(4 * d),
                   b + "mlp.fc2.weight": r(d, 4 * d), b + "mlp.fc2.bias": r(d),
                   b + "adaLN_modulation.1.weight": r(6 * d, d), b + "adaLN_modulation.1.bias": r(6 * d)})
    sd.update({"final_layer.linear.weight": r(p * p * out, d), "final_layer.linear.bias": r(p * p * out),
               "final_layer.adaLN_modulation.1.weight": r(2 * d, d), "final_layer.adaLN_modulation.1.bias": r(2 * d)})
    return sd


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def main():
    tool = os.path.join(SRC, "tools", "convert_dit_pt.py")
    with tempfile.TemporaryDirectory() as tmp:
        j = lambda name: os.path.join(tmp, name)  # noqa: E731
        model_sd = official_state_dict()
        ema_sd = {k: v + 1 for k, v in model_sd.items()}
        torch.save({"model": model_sd, "ema": ema_sd, "opt": {}, "args": {"lr": 1e-4}}, j("ckpt.pt"))
        torch.save(model_sd, j("plain.pt"))

        rc, out = run(PY, tool, j("ckpt.pt"), j("ema.safetensors"))
        got = load_file(j("ema.safetensors")) if rc == 0 else {}
        check(".pt checkpoint: EMA weights by default", rc == 0 and all(torch.equal(got[k], ema_sd[k]) for k in ema_sd)
              and len(got) == len(ema_sd), out)
        rc, out = run(PY, tool, j("ckpt.pt"), j("model.safetensors"), "--key", "model")
        check(".pt checkpoint: --key model", rc == 0 and torch.equal(load_file(j("model.safetensors"))["pos_embed"],
                                                                      model_sd["pos_embed"]), out)
        rc, out = run(PY, tool, j("plain.pt"), j("plain.safetensors"))
        check("plain state_dict .pt", rc == 0, out)

        with open(j("evil.pt"), "wb") as f:
            pickle.dump({"x_embedder.proj.weight": Evil()}, f)
        rc, out = run(PY, tool, j("evil.pt"), j("evil.safetensors"))
        check("a pickle with code is refused", rc == 1 and "cannot read as torch weights" in out, out)
        torch.save({"foo": torch.zeros(1)}, j("other.pt"))
        rc, out = run(PY, tool, j("other.pt"), j("other.safetensors"))
        check("a .pt that is not DiT is refused", rc == 1 and "neither a DiT state_dict" in out, out)

        # opendit convert: validate official weights against the deck, then to diffusers and back.
        rc, out = run(BIN, "convert", j("ema.safetensors"), j("ours.safetensors"), *TINY)
        check("opendit convert official -> opendit", rc == 0 and "ours.safetensors" in out, out)
        rc, out = run(BIN, "convert", j("ours.safetensors"), j("diffusers.safetensors"), "--to", "diffusers", *TINY)
        check("opendit convert -> diffusers", rc == 0, out)
        rc, out = run(BIN, "convert", j("diffusers.safetensors"), j("back.safetensors"), *TINY)
        back, ours = load_file(j("back.safetensors")), load_file(j("ours.safetensors"))
        check("diffusers -> opendit round trip is exact", rc == 0 and back.keys() == ours.keys()
              and all(torch.equal(back[k], ours[k]) for k in ours if k != "pos_embed"), out)

        # A diffusers model folder (save_pretrained): heads and input size come from its config.json.
        torch.manual_seed(0)
        dm = DiTTransformer2DModel(num_attention_heads=6, attention_head_dim=64, in_channels=4, out_channels=8,
                                   num_layers=2, sample_size=16, patch_size=2, num_embeds_ada_norm=10, norm_eps=1e-6)
        emb0 = dm.transformer_blocks[0].norm1.emb
        for blk in dm.transformer_blocks:
            blk.norm1.emb.load_state_dict(emb0.state_dict())
        dm.save_pretrained(j("folder"))
        rc, out = run(BIN, "convert", j("folder"), j("from_folder.safetensors"))
        check("diffusers folder with config.json converts without a deck", rc == 0 and "hidden 384" in out
              and "heads 6" in out and "input 16x16x4" in out, out)
        rc, out = run(BIN, "convert", os.path.join(j("folder"), "diffusion_pytorch_model.safetensors"),
                      j("x.safetensors"), "--set", "model.preset=DiT-S/2")
        check("a deck that does not match the weights is refused", rc != 0 and "do not match" in out, out)

        save_file({"foo": torch.zeros(2)}, j("notdit.safetensors"))
        rc, out = run(BIN, "convert", j("notdit.safetensors"), j("y.safetensors"))
        check("non-DiT safetensors is refused", rc != 0 and "not DiT weights" in out, out)
        rc, out = run(BIN, "convert", j("ours.safetensors"), j("z.safetensors"))
        check("custom widths need a deck for the heads", rc != 0 and "number of heads" in out, out)
        rc, out = run(BIN, "convert", j("missing.safetensors"), j("z.safetensors"), *TINY)
        check("missing input is one clear error", rc != 0 and "missing.safetensors" in out, out)
    print(f"convert: {results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
