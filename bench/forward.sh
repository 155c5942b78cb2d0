#!/usr/bin/env bash
# DiT forward: opendit vs diffusers (the peer) in one run, same preset, batch, dtype, device and thread count.
# usage: bench/forward.sh [PRESET] [BATCH] [DTYPE] [DEVICE]      e.g. bench/forward.sh DiT-S/2 8 fp32 cpu
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=${1:-DiT-S/2} BATCH=${2:-8} DTYPE=${3:-fp32} DEVICE=${4:-cpu}
PY=$(cat build/.python 2>/dev/null || echo python3)
THREADS=$(nproc)
ours=$(OMP_NUM_THREADS=$THREADS build/bin/opendit bench forward --set model.preset="$PRESET" --batch "$BATCH" \
  --dtype "$DTYPE" --device "$DEVICE" | grep '^BENCH')
peer=$("$PY" bench/peer_diffusers_forward.py --preset "$PRESET" --batch "$BATCH" --dtype "$DTYPE" \
  --device "$DEVICE" --threads "$THREADS" | grep '^PEER')
echo "$ours"
echo "$peer"
get() { echo "$1" | sed -n "s/.*$2=\([0-9.]*\).*/\1/p"; }
awk -v a="$(get "$ours" median_ms)" -v b="$(get "$peer" median_ms)" -v p="$PRESET" -v n="$BATCH" -v d="$DTYPE" \
  -v dev="$DEVICE" 'BEGIN { printf "RESULT forward %s batch %s %s %s: opendit %.2f ms, diffusers %.2f ms, speed ratio %.2fx\n", p, n, d, dev, a, b, b / a }'
