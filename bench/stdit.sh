#!/usr/bin/env bash
# STDiT-XL/2 on one GPU, opendit and the plain-PyTorch peer (bench/peer_pytorch_stdit.py) in the same run:
#   training (bf16, zero2) at 16x512^2 (latent 4x16x64x64: 16 x 1024 tokens, 120 caption tokens) with every block
#   recomputed at batch 2 and 4, 21 of 28 at batch 2 (to fit 30 GiB), none at batch 2; at 16x256^2 at batch 8;
#   100 guided sampling steps (cfg 7) of one 16x512^2 video; Latte-XL/2 training and sampling at 16x512^2 (no peer).
# Data: synthetic version-2 files of clips with 120 x 4096 caption tokens (tests/train/make_video_dataset.py).
# usage: bench/stdit.sh [STEPS]                 prints BENCH/PEER lines (MAIN_ONLY=1: the main rows, each with and
#                                               without the step's CUDA graph, and the peer's two)
#        bench/stdit.sh 12 PROFILE_DIR          only a per-op profile of one 16x512^2 batch-2 step of each side
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-16}
PROFILE=${2:-}
PY=$(cat build/.python 2>/dev/null || echo python3)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" tests/train/make_video_dataset.py "$tmp/v512.h5" 12 4 4 16 64 64 4096 120
"$PY" tests/train/make_video_dataset.py "$tmp/v256.h5" 24 4 4 16 32 32 4096 120
st() {  # st SIZE BATCH EXTRA-SETS...: one opendit STDiT-XL/2 run; prints the last step line (the last half's rate)
  local size=$1 b=$2; shift 2
  build/bin/opendit train --set model.type=stdit --set model.preset=STDiT-XL/2 --set model.num_frames=16 \
    --set model.input_size=$((size / 8)) --set data.path="$tmp/v$size.h5" --set data.global_batch="$b" \
    --set train.steps="$STEPS" --set train.log_every=$((STEPS / 2)) --set run.out_dir="$tmp/out" \
    --set run.name="s$size-$b" --no-save --overwrite --set parallel.strategy=zero2 --set train.precision=bf16 "$@" \
    > "$tmp/log" 2>&1 || { tail -20 "$tmp/log"; return 1; }
  grep "^step $STEPS/" "$tmp/log" | tail -1
}
if [ -n "$PROFILE" ]; then
  mkdir -p "$PROFILE"
  st 512 2 --set train.activation_checkpointing=true --set train.profile_step=$((STEPS - 2)) > /dev/null || true
  cp "$tmp/log" "$PROFILE/opendit_stdit_train.log"
  cp "$tmp/out/s512-2/profile.txt" "$PROFILE/stdit_profile.txt" 2>/dev/null || echo "no opendit profile"
  "$PY" bench/peer_pytorch_stdit.py --batch 2 --recompute --steps 3 --profile > "$PROFILE/peer_stdit_profile.txt" 2>&1 || true
  exit 0
fi
if [ -n "${MAIN_ONLY:-}" ]; then  # the main figures only (one device call): each training row with and without
  # the step's CUDA graph, the sampling loop, the peer's two training rows
  for graph in true false; do
    echo "BENCH train STDiT-XL/2 16x512 bf16 zero2 batch 2 recompute all cuda_graph $graph: $(st 512 2 \
      --set train.activation_checkpointing=true --set train.cuda_graph=$graph)"
    echo "BENCH train STDiT-XL/2 16x512 bf16 zero2 batch 2 checkpoint_blocks 21 cuda_graph $graph: $(st 512 2 \
      --set train.checkpoint_blocks=21 --set train.cuda_graph=$graph)"
    echo "BENCH train STDiT-XL/2 16x256 bf16 zero2 batch 8 no recompute cuda_graph $graph: $(st 256 8 \
      --set train.cuda_graph=$graph || echo failed)"
  done
  build/bin/opendit bench sample --set model.type=stdit --set model.preset=STDiT-XL/2 --set model.num_frames=16 \
    --set model.input_size=64 --images 1 --steps 100 --cfg 7 --dtype bf16 --graph on | grep '^BENCH'
  "$PY" bench/peer_pytorch_stdit.py --batch 2 --recompute --steps 8 | grep '^PEER train'
  "$PY" bench/peer_pytorch_stdit.py --size 256 --batch 8 --steps 8 | grep '^PEER train' || echo "PEER train 16x256 batch 8: failed"
  exit 0
fi
for b in 2 4; do
  echo "BENCH train STDiT-XL/2 16x512 bf16 zero2 batch $b recompute all: $(st 512 $b --set train.activation_checkpointing=true)"
done
echo "BENCH train STDiT-XL/2 16x512 bf16 zero2 batch 2 recompute all, eager (train.cuda_graph = false): $(st 512 2 \
  --set train.activation_checkpointing=true --set train.cuda_graph=false)"
echo "BENCH train STDiT-XL/2 16x512 bf16 zero2 batch 2 no recompute: $(st 512 2 || echo failed)"
echo "BENCH train STDiT-XL/2 16x512 bf16 zero2 batch 2 checkpoint_blocks 21: $(st 512 2 --set train.checkpoint_blocks=21)"
echo "BENCH train STDiT-XL/2 16x256 bf16 zero2 batch 8 no recompute: $(st 256 8 || echo failed)"
echo "BENCH train STDiT-XL/2 16x256 bf16 zero2 batch 8 recompute all: $(st 256 8 --set train.activation_checkpointing=true)"
build/bin/opendit bench sample --set model.type=stdit --set model.preset=STDiT-XL/2 --set model.num_frames=16 \
  --set model.input_size=64 --images 1 --steps 100 --cfg 7 --dtype bf16 --graph on | grep '^BENCH'
build/bin/opendit bench sample --set model.type=stdit --set model.preset=STDiT-XL/2 --set model.num_frames=16 \
  --set model.input_size=64 --images 1 --steps 20 --cfg 7 --dtype bf16 --graph off | grep '^BENCH'
# Latte-XL/2 (diffusers' layout, 28 spatial + 28 temporal blocks) on the same data and the same sampling loop.
lt() {
  build/bin/opendit train --set model.type=latte --set model.num_frames=16 --set model.input_size=64 \
    --set data.path="$tmp/v512.h5" --set data.global_batch=2 --set train.steps="$STEPS" \
    --set train.log_every=$((STEPS / 2)) --set run.out_dir="$tmp/out" --set run.name=latte --no-save --overwrite \
    --set parallel.strategy=zero2 --set train.precision=bf16 --set train.activation_checkpointing=true \
    > "$tmp/log" 2>&1 || { tail -20 "$tmp/log"; return 1; }
  grep "^step $STEPS/" "$tmp/log" | tail -1
}
echo "BENCH train Latte-XL/2 16x512 bf16 zero2 batch 2 recompute all: $(lt || echo failed)"
build/bin/opendit bench sample --set model.type=latte --set model.num_frames=16 --set model.input_size=64 \
  --images 1 --steps 100 --cfg 7.5 --dtype bf16 --graph on | grep '^BENCH' | sed 's/^BENCH sample/BENCH sample latte/'
# The peer in the same run (Open-Sora v1.0's own figures on this machine are in the issue and bench/RESULTS.md).
"$PY" bench/peer_pytorch_stdit.py --batch 2 --recompute --steps 8 | grep '^PEER'
"$PY" bench/peer_pytorch_stdit.py --batch 4 --recompute --steps 6 | grep '^PEER train'
"$PY" bench/peer_pytorch_stdit.py --batch 2 --steps 8 | grep '^PEER train' || echo "PEER train 16x512 batch 2 no recompute: failed"
"$PY" bench/peer_pytorch_stdit.py --size 256 --batch 8 --steps 8 | grep '^PEER train' || echo "PEER train 16x256 batch 8: failed"
"$PY" bench/peer_pytorch_stdit.py --mode sample --bf16-weights --steps 20 | grep '^PEER sample'
