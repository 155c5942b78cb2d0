# Shared by the long jobs (training, encoding): run one opendit command on every task through srun so that a stop
# before the time limit (or a preemption) requeues the job instead of losing it. Source it, then
#   srun_requeueable "$OPENDIT_BIN" train ... --resume auto     # (the command must continue with --resume)
# and `exit` with what it returns. The job needs `#SBATCH --signal=B:USR1@120`, `--requeue`, `--open-mode=append`.
#
# --wait, not --kill-on-bad-exit: the ranks of a stopped job all exit 75, and killing the last ones when the first has
# exited would turn that status into 143; a rank that dies alone takes the others down after 60 s.
# srun runs in the background so that this shell can take signals while it waits (bash holds a trap until its
# foreground command ends).
srun_requeueable() {
  srun --wait=60 --cpu-bind=cores "$@" &
  local step=$! status=0
  # Slurm's USR1 before the time limit (or scancel --signal=USR1|TERM --batch) reaches the batch shell only: pass it
  # on as USR1, which srun forwards to every rank (srun answers TERM itself by killing the ranks).
  trap 'kill -USR1 "$step" 2>/dev/null || true' USR1 TERM
  # A trapped signal interrupts `wait` (status 128+n) while srun runs on: wait until srun has really ended.
  while :; do
    status=0
    wait "$step" || status=$?
    kill -0 "$step" 2>/dev/null || break
  done
  # 75 (EX_TEMPFAIL): opendit stopped on a signal with its work saved. Requeue: Slurm ends this run and starts the
  # job again later (same job id and arguments, SLURM_RESTART_COUNT + 1). Return 0 if we are still running then,
  # so that a stop that was handled is not counted as a failure; 75 when the requeue is refused.
  if [ "$status" -eq 75 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    echo "opendit stopped with its work saved (exit status 75): requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID" && return 0
    echo "scontrol requeue $SLURM_JOB_ID failed: submit the job again to continue" >&2
  fi
  return "$status"
}
