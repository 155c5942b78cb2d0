"""Reference safetensors file written by the `safetensors` package, for tests/io/test_safetensors.cpp.

OUTDIR/reference.safetensors   every dtype opendit reads: odd shapes, 0-d scalars, empty tensors, special floats,
                               a non-ASCII name, and __metadata__
OUTDIR/expected/NN.bin         each tensor's raw little-endian C-order bytes, written with torch alone
OUTDIR/expected/index.json     {"tensors": {name: {"dtype", "shape", "file"}}, "metadata": {...}}
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import refcache  # noqa: E402

DTYPE_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
               torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
               torch.bool: "BOOL"}

METADATA = {"format": "pt", "note": "opendit reference", "unicode": "\u00fcmlaut \u2713"}


def with_specials(t: torch.Tensor) -> torch.Tensor:
    """Floats with NaN, +-inf and -0.0 in them, so the comparison has to be bit-exact."""
    flat = t.reshape(-1)
    flat[:4] = torch.tensor([float("nan"), float("inf"), float("-inf"), -0.0], dtype=t.dtype)
    return t


def reference_tensors() -> dict:
    g = torch.Generator().manual_seed(1234)
    return {
        "f64.odd": with_specials(torch.randn(3, 5, 7, generator=g, dtype=torch.float64)),
        "f32.matrix": with_specials(torch.randn(7, 3, generator=g)),
        "f16.vec": with_specials(torch.randn(13, generator=g).half()),
        "bf16.cube": with_specials(torch.randn(2, 3, 5, generator=g).bfloat16()),
        "i64.range": torch.arange(-5, 6, dtype=torch.int64) * 10**15,
        "i32.grid": torch.randint(-2**31, 2**31 - 1, (4, 9), generator=g, dtype=torch.int32),
        "i16.col": torch.randint(-2**15, 2**15 - 1, (11, 1), generator=g, dtype=torch.int16),
        "i8.row": torch.randint(-128, 127, (1, 17), generator=g, dtype=torch.int8),
        "u8.img": torch.randint(0, 256, (3, 4, 5), generator=g, dtype=torch.uint8),
        "bool.mask": torch.rand(5, 6, generator=g) > 0.5,
        "scalar.f64": torch.tensor(3.25, dtype=torch.float64),
        "scalar.i32": torch.tensor(-7, dtype=torch.int32),
        "empty.f32": torch.empty(0, 4),
        "empty.bool": torch.empty(3, 0, dtype=torch.bool),
        "unicod\u00e9.\u540d\u524d": torch.arange(6, dtype=torch.int16).reshape(2, 3),
    }


def raw_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def main() -> None:
    outdir = refcache.outdir_from_argv()
    if refcache.up_to_date(outdir, __file__):
        return
    tensors = reference_tensors()
    save_file(tensors, os.path.join(outdir, "reference.safetensors"), metadata=METADATA)
    os.makedirs(os.path.join(outdir, "expected"), exist_ok=True)
    index = {"tensors": {}, "metadata": METADATA}
    for i, (name, t) in enumerate(sorted(tensors.items())):
        file = f"{i:02d}.bin"
        with open(os.path.join(outdir, "expected", file), "wb") as f:
            f.write(raw_bytes(t))
        index["tensors"][name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "file": file}
    with open(os.path.join(outdir, "expected", "index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1, ensure_ascii=False)
    refcache.mark_done(outdir, __file__)


if __name__ == "__main__":
    main()
