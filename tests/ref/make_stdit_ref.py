"""Reference STDiT (Open-Sora v1.0) forward and backward passes, for the C++ STDiT tests.

Writes, per case, OUTDIR/<case>/config.json, OUTDIR/<case>/weights.safetensors (Open-Sora v1.0 state-dict names,
float32, including the pos_embed, pos_embed_temporal and y_embedder.y_embedding buffers) and
OUTDIR/<case>/io.safetensors (inputs, output, output gradient and the input/parameter gradients of
loss = (out * grad_out).sum()).

- "tiny": a reference STDiT written below from plain torch ops after v1.0's published semantics (Open-Sora itself
  is not installable here), with every parameter random (not Open-Sora's zero inits), a non-square latent and a
  caption mask. Also holds `out_drop`: the output when sample 1's caption is replaced by y_embedding (Open-Sora's
  token_drop with force_drop_ids = `drop`; the mask stays the sample's own).
- "pixart": diffusers' PixArtTransformer2DModel (random weights) applied frame by frame, mapped onto STDiT names with
  attn_temp.proj zero, so STDiT must reduce to per-frame PixArt. No gradients are stored for attn_temp.*.

The script asserts that the torch-ops reference run on the "pixart" weights reproduces diffusers (output and
gradients), which cross-validates the reference, and that the caption mask changes the "tiny" output.

Facts used from diffusers (checked against its source):
- PixArt's timestep features are Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0): cos first and
  frequencies exp(-ln(10000) k / half), the same as Open-Sora's TimestepEmbedder.
- diffusers' 2D sin-cos positions are i / (n / base_size) / interpolation_scale with base_size = sample_size /
  patch_size; Open-Sora v1.0's (base_size None) are i / space_scale. At the native size n == base_size, so
  interpolation_scale = space_scale gives the same table.
- PixArt's unpatchify is "n h w p q c -> n c (h p) (w q)", the same channel order as STDiT's with pt = 1.
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

BUFFERS = ("pos_embed", "pos_embed_temporal", "y_embedder.y_embedding")


# ----------------------------------------------------------------------------------------------------------------
# Configuration and parameter layout
# ----------------------------------------------------------------------------------------------------------------

def make_config(depth, hidden, heads, patch, cin, size, cap, max_len, space_scale, time_scale):
    return {"depth": depth, "hidden_size": hidden, "num_heads": heads, "patch_size": list(patch),
            "in_channels": cin, "input_size": list(size), "caption_channels": cap, "model_max_length": max_len,
            "mlp_ratio": 4.0, "pred_sigma": True, "space_scale": space_scale, "time_scale": time_scale}


def out_channels(cfg):
    return cfg["in_channels"] * (2 if cfg["pred_sigma"] else 1)


def grid(cfg):
    """Token grid (Nt, Nh, Nw)."""
    return tuple(cfg["input_size"][i] // cfg["patch_size"][i] for i in range(3))


def param_shapes(cfg):
    """Trainable parameters of v1.0 STDiT: official name -> shape."""
    d, cin, cap = cfg["hidden_size"], cfg["in_channels"], cfg["caption_channels"]
    pt, ph, pw = cfg["patch_size"]
    hid = int(d * cfg["mlp_ratio"])

    def lin(name, n_out, n_in):
        return {name + ".weight": (n_out, n_in), name + ".bias": (n_out,)}

    s = {"x_embedder.proj.weight": (d, cin, pt, ph, pw), "x_embedder.proj.bias": (d,)}
    s.update(lin("t_embedder.mlp.0", d, 256))
    s.update(lin("t_embedder.mlp.2", d, d))
    s.update(lin("t_block.1", 6 * d, d))
    s.update(lin("y_embedder.y_proj.fc1", d, cap))
    s.update(lin("y_embedder.y_proj.fc2", d, d))
    for i in range(cfg["depth"]):
        b = f"blocks.{i}."
        s[b + "scale_shift_table"] = (6, d)
        s.update(lin(b + "attn.qkv", 3 * d, d))
        s.update(lin(b + "attn.proj", d, d))
        s.update(lin(b + "cross_attn.q_linear", d, d))
        s.update(lin(b + "cross_attn.kv_linear", 2 * d, d))
        s.update(lin(b + "cross_attn.proj", d, d))
        s.update(lin(b + "mlp.fc1", hid, d))
        s.update(lin(b + "mlp.fc2", d, hid))
        s.update(lin(b + "attn_temp.qkv", 3 * d, d))
        s.update(lin(b + "attn_temp.proj", d, d))
    s["final_layer.scale_shift_table"] = (2, d)
    s.update(lin("final_layer.linear", pt * ph * pw * out_channels(cfg), d))
    return s


# ----------------------------------------------------------------------------------------------------------------
# Sin-cos position tables (v1.0: sin first, then cos; 10000^(-k / (D/2)) frequencies; computed in float64)
# ----------------------------------------------------------------------------------------------------------------

def sincos_1d(dim, pos):
    pos = np.asarray(pos, dtype=np.float64).reshape(-1)
    freq = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    ang = pos[:, None] * freq[None, :]
    return np.concatenate([np.sin(ang), np.cos(ang)], axis=1)


def spatial_pos_embed(cfg):
    """[1, Nh*Nw, D]. Tokens are row-major (h, w); the FIRST half of the channels encodes the column w, the second
    half the row h (v1.0 meshgrids (w, h) and feeds the w plane to the first half). Positions are float32
    index / space_scale, no base-size normalisation, so a non-square grid keeps unit steps on both axes."""
    _, nh, nw = grid(cfg)
    d, scale = cfg["hidden_size"], cfg["space_scale"]
    hh = np.repeat(np.arange(nh), nw)
    ww = np.tile(np.arange(nw), nh)
    pw = (ww.astype(np.float32) / np.float32(scale)).astype(np.float32)
    ph = (hh.astype(np.float32) / np.float32(scale)).astype(np.float32)
    emb = np.concatenate([sincos_1d(d // 2, pw), sincos_1d(d // 2, ph)], axis=1)
    # Cross-check the ordering against v1.0's construction: meshgrid(w, h) stacked, reshaped (not transposed) to
    # [2, 1, Nw, Nh] and flattened.
    g = np.stack(np.meshgrid(np.arange(nw, dtype=np.float32) / scale, np.arange(nh, dtype=np.float32) / scale), 0)
    g = g.reshape(2, 1, nw, nh)
    alt = np.concatenate([sincos_1d(d // 2, g[0]), sincos_1d(d // 2, g[1])], axis=1)
    assert np.array_equal(emb, alt)
    return torch.from_numpy(emb).float().unsqueeze(0)


def temporal_pos_embed(cfg):
    """[1, Nt, D]: integer index / time_scale in float64."""
    nt = grid(cfg)[0]
    return torch.from_numpy(sincos_1d(cfg["hidden_size"], np.arange(nt) / cfg["time_scale"])).float().unsqueeze(0)


# ----------------------------------------------------------------------------------------------------------------
# Reference STDiT from torch ops
# ----------------------------------------------------------------------------------------------------------------

def timestep_features(t, dim=256, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-np.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    a = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(a), torch.sin(a)], dim=1)


def linear(p, name, x):
    return F.linear(x, p[name + ".weight"], p[name + ".bias"])


def modulate_ln(x, shift, scale):
    return F.layer_norm(x, (x.shape[-1],), eps=1e-6) * (1 + scale) + shift


def attention(q, k, v):
    """q [..., H, Nq, hd], k/v [..., H, Nk, hd]; scale hd^-0.5, softmax in float32."""
    a = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return a.float().softmax(-1).to(q.dtype) @ v


def self_attention(p, name, x, heads):
    n_seq, n, d = x.shape
    qkv = linear(p, name + ".qkv", x).view(n_seq, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    o = attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(n_seq, n, d)
    return linear(p, name + ".proj", o)


def cross_attention(p, name, x, cond, mask, heads):
    """Each sample attends to its own valid caption tokens only (a loop over samples, keys = cond[b][mask[b] != 0])."""
    b_sz, n, d = x.shape
    hd = d // heads
    q = linear(p, name + ".q_linear", x).view(b_sz, n, heads, hd).transpose(1, 2)
    outs = []
    for b in range(b_sz):
        valid = cond[b][mask[b] != 0]                                           # [Lb, D]
        kv = linear(p, name + ".kv_linear", valid).view(-1, 2, heads, hd)       # channel = (k|v, head, hd)
        k, v = kv[:, 0].transpose(0, 1), kv[:, 1].transpose(0, 1)               # [H, Lb, hd]
        outs.append(attention(q[b], k, v).transpose(0, 1).reshape(n, d))
    return linear(p, name + ".proj", torch.stack(outs))


def stdit_forward(p, cfg, x, t, y, mask, drop=None):
    """x [B, C, T, H, W], t [B] float, y [B, L, caption_channels], mask [B, L] (nonzero = valid)."""
    d, heads = cfg["hidden_size"], cfg["num_heads"]
    nt, nh, nw = grid(cfg)
    s = nh * nw
    b_sz = x.shape[0]

    h = F.conv3d(x, p["x_embedder.proj.weight"], p["x_embedder.proj.bias"], stride=tuple(cfg["patch_size"]))
    h = h.flatten(2).transpose(1, 2)                                            # [B, T*S, D], (t, h, w) order
    h = (h.view(b_sz, nt, s, d) + p["pos_embed"]).view(b_sz, nt * s, d)

    temb = linear(p, "t_embedder.mlp.2", F.silu(linear(p, "t_embedder.mlp.0", timestep_features(t))))
    t0 = linear(p, "t_block.1", F.silu(temb))

    if drop is not None:  # token_drop with force_drop_ids: the whole caption becomes y_embedding
        y = torch.where((drop == 1)[:, None, None], p["y_embedder.y_embedding"][None], y)
    cond = linear(p, "y_embedder.y_proj.fc2",
                  F.gelu(linear(p, "y_embedder.y_proj.fc1", y), approximate="tanh"))

    for i in range(cfg["depth"]):
        pre = f"blocks.{i}."
        mod = p[pre + "scale_shift_table"][None] + t0.view(b_sz, 6, d)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)

        xm = modulate_ln(h, shift_msa, scale_msa)
        xs = self_attention(p, pre + "attn", xm.reshape(b_sz * nt, s, d), heads)
        h = h + gate_msa * xs.reshape(b_sz, nt * s, d)

        # temporal branch on the raw residual stream, one sequence per spatial position
        xt = h.view(b_sz, nt, s, d).transpose(1, 2).reshape(b_sz * s, nt, d)
        if i == 0:
            xt = xt + p["pos_embed_temporal"]
        xt = self_attention(p, pre + "attn_temp", xt, heads)
        h = h + gate_msa * xt.view(b_sz, s, nt, d).transpose(1, 2).reshape(b_sz, nt * s, d)

        h = h + cross_attention(p, pre + "cross_attn", h, cond, mask, heads)

        xm = modulate_ln(h, shift_mlp, scale_mlp)
        ff = linear(p, pre + "mlp.fc2", F.gelu(linear(p, pre + "mlp.fc1", xm), approximate="tanh"))
        h = h + gate_mlp * ff

    shift, scale = (p["final_layer.scale_shift_table"][None] + temb[:, None]).chunk(2, dim=1)
    h = linear(p, "final_layer.linear", modulate_ln(h, shift, scale))          # [B, N, pt*ph*pw*C]

    pt, ph, pw = cfg["patch_size"]
    c = out_channels(cfg)
    h = h.view(b_sz, nt, nh, nw, pt, ph, pw, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return h.reshape(b_sz, c, nt * pt, nh * ph, nw * pw)


def forward_backward(p, cfg, x, t, y, mask, grad_out):
    """Returns out, grad.x and grad.<name> for every trainable parameter."""
    p = {k: (v.detach().clone().requires_grad_(k not in BUFFERS)) for k, v in p.items()}
    x = x.clone().requires_grad_(True)
    out = stdit_forward(p, cfg, x, t, y, mask)
    (out * grad_out).sum().backward()
    grads = {"grad.x": x.grad}
    grads.update({"grad." + k: v.grad for k, v in p.items() if k not in BUFFERS})
    return out.detach(), grads


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def write_case(outdir, name, cfg, weights, io):
    d = os.path.join(outdir, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
        f.write("\n")
    save_file({k: v.detach().float().contiguous() for k, v in weights.items()}, os.path.join(d, "weights.safetensors"))
    save_file({k: v.detach().contiguous() for k, v in io.items()}, os.path.join(d, "io.safetensors"))


# ----------------------------------------------------------------------------------------------------------------
# Case "tiny"
# ----------------------------------------------------------------------------------------------------------------

def make_tiny(outdir):
    cfg = make_config(2, 64, 4, (1, 2, 2), 4, (3, 8, 12), 32, 10, 0.5, 1.5)
    torch.manual_seed(2024)
    p = {k: torch.randn(shape) * 0.1 for k, shape in param_shapes(cfg).items()}
    p["pos_embed"] = spatial_pos_embed(cfg)
    p["pos_embed_temporal"] = temporal_pos_embed(cfg)
    p["y_embedder.y_embedding"] = torch.randn(cfg["model_max_length"], cfg["caption_channels"])

    b_sz, c = 2, cfg["in_channels"]
    x = torch.randn(b_sz, c, *cfg["input_size"])
    t = torch.tensor([17.0, 503.0])
    y = torch.randn(b_sz, cfg["model_max_length"], cfg["caption_channels"])   # padding positions hold junk
    lens = torch.tensor([10, 4])
    mask = (torch.arange(cfg["model_max_length"])[None] < lens[:, None]).long()
    grad_out = torch.randn(b_sz, out_channels(cfg), *cfg["input_size"])
    drop = torch.tensor([0, 1], dtype=torch.long)

    out, grads = forward_backward(p, cfg, x, t, y, mask, grad_out)
    with torch.no_grad():
        out_drop = stdit_forward(p, cfg, x, t, y, mask, drop=drop)
        out_nomask = stdit_forward(p, cfg, x, t, y, torch.ones_like(mask))
    mask_effect = rel_err(out_nomask[1], out[1])
    assert mask_effect > 1e-3, f"caption mask has no effect ({mask_effect:.3g})"
    assert (out_nomask[0] - out[0]).abs().max().item() < 1e-6  # sample 0 is fully valid either way
    drop_effect = rel_err(out_drop[1], out[1])
    assert drop_effect > 1e-3 and torch.equal(out_drop[0], out[0])
    for k, g in grads.items():
        assert g is not None and g.abs().max() > 0, f"{k}: no gradient"

    io = {"x": x, "t": t, "y": y, "mask": mask, "out": out, "grad_out": grad_out, "drop": drop,
          "out_drop": out_drop}
    io.update(grads)
    write_case(outdir, "tiny", cfg, p, io)
    print(f"tiny: |out|max {out.abs().max().item():.3f}, mask effect (sample 1, rel) {mask_effect:.3g}, "
          f"drop effect (sample 1, rel) {drop_effect:.3g}")


# ----------------------------------------------------------------------------------------------------------------
# Case "pixart"
# ----------------------------------------------------------------------------------------------------------------

def pixart_to_stdit(sd, cfg):
    """diffusers PixArtTransformer2DModel state dict -> STDiT names (without attn_temp and buffers)."""
    used = set()

    def g(k):
        used.add(k)
        return sd[k]

    def cat(prefix, names, suffix):
        return torch.cat([g(f"{prefix}.{n}.{suffix}") for n in names])

    p = {"x_embedder.proj.weight": g("pos_embed.proj.weight").unsqueeze(2),
         "x_embedder.proj.bias": g("pos_embed.proj.bias")}
    for w in ("weight", "bias"):
        p[f"t_embedder.mlp.0.{w}"] = g(f"adaln_single.emb.timestep_embedder.linear_1.{w}")
        p[f"t_embedder.mlp.2.{w}"] = g(f"adaln_single.emb.timestep_embedder.linear_2.{w}")
        p[f"t_block.1.{w}"] = g(f"adaln_single.linear.{w}")
        p[f"y_embedder.y_proj.fc1.{w}"] = g(f"caption_projection.linear_1.{w}")
        p[f"y_embedder.y_proj.fc2.{w}"] = g(f"caption_projection.linear_2.{w}")
        p[f"final_layer.linear.{w}"] = g(f"proj_out.{w}")
        for i in range(cfg["depth"]):
            a, b = f"transformer_blocks.{i}", f"blocks.{i}"
            p[f"{b}.attn.qkv.{w}"] = cat(f"{a}.attn1", ("to_q", "to_k", "to_v"), w)
            p[f"{b}.attn.proj.{w}"] = g(f"{a}.attn1.to_out.0.{w}")
            p[f"{b}.cross_attn.q_linear.{w}"] = g(f"{a}.attn2.to_q.{w}")
            p[f"{b}.cross_attn.kv_linear.{w}"] = cat(f"{a}.attn2", ("to_k", "to_v"), w)
            p[f"{b}.cross_attn.proj.{w}"] = g(f"{a}.attn2.to_out.0.{w}")
            p[f"{b}.mlp.fc1.{w}"] = g(f"{a}.ff.net.0.proj.{w}")
            p[f"{b}.mlp.fc2.{w}"] = g(f"{a}.ff.net.2.{w}")
    for i in range(cfg["depth"]):
        p[f"blocks.{i}.scale_shift_table"] = g(f"transformer_blocks.{i}.scale_shift_table")
    p["final_layer.scale_shift_table"] = g("scale_shift_table")
    assert used == set(sd), f"unmapped PixArt tensors: {sorted(set(sd) - used)}"
    return p


def make_pixart(outdir):
    from diffusers import PixArtTransformer2DModel

    space_scale = 0.5
    cfg = make_config(2, 64, 4, (1, 2, 2), 4, (3, 8, 8), 32, 10, space_scale, 1.0)
    torch.manual_seed(4321)
    model = PixArtTransformer2DModel(
        num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2, patch_size=2,
        sample_size=8, caption_channels=32, cross_attention_dim=64, activation_fn="gelu-approximate",
        norm_type="ada_norm_single", norm_eps=1e-6,
        interpolation_scale=space_scale,  # base_size = sample_size / patch = grid size, so positions = i / scale
    )
    assert not model.use_additional_conditions
    with torch.no_grad():
        for prm in model.parameters():
            prm.normal_(0.0, 0.1)
    model.eval()

    p = {k: v.detach().clone() for k, v in pixart_to_stdit(model.state_dict(), cfg).items()}
    d = cfg["hidden_size"]
    for i in range(cfg["depth"]):
        p[f"blocks.{i}.attn_temp.qkv.weight"] = torch.randn(3 * d, d) * 0.1
        p[f"blocks.{i}.attn_temp.qkv.bias"] = torch.randn(3 * d) * 0.1
        p[f"blocks.{i}.attn_temp.proj.weight"] = torch.zeros(d, d)
        p[f"blocks.{i}.attn_temp.proj.bias"] = torch.zeros(d)
    p["pos_embed"] = spatial_pos_embed(cfg)
    p["pos_embed_temporal"] = temporal_pos_embed(cfg)
    p["y_embedder.y_embedding"] = torch.randn(cfg["model_max_length"], cfg["caption_channels"])
    shapes = param_shapes(cfg)
    assert set(p) == set(shapes) | set(BUFFERS)
    assert all(tuple(p[k].shape) == s for k, s in shapes.items())
    pe_err = (p["pos_embed"] - model.pos_embed.pos_embed).abs().max().item()
    assert pe_err < 1e-6, f"pos_embed differs from diffusers' by {pe_err}"

    b_sz, c = 2, cfg["in_channels"]
    nt, hh, ww = cfg["input_size"]
    x = torch.randn(b_sz, c, nt, hh, ww)
    t = torch.tensor([250.5, 999.0])
    y = torch.randn(b_sz, cfg["model_max_length"], cfg["caption_channels"])
    lens = torch.tensor([10, 6])
    mask = (torch.arange(cfg["model_max_length"])[None] < lens[:, None]).long()
    grad_out = torch.randn(b_sz, out_channels(cfg), nt, hh, ww)

    # PixArt on the B*T frames; frame (b, f) uses sample b's timestep, caption and mask.
    xr = x.clone().requires_grad_(True)
    frames = xr.permute(0, 2, 1, 3, 4).reshape(b_sz * nt, c, hh, ww)
    res = model(frames, encoder_hidden_states=y.repeat_interleave(nt, 0), timestep=t.repeat_interleave(nt, 0),
                encoder_attention_mask=mask.repeat_interleave(nt, 0), return_dict=False)[0]
    out = res.reshape(b_sz, nt, -1, hh, ww).permute(0, 2, 1, 3, 4)
    model.zero_grad()
    (out * grad_out).sum().backward()
    named = {k: v.grad for k, v in model.named_parameters()}
    grads = {"grad.x": xr.grad}
    grads.update({"grad." + k: v for k, v in pixart_to_stdit(named, cfg).items()})
    out = out.detach()

    # Self-check: the torch-ops reference on the mapped weights reproduces diffusers.
    ref_out, ref_grads = forward_backward(p, cfg, x, t, y, mask, grad_out)
    out_err = rel_err(ref_out, out)
    assert out_err < 1e-5, f"reference STDiT vs PixArt: out rel err {out_err:.3g}"
    grad_err = max(rel_err(ref_grads[k], g) for k, g in grads.items())
    assert grad_err < 1e-4, f"reference STDiT vs PixArt: grad rel err {grad_err:.3g}"

    io = {"x": x, "t": t, "y": y, "mask": mask, "out": out, "grad_out": grad_out}
    io.update(grads)
    write_case(outdir, "pixart", cfg, p, io)
    print(f"pixart: |out|max {out.abs().max().item():.3f}, reference vs diffusers: out rel err {out_err:.3g}, "
          f"worst grad rel err {grad_err:.3g}, pos_embed abs err {pe_err:.3g}")


def main():
    outdir = outdir_from_argv()
    if up_to_date(outdir, __file__):
        return
    torch.set_num_threads(2)
    make_tiny(outdir)
    make_pixart(outdir)
    mark_done(outdir, __file__)


if __name__ == "__main__":
    main()
