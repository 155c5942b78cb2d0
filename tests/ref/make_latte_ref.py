"""Reference Latte (diffusers LatteTransformer3DModel) forward and backward passes, for the C++ Latte tests.

Writes OUTDIR/tiny/config.json (the diffusers config, as save_config writes it), OUTDIR/tiny/weights.safetensors
(model.state_dict(): diffusers names, float32; the pos_embed.pos_embed and temp_pos_embed buffers are non-persistent
and so NOT included: the C++ model computes both tables) and OUTDIR/tiny/io.safetensors:
  x [B, C, F, H, W], t [B] (float timesteps), y [B, L, caption_channels] (junk in the padding), mask [B, L] int64,
  out (the sample with the caption mask), grad_out, grad.x and grad.<name> for every parameter of
  loss = (out * grad_out).sum(), out_nomask (encoder_attention_mask=None), out_hardmask (-inf instead of -10000)
  and num_params [1] int64. grad.*.to_k.bias is analytically zero (a key bias adds q.b to every score of a query,
  which softmax ignores); the stored values are rounding noise.
Every parameter is random (normal, std 0.1), so every path contributes; eval mode.

The caption mask. diffusers' Latte does not convert a [B, L] 0/1 mask (its docstring says it does): the mask reaches
the cross attention as is, with batch B against the B*F frame sequences, and the forward raises for F > 1 (printed
below). The official Latte (Vchitect/Latte models/latte_t2v.py) converts it to the bias (1 - mask) * -10000.0 of
shape [B, 1, L] and repeats it per frame to [B*F, 1, L] ('b 1 l -> (b f) 1 l'), which is what diffusers'
Transformer2DModel / PixArt do per image. `out` passes exactly that bias to diffusers; the pipeline itself never
passes a mask (see the summary printed at the end).

The script cross-checks diffusers against a reference written below from plain torch ops (output and every
gradient), which pins down the facts printed at the end, among them:
- spatial positions (PatchEmbed, interpolation_scale = max(sample_size // 64, 1), base_size = sample_size / patch):
  token (r, c) of the Gh x Gw grid (row-major) has positions c / (Gw / base_size) / interpolation_scale and
  r / (Gh / base_size) / interpolation_scale (float32); the FIRST half of the channels encodes the column c, the
  second half the row r; each half is [sin(pos w_k), cos(pos w_k)] with w_k = 10000^(-k / (D/4)), k < D/4, computed
  in float64. At the native size Gh = Gw = base_size, so positions are plain indices.
- temporal positions: temp_pos_embed [1, video_length, D], frame index f (integer) in [sin(f w_k), cos(f w_k)],
  w_k = 10000^(-k / (D/2)), k < D/2 (sin first), float64 then float32.
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from refcache import mark_done, outdir_from_argv, up_to_date  # noqa: E402

CONFIG = dict(num_layers=2, num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=8,
              sample_size=8, patch_size=2, activation_fn="gelu-approximate", norm_type="ada_norm_single",
              norm_elementwise_affine=False, norm_eps=1e-6, attention_bias=True, cross_attention_dim=64,
              caption_channels=32, video_length=3)


# ----------------------------------------------------------------------------------------------------------------
# Position tables and timestep features (the formulas the C++ model must reproduce)
# ----------------------------------------------------------------------------------------------------------------

def sincos_1d(dim, pos):
    """[M, dim]: [sin(pos w_k), cos(pos w_k)], w_k = 10000^(-k / (dim/2)), float64."""
    pos = np.asarray(pos, dtype=np.float64).reshape(-1)
    freq = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    ang = pos[:, None] * freq[None, :]
    return np.concatenate([np.sin(ang), np.cos(ang)], axis=1)


def spatial_pos_embed(d, gh, gw, base_size, interpolation_scale):
    """[1, gh*gw, d]; tokens row-major (r, c); first half of the channels = column, second half = row."""
    pc = (np.arange(gw, dtype=np.float32) / np.float32(gw / base_size) / np.float32(interpolation_scale))
    pr = (np.arange(gh, dtype=np.float32) / np.float32(gh / base_size) / np.float32(interpolation_scale))
    cols = np.tile(pc, gh)
    rows = np.repeat(pr, gw)
    emb = np.concatenate([sincos_1d(d // 2, cols), sincos_1d(d // 2, rows)], axis=1)
    return torch.from_numpy(emb).float().unsqueeze(0)


def temporal_pos_embed(d, n_frames):
    return torch.from_numpy(sincos_1d(d, np.arange(n_frames))).float().unsqueeze(0)


def timestep_features(t, dim=256, max_period=10000):
    """Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0): [cos, sin], freqs exp(-ln(1e4) k / half)."""
    half = dim // 2
    freqs = torch.exp(-np.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    a = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(a), torch.sin(a)], dim=1)


def caption_bias(mask, n_frames, hard=False):
    """[B, L] 0/1 mask -> [B*F, 1, L] additive bias (official Latte: (1 - mask) * -10000, repeated per frame)."""
    if hard:
        bias = torch.zeros(mask.shape).masked_fill(mask == 0, float("-inf"))
    else:
        bias = (1 - mask.float()) * -10000.0
    return bias[:, None].repeat_interleave(n_frames, 0)


# ----------------------------------------------------------------------------------------------------------------
# Reference Latte from torch ops
# ----------------------------------------------------------------------------------------------------------------

def linear(p, name, x):
    return F.linear(x, p[name + ".weight"], p[name + ".bias"])


def modulate_ln(x, shift, scale, eps):
    return F.layer_norm(x, (x.shape[-1],), eps=eps) * (1 + scale) + shift


def attention(p, name, x, ctx, bias, heads):
    """to_q(x), to_k/to_v(ctx); scores * hd^-0.5 (+ bias [n, 1, L]); softmax; to_out.0."""
    n, nq, d = x.shape
    hd = d // heads
    q = linear(p, name + ".to_q", x).view(n, nq, heads, hd).transpose(1, 2)
    k = linear(p, name + ".to_k", ctx).view(n, -1, heads, hd).transpose(1, 2)
    v = linear(p, name + ".to_v", ctx).view(n, -1, heads, hd).transpose(1, 2)
    s = (q @ k.transpose(-2, -1)) * hd ** -0.5
    if bias is not None:
        s = s + bias[:, None]
    o = (s.softmax(-1) @ v).transpose(1, 2).reshape(n, nq, d)
    return linear(p, name + ".to_out.0", o)


def block(p, pre, h, t0, cond, bias, heads, eps):
    """BasicTransformerBlock, norm_type ada_norm_single. h [n, N, D], t0 [n, 6D]; cond None = temporal block."""
    mod = p[pre + ".scale_shift_table"][None] + t0.view(h.shape[0], 6, -1)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)
    xm = modulate_ln(h, shift_msa, scale_msa, eps)
    h = h + gate_msa * attention(p, pre + ".attn1", xm, xm, None, heads)
    if cond is not None:  # cross attention on the un-normalised stream, no gate
        h = h + attention(p, pre + ".attn2", h, cond, bias, heads)
    ff = linear(p, pre + ".ff.net.2", F.gelu(linear(p, pre + ".ff.net.0.proj",
                                                    modulate_ln(h, shift_mlp, scale_mlp, eps)), approximate="tanh"))
    return h + gate_mlp * ff


def latte_forward(p, cfg, pos2d, pos_t, x, t, y, bias):
    """x [B, C, F, H, W], t [B], y [B, L, caption_channels], bias [B*F, 1, L] or None."""
    heads, ps, eps = cfg["num_attention_heads"], cfg["patch_size"], cfg["norm_eps"]
    b_sz, c, nf, hh, ww = x.shape
    gh, gw = hh // ps, ww // ps
    s = gh * gw
    d = pos2d.shape[-1]

    h = F.conv2d(x.permute(0, 2, 1, 3, 4).reshape(b_sz * nf, c, hh, ww), p["pos_embed.proj.weight"],
                 p["pos_embed.proj.bias"], stride=ps)
    h = h.flatten(2).transpose(1, 2) + pos2d                                   # [B*F, S, D], frames (b, f)
    emb = linear(p, "adaln_single.emb.timestep_embedder.linear_2",
                 F.silu(linear(p, "adaln_single.emb.timestep_embedder.linear_1", timestep_features(t))))
    t0 = linear(p, "adaln_single.linear", F.silu(emb))                         # [B, 6D]
    cond = linear(p, "caption_projection.linear_2",
                  F.gelu(linear(p, "caption_projection.linear_1", y), approximate="tanh"))
    cond_sp, t0_sp, t0_tp = cond.repeat_interleave(nf, 0), t0.repeat_interleave(nf, 0), t0.repeat_interleave(s, 0)

    for i in range(cfg["num_layers"]):
        h = block(p, f"transformer_blocks.{i}", h, t0_sp, cond_sp, bias, heads, eps)
        h = h.view(b_sz, nf, s, d).transpose(1, 2).reshape(b_sz * s, nf, d)    # sequences (b, s) over frames
        if i == 0 and nf > 1:
            h = h + pos_t                                                      # into the residual stream
        h = block(p, f"temporal_transformer_blocks.{i}", h, t0_tp, None, None, heads, eps)
        h = h.view(b_sz, s, nf, d).transpose(1, 2).reshape(b_sz * nf, s, d)

    shift, scale = (p["scale_shift_table"][None] + emb.repeat_interleave(nf, 0)[:, None]).chunk(2, dim=1)
    h = linear(p, "proj_out", modulate_ln(h, shift, scale, 1e-6))             # [B*F, S, p*p*Cout]
    co = cfg["out_channels"]
    h = h.view(b_sz, nf, gh, gw, ps, ps, co).permute(0, 6, 1, 2, 4, 3, 5)      # "nhwpqc->nchpwq" per frame
    return h.reshape(b_sz, co, nf, hh, ww)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# ----------------------------------------------------------------------------------------------------------------
# Case "tiny"
# ----------------------------------------------------------------------------------------------------------------

def make_tiny(outdir):
    from diffusers import LatteTransformer3DModel

    torch.manual_seed(2025)
    model = LatteTransformer3DModel(**CONFIG)
    with torch.no_grad():
        for prm in model.parameters():
            prm.normal_(0.0, 0.1)
    model.eval()
    cfg = json.loads(model.to_json_string())  # what save_config writes
    d = CONFIG["num_attention_heads"] * CONFIG["attention_head_dim"]
    ps, nf = CONFIG["patch_size"], CONFIG["video_length"]

    sd = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    named = dict(model.named_parameters())
    assert set(sd) == set(named), "state dict != parameters"
    assert "temp_pos_embed" not in sd and "pos_embed.pos_embed" not in sd  # non-persistent buffers
    num_params = sum(v.numel() for v in named.values())

    # Position tables and timestep features against diffusers.
    interp = max(CONFIG["sample_size"] // 64, 1)
    assert interp == 1 and model.pos_embed.interpolation_scale == interp
    base = CONFIG["sample_size"] // ps
    assert model.pos_embed.base_size == base
    g = CONFIG["sample_size"] // ps
    pos2d = spatial_pos_embed(d, g, g, base, interp)
    pe_err = (pos2d - model.pos_embed.pos_embed).abs().max().item()
    assert pe_err < 1e-6, f"2D table differs by {pe_err}"
    # Non-square grid (diffusers' recomputation path): rows and columns keep their halves.
    from diffusers.models.embeddings import get_2d_sincos_pos_embed
    ns = get_2d_sincos_pos_embed(d, (3, 5), base_size=base, interpolation_scale=interp).float().unsqueeze(0)
    assert (spatial_pos_embed(d, 3, 5, base, interp) - ns).abs().max().item() < 1e-6
    pos_t = temporal_pos_embed(d, nf)
    assert tuple(model.temp_pos_embed.shape) == (1, nf, d)
    pt_err = (pos_t - model.temp_pos_embed).abs().max().item()
    assert pt_err < 1e-6, f"temporal table differs by {pt_err}"

    b_sz, lmax = 2, 10
    x = torch.randn(b_sz, CONFIG["in_channels"], nf, CONFIG["sample_size"], CONFIG["sample_size"])
    t = torch.tensor([17.0, 503.0])
    y = torch.randn(b_sz, lmax, CONFIG["caption_channels"])  # padding positions hold junk
    lens = torch.tensor([lmax, 4])
    mask = (torch.arange(lmax)[None] < lens[:, None]).long()
    grad_out = torch.randn(b_sz, CONFIG["out_channels"], *x.shape[2:])
    assert torch.equal(model.adaln_single.emb.time_proj(t), timestep_features(t))

    # diffusers with the raw [B, L] mask (recorded, not relied on)
    try:
        with torch.no_grad():
            model(x, timestep=t, encoder_hidden_states=y, encoder_attention_mask=mask)
        raw_mask = "accepted"
    except RuntimeError as e:
        raw_mask = f"raises ({str(e).splitlines()[0]})"

    bias = caption_bias(mask, nf)
    xr = x.clone().requires_grad_(True)
    out = model(xr, timestep=t, encoder_hidden_states=y, encoder_attention_mask=bias).sample
    model.zero_grad()
    (out * grad_out).sum().backward()
    grads = {"grad.x": xr.grad.clone()}
    grads.update({"grad." + k: v.grad.clone() for k, v in named.items()})
    out = out.detach()
    with torch.no_grad():
        out_nomask = model(x, timestep=t, encoder_hidden_states=y).sample
        out_hard = model(x, timestep=t, encoder_hidden_states=y,
                         encoder_attention_mask=caption_bias(mask, nf, hard=True)).sample
    assert out.shape == (b_sz, CONFIG["out_channels"], *x.shape[2:])

    mask_effect = rel_err(out_nomask[1], out[1])
    assert mask_effect > 1e-3, f"caption mask has no effect ({mask_effect:.3g})"
    full_diff = (out_nomask[0] - out[0]).abs().max().item()
    assert full_diff < 1e-6, f"full-length sample changed by the mask ({full_diff:.3g})"
    hard_diff = (out_hard - out).abs().max().item()
    assert hard_diff < 1e-6, f"-inf vs -10000 bias differ by {hard_diff:.3g}"
    # Softmax ignores a per-query constant, so the key bias gets no gradient: q.(k + b) - q.k = q.b is the same for
    # every key. diffusers' to_k.bias gradients are rounding noise; every other gradient must be non-zero.
    key_bias = sorted(k for k in grads if k.endswith(".to_k.bias"))
    assert len(key_bias) == 3 * CONFIG["num_layers"]  # spatial attn1 and attn2, temporal attn1
    kb_max = max(grads[k].abs().max().item() for k in key_bias)
    typical = min(gr.abs().max().item() for k, gr in grads.items() if k not in key_bias)
    assert kb_max < 1e-4 * typical, f"to_k.bias gradient not ~0 ({kb_max:.3g} vs {typical:.3g})"
    for k, gr in grads.items():
        assert k in key_bias or gr.abs().max() > 0, f"{k}: no gradient"

    # Cross-check: the torch-ops reference reproduces diffusers (output and every gradient).
    p = {k: v.detach().clone().requires_grad_(True) for k, v in sd.items()}
    xr = x.clone().requires_grad_(True)
    ref = latte_forward(p, CONFIG, pos2d, pos_t, xr, t, y, bias)
    (ref * grad_out).sum().backward()
    out_err = rel_err(ref.detach(), out)
    assert out_err < 1e-5, f"reference vs diffusers: out rel err {out_err:.3g}"
    ref_grads = {"grad.x": xr.grad}
    ref_grads.update({"grad." + k: v.grad for k, v in p.items()})
    grad_err = max(rel_err(ref_grads[k], gr) for k, gr in grads.items() if k not in key_bias)
    assert max(ref_grads[k].abs().max().item() for k in key_bias) < 1e-4 * typical
    assert grad_err < 1e-4, f"reference vs diffusers: worst grad rel err {grad_err:.3g}"
    with torch.no_grad():
        ref_nomask = latte_forward(sd, CONFIG, pos2d, pos_t, x, t, y, None)
    assert rel_err(ref_nomask, out_nomask) < 1e-5

    io = {"x": x, "t": t, "y": y, "mask": mask, "out": out, "grad_out": grad_out, "out_nomask": out_nomask,
          "out_hardmask": out_hard, "num_params": torch.tensor([num_params], dtype=torch.int64)}
    io.update(grads)
    dd = os.path.join(outdir, "tiny")
    os.makedirs(dd, exist_ok=True)
    with open(os.path.join(dd, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1, sort_keys=True)
        f.write("\n")
    save_file(sd, os.path.join(dd, "weights.safetensors"))
    save_file({k: v.detach().contiguous() for k, v in io.items()}, os.path.join(dd, "io.safetensors"))

    print(f"tiny: {num_params} parameters, |out|max {out.abs().max().item():.3f}, mask effect (sample 1, rel) "
          f"{mask_effect:.3g}, full sample |diff| {full_diff:.3g}, -inf vs -10000 |diff| {hard_diff:.3g}; "
          f"reference vs diffusers: out rel {out_err:.3g}, worst grad rel {grad_err:.3g}; "
          f"tables abs err 2D {pe_err:.3g}, temporal {pt_err:.3g}")
    print(f"""Latte facts (diffusers {cfg['_diffusers_version']}, all checked above):
 (1) temp_pos_embed [1, video_length={nf}, D]: frame f -> [sin(f w_k), cos(f w_k)], w_k = 10000^(-k/(D/2)) (sin
     first, integer positions, float64); added once, before temporal block 0, to the residual stream ([B*S, F, D]),
     and only when F > 1 (F must then equal video_length). Not in the state dict (non-persistent), nor is the 2D
     table: first half of channels = column c / (Gw/base) / interp, second half = row, each [sin, cos],
     w_k = 10000^(-k/(D/4)); base = sample_size/patch = {base}, interp = max(sample_size//64, 1) = {interp}.
 (2) spatial block (frames as [B*F, S, D]): h += gate_msa * attn1(LN(h)(1+scale_msa)+shift_msa);
     h += attn2(h, caption) (un-normalised h, no gate); h += gate_mlp * ff(LN(h)(1+scale_mlp)+shift_mlp);
     LN = no affine, eps 1e-6; modulation = block.scale_shift_table [6, D] + t0 in the order shift_msa, scale_msa,
     gate_msa, shift_mlp, scale_mlp, gate_mlp. Temporal block ([B*S, F, D]): the same without attn2.
 (3) t0 = adaln_single.linear(silu(emb)), emb = timestep_embedder(Timesteps(256, cos first, shift 0)(t)); spatial
     blocks use t0 repeated per frame, temporal blocks the same t0 repeated per spatial position (b-major), with
     their own scale_shift_table.
 (4) final: shift, scale = scale_shift_table[2, D] + emb (rows 0, 1; emb = embedder output, not t0);
     proj_out(LN(h)(1+scale)+shift), LN eps 1e-6; unpatchify per frame "nhwpqc->nchpwq", then [B, C, F, H, W].
 (5) ff: Linear(D, 4D) -> GELU tanh -> Linear(4D, D); caption_projection: Linear -> GELU tanh -> Linear.
 (6) caption mask: diffusers' Latte does no conversion; passing the [B, L] mask itself
     {raw_mask}.
     Official Latte semantics (used for `out`): bias (1 - mask) * -10000.0 of shape [B, 1, L], repeated per frame
     to [B*F, 1, L], added to the cross-attention scores (after the hd^-0.5 scaling). A hard -inf mask gives the
     same output (max |diff| {hard_diff:.3g}); with encoder_attention_mask=None padded tokens are attended (out_nomask).
 (7) grad.*.to_k.bias is analytically zero (softmax ignores q.b, the same for every key): the stored values are
     rounding noise (max {kb_max:.3g}, vs >= {typical:.3g} for the smallest other gradient's max); compare them
     with an absolute tolerance.""")


def main():
    outdir = outdir_from_argv()
    if up_to_date(outdir, __file__):
        return
    torch.set_num_threads(2)
    make_tiny(outdir)
    mark_done(outdir, __file__)


if __name__ == "__main__":
    main()
