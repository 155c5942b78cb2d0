"""Checks a file that opendit's save_safetensors wrote (tests/io/test_safetensors.cpp, CppWritesForPython),
reading it with the `safetensors` package: usage: check_safetensors_written.py FILE REFDIR.

The C++ test loads REFDIR/reference.safetensors and saves it again, plus "extra.transposed" (a non-contiguous
tensor) and the metadata entry "writer": "opendit". Here every tensor must equal the reference bit for bit, and
the header must be laid out as the format and our writer promise: sorted names, contiguous offsets, 8-byte padding.
"""
import json
import struct
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file


def raw(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} FILE REFDIR")
    path, refdir = sys.argv[1], sys.argv[2]
    got = load_file(path)
    want = load_file(f"{refdir}/reference.safetensors")
    want["extra.transposed"] = torch.arange(12, dtype=torch.int64).reshape(3, 4).t()
    errors = []
    if sorted(got) != sorted(want):
        errors.append(f"names differ: {sorted(got)} vs {sorted(want)}")
    for name in sorted(set(got) & set(want)):
        g, w = got[name], want[name]
        if g.dtype != w.dtype or g.shape != w.shape or raw(g) != raw(w):
            errors.append(f"{name}: got {g.dtype} {list(g.shape)}, want {w.dtype} {list(w.shape)} (or bytes differ)")

    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
    with safe_open(f"{refdir}/reference.safetensors", framework="pt") as f:
        want_metadata = dict(f.metadata(), writer="opendit")
    if metadata != want_metadata:
        errors.append(f"metadata {metadata} != {want_metadata}")

    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    text = blob[8:8 + n].decode("utf-8")
    if n % 8 or not text.rstrip(" ").endswith("}"):
        errors.append(f"header length {n} is not a multiple of 8 or not space-padded")
    header = json.loads(text)
    names = [k for k in header if k != "__metadata__"]
    if names != sorted(names):
        errors.append(f"header names not sorted: {names}")
    end = 0
    for name in names:
        begin, stop = header[name]["data_offsets"]
        if begin != end:
            errors.append(f"{name}: data starts at {begin}, expected {end} (data in name order, no gaps)")
        end = stop
    if 8 + n + end != len(blob):
        errors.append(f"file is {len(blob)} bytes, header describes {8 + n + end}")

    if errors:
        sys.exit("check_safetensors_written: " + "\n  ".join(errors))
    print(f"check_safetensors_written: {len(got)} tensors and metadata match the reference")


if __name__ == "__main__":
    main()
