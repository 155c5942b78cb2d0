// Work ahead of the consumer, in order: `opendit encode` decodes and preprocesses files on CPU threads while the GPU
// encodes the batch before. OrderedPrefetch runs work(i) for i = 0 .. n-1 on worker threads, keeps at most `ahead`
// finished or running items beyond the one the consumer waits for (bounded memory), and hands results over strictly in
// index order. An exception thrown by work(i) is rethrown by the next() that reaches i. The destructor stops the
// workers (items not yet started are never run) and waits for the running ones.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "core/error.hpp"

namespace opendit::encode {

template <typename T>
class OrderedPrefetch {
 public:
  OrderedPrefetch(int64_t n, int threads, int64_t ahead, std::function<T(int64_t)> work)
      : n_(n), ahead_(ahead), work_(std::move(work)) {
    if (n < 0 || threads < 1 || ahead < 1)
      throw Error(cat("prefetch: needs n >= 0, threads >= 1 and ahead >= 1, got ", n, ", ", threads, ", ", ahead));
    for (int t = 0; t < threads; ++t) workers_.emplace_back([this] { run(); });
  }
  ~OrderedPrefetch() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : workers_) t.join();
  }
  OrderedPrefetch(const OrderedPrefetch&) = delete;
  OrderedPrefetch& operator=(const OrderedPrefetch&) = delete;

  // The result of the next index, waiting for it; nullopt after the last.
  std::optional<T> next() {
    std::unique_lock<std::mutex> lock(mu_);
    if (consumed_ == n_) return std::nullopt;
    cv_.wait(lock, [&] { return done_.count(consumed_) != 0; });
    Slot slot = std::move(done_.at(consumed_));
    done_.erase(consumed_++);
    lock.unlock();
    cv_.notify_all();  // a worker may claim one more
    if (slot.error) std::rethrow_exception(slot.error);
    return std::move(slot.value);
  }

 private:
  struct Slot {
    std::optional<T> value;
    std::exception_ptr error;
  };

  void run() {
    for (;;) {
      int64_t i;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || claimed_ == n_ || claimed_ - consumed_ < ahead_; });
        if (stop_ || claimed_ == n_) return;
        i = claimed_++;
      }
      Slot slot;
      try {
        slot.value.emplace(work_(i));
      } catch (...) {
        slot.error = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        done_.emplace(i, std::move(slot));
      }
      cv_.notify_all();
    }
  }

  const int64_t n_, ahead_;
  std::function<T(int64_t)> work_;
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t claimed_ = 0, consumed_ = 0;
  bool stop_ = false;
  std::map<int64_t, Slot> done_;
  std::vector<std::thread> workers_;
};

}  // namespace opendit::encode
