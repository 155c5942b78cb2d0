#!/usr/bin/env bash
# Dataset checksums end to end: `opendit check` on intact, damaged and pre-checksum latent datasets, checkpoints and
# safetensors weights, and `opendit train` (2 ranks) refusing a damaged dataset by name and noting a pre-checksum one.
# usage: test_check.sh OPENDIT MAKE_TOY_DATASET H5_DAMAGE
set -u
BIN=$1 MAKE=$2 DAMAGE=$3
MPIRUN=(mpirun --oversubscribe -np 2)
source "$(dirname "$0")/lib.sh"

"$MAKE" "$out/data.h5" 64 4 3 8 || exit 1
cp "$out/data.h5" "$out/bad.h5" && "$DAMAGE" flip "$out/bad.h5" /latents || exit 1
cp "$out/data.h5" "$out/old.h5" && "$DAMAGE" strip "$out/old.h5" >/dev/null || exit 1
cat >"$out/deck.toml" <<DECK
[model]
preset = "custom"
depth = 1
hidden_size = 32
num_heads = 2
patch_size = 2
in_channels = 3
input_size = 8
num_classes = 4
space = "pixel"
[data]
path = "$out/data.h5"
global_batch = 8
[train]
steps = 2
precision = "fp32"
[run]
out_dir = "$out/runs"
name = "tiny"
[parallel]
device = "cpu"
DECK

run intact "$BIN" check "$out/data.h5"
check "check, intact dataset: exit 0" test "$rc_intact" -eq 0
check "check, intact dataset: each dataset ok" has intact "^ok .*data.h5:/latents  float32 \[64, 3, 8, 8\]  crc32 [0-9]"
check "check, intact dataset: verdict" has intact "data.h5: intact (3 objects checked)"

run damaged "$BIN" check "$out/bad.h5"
check "check, flipped bit: exit 1" test "$rc_damaged" -eq 1
check "check, flipped bit: names the dataset" has damaged \
  "^DAMAGED .*bad.h5:/latents .*checksum mismatch: expected crc32"
check "check, flipped bit: the others ok" has damaged "^ok .*bad.h5:/labels"
check "check, flipped bit: verdict" has damaged "bad.h5: DAMAGED (1 of 2 objects: /latents)"

run old "$BIN" check "$out/old.h5"
check "check, pre-checksum file: exit 0" test "$rc_old" -eq 0
check "check, pre-checksum file: unverified" has old "^unverified .*old.h5:/latents .*no crc32 attribute"
check "check, pre-checksum file: verdict" has old "old.h5: no damage found; 2 of 3 objects unverified (no checksums)"

run missing "$BIN" check "$out/none.h5" "$out/data.h5"
check "check, missing file: exit 1" test "$rc_missing" -eq 1
check "check, missing file: not checked" has missing "none.h5: NOT CHECKED"
check "check, missing file: the others still checked" has missing "check: 2 files, 1 not intact"

# train verifies the dataset on 2 ranks before any step.
run train_ok "${MPIRUN[@]}" "$BIN" train --config "$out/deck.toml" --dry-run
check "train, intact dataset: exit 0" test "$rc_train_ok" -eq 0
check "train, intact dataset: verified once" test "$(count train_ok "verified against crc32")" -eq 1

run train_bad "${MPIRUN[@]}" "$BIN" train --config "$out/deck.toml" --dry-run --set data.path="$out/bad.h5"
check "train, damaged dataset: refused" test "$rc_train_bad" -ne 0 -a "$rc_train_bad" -ne 124
check "train, damaged dataset: one message naming the dataset" \
  test "$(count train_bad "opendit: error.*'/latents': checksum mismatch")" -eq 1
check "train, damaged dataset: no step" test "$(count train_bad "dry run:")" -eq 0

run train_unchecked "${MPIRUN[@]}" "$BIN" train --config "$out/deck.toml" --dry-run --set data.path="$out/bad.h5" \
  --set data.verify=false
check "train, data.verify = false: not verified" test "$rc_train_unchecked" -eq 0

run train_old "${MPIRUN[@]}" "$BIN" train --config "$out/deck.toml" --dry-run --set data.path="$out/old.h5"
check "train, pre-checksum dataset: exit 0" test "$rc_train_old" -eq 0
check "train, pre-checksum dataset: one note" \
  test "$(count train_old "^note: .*old.h5: /latents, /labels have no checksums")" -eq 1

# A checkpoint and the exported weights of a 2-step run.
run train "${MPIRUN[@]}" "$BIN" train --config "$out/deck.toml"
ckpt="$out/runs/tiny/checkpoints/ckpt-00000002.h5"
check "train: exit 0" test "$rc_train" -eq 0
run ckpt "$BIN" check -q "$ckpt"
check "check, checkpoint: intact" has ckpt "ckpt-00000002.h5: intact"
check "check, checkpoint: quiet" test "$(wc -l <"$out/ckpt.log")" -eq 1
cp "$ckpt" "$out/bad_ckpt.h5" && "$DAMAGE" flip "$out/bad_ckpt.h5" /ema/blocks.0.attn.qkv.weight
run bad_ckpt "$BIN" check "$out/bad_ckpt.h5"
check "check, damaged checkpoint: exit 1" test "$rc_bad_ckpt" -eq 1
check "check, damaged checkpoint: names the dataset" has bad_ckpt \
  "^DAMAGED .*:/ema/blocks.0.attn.qkv.weight .*checksum mismatch"
check "check, damaged checkpoint: no completion marker noted" has bad_ckpt "no completion marker"
run weights "$BIN" check "$out/runs/tiny/ema.safetensors"
check "check, weights: exit 0" test "$rc_weights" -eq 0
check "check, weights: the recorded model" has weights \
  "every tensor matches the model its metadata records: DiT depth 1"

if [ $fails -ne 0 ]; then
  for f in "$out"/*.log; do echo "---- $(basename "$f")"; cat "$f"; done
fi
echo "check: $passes passed, $fails failed"
[ $fails -eq 0 ]
