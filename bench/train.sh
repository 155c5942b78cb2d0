#!/usr/bin/env bash
# Training benchmark on one GPU: opendit DiT-XL/2 (bf16, zero2) at batch 32 and 64 on a synthetic latent dataset,
# at batch 64 also without queuing steps ahead (train.run_ahead), without the step's CUDA graph, with K blocks
# recomputed (train.checkpoint_blocks) and with every block recomputed, and the plain-PyTorch peer
# (bench/peer_pytorch_dit.py) in the same run.
# usage: bench/train.sh [STEPS]                  prints BENCH/PEER lines (CKPT_BLOCKS="1 2": the K to try;
#                                               FULL_CKPT=1: also every block recomputed)
#        bench/train.sh 14 PROFILE_DIR         only a per-op profile of one batch-64 step of each side, written there
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-30}
PROFILE=${2:-}
PY=$(cat build/.python 2>/dev/null || echo python3)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
build/tests/train/make_toy_dataset "$tmp/latents.h5" 1024 1000 4 32
xl() {  # xl BATCH EXTRA-SETS...: one opendit XL/2 run; prints its last log line (the last 10 steps' img/s)
  local b=$1; shift
  build/bin/opendit train --set model.preset=DiT-XL/2 --set data.path="$tmp/latents.h5" --set data.global_batch="$b" \
    --set train.steps="$STEPS" --set train.log_every=10 --set run.out_dir="$tmp/out" --set run.name="xl$b" \
    --no-save --overwrite --set parallel.strategy=zero2 --set train.precision=bf16 "$@" \
    > "$tmp/log" 2>&1 || { tail -20 "$tmp/log"; return 1; }
  grep "^step $STEPS/" "$tmp/log" | tail -1
}
if [ -n "$PROFILE" ]; then
  mkdir -p "$PROFILE"
  xl 64 --set train.profile_step=12 > /dev/null || true
  cp "$tmp/log" "$PROFILE/opendit_train.log"
  cp "$tmp/out/xl64/profile.txt" "$PROFILE/" 2>/dev/null || echo "no opendit profile"
  "$PY" bench/peer_pytorch_dit.py --batch 64 --steps 5 --profile > "$PROFILE/peer_profile.txt" 2>&1 || true
  exit 0
fi
for b in 32 64; do
  echo "BENCH train DiT-XL/2 bf16 zero2 batch $b: $(xl $b)"
done
# The host reading each step's stats before it queues the next: what queuing ahead is worth.
echo "BENCH train DiT-XL/2 bf16 zero2 batch 64 without run-ahead (train.run_ahead = false): $(xl 64 --set train.run_ahead=false)"
# The same step without the CUDA graph (each kernel launched from the host): what the graph is worth.
echo "BENCH train DiT-XL/2 bf16 zero2 batch 64 eager (train.cuda_graph = false): $(xl 64 --set train.cuda_graph=false)"
for k in ${CKPT_BLOCKS:-1 2}; do
  echo "BENCH train DiT-XL/2 bf16 zero2 batch 64 checkpoint_blocks $k: $(xl 64 --set train.checkpoint_blocks=$k)"
done
[ -n "${FULL_CKPT:-}" ] &&
  echo "BENCH train DiT-XL/2 bf16 zero2 batch 64 activation checkpointing: $(xl 64 --set train.activation_checkpointing=true)"
for b in 32 64; do
  "$PY" bench/peer_pytorch_dit.py --batch "$b" --steps 20 | grep '^PEER'
done
