#!/usr/bin/env python3
"""Official DiT .pt weights -> opendit weights (safetensors with the official key names).

Reads a plain state_dict (torch.save(model.state_dict())) or a train.py checkpoint {"model", "ema", "opt", "args"}
with torch.load(weights_only=True): nothing in the file is executed. From a checkpoint the EMA weights are taken
(as the official sample.py does) unless --key model is given.

    python tools/convert_dit_pt.py DiT-XL-2-256x256.pt dit_xl2_256.safetensors
    build/bin/opendit convert dit_xl2_256.safetensors checked.safetensors   # optional: validate and stamp
"""
import argparse
import sys

import torch
from safetensors.torch import save_file


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="official .pt file")
    ap.add_argument("output", help="output .safetensors")
    ap.add_argument("--key", choices=["ema", "model"], default=None,
                    help="which weights of a train.py checkpoint (default: ema)")
    args = ap.parse_args()
    try:
        obj = torch.load(args.input, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with code in it, a truncated file, not a torch file
        print(f"convert_dit_pt: {args.input}: cannot read as torch weights: {e}", file=sys.stderr)
        return 1
    if not isinstance(obj, dict):
        print(f"convert_dit_pt: {args.input}: expected a dict, found {type(obj).__name__}", file=sys.stderr)
        return 1
    if "x_embedder.proj.weight" not in obj:
        key = args.key or ("ema" if "ema" in obj else "model")
        if key not in obj or not isinstance(obj[key], dict):
            print(f"convert_dit_pt: {args.input}: neither a DiT state_dict nor a checkpoint with '{key}'",
                  file=sys.stderr)
            return 1
        obj = obj[key]
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in obj.items() if torch.is_tensor(v)}
    if "x_embedder.proj.weight" not in tensors:
        print(f"convert_dit_pt: {args.input}: not DiT weights (no x_embedder.proj.weight)", file=sys.stderr)
        return 1
    save_file(tensors, args.output, metadata={"format": "opendit.dit", "version": "1"})
    print(f"{args.input} -> {args.output}: {len(tensors)} tensors, "
          f"{sum(t.numel() for t in tensors.values()) / 1e6:.1f} M parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
