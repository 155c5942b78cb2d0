#!/usr/bin/env bash
# usage: test_jobs.sh OPENDIT MAKE_TOY_DATASET SOURCE_DIR PYTHON
set -uo pipefail
BIN=$1 MAKE=$2 SRC=$3 PY=${4:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0
check() {  # check NAME STATUS [DETAIL]
  if [ "$2" -eq 0 ]; then pass=$((pass + 1)); echo "ok   $1"; else fail=$((fail + 1)); echo "FAIL $1"; [ -n "${3:-}" ] && echo "$3" | tail -20; fi
}

scripts=("$SRC"/jobs/*.sbatch)
[ ${#scripts[@]} -ge 2 ]; check "jobs/ holds the sbatch scripts (${#scripts[@]})" $?

for f in "$SRC/jobs/env.sh" "${scripts[@]}"; do
  out=$(bash -n "$f" 2>&1); check "bash -n $(basename "$f")" $? "$out"
done

# #SBATCH lines: '--key=value', '-X value' or a known bare flag, all before the first command (sbatch stops
# reading directives at the first line that is not a comment).
for f in "${scripts[@]}"; do
  bad=$(awk '
    /^#SBATCH/ {
      n++
      if (seen_cmd) { print FILENAME ":" FNR ": #SBATCH after the first command: " $0; next }
      line = $0; sub(/^#SBATCH[ \t]+/, "", line); sub(/[ \t]+#.*$/, "", line)
      if (line ~ /^--[a-z][a-z-]*=[^ \t]+$/) next
      if (line ~ /^-[A-Za-z] [^ \t]+$/) next
      if (line ~ /^--(exclusive|requeue|no-requeue|contiguous|overcommit|hold|spread-job|use-min-nodes)$/) next
      print FILENAME ":" FNR ": not --key=value, -X value or a known flag: " $0; next
    }
    /^[ \t]*$/ || /^#/ { next }
    { seen_cmd = 1 }
    END { if (n == 0) print FILENAME ": no #SBATCH lines" }' "$f")
  [ -z "$bad" ]; check "#SBATCH lines of $(basename "$f") parse" $? "$bad"
done

# A stand-in srun: drops its own options and runs the command, as one process (a world of one).
mkdir -p "$tmp/bin"
cat > "$tmp/bin/srun" <<'SH'
#!/usr/bin/env bash
echo "srun $*" >> "$SRUN_LOG"
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done
exec "$@"
SH
chmod +x "$tmp/bin/srun"
export PATH="$tmp/bin:$PATH" SRUN_LOG="$tmp/srun.log" OPENDIT_BIN="$BIN" OPENDIT_OUT="$tmp/out" OPENDIT_ROOT="$SRC"

# Training: the deck the job uses, with data.path on a small fake dataset of its shape (4 x 32 x 32, 1000 classes).
"$MAKE" "$tmp/fake.h5" 256 1000 4 32 >/dev/null
out=$(cd "$tmp" && bash "$SRC/jobs/dit_xl2_imagenet256.sbatch" --dry-run --set data.path="$tmp/fake.h5" 2>&1)
rc=$?
[ $rc -eq 0 ] && grep -q "dry run: deck, data and mesh are valid" <<< "$out"
check "dit_xl2_imagenet256.sbatch: opendit train --dry-run validates" $? "$out"
grep -q "^srun .*train --config $SRC/inputs/dit_xl2_imagenet256.toml" "$SRUN_LOG"
check "dit_xl2_imagenet256.sbatch runs opendit train through srun" $? "$(cat "$SRUN_LOG")"
grep -q "DiT-XL/2\|depth 28" <<< "$out"
check "it trains DiT-XL/2" $? "$out"
# The placeholder path of the deck is refused with a clear error (the user must edit it).
out=$(cd "$tmp" && bash "$SRC/jobs/dit_xl2_imagenet256.sbatch" --dry-run 2>&1)
[ $? -ne 0 ] && grep -q "/path/to/imagenet256_latents.h5" <<< "$out"
check "the deck's placeholder data.path gives a clear error" $? "$out"

# STDiT training: the deck the job uses, on a small v2 file of clips of its shape ([4, 16, 64, 64], 120 x 4096).
"$PY" "$SRC/tests/train/make_video_dataset.py" "$tmp/clips.h5" 8 2 4 16 64 64 4096 120 >/dev/null
out=$(cd "$tmp" && bash "$SRC/jobs/stdit_xl2_16x512.sbatch" --dry-run --set data.path="$tmp/clips.h5" \
  --set data.global_batch=8 2>&1)
rc=$?
[ $rc -eq 0 ] && grep -q "dry run: deck, data and mesh are valid" <<< "$out" && grep -q "STDiT depth 28" <<< "$out"
check "stdit_xl2_16x512.sbatch: opendit train --dry-run validates an STDiT-XL/2 on clips with captions" $? "$out"
grep -q "^srun .*train --config $SRC/inputs/stdit_xl2_16x512.toml" "$SRUN_LOG"
check "stdit_xl2_16x512.sbatch runs opendit train through srun" $? "$(cat "$SRUN_LOG")"

# Sampling: arguments and deck are accepted; the only error is the (absent) checkpoint.
out=$(cd "$tmp" && bash "$SRC/jobs/sample_dit.sbatch" "$tmp/absent.safetensors" 2>&1)
rc=$?
[ $rc -ne 0 ] && grep -q "absent.safetensors" <<< "$out" && ! grep -qi "usage\|--classes\|--cfg\|unknown\|expected" <<< "$out"
check "sample_dit.sbatch: opendit sample accepts its arguments (fails only on the absent checkpoint)" $? "$out"
# With VAE=DIR the samples are decoded to a PNG grid: --vae DIR and a .png output reach opendit sample.
out=$(cd "$tmp" && VAE="$tmp/novae" bash "$SRC/jobs/sample_dit.sbatch" "$tmp/absent.safetensors" 2>&1)
[ $? -ne 0 ] && ! grep -qi "usage\|unknown\|expected" <<< "$out" &&
  grep -q -- "sample .*--vae $tmp/novae --out .*\.png" "$SRUN_LOG"
check "sample_dit.sbatch with VAE=DIR passes --vae and writes a PNG" $? "$out $(tail -1 "$SRUN_LOG")"
out=$(cd "$tmp" && bash "$SRC/jobs/sample_dit.sbatch" 2>&1)
[ $? -eq 2 ] && echo "$out" | grep -q usage
check "sample_dit.sbatch without a checkpoint prints its usage" $? "$out"

# Encoding: the arguments reach opendit encode with --resume (the inputs are absent: its first error names them).
for job in encode_imagenet:3 encode_videos:4; do
  name=${job%:*} n=${job#*:}
  args=("$tmp/absent_in" "$tmp/vae" "$tmp/t5" "$tmp/out.h5")
  [ "$n" -eq 3 ] && args=("$tmp/absent_in" "$tmp/vae" "$tmp/out.h5")
  out=$(cd "$tmp" && bash "$SRC/jobs/$name.sbatch" "${args[@]}" --set encode.block=64 2>&1)
  [ $? -ne 0 ] && grep -q "input $tmp/absent_in does not exist" <<< "$out" &&
    grep -q -- "^srun .*encode $tmp/absent_in -o $tmp/out.h5 --vae $tmp/vae .*--resume .*--set encode.block=64" "$SRUN_LOG"
  check "$name.sbatch runs opendit encode --resume through srun with its arguments" $? "$out $(tail -1 "$SRUN_LOG")"
  out=$(cd "$tmp" && bash "$SRC/jobs/$name.sbatch" "$tmp/x" 2>&1)
  [ $? -eq 2 ] && echo "$out" | grep -q usage
  check "$name.sbatch without its arguments prints its usage" $? "$out"
done

grep -q "NCCL_NVLS_ENABLE=0" "$SRC/jobs/env.sh"; check "env.sh turns NVLink multicast off" $?
grep -q "^export OMPI_MCA_odls_base_sigkill_timeout=" "$SRC/jobs/env.sh"
check "env.sh gives mpirun's ranks time to checkpoint after a SIGTERM" $?
train_job=$SRC/jobs/dit_xl2_imagenet256.sbatch
grep -v '^[[:space:]]*#' "$train_job" | grep -q -- "--resume auto"
check "the training job resumes (--resume auto)" $?
grep -q "^#SBATCH --signal=B:USR1@" "$train_job" && grep -q "^#SBATCH --requeue" "$train_job" &&
  grep -q "^#SBATCH --open-mode=append" "$train_job"
check "the training job asks for USR1 before its time limit, requeueing and an appended log" $?

# Preemption without Slurm: a stand-in opendit that waits for a signal and exits 75 as opendit does after its
# checkpoint, a stand-in scontrol that logs its arguments. TERM to the job script reaches opendit as USR1 (the real
# srun answers TERM by killing its tasks), and status 75 makes the script requeue its job and exit 0.
cat > "$tmp/bin/fake_opendit" <<'SH'
#!/usr/bin/env bash
trap 'echo "fake opendit: USR1"; exit 75' USR1
trap 'echo "fake opendit: TERM"; exit 143' TERM
echo "fake opendit: training"
for _ in $(seq 300); do sleep 0.1; done
SH
cat > "$tmp/bin/scontrol" <<'SH'
#!/usr/bin/env bash
echo "scontrol $*" >> "$SCONTROL_LOG"
exit "${SCONTROL_STATUS:-0}"
SH
chmod +x "$tmp/bin/fake_opendit" "$tmp/bin/scontrol"
export SCONTROL_LOG=$tmp/scontrol.log
job=$train_job
stop_job() {  # stop_job SIGNAL [env...]: runs $job on the stand-ins, signals it; prints its output
  env SLURM_JOB_ID=4242 OPENDIT_BIN="$tmp/bin/fake_opendit" "${@:2}" bash "$job" a b c d > "$tmp/stop.out" 2>&1 &
  local pid=$! i
  for i in $(seq 100); do grep -q "fake opendit: training" "$tmp/stop.out" && break; sleep 0.1; done
  sleep 0.2
  kill -s "$1" "$pid"
  wait "$pid"
  local rc=$?
  cat "$tmp/stop.out"
  return $rc
}
out=$(stop_job TERM); rc=$?
[ $rc -eq 0 ] && grep -q "fake opendit: USR1" <<< "$out" && grep -qx "scontrol requeue 4242" "$SCONTROL_LOG"
check "TERM to the job script: opendit gets USR1, exits 75, the job requeues itself and exits 0" $? \
  "status $rc: $out; scontrol log: $(cat "$SCONTROL_LOG" 2>&1)"
rm -f "$SCONTROL_LOG"
out=$(stop_job USR1 SCONTROL_STATUS=1); rc=$?
[ $rc -eq 75 ] && grep -q "fake opendit: USR1" <<< "$out" && grep -q "submit the job again" <<< "$out"
check "USR1 with the requeue refused: the job exits 75 and says to submit it again" $? "status $rc: $out"
rm -f "$SCONTROL_LOG"
job=$SRC/jobs/encode_imagenet.sbatch
out=$(stop_job TERM); rc=$?
[ $rc -eq 0 ] && grep -q "fake opendit: USR1" <<< "$out" && grep -qx "scontrol requeue 4242" "$SCONTROL_LOG"
check "the encode job too: stopped, it requeues itself and exits 0" $? \
  "status $rc: $out; scontrol log: $(cat "$SCONTROL_LOG" 2>&1)"

echo "jobs: $pass passed, $fail failed"
[ $fail -eq 0 ]
