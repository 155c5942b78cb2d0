"""Reference SD-VAE encodes and decodes from diffusers' AutoencoderKL (random weights), for opendit's VAE tests.

For each configuration writes OUTDIR/<name>/ as AutoencoderKL.save_pretrained writes it (config.json and
diffusion_pytorch_model.safetensors, fp32, diffusers key names), so the C++ loader reads a real diffusers folder,
plus OUTDIR/<name>/io.safetensors:
  x [N,3,H,W]              input images, uniform in [-1, 1]
  mean, logvar [N,lc,h,w]  the posterior's moments, encode(x).latent_dist (logvar already clamped to [-30, 20])
  z [N,lc,h2,w2]           standard normal latents;  dec [N,3,f*h2,f*w2] = decode(z).sample (after post_quant_conv)
  z2, dec2                 ("tiny" only) an odd latent size, 5x7
  num_params [1] int64     parameter count
  zt, dec_t, dec_tiled     ("tiny3" only) latents [2,3,20,20], their whole decode, and diffusers' own tiled decode
                           (tiles of 8 latents, overlap factor 0.25): the yardstick of opendit's tiled decoding, whose
                           tiles see only part of the frame too (GroupNorm statistics, receptive field)
Here f = 2^(len(block_out_channels) - 1) is the spatial factor (8 for the SD layout), h = H/f, w = W/f.
Diffusers' init is random everywhere except the GroupNorm affines (1 and 0); those are perturbed so they are tested.
"""
import os
import sys

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from refcache import mark_done, outdir_from_argv, up_to_date  # noqa: E402

CONFIGS = {
    # name: (AutoencoderKL kwargs, N, H, W, latent (h2, w2) for decode, odd latent for z2 or None)
    "tiny": (dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, latent_channels=4,
                  sample_size=32), 2, 32, 24, (16, 12), (5, 7)),                       # non-square
    "tiny3": (dict(block_out_channels=(16, 32, 32), layers_per_block=2, norm_num_groups=16, latent_channels=3,
                   in_channels=3, out_channels=3), 3, 32, 32, (8, 8), None),
    "noquant": (dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, latent_channels=4,
                     sample_size=32, use_quant_conv=False, use_post_quant_conv=False), 2, 32, 24, (16, 12), None),
    # stabilityai/sd-vae-ft-ema's config.json
    "sd": (dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, latent_channels=4,
                sample_size=256, scaling_factor=0.18215), 1, 48, 64, (6, 8), None),
}


def nontrivial(name: str, tensors: dict) -> None:
    """A reference with (near) constant outputs would let a broken implementation pass."""
    for k, v in tensors.items():
        if v.is_floating_point() and not v.float().std() > 1e-3:
            raise RuntimeError(f"{name}/{k}: std {v.float().std().item():.3g} is ~0")


def make(outdir: str, name: str, kwargs: dict, n: int, h: int, w: int, zsize, zodd) -> None:
    torch.manual_seed(1234)
    levels = len(kwargs["block_out_channels"])
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * levels,
                        up_block_types=("UpDecoderBlock2D",) * levels, act_fn="silu", **kwargs).eval()
    # GroupNorm affines start at weight 1, bias 0; move them so that a loader ignoring them fails.
    with torch.no_grad():
        for m in vae.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.add_(0.1 * torch.randn_like(m.weight))
                m.bias.add_(0.1 * torch.randn_like(m.bias))
    lc = vae.config.latent_channels
    x = torch.rand(n, 3, h, w) * 2 - 1
    z = torch.randn(n, lc, *zsize)
    io = {"x": x}
    with torch.no_grad():
        post = vae.encode(x).latent_dist
        io["mean"], io["logvar"] = post.mean, post.logvar
        io["z"], io["dec"] = z, vae.decode(z).sample
        if zodd is not None:
            io["z2"] = torch.randn(n, lc, *zodd)
            io["dec2"] = vae.decode(io["z2"]).sample
        if name == "tiny3":
            io["zt"] = torch.randn(2, lc, 20, 20)
            io["dec_t"] = vae.decode(io["zt"]).sample
            vae.enable_tiling()
            factor = 2 ** (levels - 1)
            vae.tile_latent_min_size, vae.tile_sample_min_size, vae.tile_overlap_factor = 8, 8 * factor, 0.25
            io["dec_tiled"] = vae.decode(io["zt"]).sample
            vae.disable_tiling()
    nontrivial(name, io)
    d = os.path.join(outdir, name)
    vae.save_pretrained(d, safe_serialization=True)
    io = {k: v.contiguous() for k, v in io.items()}
    io["num_params"] = torch.tensor([sum(p.numel() for p in vae.parameters())], dtype=torch.int64)
    save_file(io, os.path.join(d, "io.safetensors"))


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
