"""Writes a small learnable text-to-video dataset in opendit.latents version 2 (docs/FORMATS.md) for the STDiT
training tests, with h5py (an independent writer of the format; `opendit encode` is the production one).

Caption k of K is a fixed random token sequence of its own length (some shorter than text_length, so masks
matter); its clips are a fixed latent pattern of caption k plus a little noise. The posterior is stored (mean and a
small log-variance), unscaled, with scale_factor 0.5 and shift_factor 0.1, so the reader's scaling is exercised.
One more bucket of images [C, H, W] is added (samples the video model must skip).

usage: make_video_dataset.py PATH N K C T H W TEXT_DIM TEXT_LENGTH [TEXT_SEED]
(TEXT_SEED: other caption tokens, the same clips.)
"""
import sys
import zlib

import h5py
import numpy as np


def put(group, name, array):
    array = np.ascontiguousarray(array)
    ds = group.create_dataset(name, data=array)
    ds.attrs["crc32"] = np.int64(zlib.crc32(array.tobytes()))


def put_strings(group, name, strings):
    raw = [s.encode() for s in strings]
    offsets = np.zeros(len(raw) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(r) for r in raw])
    put(group, name + "_offset", offsets)
    put(group, name + "_bytes", np.frombuffer(b"".join(raw), dtype=np.uint8))


def main():
    path = sys.argv[1]
    n, k, c, t, h, w, dim, length = (int(a) for a in sys.argv[2:10])
    rng = np.random.default_rng(11)
    patterns = rng.uniform(-0.8, 0.8, size=(k, c, t, h, w)).astype(np.float32)
    lengths = [length if i % 2 == 0 else max(1, length // 2 - i) for i in range(k)]
    text_rng = np.random.default_rng(int(sys.argv[10]) if len(sys.argv) > 10 else 12)
    captions_tokens = [text_rng.standard_normal((lengths[i], dim)).astype(np.float32) for i in range(k)]
    n_images = 2
    caption_of = np.arange(n + n_images) % k
    video_rows = np.arange(n)
    image_rows = np.arange(n, n + n_images)
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": "opendit.latents", "version": np.int64(2), "count": np.int64(n + n_images),
                        "buckets": np.int64(2), "failures": np.int64(0), "posterior": "mean_logvar",
                        "space": "latent", "scale_factor": 0.5, "shift_factor": 0.1, "num_classes": np.int64(0),
                        "text_dim": np.int64(dim), "text_length": np.int64(length), "image_size": np.int64(8 * h),
                        "num_frames": np.int64(t), "frame_interval": np.int64(1),
                        "source": "tests/train/make_video_dataset.py", "created_by": "make_video_dataset.py"})
        # Buckets sorted by shape: images [C, H, W] (3 dims) before clips [C, T, H, W].
        images = f.create_group("bucket_0")
        img = np.stack([patterns[caption_of[r], :, 0] for r in image_rows])
        put(images, "mean", (img / 0.5 + 0.1).astype(np.float16))
        put(images, "logvar", np.full(img.shape, -7.0, dtype=np.float16))
        put(images, "row", image_rows.astype(np.int64))
        clips = f.create_group("bucket_1")
        x = patterns[caption_of[video_rows]] + 0.05 * rng.standard_normal((n, c, t, h, w)).astype(np.float32)
        put(clips, "mean", (x / 0.5 + 0.1).astype(np.float16))  # unscaled: the reader applies (z - 0.1) * 0.5
        put(clips, "logvar", np.full(x.shape, -7.0, dtype=np.float16))
        put(clips, "row", video_rows.astype(np.int64))
        s = f.create_group("samples")
        bucket = np.where(np.arange(n + n_images) < n, 1, 0).astype(np.int64)
        put(s, "bucket", bucket)
        put(s, "bucket_row", np.where(bucket == 1, np.arange(n + n_images), np.arange(n + n_images) - n))
        put(s, "source", np.arange(n + n_images, dtype=np.int64))
        put_strings(s, "path", [f"clip{i:03d}.mp4" for i in range(n + n_images)])
        put_strings(s, "caption", [f"caption {caption_of[i]}" for i in range(n + n_images)])
        offsets = np.zeros(n + n_images + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([lengths[caption_of[i]] for i in range(n + n_images)])
        put(s, "text_offset", offsets)
        tg = f.create_group("text")
        put(tg, "tokens", np.concatenate([captions_tokens[caption_of[i]] for i in range(n + n_images)])
            .astype(np.float16))
        fg = f.create_group("failures")
        put(fg, "source", np.zeros(0, dtype=np.int64))
        put_strings(fg, "path", [])
        put_strings(fg, "reason", [])


if __name__ == "__main__":
    main()
