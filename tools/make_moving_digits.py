#!/usr/bin/env python3
"""Makes the moving-digits clips of the text-to-video demo: one 8x8 handwritten digit sliding across a black
SIZE x SIZE canvas, 1 pixel per frame, in one of 4 directions, captioned "a 3 moving left".

Train clips take their digit from inputs/digits/train.h5, held-out clips from heldout.h5 (never seen in training).
Each clip is an MP4 (gray replicated to RGB) in H.264 coded losslessly in RGB (libx264rgb, qp 0): FFmpeg decodes it
to the very pixels written, so `opendit encode` sees the digits exactly; a few clips are read back here to prove it.
Writes, under OUT: train/*.mp4, heldout/*.mp4, train.csv and heldout.csv (header path,caption; paths relative to
the CSV's folder, as opendit's manifest reader resolves them), prompts.txt (every digit x every direction, one a
line) with prompts.json ({"prompt", "digit", "direction"} in the same order), and heldout_truth.json (the held-out
clips' digit and direction, for tools/moving_digits_score.py --check-heldout). Deterministic given --seed.

usage: make_moving_digits.py --out DIR [--clips 2000] [--heldout-clips 200] [--frames 8] [--size 16] [--seed 0]
                             [--fps 8] [--train inputs/digits/train.h5] [--heldout inputs/digits/heldout.h5]
"""
import argparse
import csv
import json
import os
import sys
from fractions import Fraction

import numpy as np

DIRECTIONS = ("left", "right", "up", "down")
STEP = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}  # (row, col) per frame; rows grow down
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def caption(digit, direction):
    return f"a {digit} moving {direction}"


def load(path):
    import h5py
    with h5py.File(path, "r") as f:
        return f["latents"][:, 0].astype(np.float32), f["labels"][:].astype(np.int64)


def to_u8(x):
    """[-1, 1] -> 0..255 as opendit reads video pixels back (p / 255 * 2 - 1)."""
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def render(img, direction, start, frames, size):
    """[frames, size, size] uint8: the digit's 8x8 box at `start` (row, col) on frame 0, one step a frame."""
    dr, dc = STEP[direction]
    out = np.full((frames, size, size), to_u8(np.float32(-1.0)), np.uint8)
    u8 = to_u8(img)
    for t in range(frames):
        r, c = start[0] + dr * t, start[1] + dc * t
        out[t, r:r + 8, c:c + 8] = u8
    return out


def draw_start(rng, direction, frames, size):
    """A frame-0 offset that keeps the whole 8x8 box inside the canvas over every frame."""
    free, travel = size - 8, frames - 1
    dr, dc = STEP[direction]
    along = rng.integers(0, free - travel + 1)
    along = along + travel if (dr + dc) < 0 else along  # moving towards 0: start at least `travel` away from it
    across = rng.integers(0, free + 1)
    return (int(along), int(across)) if dr else (int(across), int(along))


def write_mp4(path, clip, fps):
    import av
    with av.open(path, "w") as c:
        s = c.add_stream("libx264rgb", rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = clip.shape[2], clip.shape[1], "rgb24"
        s.codec_context.time_base = Fraction(1, fps)
        # qp 0 in RGB: lossless (no YUV rounding); one thread, ultrafast: 16x16 clips are all setup cost
        s.options = {"qp": "0", "preset": "ultrafast", "threads": "1"}
        for t, g in enumerate(clip):
            f = av.VideoFrame.from_ndarray(np.repeat(g[:, :, None], 3, axis=2), format="rgb24")
            f.pts = t
            c.mux(s.encode(f))
        c.mux(s.encode())


def read_mp4(path):
    """[T, H, W, 3] uint8 as FFmpeg decodes it (swscale to rgb24, as opendit does)."""
    import av
    with av.open(path) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def make_split(name, n, source, rng, a):
    x, y = load(source)
    # cycle through shuffled digits so that every source image is used before any repeats
    order = np.concatenate([rng.permutation(len(x)) for _ in range(-(-n // len(x)))])[:n]
    dirs = rng.integers(0, len(DIRECTIONS), size=n)
    os.makedirs(os.path.join(a.out, name), exist_ok=True)
    rows, truth, clips = [], [], []
    for i in range(n):
        d = DIRECTIONS[dirs[i]]
        start = draw_start(rng, d, a.frames, a.size)
        clip = render(x[order[i]], d, start, a.frames, a.size)
        rel = f"{name}/{i:06d}.mp4"
        write_mp4(os.path.join(a.out, rel), clip, a.fps)
        digit = int(y[order[i]])
        rows.append((rel, caption(digit, d)))
        truth.append({"path": rel, "digit": digit, "direction": d, "source_index": int(order[i]), "start": start})
        clips.append(clip)
    with open(os.path.join(a.out, f"{name}.csv"), "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(("path", "caption"))
        w.writerows(rows)
    return truth, clips


def dump_lines(path, records):
    """A JSON list, one record a line: small and diffable."""
    with open(path, "w") as f:
        f.write("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--clips", type=int, default=2000)
    ap.add_argument("--heldout-clips", type=int, default=200)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fps", type=int, default=8)
    ap.add_argument("--train", default=os.path.join(REPO, "inputs/digits/train.h5"))
    ap.add_argument("--heldout", default=os.path.join(REPO, "inputs/digits/heldout.h5"))
    a = ap.parse_args()
    if a.size - 8 < a.frames - 1:
        sys.exit(f"make_moving_digits: a {a.size}x{a.size} canvas leaves {a.size - 8} pixels of travel for the 8x8 "
                 f"digit; {a.frames} frames need {a.frames - 1}")
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    train, train_clips = make_split("train", a.clips, a.train, rng, a)
    held, held_clips = make_split("heldout", a.heldout_clips, a.heldout, rng, a)
    dump_lines(os.path.join(a.out, "heldout_truth.json"), held)
    prompts = [{"prompt": caption(k, d), "digit": k, "direction": d} for k in range(10) for d in DIRECTIONS]
    with open(os.path.join(a.out, "prompts.txt"), "w") as f:
        f.writelines(p["prompt"] + "\n" for p in prompts)
    dump_lines(os.path.join(a.out, "prompts.json"), prompts)

    # Round trip: decode some clips of each split and compare with the pixels written (8-bit levels, 0 = lossless).
    err = 0
    for truth, clips in ((train, train_clips), (held, held_clips)):
        for i in range(min(8, len(clips))):
            back = read_mp4(os.path.join(a.out, truth[i]["path"])).astype(int)
            if back.shape != clips[i].shape + (3,):
                sys.exit(f"make_moving_digits: {truth[i]['path']} decodes to {back.shape}, wrote {clips[i].shape}")
            err = max(err, int(np.abs(back - clips[i][..., None].astype(int)).max()))
    print(f"{len(train)} train + {len(held)} held-out clips of {a.frames} frames {a.size}x{a.size} at {a.fps} fps "
          f"in {a.out} (H.264 libx264rgb qp 0); {len(prompts)} prompts")
    print(f"round trip (PyAV decode of 16 clips): max abs error {err} of 255 levels = {err / 127.5:.4f} in [-1, 1]")
    return 0 if err <= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
