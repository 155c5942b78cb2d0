#!/usr/bin/env bash
# `make run DEMO=video`: the moving-digits text-to-video demo. Clips of the bundled digits moving left, right, up or
# down (tools/make_moving_digits.py), a SentencePiece tokenizer and a tiny T5 for their captions
# (tools/make_tiny_t5.py), `opendit encode` of clips and captions (pixel space), `opendit train` of a tiny STDiT
# with sequence parallelism (4 ranks: dp 2 x sp 2, dsp), `opendit sample` of a video per prompt (sp 2 x
# CFG-parallel: 4 ranks), and the score: the share of videos whose digit (an MLP trained on the real digits labels
# the frames) and direction (the centre of mass's track) are the prompt's (tools/moving_digits_score.py).
#   tools/video_demo.sh [--set section.key=value ...]
# env: NP training ranks (default 4), CLIPS (2000), HELDOUT (200), BUILD, OPENDIT_BIN, PYTHON, MPIRUN,
# MIN_SCORE (exit 1 below this share of right videos; default 0: only the scorer's own bars fail the run).
# Writes out/moving_digits/: data/ (clips, t5, train.h5), ema.safetensors, videos/ (NNNNNN.mp4 and a NNNNNN.png
# strip per prompt, prompts.txt), samples.safetensors, metrics.jsonl, summary.json.
set -euo pipefail
cd "$(dirname "$0")/.."
NP=${NP:-4}
DECK=inputs/stdit_moving_digits.toml
source tools/demo_common.sh
DATA=$RUN/data
mkdir -p "$DATA"
# Each rank needs a GPU of its own: with fewer GPUs than ranks, train on the CPU (the demo is sized for it).
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
if [ "${gpus:-0}" -gt 0 ] && [ "$NP" -gt "$gpus" ]; then
  echo "== $gpus GPU(s) for $NP ranks: the demo runs on the CPU"
  sets+=(--set parallel.device=cpu)
fi
t0=$(date +%s)
echo "== clips: ${CLIPS:-2000} training + ${HELDOUT:-200} held-out clips of a digit moving (12x12, 5 frames)"
"$PYTHON" tools/make_moving_digits.py --out "$DATA/clips" --clips "${CLIPS:-2000}" --heldout-clips "${HELDOUT:-200}" \
  --size 12 --frames 5
echo "== captions: a SentencePiece tokenizer trained on them and a tiny T5 (random weights)"
"$PYTHON" tools/make_tiny_t5.py --captions "$DATA/clips/train.csv" "$DATA/clips/prompts.txt" --out "$DATA/t5"
echo "== encode: $MPIRUN -np 2 $BIN encode (pixels, T5 caption embeddings)"
"$MPIRUN" -np 2 "$BIN" encode "$DATA/clips/train.csv" -o "$DATA/train.h5" --vae pixel --text-encoder "$DATA/t5" \
  --config $DECK "${sets[@]}" --overwrite -q
t1=$(date +%s)
echo "== train: $MPIRUN -np $NP $BIN train --config $DECK (sp 2 x dp $((NP / 2)), dsp)"
"$MPIRUN" -np "$NP" "$BIN" train --config $DECK --set data.path="$DATA/train.h5" "${sets[@]}" --overwrite
t2=$(date +%s)
echo "== sample: a video per prompt (40 prompts), sp 2 x CFG-parallel on 4 ranks; then the same as one file"
common=(sample --config $DECK "${sets[@]}" --checkpoint "$RUN/ema.safetensors" --prompts "$DATA/clips/prompts.txt"
        --text-encoder "$DATA/t5" --seed 0)
"$MPIRUN" -np 4 "$BIN" "${common[@]}" --cfg-parallel --out "$RUN/videos" --overwrite
"$MPIRUN" -np 2 "$BIN" "${common[@]}" --out "$RUN/samples.safetensors" 2>/dev/null
t3=$(date +%s)
echo "== score: an MLP trained on the real digits labels the frames, the centre of mass gives the direction"
rc=0
OMP_NUM_THREADS=1 "$PYTHON" tools/moving_digits_score.py --samples "$RUN/samples.safetensors" \
  --prompts-json "$DATA/clips/prompts.json" --clips-dir "$DATA/clips" --check-heldout --json "$RUN/summary.json" \
  --min-score "${MIN_SCORE:-0}" || rc=$?
t4=$(date +%s)
echo
echo "== moving-digits demo: wall time: data and encode $((t1 - t0)) s, train $((t2 - t1)) s on $NP ranks," \
     "sampling $((t3 - t2)) s, total $((t4 - t0)) s"
echo "   files: $RUN/videos/ (an MP4 and a PNG strip per prompt, prompts.txt), $RUN/summary.json,"
echo "          $RUN/metrics.jsonl, $RUN/ema.safetensors"
exit $rc
