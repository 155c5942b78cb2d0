"""Peer for opendit's VAE benchmarks: diffusers' AutoencoderKL in the SD-VAE layout (stabilityai/sd-vae-ft-ema, the
VAE of Open-Sora v1.0), random weights, eval, inference mode.

usage: peer_vae.py --mode encode|decode [--size 256] [--batch 8] [--frames 0] [--micro-batch 4] [--dtype bf16|fp32]
                   [--device cuda|cpu] [--iters 10] [--warmup 2] [--threads N]
  encode: vae.encode(x).latent_dist.sample() * 0.18215, x [batch, 3, size, size]
  decode: vae.decode(z / 0.18215).sample,               z [batch, 4, size/8, size/8]
  --frames F > 0: the F frames of one video ([F, ...] instead of [batch, ...]) go through the VAE in micro-batches of
  --micro-batch frames, concatenated afterwards, as Open-Sora v1.0's VideoAutoencoderKL does (micro_batch_size 4 in
  its 16x256x256 inference config, 2 in 16x512x512); --micro-batch 0 runs all frames at once.
Prints one line:
  PEER vae mode=... device=... threads=... dtype=... size=... batch=... median_ms=... min_ms=... img_per_s=...
           peak_gib=...
  with --frames: batch=1 frames=F micro_batch=... and frames_per_s=... in place of img_per_s
peak_gib: torch.cuda.max_memory_allocated over the timed and warm-up runs, weights included (0 on cpu).
"""
import argparse

import torch
from diffusers import AutoencoderKL
from peer_timing import time_calls

SCALE = 0.18215
SD_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
              act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=256, scaling_factor=SCALE)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["encode", "decode"], required=True)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=0)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    assert a.size % 8 == 0, "--size must be a multiple of 8"
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    with torch.device(dev):  # parameters are created (and randomly initialised) on the device
        vae = AutoencoderKL(**SD_VAE).to(dtype).eval()

    n = a.frames if a.frames > 0 else a.batch
    if a.mode == "encode":
        inp = torch.rand(n, 3, a.size, a.size, device=dev, dtype=dtype) * 2 - 1

        def run(chunk):
            return vae.encode(chunk).latent_dist.sample() * SCALE
    else:
        inp = torch.randn(n, 4, a.size // 8, a.size // 8, device=dev, dtype=dtype)

        def run(chunk):
            return vae.decode(chunk / SCALE).sample

    step = a.micro_batch if a.frames > 0 and a.micro_batch > 0 else n

    def forward():
        return torch.cat([run(inp[i:i + step]) for i in range(0, n, step)]) if step < n else run(inp)

    med, fastest, peak = time_calls(forward, a.warmup, a.iters, cuda)
    unit = "img_per_s"
    shape = f"batch={a.batch}"
    if a.frames > 0:
        unit, shape = "frames_per_s", f"batch=1 frames={a.frames} micro_batch={step}"
    print(f"PEER vae mode={a.mode} device={a.device} threads={torch.get_num_threads()} dtype={a.dtype} size={a.size} "
          f"{shape} median_ms={med:.3f} min_ms={fastest:.3f} {unit}={n / med * 1e3:.2f} peak_gib={peak:.3f}")


if __name__ == "__main__":
    main()
