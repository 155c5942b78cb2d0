#!/usr/bin/env bash
# Sampling speed: one whole sampling loop with classifier-free guidance (random weights), bf16 with and without the
# CUDA graph of the step's network call, and fp32 with it. The target: DiT-XL/2, 8 images, cfg 4 (network batch 16),
# bf16 on one H100: <= 10 ms per step (250 DDPM steps <= 2.5 s).
# usage: bench/sample.sh [PRESET] [IMAGES] [STEPS] [DEVICE]      e.g. bench/sample.sh DiT-S/2 2 10 cpu
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=${1:-DiT-XL/2} IMAGES=${2:-8} STEPS=${3:-250} DEVICE=${4:-auto}
run() {  # run DTYPE GRAPH
  build/bin/opendit bench sample --set model.preset="$PRESET" --images "$IMAGES" --steps "$STEPS" --cfg 4 \
    --dtype "$1" --graph "$2" --device "$DEVICE" | grep '^BENCH'
}
run bf16 on
run bf16 off
run fp32 on
# The peer in the same run: the plain-PyTorch DiT's guided sampling loop (bf16 autocast, and fp32).
if [ "$DEVICE" != cpu ]; then
  PY=$(cat build/.python 2>/dev/null || echo python3)
  "$PY" bench/peer_pytorch_dit.py --mode sample --preset "$PRESET" --images "$IMAGES" --steps 50 --cfg 4 | grep '^PEER sample'
  "$PY" bench/peer_pytorch_dit.py --mode sample --preset "$PRESET" --images "$IMAGES" --steps 50 --cfg 4 --fp32 |
    grep '^PEER sample'
fi
