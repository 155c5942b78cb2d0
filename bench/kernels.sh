#!/usr/bin/env bash
# The fused ops (cuda/ops.hpp) and attention at DiT-XL/2 training shapes, in bf16 and fp32 (GPU only).
# usage: bench/kernels.sh [BATCH] [ITERS]      e.g. bench/kernels.sh 64 50
set -euo pipefail
cd "$(dirname "$0")/.."
BATCH=${1:-64} ITERS=${2:-50}
for DTYPE in bf16 fp32; do
  build/bin/opendit bench kernels --batch "$BATCH" --iters "$ITERS" --dtype "$DTYPE" | grep '^BENCH'
done
