#include "parallel/watchdog.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace opendit::parallel {

namespace {

using Clock = std::chrono::steady_clock;

struct State {
  std::mutex mu;
  std::condition_variable wake;
  struct Entry {
    const char* what;
    long long number;
    Clock::time_point since;
    std::thread::id thread;
  };
  std::vector<Entry> open;  // in the order opened; each thread's own entries nest
  double timeout = 0;
  int rank = 0;
  bool running = false, quit = false;
  std::thread thread;
};

State& state() {
  static State* s = new State;  // never destroyed: the thread may outlive static destruction
  return *s;
}

std::atomic<bool> g_on{false};

void watch_loop() {
  State& s = state();
  std::unique_lock<std::mutex> lock(s.mu);
  while (!s.quit) {
    s.wake.wait_for(lock, std::chrono::seconds(1));
    if (s.quit || s.open.empty() || s.timeout <= 0) continue;
    // The oldest open watch of any thread, named by that thread's innermost one.
    const State::Entry& outer = s.open.front();
    const double age = std::chrono::duration<double>(Clock::now() - outer.since).count();
    if (age < s.timeout) continue;
    const State::Entry* inner = &outer;
    for (const auto& e : s.open)
      if (e.thread == outer.thread) inner = &e;
    auto name = [](const State::Entry& e) {
      return e.number >= 0 ? std::string(e.what) + " " + std::to_string(e.number) : std::string(e.what);
    };
    std::string what = name(*inner);
    if (inner != &outer) what += " (in " + name(outer) + ")";
    std::fprintf(stderr,
                 "\nopendit: error on rank %d: watchdog: %s has not finished after %.0f s (parallel.watchdog_s = "
                 "%g): another rank has stopped or hangs, or the device or filesystem does not answer; ending the "
                 "job (the newest complete checkpoint stands)\n",
                 s.rank, what.c_str(), age, s.timeout);
    std::fflush(stderr);
    std::_Exit(1);
  }
}

}  // namespace

void Watchdog::start(double timeout_s, int rank) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.timeout = timeout_s;
  s.rank = rank;
  g_on = timeout_s > 0;
  if (g_on && !s.running) {
    s.quit = false;
    s.running = true;
    s.thread = std::thread(watch_loop);
  }
}

void Watchdog::stop() {
  State& s = state();
  {
    std::lock_guard<std::mutex> lock(s.mu);
    g_on = false;
    if (!s.running) return;
    s.quit = true;
    s.running = false;
  }
  s.wake.notify_all();
  s.thread.join();
}

double Watchdog::timeout_s() { return g_on ? state().timeout : 0; }

Watch::Watch(const char* what, long long number) {
  if (!g_on) return;
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.open.push_back({what, number, Clock::now(), std::this_thread::get_id()});
  open_ = true;
}

Watch::~Watch() {
  if (!open_) return;
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  const auto me = std::this_thread::get_id();
  for (auto it = s.open.rbegin(); it != s.open.rend(); ++it)
    if (it->thread == me) {
      s.open.erase(std::next(it).base());
      break;
    }
}

}  // namespace opendit::parallel
