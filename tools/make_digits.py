#!/usr/bin/env python3
"""Converts scikit-learn's 8x8 handwritten digits (UCI optdigits test set, 1,797 images, BSD-3) ONCE into two
opendit.latents HDF5 files (docs/FORMATS.md): inputs/digits/train.h5 and inputs/digits/heldout.h5.

Pixels 0..16 are mapped to [-1, 1] (x / 8 - 1) at their native 8x8 size, 1 channel, labels 0..9, space "pixel",
scale_factor 1. The split is a seeded stratified permutation (numpy default_rng(SEED)): 30 images of each class held
out (300), the rest (1,497) for training. The output is deterministic; rerun only to regenerate the committed files.

usage: tools/make_digits.py [OUTDIR]   (default inputs/digits; needs scikit-learn, numpy, h5py)
"""
import datetime
import os
import sys

import numpy as np

SEED = 20240601
HELDOUT_PER_CLASS = 30


def load_split():
    """(x_train, y_train, x_heldout, y_heldout, sklearn_version): x in [-1, 1], [n, 1, 8, 8] float32; y int64.
    Also used by tools/digits_quality.py, so that its classifier sees exactly the committed split."""
    import sklearn
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.images.astype(np.float32) / 8.0 - 1.0)[:, None, :, :]  # [1797, 1, 8, 8] in [-1, 1]
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(SEED)
    held = np.concatenate([rng.permutation(np.flatnonzero(y == k))[:HELDOUT_PER_CLASS] for k in range(10)])
    mask = np.zeros(len(y), bool)
    mask[held] = True
    tr = rng.permutation(np.flatnonzero(~mask))  # shuffled order (the loader shuffles too; this is only tidy)
    ho = np.sort(held)
    return x[tr], y[tr], x[ho], y[ho], sklearn.__version__


def write(path, x, y, source):
    import h5py  # only this one-off conversion needs h5py
    tmp = path + ".partial"
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = "opendit.latents"
        f.attrs["version"] = np.int64(1)
        f.attrs["space"] = "pixel"
        f.attrs["scale_factor"] = np.float64(1.0)
        f.attrs["num_classes"] = np.int64(10)
        f.attrs["source"] = source
        f.attrs["created_by"] = f"tools/make_digits.py (h5py {h5py.__version__})"
        n = len(y)
        f.create_dataset("latents", data=x.astype("<f4"), maxshape=(None, 1, 8, 8), chunks=(n, 1, 8, 8))
        f.create_dataset("labels", data=y.astype("<i8"), maxshape=(None,), chunks=(n,))
        f.attrs["count"] = np.int64(n)
        f.attrs["created_at"] = "1970-01-01T00:00:00Z"  # fixed, so that regeneration gives identical files
    os.replace(tmp, path)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "inputs/digits"
    os.makedirs(out, exist_ok=True)
    xt, yt, xh, yh, skv = load_split()
    base = f"scikit-learn {skv} load_digits (UCI optdigits, BSD-3), 8x8 pixels x/8-1, seed {SEED}"
    write(os.path.join(out, "train.h5"), xt, yt, base + f", train split ({len(yt)})")
    write(os.path.join(out, "heldout.h5"), xh, yh, base + f", held-out split ({len(yh)}, 30 per class)")
    print(f"wrote {out}/train.h5 ({len(yt)}) and {out}/heldout.h5 ({len(yh)})")


if __name__ == "__main__":
    main()
