#!/usr/bin/env bash
# Sequence parallelism on one GPU.
#   bench/sp.sh cost                the cost model (opendit bench sp): STDiT-XL/2 bf16 with every block recomputed at
#                                   16x512^2 and 64x512^2 (latent 4xTx64x64, 1024 positions a frame), N = 2, 4, 8,
#                                   ulysses / fastseq / dsp; prints BENCH sp and PICK lines
#   bench/sp.sh baseline OLD_BIN    the sp = 1 path against another build (the commit before sequence parallelism)
#                                   in the same run, alternating: DiT-XL/2 batch 64 and STDiT-XL/2 16x512^2 batch 2
#                                   training (bf16, zero2), 3 rounds each; prints BENCH lines
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(cat build/.python 2>/dev/null || echo python3)
BW=${BW:-300}
case ${1:-cost} in
  cost)
    for frames in 16 64; do
      build/bin/opendit bench sp --set model.type=stdit --set model.preset=STDiT-XL/2 --set model.num_frames=$frames \
        --set model.input_size=64 --sizes 2,4,8 --bandwidth "$BW" --iters 3 --warmup 1 2>&1 |
        grep -E "^(BENCH|PICK|STDiT)" | sed "s/^/${frames}x512: /"
    done ;;
  baseline)
    OLD=${2:?usage: bench/sp.sh baseline OLD_BIN}
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    build/tests/train/make_toy_dataset "$tmp/latents.h5" 1024 1000 4 32
    "$PY" tests/train/make_video_dataset.py "$tmp/v512.h5" 12 4 4 16 64 64 4096 120
    run() {  # run BIN NAME STEPS SETS...: the last step line
      local bin=$1 name=$2 steps=$3; shift 3
      "$bin" train --set data.global_batch=64 --set train.steps="$steps" --set train.log_every=$((steps / 2)) \
        --set run.out_dir="$tmp/out" --set run.name="$name" --no-save --overwrite --set parallel.strategy=zero2 \
        --set train.precision=bf16 "$@" > "$tmp/log" 2>&1 || { tail -5 "$tmp/log"; return 1; }
      grep "^step $steps/" "$tmp/log" | tail -1
    }
    for round in $(seq "${ROUNDS:-3}"); do
      for side in new old; do
        bin=build/bin/opendit
        [ $side = old ] && bin=$OLD
        echo "BENCH $side DiT-XL/2 batch 64: $(run "$bin" dit 30 --set model.preset=DiT-XL/2 \
          --set data.path="$tmp/latents.h5")"
        echo "BENCH $side STDiT-XL/2 16x512 batch 2 recompute: $(run "$bin" stdit 16 --set model.type=stdit \
          --set model.preset=STDiT-XL/2 --set model.num_frames=16 --set model.input_size=64 \
          --set data.path="$tmp/v512.h5" --set data.global_batch=2 --set train.activation_checkpointing=true)"
      done
    done ;;
  *) echo "usage: bench/sp.sh cost | baseline OLD_BIN" >&2; exit 2 ;;
esac
