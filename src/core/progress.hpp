// A progress line on stderr: a live bar with rate and ETA when stderr is a terminal, otherwise a plain line at
// every 10% (so that batch logs stay readable).
#pragma once
#include <chrono>
#include <string>

namespace opendit {

class Progress {
 public:
  Progress(std::string label, int64_t total, bool enabled = true);
  void update(int64_t done);  // done in [0, total]; the rate counts from the first update's done
  void finish();              // final line with the elapsed time

 private:
  std::string label_;
  int64_t total_, last_decile_ = -1, base_ = -1;
  bool enabled_, tty_, finished_ = false;
  std::chrono::steady_clock::time_point start_;
};

std::string format_duration(double seconds);

inline double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}  // "42s", "3m05s", "2h07m"

}  // namespace opendit
