#!/usr/bin/env python3
"""Open-Sora v1.0 STDiT weights (.pth / .pt / training checkpoint folder) -> opendit weights (safetensors with the
official STDiT key names).

Accepted inputs, all read with torch.load(weights_only=True), so nothing in a file is executed:
  * a plain STDiT state_dict: the released OpenSora-v1-16x256x256.pth, OpenSora-v1-HQ-16x256x256.pth,
    OpenSora-v1-HQ-16x512x512.pth, or the ema.pt of a training checkpoint;
  * a dict wrapping one under "ema", "model", "state_dict" or "module" (default: the first of those present,
    EMA first, as Open-Sora's own loader does; --key picks another);
  * a training checkpoint folder (epochN-global_stepM/ as scripts/train.py saves it): ema.pt by default,
    --key model reads the ColossalAI-sharded model/ folder (pytorch_model.bin.index.json + shards, or the
    model.safetensors.index.json variant); a model/ folder itself may also be given.
Keys prefixed "module." (DDP) or "_orig_mod." (torch.compile) are stripped. Every tensor is written as contiguous
float32 (bf16/fp16 sources widen exactly). pos_embed and pos_embed_temporal are dropped: they are fixed sin-cos
buffers that opendit recomputes for the configured input size. y_embedder.y_embedding (the learned null caption
used for classifier-free guidance) is kept.

    python tools/convert_opensora_pt.py OpenSora-v1-HQ-16x512x512.pth stdit_16x512.safetensors
    python tools/convert_opensora_pt.py outputs/000-F16S3-STDiT-XL-2/epoch0-global_step2000 ft.safetensors
    python tools/convert_opensora_pt.py ckpt.pth out.safetensors --key model

Then `build/bin/opendit convert OUTPUT.safetensors checked.safetensors --config DECK` validates the names and
shapes against a model built from the deck. STDiT needs the deck's input size (frames x latent H x W) and its
number of heads: the weights do not tell the heads (STDiT-XL/2 uses 16).

Exit status 0 on success; 1 with a one-line message on stderr for anything refused.
"""
import argparse
import json
import math
import os
import sys

import torch
from safetensors.torch import load_file, save_file

PROG = "convert_opensora_pt"
WRAPPERS = ("ema", "model", "state_dict", "module")  # the order the default choice follows
PREFIXES = ("module.", "_orig_mod.")
# Fixed sin-cos buffers (register_buffer in STDiT.__init__), recomputed by opendit for the configured size.
# Open-Sora v1.0 does the same: opensora/utils/ckpt_utils.py find_model() deletes "pos_embed_temporal" and
# "pos_embed" from a local checkpoint before load_state_dict(strict=False), so the model keeps its own.
DROPPED = ("pos_embed", "pos_embed_temporal")
INDEX_NAMES = ("pytorch_model.bin.index.json", "model.safetensors.index.json")  # ColossalAI sharded model saves
SINGLE_NAMES = ("pytorch_model.bin", "model.safetensors")  # ColossalAI unsharded model saves


class Refused(Exception):
    """A one-line reason why the input cannot be converted."""


def torch_load(path):
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise Refused(f"{path}: cannot open: {e.strerror}")
    if not head.startswith((b"PK", b"\x80")):  # torch.save writes a zip archive (or, before 1.6, a pickle)
        raise Refused(f"{path}: not a torch file (neither a zip archive nor a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with code in it, a truncated file, not a torch file at all
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        # The weights_only refusal is a long multi-line text; its informative line is the unpickler's own.
        why = next((ln for ln in lines if ln.startswith("WeightsUnpickler error")), lines[0] if lines else repr(e))
        why = why.split(" Please use")[0]  # not the advice to allowlist what the file wants to run
        raise Refused(f"{path}: cannot read as torch weights (weights_only=True): {why}")


def load_tensor_file(path):
    if path.endswith(".safetensors"):
        try:
            return load_file(path, device="cpu")
        except Exception as e:
            raise Refused(f"{path}: cannot read as safetensors: {str(e).splitlines()[0] if str(e) else repr(e)}")
    return torch_load(path)


def load_model_folder(folder):
    """A ColossalAI model save: an index JSON naming the shard of every tensor, or one unsharded file."""
    for name in INDEX_NAMES:
        index = os.path.join(folder, name)
        if os.path.isfile(index):
            break
    else:
        for name in SINGLE_NAMES:
            if os.path.isfile(os.path.join(folder, name)):
                return load_tensor_file(os.path.join(folder, name))
        raise Refused(f"{folder}: no {' or '.join(INDEX_NAMES + SINGLE_NAMES)} in this folder")
    try:
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except Exception as e:
        raise Refused(f"{index}: not a shard index with a weight_map: {e}")
    merged = {}
    for shard in sorted(set(weight_map.values())):
        part = load_tensor_file(os.path.join(folder, shard))
        if not isinstance(part, dict):
            raise Refused(f"{os.path.join(folder, shard)}: expected a dict of tensors, found {type(part).__name__}")
        merged.update(part)
    missing = [k for k in weight_map if k not in merged]
    if missing:
        raise Refused(f"{index}: {len(missing)} indexed tensors absent from their shards (first: {missing[0]})")
    return merged


def load_input(path, key):
    """Returns (object, what was read, whether --key was consumed)."""
    if not os.path.isdir(path):
        if not os.path.exists(path):
            raise Refused(f"{path}: no such file or folder")
        return load_tensor_file(path), path, False
    if any(os.path.isfile(os.path.join(path, n)) for n in INDEX_NAMES + SINGLE_NAMES):  # a model/ folder itself
        if key not in (None, "model"):
            raise Refused(f"{path}: a sharded model folder holds only the model weights, not '{key}'")
        return load_model_folder(path), path, True
    ema, model = os.path.join(path, "ema.pt"), os.path.join(path, "model")
    if not os.path.isfile(ema) and not os.path.isdir(model):
        raise Refused(f"{path}: a folder but not an Open-Sora checkpoint (no ema.pt, no model/ folder)")
    key = key or ("ema" if os.path.isfile(ema) else "model")
    if key == "ema":
        if not os.path.isfile(ema):
            raise Refused(f"{path}: checkpoint folder has no ema.pt (use --key model for model/)")
        return torch_load(ema), ema, True
    if key == "model":
        if not os.path.isdir(model):
            raise Refused(f"{path}: checkpoint folder has no model/ folder (use --key ema for ema.pt)")
        return load_model_folder(model), model, True
    raise Refused(f"{path}: --key {key} does not apply to a checkpoint folder (ema or model)")


def unwrap(obj, key, src):
    """Descends through wrapper dicts ({"ema": sd, "model": sd, ...}) to the dict that holds the tensors."""
    if not isinstance(obj, dict):
        raise Refused(f"{src}: expected a dict, found {type(obj).__name__}")
    if not obj:
        raise Refused(f"{src}: empty dict, no weights")
    path = []
    for level in range(4):
        wrapped = [w for w in WRAPPERS if isinstance(obj.get(w), dict)]
        if not wrapped:
            if not any(torch.is_tensor(v) for v in obj.values()):
                where = f" under '{'/'.join(path)}'" if path else ""
                raise Refused(f"{src}: no tensors and no {'/'.join(WRAPPERS)} entry{where} (keys: "
                              f"{', '.join(map(str, list(obj)[:8]))})")
            if level == 0 and key is not None:
                raise Refused(f"{src}: a plain state_dict, nothing for --key {key} to choose from")
            return obj, path
        pick = wrapped[0]
        if level == 0 and key is not None:
            if key not in wrapped:
                raise Refused(f"{src}: no '{key}' state_dict in this checkpoint (it holds: "
                              f"{', '.join(map(str, list(obj)[:8]))})")
            pick = key
        obj = obj[pick]
        path.append(pick)
        if not obj:
            raise Refused(f"{src}: '{'/'.join(path)}' is empty")
    raise Refused(f"{src}: no tensors within {len(path)} levels of wrapping ({'/'.join(path)})")


def strip_prefixes(sd, src):
    out, origin = {}, {}
    for k, v in sd.items():
        name = str(k)
        while name.startswith(PREFIXES):
            name = name[len(next(p for p in PREFIXES if name.startswith(p))):]
        if name in out:
            raise Refused(f"{src}: '{origin[name]}' and '{k}' both become '{name}' once prefixes are stripped")
        out[name], origin[name] = v, k
    return out


def classify(sd, src):
    """Refuses what is not STDiT, naming what it looks like and which tool reads it."""
    xw = sd.get("x_embedder.proj.weight")
    temporal = "blocks.0.attn_temp.qkv.weight" in sd
    if torch.is_tensor(xw) and xw.dim() == 5 and temporal:
        return
    dims = f"x_embedder.proj.weight is {xw.dim()}-D" if torch.is_tensor(xw) else "no x_embedder.proj.weight"
    if "temp_embed" in sd:
        raise Refused(f"{src}: Latte weights ({dims}, temp_embed): not supported")
    if "y_embedder.embedding_table.weight" in sd and not temporal:
        raise Refused(f"{src}: DiT weights (class-conditional image model, {dims}, no attn_temp): "
                      f"use tools/convert_dit_pt.py")
    if "y_embedder.y_proj.fc1.weight" in sd and not temporal:
        raise Refused(f"{src}: PixArt-alpha weights (caption-conditioned image model, {dims}, no attn_temp): "
                      f"PixArt is not supported yet")
    if any(k.startswith("transformer_blocks.") for k in sd):
        raise Refused(f"{src}: diffusers-style weights (transformer_blocks.*): use `opendit convert` directly")
    raise Refused(f"{src}: not STDiT weights ({dims}; "
                  f"{'has' if temporal else 'no'} blocks.0.attn_temp.qkv.weight)")


def to_float32(sd, src):
    out = {}
    for k, v in sd.items():
        if not v.is_floating_point():
            raise Refused(f"{src}: '{k}' has dtype {v.dtype}; STDiT weights are all floating point")
        t = v.detach().to(torch.float32, copy=True).contiguous()  # copy: no storage shared between entries
        if not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise Refused(f"{src}: tensor '{k}' has {bad} NaN/Inf value{'s' if bad > 1 else ''}")
        out[k] = t
    return out


def summarize(sd, src):
    def need(name):
        if name not in sd:
            raise Refused(f"{src}: STDiT weights without {name}")
        return sd[name]

    xw = need("x_embedder.proj.weight")
    hidden, cin, patch = xw.shape[0], xw.shape[1], tuple(xw.shape[2:])
    idx = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    depth = max(idx) + 1
    if len(idx) != depth:
        raise Refused(f"{src}: blocks are not numbered 0..{depth - 1} (missing blocks.{min(set(range(depth)) - idx)})")
    for i in range(depth):
        need(f"blocks.{i}.attn_temp.qkv.weight")
    rows = need("final_layer.linear.weight").shape[0]
    if rows % math.prod(patch):
        raise Refused(f"{src}: final_layer.linear.weight has {rows} rows, not a multiple of the patch volume "
                      f"{math.prod(patch)}")
    fc1 = need("y_embedder.y_proj.fc1.weight")
    emb = need("y_embedder.y_embedding")
    mlp = need("blocks.0.mlp.fc1.weight").shape[0] / hidden
    return (f"depth {depth}, hidden {hidden}, patch {'x'.join(map(str, patch))}, in {cin}, "
            f"out {rows // math.prod(patch)}, mlp ratio {mlp:g}, caption {fc1.shape[1]} channels x "
            f"{emb.shape[0]} tokens")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="Open-Sora .pth/.pt file, or a training checkpoint folder")
    ap.add_argument("output", help="output .safetensors")
    ap.add_argument("--key", default=None, metavar="|".join(WRAPPERS),
                    help="which weights of a wrapped checkpoint or checkpoint folder (default: ema when present)")
    args = ap.parse_args()
    try:
        if args.key is not None and args.key not in WRAPPERS:
            raise Refused(f"unknown --key '{args.key}' (one of: {', '.join(WRAPPERS)})")
        obj, src, key_used = load_input(args.input, args.key)
        sd, path = unwrap(obj, None if key_used else args.key, src)
        sd = strip_prefixes(sd, src)
        skipped = [k for k, v in sd.items() if not torch.is_tensor(v)]  # stray non-tensor entries, if any
        sd = {k: v for k, v in sd.items() if torch.is_tensor(v)}
        dtypes = sorted({str(v.dtype).replace("torch.", "") for v in sd.values() if torch.is_tensor(v)})
        classify(sd, src)
        dropped = [k for k in DROPPED if k in sd]
        sd = to_float32({k: v for k, v in sd.items() if k not in DROPPED}, src)
        summary = summarize(sd, src)
    except Refused as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    source = os.path.basename(os.path.normpath(args.input))
    tmp = args.output + ".part"
    try:
        save_file(sd, tmp, metadata={"format": "opendit.stdit", "version": "1", "source": source})
        os.replace(tmp, args.output)
    except Exception as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        print(f"{PROG}: {args.output}: cannot write: {e}", file=sys.stderr)
        return 1
    taken = f" ['{'/'.join(path)}']" if path else ""
    print(f"{src}{taken} -> {args.output}: STDiT {summary}; {len(sd)} tensors, "
          f"{sum(t.numel() for t in sd.values()) / 1e6:.1f} M parameters (from {'/'.join(dtypes)}, now float32)"
          + (f"; dropped {', '.join(dropped)}" if dropped else "")
          + (f"; skipped {len(skipped)} non-tensor entries ({', '.join(skipped[:4])})" if skipped else ""))
    print("heads are not in the weights: give them with the deck (opendit convert ... --config DECK)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
