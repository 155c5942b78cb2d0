#!/usr/bin/env bash
# End-to-end checks of the opendit command line under mpirun: the mesh, deck errors, and that no error hangs.
# usage: test_cli.sh OPENDIT MPI_ERROR_PROBE SOURCE_DIR
set -u
BIN=$1 PROBE=$2 SRC=$3
MPIRUN=(mpirun --oversubscribe)
source "$(dirname "$0")/lib.sh"  # $out, check; run (with a time limit and its milliseconds) is this file's own
# run NAME TIMEOUT CMD...: runs CMD, keeps stdout+stderr in $out/NAME, the exit code in rc_NAME, milliseconds in ms_NAME.
run() {
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s%N)
  timeout "$limit" "$@" >"$out/$name" 2>&1
  printf -v "rc_$name" '%d' $?
  printf -v "ms_$name" '%d' $((($(date +%s%N) - t0) / 1000000))
}
has() { grep -q -- "$2" "$out/$1"; }
count() { grep -c -- "$2" "$out/$1"; }

run help 30 "$BIN" --help
check "--help lists info" has help "info"
check "--help lists sample and convert" has help "sample"
check "--help lists convert" has help "convert"
check "--help exits 0" test "$rc_help" -eq 0

run single 30 "$BIN" info
check "info without mpirun is a world of one" has single "world 1 = dp 1 x sp 1"

run np4 60 "${MPIRUN[@]}" -np 4 "$BIN" info
check "4 ranks: mesh" has np4 "world 4 = dp 4 x sp 1"
check "4 ranks: printed once" test "$(count np4 'world 4')" -eq 1
check "4 ranks: a line per rank" has np4 "^ *3 *3 *0 "

run sp2 60 "${MPIRUN[@]}" -np 4 "$BIN" info --config "$SRC/inputs/example.toml" --set parallel.sp_size=2
check "sp 2: 2 sp groups x 2 dp" has sp2 "world 4 = dp 2 x sp 2"
check "sp 2: sp groups contiguous" has sp2 "sp groups: \[0 1\] \[2 3\]"
check "sp 2: dp groups strided" has sp2 "dp groups: \[0 2\] \[1 3\]"
check "sp 2: resolved deck shows the override" has sp2 "sp_size = 2  # --set"

run badkey 30 "${MPIRUN[@]}" -np 4 "$BIN" info --config "$SRC/inputs/example.toml" --set nosuch.key=1
check "unknown key: non-zero exit" test "$rc_badkey" -ne 0
check "unknown key: not a timeout" test "$rc_badkey" -ne 124
check "unknown key: under 10 s" test "$ms_badkey" -lt 10000
check "unknown key: one message" test "$(count badkey 'opendit: error')" -eq 1
check "unknown key: names the closest valid key" has badkey "did you mean '[a-z_]*\.[a-z_]*'"

printf '[parallel]\nsp_size = 1\nsp_sise = 2\n' >"$out/typo.toml"
run typo 30 "${MPIRUN[@]}" -np 4 "$BIN" info --config "$out/typo.toml"
check "deck typo: names file and line" has typo "typo.toml:3: unknown key 'parallel.sp_sise'"
check "deck typo: one message" test "$(count typo 'opendit: error')" -eq 1

run nodiv 30 "${MPIRUN[@]}" -np 3 "$BIN" info --set parallel.sp_size=2
check "sp does not divide: error" has nodiv "does not divide the world size 3"
check "sp does not divide: non-zero" test "$rc_nodiv" -ne 0

run nofile 30 "${MPIRUN[@]}" -np 2 "$BIN" info --config "$out/missing.toml"
check "missing deck: clear error" has nofile "missing.toml: cannot read the input deck"
check "missing deck: non-zero" test "$rc_nofile" -ne 0
run dirdeck 30 "${MPIRUN[@]}" -np 2 "$BIN" info --config "$out"
check "a folder as the deck: one clear error" has dirdeck "cannot read the input deck (missing, a folder"
check "a folder as the deck: one message" test "$(count dirdeck 'opendit: error')" -eq 1

run badflag 30 "${MPIRUN[@]}" -np 2 "$BIN" info --no-such-flag
check "unknown flag: one message" test "$(count badflag 'opendit: error')" -eq 1
check "unknown flag: non-zero" test "$rc_badflag" -ne 0

run nosub 30 "$BIN"
check "no subcommand: error" test "$rc_nosub" -ne 0

run typosub 30 "${MPIRUN[@]}" -np 2 "$BIN" trian --config x.toml
check "misspelt subcommand: suggests the closest" has typosub "unknown subcommand 'trian'; did you mean 'train'?"
check "misspelt subcommand: one message" test "$(count typosub 'opendit: error')" -eq 1
check "misspelt subcommand: non-zero" test "$rc_typosub" -ne 0
run typobench 30 "$BIN" bench sampel --images 1
check "misspelt bench subcommand: suggests the closest" has typobench "did you mean 'bench sample'?"
run othersub 30 "$BIN" frobnicate
check "unknown subcommand: lists them" has othersub "unknown subcommand 'frobnicate' (subcommands: info, convert"

run one 30 "${MPIRUN[@]}" -np 4 "$PROBE" one
check "error on one rank: names the rank" has one "opendit: error on rank 1: cannot open shard-1.h5"
check "error on one rank: non-zero, no hang" test "$rc_one" -ne 0 -a "$rc_one" -ne 124
check "error on one rank: under 10 s" test "$ms_one" -lt 10000

OPENDIT_ERROR_GRACE_S=2 run partial 30 "${MPIRUN[@]}" -x OPENDIT_ERROR_GRACE_S -np 4 "$PROBE" partial
check "collective error on one rank only: named with its rank" has partial "error on rank 1: deck differs"
check "collective error on one rank only: non-zero, no hang" test "$rc_partial" -ne 0 -a "$rc_partial" -ne 124
check "collective error on one rank only: under 10 s" test "$ms_partial" -lt 10000

run hang 60 "${MPIRUN[@]}" -np 3 "$PROBE" hang
check "a rank that stops answering: the watchdog names the wait on another rank" has hang "error on rank [02]: watchdog: MPI_Barrier (in training step 7) has not finished after"
check "a rank that stops answering: non-zero, no hang" test "$rc_hang" -ne 0 -a "$rc_hang" -ne 124
check "a rank that stops answering: ended within 20 s" test "$ms_hang" -lt 20000

run doc 30 "$BIN" info --config-doc
check "config doc printed" has doc "# Input deck reference"

# bench sample on the CPU: a tiny model, 3 DDPM steps with guidance (the GPU runs it through bench/sample.sh).
TINY=(--set model.preset=custom --set model.depth=2 --set model.hidden_size=64 --set model.num_heads=4
  --set model.patch_size=2 --set model.input_size=8 --set model.num_classes=10)
run bsample 120 "$BIN" bench sample "${TINY[@]}" --device cpu --images 2 --steps 3 --cfg 4 --dtype fp32
check "bench sample: exits 0" test "$rc_bsample" -eq 0
check "bench sample: one BENCH line" test "$(count bsample '^BENCH sample ')" -eq 1
check "bench sample: the settings" has bsample "preset=custom dtype=fp32 images=2 cfg=4 graph=off steps=3 loop_steps=3"
check "bench sample: timings" has bsample "ms_per_step=[0-9.]* min_ms=[0-9.]* first_step_ms=[0-9.]* total_s=[0-9.]* img_per_s=[0-9.]*"
run bsample_ddim 120 "$BIN" bench sample "${TINY[@]}" --device cpu --images 1 --steps ddim4 --cfg 1 --dtype bf16 \
  --profile 2
check "bench sample: DDIM, no guidance, bf16" has bsample_ddim "dtype=bf16 images=1 cfg=1 graph=off steps=ddim4 loop_steps=4"
check "bench sample --profile 2: steps 3 and 4 op by op" has bsample_ddim "profile of steps 3..4 (2 steps summed"
check "bench sample --profile: the op table" has bsample_ddim "op profile, CPU ops"
run bsample_bad 30 "$BIN" bench sample "${TINY[@]}" --device cpu --images 0
check "bench sample: --images 0 rejected" has bsample_bad "--images 0: expected >= 1"

# bench kernels needs a GPU: with none visible it is one clear error (the GPU runs it through bench/kernels.sh).
run bkernels 60 env CUDA_VISIBLE_DEVICES= "$BIN" bench kernels
check "bench kernels without a GPU: one clear error" has bkernels "bench kernels needs a GPU"
check "bench kernels without a GPU: exit 1" test "$rc_bkernels" -eq 1

if [ $fails -ne 0 ]; then
  for f in "$out"/*; do echo "---- $(basename "$f")"; cat "$f"; done
fi
echo "cli: $passes passed, $fails failed"
[ $fails -eq 0 ]
