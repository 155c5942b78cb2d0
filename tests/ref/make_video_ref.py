"""Reference video decoding and Open-Sora v1.0 clip preprocessing from PyAV and torch, for opendit's video reader.

Writes OUTDIR/files/: small videos made here with PyAV (MPEG-4 Part 2 in .mp4 and H.264 in .mp4, yuv420p, odd
sizes), a truncated copy and a file that is not a video; and OUTDIR/ref.safetensors:
  frames/<name>   uint8 [T, H, W, 3]: every frame as torchvision.io.read_video gets it (PyAV, to RGB24)
  clip<S>/<name>  float32 [3, T', S, S]: Open-Sora v1.0's clip of those frames - 5 frames at interval 3 from frame 0
                  (np.linspace over the span, truncated), the short side scaled to S by F.interpolate(bilinear,
                  align_corners=False, scale_factor), the centre crop (round((h - S) / 2)), (x - 0.5) / 0.5
"""
import os
import sys

import av
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from refcache import mark_done, outdir_from_argv, up_to_date  # noqa: E402

NUM_FRAMES, INTERVAL = 5, 3


def frames_of(t, h, w, seed):
    """Moving gradients and noise: content that a codec and the chroma conversion treat realistically."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    out = []
    for k in range(t):
        base = np.stack([128 + 90 * np.sin((x + 3 * k) / (6 + c) + y / (9 + c)) for c in range(3)], -1)
        out.append(np.clip(base + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8))
    return out


def write(path, codec, frames, fps=10):
    with av.open(path, "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv420p"
        if codec == "libx264":
            s.options = {"crf": "18", "preset": "veryfast", "bf": "2"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def decode(path):
    with av.open(path) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def clip(frames, size):
    total = frames.shape[0]
    span = min(NUM_FRAMES * INTERVAL, total)
    idx = np.linspace(0, span - 1, NUM_FRAMES, dtype=int)
    x = torch.from_numpy(frames[idx]).permute(0, 3, 1, 2).float() / 255.0  # [T, C, H, W]
    scale = size / min(x.shape[-2:])
    x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    top, left = int(round((x.shape[-2] - size) / 2.0)), int(round((x.shape[-1] - size) / 2.0))
    x = x[..., top:top + size, left:left + size]
    return ((x - 0.5) / 0.5).permute(1, 0, 2, 3).contiguous()


def main():
    outdir = outdir_from_argv()
    if up_to_date(outdir, __file__):
        return
    files = os.path.join(outdir, "files")
    os.makedirs(files, exist_ok=True)
    made = {"mpeg4": os.path.join(files, "mpeg4.mp4"), "h264": os.path.join(files, "h264.mp4")}
    write(made["mpeg4"], "mpeg4", frames_of(20, 48, 66, 1))
    write(made["h264"], "libx264", frames_of(17, 58, 40, 2))
    data = open(made["h264"], "rb").read()
    open(os.path.join(files, "truncated.mp4"), "wb").write(data[: len(data) // 3])
    open(os.path.join(files, "not_a_video.mp4"), "wb").write(b"this is text, not a video\n" * 20)
    ref = {}
    for name, path in made.items():
        fr = decode(path)
        ref[f"frames/{name}"] = torch.from_numpy(fr.copy())
        for size in (32, 24):
            ref[f"clip{size}/{name}"] = clip(fr, size)
    save_file(ref, os.path.join(outdir, "ref.safetensors"))
    mark_done(outdir, __file__)


if __name__ == "__main__":
    main()
