"""Peer for opendit's training and sampling benchmarks: a DiT in plain PyTorch, run as users run the official DiT
code: bf16 autocast, SDPA attention, AdamW (lr 1e-4, weight decay 0), EMA (decay 0.9999) and the IDDPM loss (MSE on
eps + the VB term with learned sigma, 1000 linear-beta steps). The network is written here from the DiT architecture
(adaLN-Zero blocks, patch 2, learned sigma); it depends on torch only.

usage: peer_pytorch_dit.py [--mode train|sample] [--preset DiT-XL/2] [--device cuda] [--fp32] [--compile] [--profile]
  train:  [--batch 64] [--steps 20] [--warmup 5]
  sample: [--images 8] [--steps 50] [--warmup 5] [--cfg 4.0]
Prints (lines starting with PEER):
  PEER model preset=... params=... trainable=... pos_embed=... gflops_per_img=...
  PEER train preset=... batch=... dtype=... compile=... img_per_s=... ms_per_step=... peak_mem_gib=... mfu=...
  PEER sample preset=... dtype=... images=... cfg=... ms_per_step=... s_per_250=... peak_mem_gib=...
"""
import argparse
import contextlib
import copy
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}  # depth, width, heads
H100_BF16_DENSE_FLOPS = 989e12
OFFICIAL_XL2_PARAMS = 675_129_632  # the DiT paper's DiT-XL/2, pos_embed included


# ---- the model ------------------------------------------------------------------------------------------------------
def sincos_2d(width, grid):
    """Fixed 2-D position table [grid*grid, width]: half the channels encode the row, half the column; each half is
    sin then cos of the coordinate at width/4 geometric frequencies."""
    quarter = width // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coord = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coord, coord, indexing="ij")  # [grid, grid] each, token = row * grid + col

    def encode(pos):  # [T] -> [T, width/2]
        angles = pos.reshape(-1, 1) * freqs.reshape(1, -1)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


def modulate(x, shift, scale):  # x [N, T, D]; shift, scale [N, D]
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """t [N] -> [N, D]: 256 sinusoidal features (cos, sin; periods up to 10000 steps) through a 2-layer SiLU MLP."""

    def __init__(self, width, features=256):
        super().__init__()
        self.features = features
        self.mlp = nn.Sequential(nn.Linear(features, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t):
        half = self.features // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        angles = t.float().unsqueeze(1) * freqs.unsqueeze(0)  # [N, 128]
        return self.mlp(torch.cat([torch.cos(angles), torch.sin(angles)], dim=1))


class LabelEmbedder(nn.Module):
    """y [N] -> [N, D]; row num_classes is the null class, used for dropped labels (classifier-free guidance)."""

    def __init__(self, num_classes, width, dropout):
        super().__init__()
        self.table = nn.Embedding(num_classes + 1, width)
        self.num_classes, self.dropout = num_classes, dropout

    def forward(self, y):
        if self.training and self.dropout > 0:
            drop = torch.rand(y.shape[0], device=y.device) < self.dropout
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        return self.table(y)


class Attention(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x):  # [N, T, D]
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x [N, H, T, hd]
        o = F.scaled_dot_product_attention(q, k, v)  # [N, H, T, hd]
        return self.proj(o.transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    """adaLN-Zero: the condition sets shift/scale of both LayerNorms and the gates of both residual branches."""

    def __init__(self, width, heads, mlp_ratio=4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x, c):  # x [N, T, D], c [N, D]
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, width, patch, out_channels):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, patch * patch * out_channels)

    def forward(self, x, c):  # [N, T, D] -> [N, T, p*p*C]
        shift, scale = self.ada(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    def __init__(self, depth, width, heads, patch=2, input_size=32, in_channels=4, num_classes=1000,
                 class_dropout=0.1, learn_sigma=True):
        super().__init__()
        self.patch, self.in_channels = patch, in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.grid = input_size // patch
        self.patch_embed = nn.Conv2d(in_channels, width, kernel_size=patch, stride=patch)
        self.register_buffer("pos_embed", sincos_2d(width, self.grid).unsqueeze(0), persistent=False)  # [1, T, D]
        self.t_embed = TimestepEmbedder(width)
        self.y_embed = LabelEmbedder(num_classes, width, class_dropout)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.final = FinalLayer(width, patch, self.out_channels)
        self.init_weights()

    def init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.y_embed.table.weight, std=0.02)
        for lin in (self.t_embed.mlp[0], self.t_embed.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        # adaLN-Zero: every block starts as the identity, the output as zero.
        for layer in [b.ada[-1] for b in self.blocks] + [self.final.ada[-1], self.final.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x, t, y):  # x [N, C, H, W], t [N], y [N] -> [N, out_channels, H, W]
        n = x.shape[0]
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # [N, T, D]
        c = self.t_embed(t) + self.y_embed(y)  # [N, D]
        for block in self.blocks:
            h = block(h, c)
        h = self.final(h, c)  # [N, T, p*p*C]
        g, p, co = self.grid, self.patch, self.out_channels
        h = h.view(n, g, g, p, p, co).permute(0, 5, 1, 3, 2, 4)  # [N, C, gh, p, gw, p]
        return h.reshape(n, co, g * p, g * p)


def parse_preset(name):
    """'DiT-XL/2' or 'XL' -> (depth, width, heads, patch)."""
    size, _, patch = name.removeprefix("DiT-").partition("/")
    if size not in PRESETS or patch not in ("", "2", "4", "8"):
        raise SystemExit(f"unknown preset {name!r}: expected DiT-S/2, DiT-B/2, DiT-L/2 or DiT-XL/2 (or S, B, L, XL)")
    return (*PRESETS[size], int(patch or 2))


def forward_macs(model, device):
    """Multiply-adds of one forward pass of one image, counted from the shapes seen in a batch-1 forward: every
    Linear and Conv2d, and the two attention matmuls (q k^T and attn v)."""
    total = [0]

    def linear(m, inp, out):
        total[0] += out.numel() * m.in_features

    def conv(m, inp, out):
        total[0] += out.numel() * m.in_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups

    def attention(m, inp, out):
        n, t, d = inp[0].shape
        total[0] += 2 * n * t * t * d

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear))
        elif isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv))
        elif isinstance(m, Attention):
            hooks.append(m.register_forward_hook(attention))
    g = model.grid * model.patch
    with torch.no_grad():
        model(torch.zeros(1, model.in_channels, g, g, device=device), torch.zeros(1, dtype=torch.long, device=device),
              torch.zeros(1, dtype=torch.long, device=device))
    for h in hooks:
        h.remove()
    return total[0]


# ---- IDDPM diffusion ------------------------------------------------------------------------------------------------
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


def autocast(device, fp32):
    if fp32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def loss_fn(model, tab, x0, y, device, fp32):
    n = x0.shape[0]
    t = torch.randint(0, 1000, (n,), device=x0.device)
    noise = torch.randn_like(x0)
    g = lambda k: tab[k][t].view(n, 1, 1, 1)  # noqa: E731
    xt = g("sa") * x0 + g("s1a") * noise
    with autocast(device, fp32):
        out = model(xt, t, y)
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


def cfg_step(model, tab, x, i, y, null, cfg, device, fp32):
    """One DDPM step with classifier-free guidance at step index i: the batch is doubled (labels, null labels),
    guidance applies to eps, the learned variance comes from the conditional half. x [N, C, H, W]."""
    n = x.shape[0]
    t = torch.full((2 * n,), i, device=x.device, dtype=torch.long)
    with autocast(device, fp32):
        out = model(torch.cat([x, x]), t, torch.cat([y, null]))
    eps, v = out.float().chunk(2, dim=1)
    eps = eps[n:] + cfg * (eps[:n] - eps[n:])
    v = v[:n]
    x0_hat = tab["ria"][i] * x - tab["rm1"][i] * eps
    mean = tab["c1"][i] * x0_hat + tab["c2"][i] * x
    frac = (v + 1) / 2
    logvar = frac * tab["logb"][i] + (1 - frac) * tab["plv"][i]
    return mean + (torch.exp(0.5 * logvar) * torch.randn_like(x) if i > 0 else 0)


# ---- benchmark ------------------------------------------------------------------------------------------------------
def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def peak_mem(device):
    if torch.device(device).type != "cuda":
        return "na"
    return f"{torch.cuda.max_memory_allocated() / 2**30:.1f}"


def timed(step, n_warmup, n_timed, device):
    """Median seconds of n_timed calls of step() after n_warmup untimed ones; peak memory counts the timed ones."""
    for _ in range(n_warmup):
        step()
    sync(device)
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(n_timed):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def profile_one(step, device):
    """torch.profiler over one step: the top-25 kernels by their own device time (CPU: ops by self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        step()
        sync(device)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=90))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["train", "sample"], default="train")
    ap.add_argument("--preset", default="DiT-XL/2")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=64, help="train: images per step")
    ap.add_argument("--images", type=int, default=8, help="sample: images (the model sees twice as many with CFG)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (train: 20, sample: 50)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    ap.add_argument("--cfg", type=float, default=4.0, help="sample: guidance scale")
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--profile", action="store_true", help="also print torch.profiler's kernel table of one step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-dir", default=None,
                    help="train: after timing, save checkpoints as the official DiT's train.py does (rank 0, "
                         "torch.save of model, EMA and optimizer state) and time the pause")
    a = ap.parse_args()
    steps = a.steps if a.steps is not None else (20 if a.mode == "train" else 50)
    dev = a.device
    torch.manual_seed(a.seed)
    depth, width, heads, patch = parse_preset(a.preset)
    preset = f"DiT-{a.preset.removeprefix('DiT-').partition('/')[0]}/{patch}"
    dtype = "fp32" if a.fp32 else "bf16"

    model = DiT(depth, width, heads, patch=patch).to(dev)
    trainable = sum(p.numel() for p in model.parameters())
    pos = model.pos_embed.numel()
    flops = 2 * forward_macs(model, dev)
    check = ""
    if preset == "DiT-XL/2":
        check = f" official={OFFICIAL_XL2_PARAMS} match={int(trainable + pos == OFFICIAL_XL2_PARAMS)}"
    print(f"PEER model preset={preset} params={trainable + pos} trainable={trainable} pos_embed={pos}{check} "
          f"gflops_per_img={flops / 1e9:.1f}", flush=True)

    x_shape = (4, model.grid * patch, model.grid * patch)
    if a.mode == "train":
        model.train()
        ema = copy.deepcopy(model).requires_grad_(False)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
        step_model = torch.compile(model) if a.compile else model
        tab = iddpm_tables(dev)
        x0 = torch.randn(a.batch, *x_shape, device=dev)
        y = torch.randint(0, 1000, (a.batch,), device=dev)
        ema_params, params = list(ema.parameters()), list(model.parameters())

        def step():
            loss = loss_fn(step_model, tab, x0, y, dev, a.fp32)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1 - 0.9999)

        sec = timed(step, a.warmup, steps, dev)
        img_s = a.batch / sec
        mfu = 3 * flops * img_s / H100_BF16_DENSE_FLOPS  # forward + backward (2x forward)
        print(f"PEER train preset={preset} batch={a.batch} dtype={dtype} compile={int(a.compile)} "
              f"img_per_s={img_s:.1f} ms_per_step={sec * 1e3:.1f} peak_mem_gib={peak_mem(dev)} mfu={100 * mfu:.1f}% "
              f"gflops_per_img={flops / 1e9:.1f}", flush=True)
        if a.save_dir:  # DiT's train.py: torch.save({"model", "ema", "opt", "args"}) every ckpt_every steps
            os.makedirs(a.save_dir, exist_ok=True)
            for i in range(2):
                path = os.path.join(a.save_dir, f"{i:07d}.pt")
                if dev.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                            "args": vars(a)}, path)
                paused = time.perf_counter() - t0
                print(f"PEER checkpoint preset={preset} paused_s={paused:.2f} bytes={os.path.getsize(path)}",
                      flush=True)
                os.remove(path)
    else:
        model.eval().requires_grad_(False)
        step_model = torch.compile(model) if a.compile else model
        tab = iddpm_tables(dev)
        x = torch.randn(a.images, *x_shape, device=dev)
        y = torch.randint(0, 1000, (a.images,), device=dev)
        null = torch.full_like(y, 1000)
        state = {"x": x, "i": 999}

        def step():  # one step down the 1000-step chain; timing does not depend on which step it is
            with torch.no_grad():
                state["x"] = cfg_step(step_model, tab, state["x"], state["i"], y, null, a.cfg, dev, a.fp32)
            state["i"] = max(state["i"] - 1, 0)

        sec = timed(step, a.warmup, steps, dev)
        if not torch.isfinite(state["x"]).all():
            raise SystemExit("sampling produced non-finite latents")
        print(f"PEER sample preset={preset} dtype={dtype} compile={int(a.compile)} images={a.images} cfg={a.cfg} "
              f"ms_per_step={sec * 1e3:.1f} s_per_250={sec * 250:.2f} peak_mem_gib={peak_mem(dev)}", flush=True)

    if a.profile:
        profile_one(step, dev)


if __name__ == "__main__":
    main()
