#include "core/progress.hpp"

#include <unistd.h>

#include <cstdio>

namespace opendit {

std::string format_duration(double s) {
  char buf[32];
  long t = static_cast<long>(s + 0.5);
  if (t < 60) std::snprintf(buf, sizeof buf, "%lds", t);
  else if (t < 3600) std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
  return buf;
}

Progress::Progress(std::string label, int64_t total, bool enabled)
    : label_(std::move(label)), total_(total > 0 ? total : 1), enabled_(enabled), tty_(isatty(STDERR_FILENO)),
      start_(std::chrono::steady_clock::now()) {}

void Progress::update(int64_t done) {
  if (!enabled_) return;
  if (base_ < 0) base_ = done;  // a resumed job starts part-way: its rate counts only the work done here
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  double rate = elapsed > 0 ? (done - base_) / elapsed : 0;
  std::string eta = rate > 0 ? format_duration((total_ - done) / rate) : "?";
  if (tty_) {
    const int width = 30;
    int filled = static_cast<int>(width * done / total_);
    std::fprintf(stderr, "\r%s [%s%s] %lld/%lld  %.2f it/s  ETA %s ", label_.c_str(), std::string(filled, '#').c_str(),
                 std::string(width - filled, '.').c_str(), (long long)done, (long long)total_, rate, eta.c_str());
  } else {
    int64_t decile = 10 * done / total_;
    if (decile == last_decile_) return;
    last_decile_ = decile;
    std::fprintf(stderr, "%s %lld/%lld (%lld%%)  %.2f it/s  ETA %s\n", label_.c_str(), (long long)done,
                 (long long)total_, (long long)(100 * done / total_), rate, eta.c_str());
  }
  std::fflush(stderr);
}

void Progress::finish() {
  if (!enabled_ || finished_) return;
  finished_ = true;
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  std::fprintf(stderr, "%s%s done in %s\n", tty_ ? "\n" : "", label_.c_str(), format_duration(elapsed).c_str());
}

}  // namespace opendit
