#!/usr/bin/env bash
# The training job of jobs/ under a real single-node Slurm: it is stopped the way Slurm stops a job before its time
# limit (USR1 to the batch script), requeues itself, resumes, and ends with the same weights as an uninterrupted job.
# usage: test_slurm.sh OPENDIT MAKE_TOY_DATASET SOURCE_DIR PYTHON
# Exit 77 (ctest's SKIP_RETURN_CODE) with the reason when this machine cannot run it: not root, Slurm or munge not
# installed (make deps-test installs them), fewer than 2 CPUs. Daemons that do not come up are a failure.
set -uo pipefail
BIN=$1 MAKE=$2 SRC=$3 PY=$4
SKIP=77
skip() { echo "skipped: $*"; exit $SKIP; }
die() { echo "FAIL $*"; echo "jobs_slurm: 0 passed, 1 failed"; exit 1; }

[ "$(id -u)" -eq 0 ] || skip "not root (the test starts munged, slurmctld and slurmd as root)"
for c in munged slurmctld slurmd sbatch srun scontrol scancel squeue sinfo; do
  command -v $c >/dev/null || skip "$c not found: make deps-test installs Debian's slurm-wlm and munge"
done
[ "$(nproc)" -ge 2 ] || skip "the job needs 2 CPUs (one per rank), this machine has $(nproc)"

tmp=$(mktemp -d /tmp/opendit_slurm.XXXXXX)
chmod 755 "$tmp"  # munged wants every folder above its socket searchable by all
jobs=()
# Everything this test started carries the folder's name in its environment (SLURM_CONF): the daemons, slurmstepd
# and the job's processes. Cancel our jobs, stop the daemons by pid file, then kill whatever of ours is left.
cleanup() {
  if [ ${#jobs[@]} -gt 0 ]; then
    scancel --quiet "${jobs[@]}" 2>/dev/null
    for _ in $(seq 20); do [ -z "$(squeue -h -t running,completing -j "$(IFS=,; echo "${jobs[*]}")" 2>/dev/null)" ] && break; sleep 0.5; done
  fi
  for p in slurmd slurmctld munged; do [ -f "$tmp/$p.pid" ] && kill "$(cat "$tmp/$p.pid")" 2>/dev/null; done
  sleep 1
  for e in /proc/[0-9]*/environ; do
    pid=${e#/proc/}; pid=${pid%/environ}
    [ "$pid" != $$ ] && grep -qs "SLURM_CONF=$tmp/slurm.conf" "$e" && kill -9 "$pid" 2>/dev/null
  done
  rm -rf "$tmp"
}
trap cleanup EXIT

pass=0 fail=0
check() {  # check NAME STATUS [DETAIL]
  if [ "$2" -eq 0 ]; then pass=$((pass + 1)); echo "ok   $1"; else fail=$((fail + 1)); echo "FAIL $1"; [ -n "${3:-}" ] && echo "$3" | tail -30; fi
}
# until SECONDS COMMAND...: polls COMMAND every 0.5 s; false when SECONDS pass first.
until_ok() {
  local end=$((SECONDS + $1)); shift
  until "$@"; do [ $SECONDS -ge $end ] && return 1; sleep 0.5; done
}

# ---- a single-node Slurm in $tmp (shared/REFERENCE.md, "The machines") ------------------------------------------
mkdir -p "$tmp/state" "$tmp/spool" "$tmp/out"
read -r ctld_port slurmd_port < <("$PY" -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("", 0))
print(*[x.getsockname()[1] for x in s])')
head -c 1024 /dev/urandom > "$tmp/munge.key" && chmod 400 "$tmp/munge.key"
munged --key-file "$tmp/munge.key" --socket "$tmp/munge.sock" --pid-file "$tmp/munged.pid" \
  --log-file "$tmp/munged.log" --seed-file "$tmp/munge.seed" || die "munged does not start: $(tail -3 "$tmp/munged.log")"
host=$(hostname -s)
# cred_expire=10: a requeued job waits cred_expire + 1 s before it may start again (default 120 s).
# MpiDefault=pmix: srun starts OpenMPI's ranks through PMIx, as clusters configure it. sched_interval=1: the main
# scheduler looks at pending jobs every second (default 60 s), so a requeued job starts as soon as it may.
cat > "$tmp/slurm.conf" <<EOF
ClusterName=opendit
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$tmp/munge.sock,cred_expire=10
CredType=cred/munge
MpiDefault=pmix
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmdPidFile=$tmp/slurmd.pid
SlurmctldLogFile=$tmp/slurmctld.log
SlurmdLogFile=$tmp/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SchedulerParameters=sched_interval=1
ReturnToService=2
NodeName=$host CPUs=$(nproc) State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$tmp/slurm.conf
slurmctld -f "$SLURM_CONF" && slurmd -f "$SLURM_CONF" || die "slurmctld/slurmd do not start: $(tail -5 "$tmp"/slurm*.log)"
node_idle() { [ "$(sinfo -h -o %T 2>/dev/null)" = idle ]; }
until_ok 30 node_idle || die "the Slurm node is not idle after 30 s ($(sinfo -h -o '%T %E' 2>&1)): $(tail -5 "$tmp"/slurm*.log)"
echo "Slurm is up in $tmp (ports $ctld_port, $slurmd_port)"

# ---- the job: jobs/dit_xl2_imagenet256.sbatch with the tiny deck of tests/train/test_long_jobs.py, 2 ranks -------
"$MAKE" "$tmp/toy.h5" 64 4 3 8 >/dev/null
STEPS=400  # 7 to 20 s on 2 ranks of a 2-core machine (idle to busy): the stop comes at the first logged step
{ cat "$SRC/tests/support/tiny_dit.toml"; cat <<EOF
[data]
path = "$tmp/toy.h5"
global_batch = 16
[train]
steps = $STEPS
precision = "fp32"
lr = 1e-3
warmup_steps = 2
log_every = 10
checkpoint_every = 100000
[parallel]
device = "cpu"
EOF
} > "$tmp/deck.toml"
export OPENDIT_BIN=$BIN OPENDIT_OUT=$tmp/out OPENDIT_DECK=$tmp/deck.toml OMP_NUM_THREADS=1
# The cluster's shape instead of the script's 2 x 8 GPUs; submitted from the repository root like a user does.
submit() {  # submit RUN_NAME: prints the job id
  (cd "$SRC" && sbatch --parsable --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --gpus-per-node=0 --time=10 \
    --chdir="$tmp" --output="$tmp/%x-$1-%j.out" jobs/dit_xl2_imagenet256.sbatch --set run.name="$1")
}
# The stopped job first; the reference (uninterrupted, same steps) runs while the stopped one waits to restart.
job=$(submit stopped) && jobs+=("$job") && ref=$(submit reference) && jobs+=("$ref")
check "sbatch takes the training job (jobs ${jobs[*]})" $? "$job $ref"
[ ${#jobs[@]} -eq 2 ] || { echo "jobs_slurm: $pass passed, $fail failed"; exit 1; }
log=$tmp/dit-xl2-in256-stopped-$job.out
ref_log=$tmp/dit-xl2-in256-reference-$ref.out

# Stop it once it trains (rank 0 has logged a step), as Slurm does 120 s before the time limit.
metrics=$tmp/out/stopped/metrics.jsonl
training() { [ -s "$metrics" ]; }
until_ok 90 training
check "the job starts training" $? "$(cat "$log" 2>&1; squeue 2>&1)"
scancel --signal=USR1 --batch "$job"
check "scancel --signal=USR1 --batch $job" $?

state() { scontrol -o show job "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
done_() { case "$(state "$1")" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) true ;; *) false ;; esac; }
until_ok 150 done_ "$job" && until_ok 60 done_ "$ref"
check "both jobs end within the time allowed" $? "$(squeue 2>&1; tail -20 "$log" "$ref_log" 2>&1)"
info=$(scontrol -o show job "$job")
out=$(cat "$log" 2>&1)

# The first run: 2 ranks, stopped on the signal with a checkpoint and exit status 75, then requeued by the script.
[ "$(grep -c "world 2 " <<<"$out")" -eq 2 ]
check "both runs of the job are a world of 2 (srun + PMIx)" $? "$out"
stopped=$(sed -n 's/^stopped at step \([0-9]*\) (exit status 75).*/\1/p' <<<"$out")
[ -n "$stopped" ] && [ "$stopped" -gt 0 ] && [ "$stopped" -lt $STEPS ]
check "opendit stopped at step $stopped of $STEPS with exit status 75" $? "$out"
grep -q "^opendit stopped with its work saved (exit status 75): requeueing job $job" <<<"$out"
check "the job script saw status 75 and requeued the job" $? "$out"
# The second run: restart 1, resumed from the stop's checkpoint, finished.
grep -q "restart 1$" <<<"$out" && grep -q "Restarts=1 " <<<"$info"
check "Slurm ran the job a second time (Restarts=1)" $? "$info"
ckpt=$(printf 'ckpt-%08d.h5' "${stopped:-0}")
grep -q "^resumed from .*/stopped/checkpoints/$ckpt: step $stopped " <<<"$out"
check "the requeued run resumed from $ckpt" $? "$out"
grep -q "JobState=COMPLETED .*ExitCode=0:0" <<<"$info" && [ "$(grep -c "^stopped at step" <<<"$out")" -eq 1 ]
check "the job completed (exit 0) after one stop" $? "$info"
grep -q "JobState=COMPLETED .*ExitCode=0:0" <<<"$(scontrol -o show job "$ref")"
check "the uninterrupted reference job completed" $? "$(cat "$ref_log")"

# The final weights equal the uninterrupted run's, bit for bit.
cmp_out=$("$PY" - "$tmp/out/stopped" "$tmp/out/reference" <<'EOF' 2>&1
import sys
from safetensors.torch import load_file
for w in ("model", "ema"):
    a, b = (load_file(f"{d}/{w}.safetensors") for d in sys.argv[1:3])
    assert a.keys() == b.keys() and a, f"{w}: tensor names differ or none"
    diff = [k for k in a if not (a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].equal(b[k]))]
    assert not diff, f"{w}: {len(diff)} of {len(a)} tensors differ, e.g. {diff[:3]}"
    print(f"{w}: {len(a)} tensors equal")
EOF
)
check "resumed weights (model, ema) equal the uninterrupted job's bit for bit" $? "$cmp_out"

if [ $fail -eq 0 ]; then
  grep -E "^(dit_xl2|stopped at|opendit stopped|resumed from|train done)" "$log"
else
  echo "--- job output"; cat "$log"; echo "--- slurmctld.log"; tail -20 "$tmp/slurmctld.log"
fi
echo "$SECONDS s"
echo "jobs_slurm: $pass passed, $fail failed"
[ $fail -eq 0 ]
