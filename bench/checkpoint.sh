#!/usr/bin/env bash
# Checkpoint stall on one GPU: DiT-XL/2 (bf16, zero2, batch 64) checkpointing every EVERY steps, with
# train.async_checkpoint on and off, and the plain-PyTorch peer's torch.save of the same state (model, EMA, AdamW)
# in the same run. opendit prints "training paused X s" for every checkpoint (the snapshot to host memory, and the
# wait for the previous write) and, in the background mode, how long the write took; the peer's save is all pause.
# Each checkpoint of XL/2 is about 10.8 GB: the run keeps 1 (train.keep_checkpoints), so at most 2 are on disk.
# usage: bench/checkpoint.sh [STEPS [EVERY]]          (default 40 10)    DIR=...: where to write (default a tmp dir)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-40}
EVERY=${2:-10}
PY=$(cat build/.python 2>/dev/null || echo python3)
tmp=${DIR:-$(mktemp -d)}
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
build/tests/train/make_toy_dataset "$tmp/latents.h5" 1024 1000 4 32
for async in true false; do
  build/bin/opendit train --set model.preset=DiT-XL/2 --set data.path="$tmp/latents.h5" --set data.global_batch=64 \
    --set train.steps="$STEPS" --set train.log_every="$EVERY" --set train.checkpoint_every="$EVERY" \
    --set train.keep_checkpoints=1 --set train.async_checkpoint=$async --set run.out_dir="$tmp/out" \
    --set run.name=ckpt --overwrite --set parallel.strategy=zero2 --set train.precision=bf16 > "$tmp/log" 2>&1 ||
    { tail -20 "$tmp/log"; exit 1; }
  paused=$(grep -o "training paused [0-9.]* s" "$tmp/log" | awk '{print $3}' | paste -sd, -)
  written=$(grep -o "written in [0-9.]* s" "$tmp/log" | awk '{print $3}' | paste -sd, -)
  echo "BENCH checkpoint DiT-XL/2 bf16 zero2 batch 64 async=$async: paused_s=$paused written_s=${written:--}" \
    "$(grep "^step $STEPS/" "$tmp/log" | grep -o "[0-9.]* img/s")"
  grep -E "^step |^checkpoint" "$tmp/log" | head -20 >&2
  rm -rf "$tmp/out"
done
"$PY" bench/peer_pytorch_dit.py --batch 64 --steps 5 --warmup 2 --save-dir "$tmp/peer" | grep "^PEER checkpoint"
