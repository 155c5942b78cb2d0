"""Peer for opendit's STDiT training and sampling benchmarks: an STDiT-XL/2 in plain PyTorch, run as users run
Open-Sora v1.0: bf16 autocast, SDPA attention, AdamW (lr 2e-5, weight decay 0), grad clip 1.0, EMA (decay 0.9999),
the IDDPM loss (MSE on eps + the VB term with learned sigma, 1000 linear-beta steps); sampling takes steps of the
100-step respaced IDDPM chain with classifier-free guidance on latent channels 0..2, as Open-Sora's forward_with_cfg.
The network is written here from Open-Sora v1.0's STDiT (per-frame spatial attention, per-position temporal attention
on the un-modulated stream, cross-attention to T5 caption embeddings, scale_shift_table modulation); it depends on
torch only. Cross-attention is SDPA over the padded captions with a boolean key mask [B, 1, 1, L], where Open-Sora
packs the valid caption tokens for xformers with a BlockDiagonalMask: the same result, but kv_linear here also runs
on the padding. --recompute checkpoints every block (use_reentrant=False), as Open-Sora's grad_checkpoint.

usage: peer_pytorch_stdit.py [--mode train|sample] [--preset STDiT-XL/2|tiny] [--device cuda] [--fp32] [--compile]
       [--profile] [--meta] [--frames 16] [--size 512] [--text-len 120]   (latents [4, frames, size/8, size/8])
  train:  [--batch 8] [--steps 10] [--warmup 3] [--recompute]
  sample: [--videos 1] [--steps 20] [--warmup 3] [--cfg 7.0] [--bf16-weights]
Prints PEER lines: model (params, buffers, opensora_numel = params in units of 2^20 as Open-Sora logs them,
tflop_per_sample, xl2_16x512_tflop), train (samples_per_s, ms_per_step, peak_mem_gib, mfu), sample (ms_per_step,
s_per_100, peak_mem_gib). tflop_per_sample: one forward of one video, counted from the config (every matmul and both
attention matmuls, cross-attention over all text-len tokens); mfu = 3 x that x samples/s / 989 TFLOP/s (recomputation
not counted). --meta: build on the meta device, print the model line, exit.
"""
import argparse
import contextlib
import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

# The DiT peer's timing, memory, profiling and autocast helpers (bench/ is this script's folder on sys.path).
from peer_pytorch_dit import autocast, peak_mem, profile_one, sync, timed

# depth, hidden, heads, caption channels, caption tokens (model_max_length)
PRESETS = {"STDiT-XL/2": (28, 1152, 16, 4096, 120), "tiny": (2, 64, 4, 32, 10)}
H100_BF16_DENSE_FLOPS = 989e12
XL2_16X512_TFLOP = 24.4  # expected forward TFLOP per video of STDiT-XL/2 at 16x512x512 with 120 caption tokens
PATCH = (1, 2, 2)


# ---- the model ------------------------------------------------------------------------------------------------------
def sincos_1d(width, pos):
    """pos [M] -> [M, width]: sin then cos of pos at width/2 geometric frequencies (periods up to 10000)."""
    half = width // 2
    freqs = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / half)
    angles = pos.to(torch.float64).reshape(-1, 1) * freqs.reshape(1, -1)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_spatial(width, grid, scale):
    """[1, grid*grid, width], token = row*grid + col: channels [:width/2] encode col/scale, [width/2:] row/scale."""
    coord = torch.arange(grid, dtype=torch.float64) / scale
    rows, cols = torch.meshgrid(coord, coord, indexing="ij")
    return torch.cat([sincos_1d(width // 2, cols), sincos_1d(width // 2, rows)], dim=1).float().unsqueeze(0)


def t2i_modulate(x, shift, scale):  # x [B, N, D]; shift, scale [B, 1, D]
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    """t [B] -> [B, D]: 256 sinusoidal features (cos, sin; periods up to 10000 steps) through a 2-layer SiLU MLP."""

    def __init__(self, width, features=256):
        super().__init__()
        self.features = features
        self.mlp = nn.Sequential(nn.Linear(features, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t):
        half = self.features // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        angles = t.float().unsqueeze(1) * freqs.unsqueeze(0)  # [B, 128]
        return self.mlp(torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).to(self.mlp[0].weight.dtype))


def mlp(width_in, hidden, width_out):  # timm's Mlp with tanh GELU (fc1 = [0], fc2 = [2])
    return nn.Sequential(nn.Linear(width_in, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width_out))


class CaptionEmbedder(nn.Module):
    """Caption [B, L, C] -> [B, L, D]. y_embedding [L, C] is the null caption: it replaces a whole caption with
    probability uncond_prob in training (classifier-free guidance); Open-Sora keeps it as a buffer, not a parameter."""

    def __init__(self, channels, width, uncond_prob, tokens):
        super().__init__()
        self.y_proj = mlp(channels, width, width)
        self.register_buffer("y_embedding", torch.randn(tokens, channels) / channels**0.5)
        self.uncond_prob = uncond_prob

    def forward(self, y, train):
        if train and self.uncond_prob > 0:
            drop = torch.rand(y.shape[0], device=y.device) < self.uncond_prob
            y = torch.where(drop.view(-1, 1, 1), self.y_embedding.to(y.dtype), y)
        return self.y_proj(y)


class Attention(nn.Module):
    """Self-attention over the middle axis of [B', N', D] (frames' tokens, or a position's frames)."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x [n, H, t, hd]
        o = F.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(n, t, d))


class CrossAttention(nn.Module):
    """Video tokens [B, N, D] attend to caption tokens [B, L, D]; mask [B, L] (True = valid token)."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.q_linear = nn.Linear(width, width)
        self.kv_linear = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x, y, mask):
        b, n, d = x.shape
        hd = d // self.heads
        q = self.q_linear(x).view(b, n, self.heads, hd).transpose(1, 2)  # [B, H, N, hd]
        k, v = self.kv_linear(y).view(b, y.shape[1], 2, self.heads, hd).permute(2, 0, 3, 1, 4)  # 2 x [B, H, L, hd]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return self.proj(o.transpose(1, 2).reshape(b, n, d))


class STDiTBlock(nn.Module):
    """Modulated spatial attention, gated temporal attention on the raw stream (same gate), cross-attention, MLP."""

    def __init__(self, width, heads, frames, tokens, mlp_ratio=4.0):
        super().__init__()
        self.frames, self.tokens = frames, tokens  # T and S of the [B, T*S, D] stream
        self.norm1 = nn.LayerNorm(width, eps=1e-6, elementwise_affine=False)
        self.attn = Attention(width, heads)
        self.cross_attn = CrossAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6, elementwise_affine=False)
        self.mlp = mlp(width, int(width * mlp_ratio), width)
        self.scale_shift_table = nn.Parameter(torch.randn(6, width) / width**0.5)
        self.attn_temp = Attention(width, heads)

    def forward(self, x, y, t0, mask, tpe=None):  # x [B, T*S, D], y [B, L, D], t0 [B, 6D], mask [B, L]
        b, n, d = x.shape
        t, s = self.frames, self.tokens
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[None] + t0.reshape(b, 6, -1)).chunk(6, dim=1)  # each [B, 1, D]
        x_m = t2i_modulate(self.norm1(x), shift_msa, scale_msa)
        x_s = self.attn(x_m.reshape(b * t, s, d)).reshape(b, n, d)  # per frame
        x = x + gate_msa * x_s
        x_t = x.reshape(b, t, s, d).transpose(1, 2).reshape(b * s, t, d)  # per position
        if tpe is not None:
            x_t = x_t + tpe
        x_t = self.attn_temp(x_t).reshape(b, s, t, d).transpose(1, 2).reshape(b, n, d)
        x = x + gate_msa * x_t
        x = x + self.cross_attn(x, y, mask)
        return x + gate_mlp * self.mlp(t2i_modulate(self.norm2(x), shift_mlp, scale_mlp))


class T2IFinalLayer(nn.Module):
    def __init__(self, width, num_patch, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, eps=1e-6, elementwise_affine=False)
        self.linear = nn.Linear(width, num_patch * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, width) / width**0.5)

    def forward(self, x, t):  # t [B, D]: the timestep embedding before t_block
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)
        return self.linear(t2i_modulate(self.norm_final(x), shift, scale))


class STDiT(nn.Module):
    def __init__(self, depth, width, heads, frames, grid, caption_channels=4096, text_len=120, in_channels=4,
                 class_dropout=0.1, space_scale=1.0, time_scale=1.0, recompute=False):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, 2 * in_channels  # learned sigma
        self.nt, self.nh, self.nw = frames // PATCH[0], grid // PATCH[1], grid // PATCH[2]
        self.recompute = recompute
        self.register_buffer("pos_embed", sincos_spatial(width, self.nh, space_scale))  # [1, S, D]
        tpe = sincos_1d(width, torch.arange(self.nt, dtype=torch.float64) / time_scale)  # frame / time_scale
        self.register_buffer("pos_embed_temporal", tpe.float().unsqueeze(0))  # [1, T, D]
        self.x_embedder = nn.Conv3d(in_channels, width, kernel_size=PATCH, stride=PATCH)
        self.t_embedder = TimestepEmbedder(width)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        self.y_embedder = CaptionEmbedder(caption_channels, width, class_dropout, text_len)
        self.blocks = nn.ModuleList(STDiTBlock(width, heads, self.nt, self.nh * self.nw) for _ in range(depth))
        self.final_layer = T2IFinalLayer(width, math.prod(PATCH), self.out_channels)
        self.init_weights()

    def init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.weight  # as a Linear; Open-Sora leaves the conv bias at its default init
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for lin in (self.t_embedder.mlp[0], self.t_embedder.mlp[2], self.t_block[1], self.y_embedder.y_proj[0],
                    self.y_embedder.y_proj[2]):
            nn.init.normal_(lin.weight, std=0.02)
        # zero: each block's cross-attention and temporal-attention output projections, and the output layer
        for lin in [p for b in self.blocks for p in (b.cross_attn.proj, b.attn_temp.proj)] + [self.final_layer.linear]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x, timestep, y, mask):  # x [B, 4, T, H, W], timestep [B], y [B, L, C], mask [B, L] bool
        b, dt = x.shape[0], self.x_embedder.weight.dtype  # dt: bf16 with --bf16-weights, else fp32 (autocast)
        x = self.x_embedder(x.to(dt)).flatten(2).transpose(1, 2)  # [B, T*S, D]
        d = x.shape[-1]
        x = (x.reshape(b, self.nt, -1, d) + self.pos_embed).reshape(b, -1, d)
        t = self.t_embedder(timestep)  # [B, D]
        t0 = self.t_block(t)  # [B, 6D]
        y = self.y_embedder(y.to(dt), self.training)  # [B, L, D]
        for i, block in enumerate(self.blocks):
            tpe = self.pos_embed_temporal if i == 0 else None
            if self.recompute and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, y, t0, mask, tpe, use_reentrant=False)
            else:
                x = block(x, y, t0, mask, tpe)
        x = self.final_layer(x, t)  # [B, T*S, pt*ph*pw*C_out]
        (pt, ph, pw), c = PATCH, self.out_channels
        x = x.reshape(b, self.nt, self.nh, self.nw, pt, ph, pw, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, c, self.nt * pt, self.nh * ph, self.nw * pw).float()


def forward_flops(depth, width, frames, grid, text_len, caption_channels, in_channels=4, mlp_ratio=4):
    """FLOPs of one forward of one video, from the config: 2 x the multiply-adds of every matmul. Per video token and
    block: spatial qkv+proj 4D^2, temporal qkv+proj 4D^2, cross q+proj 2D^2, MLP 2*ratio*D^2, and the attention
    matmuls (q k^T, attn v) 2D(S + T + L); per caption token and block: cross kv 2D^2. Plus the patch embedding, the
    caption MLP, the timestep MLPs and the output linear."""
    d, p = width, math.prod(PATCH)
    t, s, l = frames // PATCH[0], (grid // PATCH[1]) * (grid // PATCH[2]), text_len
    n = t * s
    block = n * ((10 + 2 * mlp_ratio) * d * d + 2 * d * (s + t + l)) + l * 2 * d * d
    outside = n * in_channels * p * d + n * d * p * 2 * in_channels + l * (caption_channels * d + d * d) \
        + 256 * d + d * d + 6 * d * d
    return 2 * (depth * block + outside)


# ---- IDDPM diffusion ------------------------------------------------------------------------------------------------
def space_timesteps(num_steps, count):
    """The kept steps of a respaced chain with one section: count indices spread evenly over [0, num_steps - 1]."""
    stride = (num_steps - 1) / (count - 1) if count > 1 else 1
    kept, cur = [], 0.0
    for _ in range(count):
        kept.append(round(cur))
        cur += stride
    return sorted(set(kept))


def iddpm_tables(device, respace=None):
    """Per-step tables of the linear-beta chain (1000 steps), or of its respaced chain of respace steps; "map" gives
    the original timestep the model sees at each step of the chain."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    steps = list(range(1000)) if respace is None else space_timesteps(1000, respace)
    kept = torch.cumprod(1 - betas, 0)[steps]  # the respaced chain keeps these steps' alpha-bar
    betas = 1 - kept / torch.cat([torch.ones(1, dtype=torch.float64), kept[:-1]])
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    post_var = betas * (1 - abar_prev) / (1 - abar)
    post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
    coef1 = betas * abar_prev.sqrt() / (1 - abar)
    coef2 = (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar)
    t = {"sa": abar.sqrt(), "s1a": (1 - abar).sqrt(), "logb": betas.log(), "plv": post_logvar, "c1": coef1,
         "c2": coef2, "ria": (1 / abar).sqrt(), "rm1": (1 / abar - 1).sqrt()}
    tab = {k: v.float().to(device) for k, v in t.items()}
    tab["map"] = torch.tensor(steps, dtype=torch.long, device=device)
    return tab


def loss_fn(model, tab, x0, y, mask, device, fp32):
    n = x0.shape[0]
    t = torch.randint(0, 1000, (n,), device=x0.device)
    noise = torch.randn_like(x0)
    g = lambda k: tab[k][t].view(n, *[1] * (x0.dim() - 1))  # noqa: E731
    dims = tuple(range(1, x0.dim()))
    xt = g("sa") * x0 + g("s1a") * noise
    with autocast(device, fp32):
        out = model(xt, t, y, mask)
    eps, v = out.float().chunk(2, dim=1)
    mse = ((eps - noise) ** 2).mean(dim=dims)
    # VB term (KL of Gaussians, eps detached), as IDDPM's learned-range variance.
    x0_hat = g("ria") * xt - g("rm1") * eps.detach()
    mean = g("c1") * x0_hat + g("c2") * xt
    true_mean = g("c1") * x0 + g("c2") * xt
    frac = (v + 1) / 2
    logvar = frac * g("logb") + (1 - frac) * g("plv")
    kl = 0.5 * (-1 + logvar - g("plv") + torch.exp(g("plv") - logvar) + (true_mean - mean) ** 2 * torch.exp(-logvar))
    return (mse + kl.mean(dim=dims) / math.log(2)).mean()


def cfg_step(model, tab, x, i, y2, mask2, cfg, device, fp32):
    """One p_sample step of the respaced chain at index i, as Open-Sora's sampler: x [2N, ...] carries both halves;
    the model sees the first half twice with [caption; null caption]; guidance applies to channels 0..2 only and is
    copied to both halves; channel 3 and the learned variance stay per half; the whole 2N batch takes the step."""
    n = x.shape[0] // 2
    t = tab["map"][i].expand(2 * n)
    with autocast(device, fp32):
        out = model(torch.cat([x[:n], x[:n]]), t, y2, mask2).float()
    cond, uncond = out[:, :3].chunk(2)
    guided = uncond + cfg * (cond - uncond)
    out = torch.cat([torch.cat([guided, guided]), out[:, 3:]], dim=1)
    eps, v = out.chunk(2, dim=1)
    x0_hat = tab["ria"][i] * x - tab["rm1"][i] * eps
    mean = tab["c1"][i] * x0_hat + tab["c2"][i] * x
    frac = (v + 1) / 2
    logvar = frac * tab["logb"][i] + (1 - frac) * tab["plv"][i]
    return mean + (torch.exp(0.5 * logvar) * torch.randn_like(x) if i > 0 else 0)


# ---- benchmark ------------------------------------------------------------------------------------------------------
def random_captions(n, tokens, channels, device):
    """Stand-ins for T5 output: [n, L, C] embeddings and a key mask [n, L] of a random valid length 1..L each."""
    y = torch.randn(n, tokens, channels, device=device)
    lens = torch.randint(1, tokens + 1, (n,), device=device)
    return y, torch.arange(tokens, device=device)[None] < lens[:, None]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["train", "sample"], default="train")
    ap.add_argument("--preset", default="STDiT-XL/2", help="STDiT-XL/2 (or XL/2, XL) or tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--frames", type=int, default=16, help="latent frames T")
    ap.add_argument("--size", type=int, default=512, help="video height and width in pixels (latent size/8)")
    ap.add_argument("--text-len", type=int, default=None, help="caption tokens (default: the preset's, 120 for XL/2)")
    ap.add_argument("--batch", type=int, default=8, help="train: videos per step (Open-Sora's 16x512 config: 8)")
    ap.add_argument("--videos", type=int, default=1, help="sample: videos (the model sees twice as many with CFG)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (train: 10, sample: 20)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--cfg", type=float, default=7.0, help="sample: guidance scale")
    ap.add_argument("--recompute", action="store_true", help="train: checkpoint every block (grad_checkpoint)")
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    ap.add_argument("--bf16-weights", action="store_true",
                    help="sample: cast the model to bf16 and run it without autocast, as Open-Sora's inference casts "
                         "the model to its dtype (fp16 in its config)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--profile", action="store_true", help="also print torch.profiler's kernel table of one step")
    ap.add_argument("--meta", action="store_true", help="build on the meta device, print the model line, exit")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    steps = a.steps if a.steps is not None else (10 if a.mode == "train" else 20)
    dev = a.device
    torch.manual_seed(a.seed)
    preset = "tiny" if a.preset == "tiny" else "STDiT-" + a.preset.removeprefix("STDiT-").partition("/")[0] + "/2"
    if preset not in PRESETS:
        raise SystemExit(f"unknown preset {a.preset!r}: expected STDiT-XL/2 (or XL/2, XL) or tiny")
    depth, width, heads, channels, tokens = PRESETS[preset]
    text_len = a.text_len or tokens
    if a.size % 16 or a.frames % PATCH[0]:
        raise SystemExit("--size must be a multiple of 16 (latent size/8, patch 2 x 2)")
    grid = a.size // 8
    pure = a.bf16_weights and a.mode == "sample" and not a.fp32
    dtype = "fp32" if a.fp32 else "bf16-weights" if pure else "bf16"
    xl_depth, xl_width, _, xl_channels, xl_tokens = PRESETS["STDiT-XL/2"]  # 16x512x512: T=16, S=1024, L=120
    ref = forward_flops(xl_depth, xl_width, 16, 512 // 8, xl_tokens, xl_channels) / 1e12
    assert abs(ref - XL2_16X512_TFLOP) / XL2_16X512_TFLOP < 0.03, f"STDiT-XL/2 16x512 forward {ref:.2f} TFLOP"

    with torch.device("meta") if a.meta else contextlib.nullcontext():
        model = STDiT(depth, width, heads, a.frames, grid, caption_channels=channels, text_len=text_len,
                      space_scale=a.size / 512, recompute=a.recompute)
    if not a.meta:
        model = model.to(dev)
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())
    flops = forward_flops(depth, width, a.frames, grid, text_len, channels)
    print(f"PEER model preset={preset} params={params} buffers={buffers} frames={a.frames} size={a.size} "
          f"text_len={text_len} opensora_numel={params / 2**20:.2f}M tflop_per_sample={flops / 1e12:.4g} "
          f"xl2_16x512_tflop={ref:.2f}", flush=True)
    if a.meta:
        return

    x_shape = (model.in_channels, a.frames, grid, grid)
    step_model = torch.compile(model) if a.compile else model
    if a.mode == "train":
        model.train()
        ema = copy.deepcopy(model).requires_grad_(False)
        params_list, ema_params = list(model.parameters()), list(ema.parameters())
        cuda = torch.device(dev).type == "cuda"
        opt = torch.optim.AdamW(params_list, lr=2e-5, weight_decay=0, fused=cuda)
        tab = iddpm_tables(dev)
        x0 = torch.randn(a.batch, *x_shape, device=dev)
        y, mask = random_captions(a.batch, text_len, channels, dev)

        def step():
            loss = loss_fn(step_model, tab, x0, y, mask, dev, a.fp32)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params_list, 1.0)
            opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params_list, 1 - 0.9999)

        sec = timed(step, a.warmup, steps, dev)
        sps = a.batch / sec
        mfu = 3 * flops * sps / H100_BF16_DENSE_FLOPS  # forward + backward (2x forward)
        print(f"PEER train preset={preset} frames={a.frames} size={a.size} batch={a.batch} "
              f"recompute={int(a.recompute)} dtype={dtype} compile={int(a.compile)} samples_per_s={sps:.3f} "
              f"ms_per_step={sec * 1e3:.1f} peak_mem_gib={peak_mem(dev)} mfu={100 * mfu:.1f}%", flush=True)
    else:
        model.eval().requires_grad_(False)
        if pure:
            model.to(torch.bfloat16)
        tab = iddpm_tables(dev, respace=100)
        z = torch.randn(a.videos, *x_shape, device=dev)
        y, mask = random_captions(a.videos, text_len, channels, dev)
        null = model.y_embedder.y_embedding[None].expand(a.videos, -1, -1)
        y2, mask2 = torch.cat([y, null]), torch.cat([mask, mask])  # the null caption keeps the caption's mask
        state = {"x": torch.cat([z, z]), "i": len(tab["map"]) - 1}

        def step():  # one step down the 100-step chain; timing does not depend on which step it is
            with torch.no_grad():
                state["x"] = cfg_step(step_model, tab, state["x"], state["i"], y2, mask2, a.cfg, dev,
                                      a.fp32 or pure)
            state["i"] = max(state["i"] - 1, 0)

        sec = timed(step, a.warmup, steps, dev)
        if not torch.isfinite(state["x"]).all():
            raise SystemExit("sampling produced non-finite latents")
        print(f"PEER sample preset={preset} frames={a.frames} size={a.size} videos={a.videos} cfg={a.cfg} "
              f"dtype={dtype} compile={int(a.compile)} ms_per_step={sec * 1e3:.1f} s_per_100={sec * 100:.2f} "
              f"peak_mem_gib={peak_mem(dev)}", flush=True)

    if a.profile:
        profile_one(step, dev)


if __name__ == "__main__":
    main()
