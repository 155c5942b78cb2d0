// Preemption: SIGTERM, SIGINT and SIGUSR1 (Slurm's time limit and preemption, `--signal=B:USR1@120`, Ctrl-C) ask a
// long job to stop at its next safe point instead of dying with everything since its last checkpoint.
//
//   StopHandlers handlers(rank == 0);          // the first signal is noted, a second one exits at once
//   while (...) { if (handlers.requested()) break; ... }
//
// The first signal only records its number (a handler may do nothing else safely); the job decides when to stop
// (train/trainer.cpp: all ranks agree after each step, write a checkpoint and exit with kExitStopped). A second
// signal means "now": the process exits at once with status 128 + signal, as an unhandled signal would, and the
// files being written are left as .tmp (removed by the next run). Handlers are process-wide: one StopHandlers at a
// time; the previous dispositions come back when it is destroyed.
#pragma once

namespace opendit {

// The exit status of a job that stopped on a signal after saving its state: EX_TEMPFAIL of <sysexits.h>, "try
// again". The jobs in jobs/ requeue themselves on it; `--resume auto` then continues.
inline constexpr int kExitStopped = 75;

class StopHandlers {
 public:
  // verbose: this process prints the one-line notice of each signal (rank 0 of a job).
  explicit StopHandlers(bool verbose);
  ~StopHandlers();
  StopHandlers(const StopHandlers&) = delete;
  StopHandlers& operator=(const StopHandlers&) = delete;

  int signal() const;  // the first signal received (SIGTERM, ...), or 0
  bool requested() const { return signal() != 0; }
};

// "SIGTERM" for SIGTERM, ...
const char* signal_name(int sig);

}  // namespace opendit
