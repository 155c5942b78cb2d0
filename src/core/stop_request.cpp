#include "core/stop_request.hpp"

#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>
#include <stdexcept>

namespace opendit {

namespace {

constexpr int kSignals[] = {SIGTERM, SIGINT, SIGUSR1};
std::atomic<int> g_first{0};
std::atomic<bool> g_verbose{false}, g_installed{false};
struct sigaction g_previous[3];

void say(const char* a, const char* b, const char* c) {  // write(2) only: async-signal-safe
  for (const char* s : {a, b, c}) {
    const ssize_t n = ::write(STDERR_FILENO, s, std::strlen(s));
    (void)n;
  }
}

extern "C" void on_signal(int sig) {
  int none = 0;
  if (g_first.compare_exchange_strong(none, sig)) {
    if (g_verbose)
      say("\nopendit: ", signal_name(sig),
          " received: stopping after this step with a checkpoint (a second signal ends the job at once)\n");
    return;
  }
  if (g_verbose) say("\nopendit: ", signal_name(sig), " again: exiting now; the last complete checkpoint stands\n");
  ::_exit(128 + sig);
}

}  // namespace

const char* signal_name(int sig) {
  switch (sig) {
    case SIGTERM:
      return "SIGTERM";
    case SIGINT:
      return "SIGINT";
    case SIGUSR1:
      return "SIGUSR1";
    default:
      return "a signal";
  }
}

StopHandlers::StopHandlers(bool verbose) {
  if (g_installed.exchange(true)) throw std::logic_error("StopHandlers: already installed");
  g_first = 0;
  g_verbose = verbose;
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // the job's system calls go on; it checks requested() at its safe points
  for (int i = 0; i < 3; ++i) sigaction(kSignals[i], &sa, &g_previous[i]);
}

StopHandlers::~StopHandlers() {
  for (int i = 0; i < 3; ++i) sigaction(kSignals[i], &g_previous[i], nullptr);
  g_installed = false;
}

int StopHandlers::signal() const { return g_first.load(); }

}  // namespace opendit
