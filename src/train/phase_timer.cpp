#include "train/phase_timer.hpp"

#include <cstdio>

namespace opendit::train {

void PhaseTimer::set_enabled(bool on) {
  if (on && !enabled_) {
    if (sync_) sync_();
    mark_ = now();
    ++timed_steps_;
  } else if (on) {
    ++timed_steps_;
  }
  enabled_ = on;
}

void PhaseTimer::switch_to(Phase p) {
  if (enabled_ && sync_) sync_();
  auto t = now();
  if (enabled_ || current_ == Phase::Checkpoint)
    total_[static_cast<int>(current_)] += std::chrono::duration<double>(t - mark_).count();
  mark_ = t;
  current_ = p;
}

double PhaseTimer::total() const {
  double s = 0;
  for (double x : total_) s += x;
  return s;
}

std::string PhaseTimer::report(const parallel::ProcessGroup& group) {
  switch_to(current_);  // account for the time up to now
  static const char* names[kPhases] = {"data wait", "forward", "backward", "communication", "optimizer",
                                       "graph replay", "checkpoint", "other"};
  const std::vector<double> mine(total_.begin(), total_.end());
  const std::vector<double> mn = group.all_reduce(mine, parallel::ReduceOp::Min);
  const std::vector<double> mx = group.all_reduce(mine, parallel::ReduceOp::Max);
  const std::vector<double> sum = group.all_reduce(mine, parallel::ReduceOp::Sum);
  const int size = group.size();
  double all = 0;
  for (double s : sum) all += s / size;
  std::string out = "phase             min (s)     avg (s)     max (s)   % total\n";
  char line[128];
  for (int i = 0; i < kPhases; ++i) {
    if (i == static_cast<int>(Phase::Graph) && sum[i] == 0) continue;  // eager runs: no replays
    double avg = sum[i] / size;
    std::snprintf(line, sizeof line, "%-14s %10.3f  %10.3f  %10.3f   %6.1f%%\n", names[i], mn[i], avg, mx[i],
                  all > 0 ? 100 * avg / all : 0.0);
    out += line;
  }
  std::snprintf(line, sizeof line, "%-14s %10s  %10.3f\n", "total", "", all);
  return out + line;
}

}  // namespace opendit::train
