#!/usr/bin/env bash
# `make run`: train a small DiT on the bundled digits with MPI, sample a grid, plot the loss, score the samples.
#   tools/digits_demo.sh [--set section.key=value ...]
# env: NP ranks (default 2), BUILD folder, OPENDIT_BIN, PYTHON, MPIRUN, MIN_SCORE (exit 1 below this fraction of
# samples classified as their class; default 0: only the classifier's own held-out bar of 97% fails the run).
# Writes out/digits/: metrics.jsonl, ema.safetensors, samples.png (opendit's grid, a row per class),
# samples.safetensors, samples_large.png, loss.png, summary.json.
set -euo pipefail
cd "$(dirname "$0")/.."
NP=${NP:-2}
DECK=inputs/dit_digits.toml
source tools/demo_common.sh
mkdir -p "$RUN"

t0=$(date +%s)
# Each rank needs a GPU of its own: with fewer GPUs than ranks, use one rank per GPU.
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
if [ "${gpus:-0}" -gt 0 ] && [ "$NP" -gt "$gpus" ]; then
  echo "== $gpus GPU(s): training with $gpus rank(s) instead of $NP (one GPU per rank)"
  NP=$gpus
fi
# The demo starts over each time: --overwrite replaces the previous demo run in the folder.
echo "== train: $MPIRUN -np $NP $BIN train --config $DECK ${sets[*]} --overwrite"
"$MPIRUN" -np "$NP" "$BIN" train --config $DECK "${sets[@]}" --overwrite
t1=$(date +%s)

echo "== sample: 10 classes x 8, seed 0, the deck's sampler and guidance scale (sample.steps, sample.cfg_scale)"
common=(sample --config $DECK "${sets[@]}" --checkpoint "$RUN/ema.safetensors" --classes 0,1,2,3,4,5,6,7,8,9
        --per-class 8 --seed 0)
"$BIN" "${common[@]}" --out "$RUN/samples.png"
"$BIN" "${common[@]}" --out "$RUN/samples.safetensors" 2>/dev/null
t2=$(date +%s)

echo "== quality: an MLP trained on the real train split labels the samples"
rc=0
OMP_NUM_THREADS=1 "$PYTHON" tools/digits_quality.py --samples "$RUN/samples.safetensors" --metrics "$RUN/metrics.jsonl" \
  --out-dir "$RUN" --json "$RUN/summary.json" --min-heldout 0.97 --min-score "${MIN_SCORE:-0}" || rc=$?
t3=$(date +%s)

"$PYTHON" - "$RUN/summary.json" "$NP" $((t1 - t0)) $((t2 - t1)) $((t3 - t0)) <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
np_, train_s, sample_s, total_s = sys.argv[2], *map(int, sys.argv[3:])
print("\n== digits demo summary")
print(f"  final training loss        {s['final_loss']:.4f}")
print(f"  classifier, held-out real  {100 * s['heldout_accuracy']:.1f}% (MLP on the 1,497 real train digits, 300 held out)")
print(f"  samples classified as their class  {100 * s['score']:.1f}% of {s['samples']}")
print(f"  wall time                  train {train_s} s on {np_} ranks, sampling {sample_s} s, total {total_s} s")
PY
echo "  files: $RUN/samples.png (a row per class; larger: samples_large.png), $RUN/loss.png, $RUN/metrics.jsonl,"
echo "         $RUN/ema.safetensors, $RUN/summary.json"
exit $rc
