"""Peer for opendit's training benchmark: a DiT-XL/2 train step in plain PyTorch, as users run the official DiT
code: bf16 autocast, SDPA attention, AdamW (lr 1e-4, weight decay 0), EMA (decay 0.9999) and the IDDPM loss (MSE
on eps + the VB term with learned sigma, 1000 linear-beta steps). The network is diffusers' DiTTransformer2DModel,
which computes what the official DiT computes (plus per-block copies of the small timestep/label embedder).

usage: peer_pytorch_dit.py [--preset DiT-XL/2] [--batch 64] [--steps 20] [--warmup 5] [--compile]
Prints: PEER train preset=... batch=... img_per_s=... peak_mem_gib=...
"""
import argparse
import copy
import math
import time

import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel

PRESETS = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}


def iddpm_tables(device):
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    post_var = betas * (1 - abar_prev) / (1 - abar)
    post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
    coef1 = betas * abar_prev.sqrt() / (1 - abar)
    coef2 = (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar)
    t = {"sa": abar.sqrt(), "s1a": (1 - abar).sqrt(), "logb": betas.log(), "plv": post_logvar, "c1": coef1,
         "c2": coef2, "ria": (1 / abar).sqrt(), "rm1": (1 / abar - 1).sqrt()}
    return {k: v.float().to(device) for k, v in t.items()}


def loss_fn(model, tab, x0, y):
    n = x0.shape[0]
    t = torch.randint(0, 1000, (n,), device=x0.device)
    noise = torch.randn_like(x0)
    g = lambda k: tab[k][t].view(n, 1, 1, 1)  # noqa: E731
    xt = g("sa") * x0 + g("s1a") * noise
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(xt, timestep=t, class_labels=y).sample
    out = out.float()
    eps, v = out.chunk(2, dim=1)
    mse = ((eps - noise) ** 2).mean(dim=(1, 2, 3))
    # VB term (KL of Gaussians, eps detached), as IDDPM's learned-range variance.
    x0_hat = g("ria") * xt - g("rm1") * eps.detach()
    mean = g("c1") * x0_hat + g("c2") * xt
    true_mean = g("c1") * x0 + g("c2") * xt
    frac = (v + 1) / 2
    logvar = frac * g("logb") + (1 - frac) * g("plv")
    kl = 0.5 * (-1 + logvar - g("plv") + torch.exp(g("plv") - logvar) + (true_mean - mean) ** 2 * torch.exp(-logvar))
    return (mse + kl.mean(dim=(1, 2, 3)) / math.log(2)).mean()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="DiT-XL/2")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args()
    size, patch = a.preset.removeprefix("DiT-").split("/")
    depth, hidden, heads = PRESETS[size]
    dev = "cuda"
    model = DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=hidden // heads, in_channels=4,
                                  out_channels=8, num_layers=depth, sample_size=32, patch_size=int(patch),
                                  num_embeds_ada_norm=1000, norm_eps=1e-6).to(dev).train()
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
    step_model = torch.compile(model) if a.compile else model
    tab = iddpm_tables(dev)
    x0 = torch.randn(a.batch, 4, 32, 32, device=dev)
    y = torch.randint(0, 1000, (a.batch,), device=dev)
    ema_params, params = list(ema.parameters()), list(model.parameters())
    times = []
    for i in range(a.warmup + a.steps):
        if i == a.warmup:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        loss = loss_fn(step_model, tab, x0, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - 0.9999)
        torch.cuda.synchronize()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    med = sorted(times)[len(times) // 2]
    print(f"PEER train preset={a.preset} batch={a.batch} compile={int(a.compile)} step_ms={med * 1e3:.1f} "
          f"img_per_s={a.batch / med:.1f} peak_mem_gib={torch.cuda.max_memory_allocated() / 2**30:.1f}")


if __name__ == "__main__":
    main()
