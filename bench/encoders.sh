#!/usr/bin/env bash
# The encoders against their peers in one run, same device, dtype and sizes (random weights in the published shapes):
#   VAE encode 256² and 512² images (img/s) and decode of a 16-frame 512² video (frames/s): opendit vs diffusers
#   T5 v1.1 XXL at 120 tokens (prompts/s): opendit vs transformers; and the bf16 error against float32 of both.
# usage: bench/encoders.sh [DEVICE] [ITERS]      e.g. bench/encoders.sh cuda 10
# Prints the BENCH (opendit) and PEER lines and a RESULT line per case (speed ratio, peak memory of each).
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${1:-cuda} ITERS=${2:-10}
PY=$(cat build/.python 2>/dev/null || echo python3)
OPENDIT=build/bin/opendit
get() { echo "$1" | sed -n "s/.*[ ]$2=\([0-9.]*\).*/\1/p"; }
result() {  # NAME OURS_LINE PEER_LINE RATE_KEY
  echo "$2"
  echo "$3"
  awk -v n="$1" -v a="$(get "$2" "$4")" -v b="$(get "$3" "$4")" -v ma="$(get "$2" peak_gib)" \
    -v mb="$(get "$3" peak_gib)" -v k="$4" 'BEGIN { if (a == "" || b == "" || b == 0) { printf "RESULT %s: missing figure\n", n; exit }
      printf "RESULT %s: opendit %.1f %s, peer %.1f, speed ratio %.2fx; peak memory %.2f vs %.2f GiB\n", n, a, k, b, a / b, ma, mb }'
}
vae() {  # NAME, then the arguments both take
  local name=$1; shift
  local ours peer
  ours=$($OPENDIT bench vae --device "$DEVICE" --iters "$ITERS" "$@" 2>&1 | grep '^BENCH')
  peer=$("$PY" bench/peer_vae.py --device "$DEVICE" --iters "$ITERS" "$@" 2>/dev/null | grep '^PEER')
  local key=img_per_s
  case "$*" in *--frames*) key=frames_per_s ;; esac
  result "$name" "$ours" "$peer" $key
}
vae "vae encode 256 batch 32 bf16" --mode encode --size 256 --batch 32 --dtype bf16
vae "vae encode 512 batch 8 bf16" --mode encode --size 512 --batch 8 --dtype bf16
vae "vae decode 256 batch 32 bf16" --mode decode --size 256 --batch 32 --dtype bf16
vae "vae decode 16x512 video, micro-batch 2 (Open-Sora's) bf16" --mode decode --size 512 --frames 16 --micro-batch 2 --dtype bf16
vae "vae decode 16x512 video, micro-batch 16 bf16" --mode decode --size 512 --frames 16 --micro-batch 16 --dtype bf16
for b in 8 32; do
  ours=$($OPENDIT bench t5 --device "$DEVICE" --iters "$ITERS" --batch $b --tokens 120 --dtype bf16 2>&1 | grep '^BENCH')
  peer=$("$PY" bench/peer_t5.py --device "$DEVICE" --iters "$ITERS" --batch $b --tokens 120 --dtype bf16 2>/dev/null | grep '^PEER')
  result "t5-xxl 120 tokens batch $b bf16" "$ours" "$peer" prompts_per_s
done
echo "opendit: $($OPENDIT bench t5 --device "$DEVICE" --batch 8 --compare-fp32 --dtype bf16 2>&1 | grep '^T5ERR')"
echo "peer:    $("$PY" bench/peer_t5.py --device "$DEVICE" --batch 8 --compare-fp32 --dtype bf16 2>/dev/null | grep '^T5ERR')"
