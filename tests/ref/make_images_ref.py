"""Reference image decoding and preprocessing from PIL (Pillow), for opendit's image reader and resizer (tests/io).

Writes OUTDIR/files/<name>.<ext>: images made here with PIL in the forms datasets hold (baseline and progressive
JPEG at 4:2:0 and 4:4:4, greyscale JPEG, RGB, greyscale, RGBA, palette and 16-bit PNG), and damaged ones
(truncated JPEG and PNG, random bytes, an empty file, a CMYK JPEG); and OUTDIR/ref.safetensors (uint8 tensors):
  decode/<name>         Image.open(path).convert("RGB") as [H, W, 3]
  resize/<name>/<f>/<h>x<w>  Image.resize((w, h), f) of that RGB image, f in box, bilinear, bicubic
  crop<S>/<name>        DiT's ImageNet preprocessing at S (train.py's center_crop_arr: halve with BOX while the
                        short side >= 2 S, BICUBIC to a short side of S with round(), centre crop) of the RGB image
"""
import io
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from refcache import mark_done, outdir_from_argv, up_to_date  # noqa: E402

FILTERS = {"box": Image.BOX, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def picture(h, w, seed):
    """Smooth gradients plus texture, so that JPEG and resampling see realistic content."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(x / (7 + c) + y / (11 + 2 * c)) for c in range(3)], -1)
    return np.clip(base + rng.normal(0, 18, (h, w, 3)), 0, 255).astype(np.uint8)


def dit_crop(img, size):
    """DiT's center_crop_arr, written from its description."""
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(s // 2 for s in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(s * scale) for s in img.size), resample=Image.BICUBIC)
    a = np.asarray(img)
    top, left = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
    return a[top:top + size, left:left + size]


def main():
    outdir = outdir_from_argv()
    if up_to_date(outdir, __file__):
        return
    files = os.path.join(outdir, "files")
    os.makedirs(files, exist_ok=True)
    made = {}

    def save(name, img, ext, **kw):
        path = os.path.join(files, f"{name}.{ext}")
        img.save(path, **kw)
        made[name] = path

    save("rgb420", Image.fromarray(picture(200, 300, 1)), "jpg", quality=90)
    save("rgb444_progressive", Image.fromarray(picture(90, 121, 2)), "jpg", quality=95, subsampling=0,
         progressive=True)
    save("grey_jpeg", Image.fromarray(picture(70, 70, 3)[..., 0]), "jpg", quality=85)
    save("big", Image.fromarray(picture(530, 600, 4)), "jpg", quality=92)
    save("rgb_png", Image.fromarray(picture(45, 64, 5)), "png")
    save("grey_png", Image.fromarray(picture(131, 97, 6)[..., 1]), "png")
    rgba = np.concatenate([picture(80, 64, 7), picture(80, 64, 8)[..., :1]], -1)
    save("rgba_png", Image.fromarray(rgba, "RGBA"), "png")
    save("palette_png", Image.fromarray(picture(40, 50, 9)).quantize(colors=37), "png")
    # 16-bit RGB: PIL cannot write it; a raw PNG is built with zlib below.
    sixteen = (picture(30, 40, 11).astype(np.uint16) * 257 + 3).astype(">u2")
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + row.tobytes() for row in sixteen)
    png16 = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40, 30, 16, 2, 0, 0, 0)) +
             chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    path16 = os.path.join(files, "rgb16_png.png")
    open(path16, "wb").write(png16)
    made["rgb16_png"] = path16

    # Damaged and unsupported files (no reference output: the reader must refuse them).
    jpg = open(made["rgb420"], "rb").read()
    open(os.path.join(files, "truncated.jpg"), "wb").write(jpg[: len(jpg) // 2])
    png = open(made["rgb_png"], "rb").read()
    open(os.path.join(files, "truncated.png"), "wb").write(png[: len(png) - 30])
    open(os.path.join(files, "noise.jpg"), "wb").write(np.random.default_rng(0).bytes(500))
    open(os.path.join(files, "empty.png"), "wb").write(b"")
    buf = io.BytesIO()
    Image.fromarray(picture(20, 20, 12)).convert("CMYK").save(buf, "JPEG")
    open(os.path.join(files, "cmyk.jpg"), "wb").write(buf.getvalue())

    ref = {}
    for name, path in made.items():
        img = Image.open(path).convert("RGB")
        ref[f"decode/{name}"] = torch.from_numpy(np.asarray(img).copy())
        w, h = img.size
        for f, flt in FILTERS.items():
            for th, tw in ((h // 3, w // 2), (h * 2 + 1, w + 7), (h, w // 4 + 1), (h // 2 + 3, w)):
                out = img.resize((tw, th), resample=flt)
                ref[f"resize/{name}/{f}/{th}x{tw}"] = torch.from_numpy(np.asarray(out).copy())
        for size in (32, 64):
            ref[f"crop{size}/{name}"] = torch.from_numpy(dit_crop(img, size).copy())
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(outdir, "ref.safetensors"))
    mark_done(outdir, __file__)


if __name__ == "__main__":
    main()
