// The watchdog: a long job never hangs silently. Code that waits on other ranks or on the device (a collective, a
// training step, a checkpoint save) marks what it waits for with a Watch; a thread checks once a second, and when
// a Watch has been open longer than the timeout, it prints "rank R: watchdog: WHAT has not finished after N s"
// and ends the process with status 1 (mpirun and srun --kill-on-bad-exit then end the job). A rank that died or
// hangs elsewhere shows up as the others waiting in their collective: each rank names its own wait.
//
//   Watchdog::start(deck.get_float("parallel.watchdog_s"), rank);   // 0: off
//   { Watch w("MPI_Allreduce"); ... }   { Watch w("training step", step); ... }   // "training step 1234"
//
// Watches nest (a step holds the collectives inside it): the innermost is named, the outermost's age counts. Each
// thread's watches nest on their own (a background checkpoint writer beside the training loop).
#pragma once
#include <string>

namespace opendit::parallel {

class Watchdog {
 public:
  // Starts (or re-arms with a new timeout) the watchdog thread; timeout_s <= 0 turns it off.
  static void start(double timeout_s, int rank);
  static void stop();
  static double timeout_s();  // 0 when off
};

class Watch {
 public:
  // `what` must outlive the Watch (a literal); `number` >= 0 is printed after it. Cheap when the watchdog is off.
  explicit Watch(const char* what, long long number = -1);
  ~Watch();
  Watch(const Watch&) = delete;
  Watch& operator=(const Watch&) = delete;

 private:
  bool open_ = false;
};

}  // namespace opendit::parallel
