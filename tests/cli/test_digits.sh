#!/usr/bin/env bash
# usage: test_digits.sh OPENDIT PYTHON MPIRUN SOURCE_DIR
# Trains inputs/dit_digits.toml for fewer steps (STEPS below) on 2 ranks, samples 10 x 8 digits and asserts that the
# classifier trained on real digits reaches 97% on the held-out real ones and labels at least MIN_SCORE of the
# samples as their class. Chance is 10%; a model, diffusion, sampler or training that is broken stays near it.
set -euo pipefail
BIN=$1 PY=$2 MPIRUN=$3 SRC=$4
STEPS=${DIGITS_TEST_STEPS:-1000}
MIN_SCORE=${DIGITS_TEST_MIN_SCORE:-0.35}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
set +e
OPENDIT_BIN=$BIN PYTHON=$PY MPIRUN=$MPIRUN NP=2 MIN_SCORE=$MIN_SCORE "$SRC/tools/digits_demo.sh" \
  --set run.out_dir="$tmp" --set run.name=digits --set train.steps="$STEPS" \
  --set train.log_every=50 --set sample.cfg_scale=4 >"$tmp/log" 2>&1
rc=$?
set -e
grep -v "^train [0-9]*/\|^sample [0-9]*/" "$tmp/log" | tail -20
ok=1
[ $rc -eq 0 ] || { echo "FAIL: the demo exited with $rc (score below $MIN_SCORE, held-out below 97%, or an error)"; ok=0; }
for f in samples.png loss.png samples.safetensors ema.safetensors metrics.jsonl summary.json; do
  [ -s "$tmp/digits/$f" ] || { echo "FAIL: no $f"; ok=0; }
done
# The PNG is opendit's grid of 10 rows x 8 columns of 8x8 digits.
"$PY" - "$tmp/digits/samples.png" <<'PY' || ok=0
import struct, sys
with open(sys.argv[1], "rb") as f:
    head = f.read(24)
w, h = struct.unpack(">II", head[16:24])
ok = head[:8] == b"\x89PNG\r\n\x1a\n" and w >= 8 * 8 and h >= 10 * 8
print(("ok" if ok else "FAIL") + f": samples.png is a PNG of {w}x{h}")
sys.exit(0 if ok else 1)
PY
echo "digits test: $(( $(date +%s) - start )) s, $STEPS steps, bar $MIN_SCORE"
[ $ok -eq 1 ]
