"""Peer for `opendit bench forward`: the same DiT forward pass in diffusers' DiTTransformer2DModel.

usage: peer_diffusers_forward.py --preset DiT-S/2 [--batch 8] [--iters 20] [--warmup 3] [--dtype fp32|bf16]
                                 [--device cpu|cuda] [--threads N]
Prints one line: PEER forward device=... median_ms=... img_per_s=...
"""
import argparse
import statistics
import time

import torch
from diffusers import DiTTransformer2DModel

PRESETS = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="DiT-S/2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--input-size", type=int, default=32)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    size, patch = a.preset.removeprefix("DiT-").split("/")
    depth, hidden, heads = PRESETS[size]
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    model = DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=hidden // heads, in_channels=4,
                                  out_channels=8, num_layers=depth, sample_size=a.input_size, patch_size=int(patch),
                                  num_embeds_ada_norm=1000, norm_eps=1e-6).eval().to(a.device, dtype)
    x = torch.randn(a.batch, 4, a.input_size, a.input_size, device=a.device, dtype=dtype)
    t = torch.randint(0, 1000, (a.batch,), device=a.device)
    y = torch.randint(0, 1000, (a.batch,), device=a.device)
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    times = []
    with torch.no_grad():
        for i in range(a.warmup + a.iters):
            t0 = time.perf_counter()
            model(x, timestep=t, class_labels=y)
            sync()
            if i >= a.warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    med = statistics.median(times)
    print(f"PEER forward device={a.device} threads={torch.get_num_threads()} dtype={a.dtype} batch={a.batch} "
          f"median_ms={med:.3f} min_ms={min(times):.3f} img_per_s={a.batch / med * 1e3:.1f}")


if __name__ == "__main__":
    main()
