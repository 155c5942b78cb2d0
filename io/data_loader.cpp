// DataLoader: per-epoch permutations, dp micro-slices, a prefetch thread; see data_loader.hpp.
#include "io/data_loader.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/detail/CUDAHooksInterface.h>

#include "core/error.hpp"

namespace opendit::io {
namespace {

// SplitMix64: turns (seed, epoch) into well-spread generator seeds, so nearby seeds and epochs share nothing.
std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

DataLoader::DataLoader(std::shared_ptr<const LatentDataset> dataset, std::int64_t global_batch, int dp_rank,
                       int dp_size, std::uint64_t seed, DataLoaderOptions options)
    : dataset_(std::move(dataset)),
      global_batch_(global_batch),
      dp_rank_(dp_rank),
      dp_size_(dp_size),
      seed_(seed),
      options_(options) {
  if (!dataset_) throw Error("data loader: no dataset");
  const std::string where = cat("data loader for '", dataset_->path(), "': ");
  if (dp_size < 1 || dp_rank < 0 || dp_rank >= dp_size)
    throw Error(cat(where, "dp rank ", dp_rank, " outside [0, ", dp_size, ")"));
  if (global_batch < 1) throw Error(cat(where, "global batch must be >= 1, found ", global_batch));
  if (global_batch % dp_size != 0)
    throw Error(cat(where, "global batch ", global_batch, " is not divisible by the dp size ", dp_size));
  const std::int64_t n = dataset_->size();
  if (n < global_batch)
    throw Error(cat(where, "the dataset has ", n, " samples, fewer than the global batch ", global_batch));
  if (options_.prefetch < 0) throw Error(cat(where, "prefetch depth must be >= 0, found ", options_.prefetch));
  batches_ = options_.drop_last ? n / global_batch : (n + global_batch - 1) / global_batch;
  pin_ = options_.pin_memory && at::detail::getCUDAHooks().hasCUDA();
  if (options_.prefetch > 0) start_worker();
}

DataLoader::~DataLoader() { stop_worker(); }

at::Tensor DataLoader::epoch_order(std::int64_t n, std::uint64_t seed, std::int64_t epoch) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(splitmix64(seed ^ splitmix64(std::uint64_t(epoch))));
  return at::randperm(n, gen, at::TensorOptions().dtype(at::kLong));
}

LoaderState DataLoader::advance(LoaderState s) const {
  if (++s.cursor == batches_) ++s.epoch, s.cursor = 0;
  return s;
}

// This rank's micro-slice of global batch `at`: the last batch (drop_last = false) may be short and is split as
// evenly as it goes, so some ranks may get one sample fewer, or none.
std::vector<std::int64_t> DataLoader::slice(const at::Tensor& order, const LoaderState& at) const {
  const std::int64_t begin = at.cursor * global_batch_;
  const std::int64_t size = std::min(global_batch_, dataset_->size() - begin);
  const std::int64_t lo = begin + size * dp_rank_ / dp_size_, hi = begin + size * (dp_rank_ + 1) / dp_size_;
  const auto* p = order.data_ptr<std::int64_t>();
  return {p + lo, p + hi};
}

std::vector<std::int64_t> DataLoader::indices(const LoaderState& at) const {
  return slice(epoch_order(dataset_->size(), seed_, at.epoch), at);
}

LatentBatch DataLoader::load(const LoaderState& at) {
  if (order_epoch_ != at.epoch) order_ = epoch_order(dataset_->size(), seed_, at.epoch), order_epoch_ = at.epoch;
  return dataset_->read(slice(order_, at), pin_);
}

LatentBatch DataLoader::next() {
  if (!worker_.joinable()) {
    LatentBatch b = load(consumed_);
    consumed_ = advance(consumed_);
    return b;
  }
  std::unique_lock<std::mutex> lock(mutex_);
  cv_.wait(lock, [&] { return !queue_.empty(); });
  Slot& slot = queue_.front();
  if (slot.error) std::rethrow_exception(slot.error);  // kept in the queue: every later call reports it too
  LatentBatch b = std::move(slot.batch);
  queue_.pop_front();
  consumed_ = advance(consumed_);
  lock.unlock();
  cv_.notify_all();
  return b;
}

void DataLoader::restore(const LoaderState& state) {
  if (state.epoch < 0 || state.cursor < 0 || state.cursor >= batches_)
    throw Error(cat("data loader for '", dataset_->path(), "': cannot restore epoch ", state.epoch, " batch ",
                    state.cursor, " (", batches_, " batches per epoch)"));
  stop_worker();
  queue_.clear();
  consumed_ = produced_ = state;
  if (options_.prefetch > 0) start_worker();
}

void DataLoader::start_worker() {
  produced_ = consumed_;
  stop_ = false;
  worker_ = std::thread([this] { work(); });
}

void DataLoader::stop_worker() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

// Reads batches in order until the queue is full, then waits for next() to take one. An error ends the thread and
// waits in the queue for next() to rethrow it.
void DataLoader::work() {
  for (;;) {
    LoaderState at;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      cv_.wait(lock, [&] { return stop_ || queue_.size() < std::size_t(options_.prefetch); });
      if (stop_) return;
      at = produced_;
    }
    Slot slot{at, {}, nullptr};
    try {
      slot.batch = load(at);
    } catch (...) {
      slot.error = std::current_exception();
    }
    const bool failed = slot.error != nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stop_) return;
      queue_.push_back(std::move(slot));
      produced_ = advance(at);
    }
    cv_.notify_all();
    if (failed) return;
  }
}

}  // namespace opendit::io
