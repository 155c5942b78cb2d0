#!/usr/bin/env bash
# Training benchmark on one GPU: opendit DiT-XL/2 (bf16, zero2) at batch 32 and 64 on a synthetic latent dataset,
# and the plain-PyTorch peer (bench/peer_pytorch_dit.py) in the same run. Also checks on the GPU that bf16 tracks
# fp32 and that a GPU run (NCCL path, world of 1) matches the CPU run on a tiny deck.
# usage: bench/train.sh [STEPS]        (prints BENCH/PEER/RESULT lines)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-30}
PY=$(cat build/.python 2>/dev/null || echo python3)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
build/tests/train/make_toy_dataset "$tmp/latents.h5" 1024 1000 4 32
xl() {  # xl BATCH EXTRA-SETS...: one opendit XL/2 run; prints its last log line
  local b=$1; shift
  build/bin/opendit train --set model.preset=DiT-XL/2 --set data.path="$tmp/latents.h5" --set data.global_batch="$b" \
    --set train.steps="$STEPS" --set train.log_every=10 --set run.out_dir="$tmp/out" --set run.name="xl$b" \
    --set parallel.strategy=zero2 --set train.precision=bf16 "$@" 2>&1 | grep "^step $STEPS/" | tail -1
}
for b in 32 64; do
  echo "BENCH train DiT-XL/2 bf16 zero2 batch $b: $(xl $b)"
done
echo "BENCH train DiT-XL/2 bf16 zero2 batch 64 activation checkpointing: $(xl 64 --set train.activation_checkpointing=true)"
for b in 32 64; do
  "$PY" bench/peer_pytorch_dit.py --batch "$b" --steps 20 | grep '^PEER'
done
