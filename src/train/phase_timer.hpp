// Where the time of a training run goes: wall time per phase, summed over steps, reported at the end as a table
// of min/avg/max over ranks and the share of the total (the LAMMPS habit).
#pragma once
#include <array>
#include <chrono>
#include <functional>
#include <string>

#include "parallel/process_group.hpp"

namespace opendit::train {

// Graph: a whole step replayed as one CUDA graph (forward, backward, communication and optimizer inseparable).
enum class Phase { Data, Forward, Backward, Comm, Optimizer, Graph, Checkpoint, Other };
constexpr int kPhases = 8;

class PhaseTimer {
 public:
  // `sync` waits for the device, so that GPU work is charged to the phase that queued it.
  explicit PhaseTimer(std::function<void()> sync = nullptr) : sync_(std::move(sync)) { mark_ = now(); }
  // Charges the time since the last switch to the current phase, then makes `p` current.
  void switch_to(Phase p);
  // Disabled: switches neither synchronize nor charge time (except checkpoint time, which is host-bound and
  // always charged). Enabling synchronizes and starts a timed step.
  void set_enabled(bool on);
  int64_t timed_steps() const { return timed_steps_; }
  double seconds(Phase p) const { return total_[static_cast<int>(p)]; }
  double total() const;
  // Collective over `group`: the table, for rank 0 to print.
  std::string report(const parallel::ProcessGroup& group);

 private:
  static std::chrono::steady_clock::time_point now() { return std::chrono::steady_clock::now(); }
  std::function<void()> sync_;
  std::chrono::steady_clock::time_point mark_;
  Phase current_ = Phase::Other;
  bool enabled_ = true;
  int64_t timed_steps_ = 0;
  std::array<double, kPhases> total_{};
};

}  // namespace opendit::train
