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
  if (options_.buckets.empty())
    for (std::size_t k = 0; k < dataset_->buckets().size(); ++k) options_.buckets.push_back(std::int64_t(k));
  std::int64_t n = 0, largest = 0;
  batches_ = 0;
  for (std::int64_t k : options_.buckets) {
    if (k < 0 || k >= std::int64_t(dataset_->buckets().size()))
      throw Error(cat(where, "no bucket ", k, " (the dataset has ", dataset_->buckets().size(), ")"));
    const auto nk = std::int64_t(dataset_->buckets()[k].rows.size());
    n += nk, largest = std::max(largest, nk);
    batches_ += options_.drop_last ? nk / global_batch : (nk + global_batch - 1) / global_batch;
  }
  if (batches_ == 0)
    throw Error(options_.buckets.size() > 1
                    ? cat(where, "no bucket holds as many samples as the global batch ", global_batch, " (the largest has ",
                          largest, ")")
                    : cat(where, "the dataset has ", n, " samples, fewer than the global batch ", global_batch));
  if (options_.prefetch < 0) throw Error(cat(where, "prefetch depth must be >= 0, found ", options_.prefetch));
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

DataLoader::EpochPlan DataLoader::plan(std::int64_t epoch) const {
  EpochPlan p;
  const bool one = options_.buckets.size() == 1;
  std::vector<std::vector<std::int64_t>> batches;  // several buckets: each batch's rows, then shuffled
  for (std::int64_t k : options_.buckets) {
    const std::vector<std::int64_t>& rows = dataset_->buckets()[k].rows;
    const auto nk = std::int64_t(rows.size());
    // One bucket: the seed as it is (a version-1 file keeps its order); more: a stream of its own per bucket.
    const at::Tensor perm = epoch_order(nk, one ? seed_ : splitmix64(seed_ ^ splitmix64(std::uint64_t(k) + 1)), epoch);
    const auto* q = perm.data_ptr<std::int64_t>();
    const std::int64_t full = nk / global_batch_, count = options_.drop_last ? full : (nk + global_batch_ - 1) / global_batch_;
    for (std::int64_t c = 0; c < count; ++c) {
      std::vector<std::int64_t> b;
      for (std::int64_t i = c * global_batch_; i < std::min(nk, (c + 1) * global_batch_); ++i) b.push_back(rows[q[i]]);
      batches.push_back(std::move(b));
    }
  }
  std::vector<std::int64_t> order(batches.size());
  for (std::size_t c = 0; c < order.size(); ++c) order[c] = std::int64_t(c);
  if (!one) {
    const at::Tensor shuffle = epoch_order(std::int64_t(batches.size()), splitmix64(seed_ ^ 0xB0C4E7B47C4E5ull), epoch);
    order.assign(shuffle.data_ptr<std::int64_t>(), shuffle.data_ptr<std::int64_t>() + shuffle.numel());
  }
  p.begin.push_back(0);
  for (std::int64_t c : order) {
    p.rows.insert(p.rows.end(), batches[c].begin(), batches[c].end());
    p.begin.push_back(std::int64_t(p.rows.size()));
  }
  return p;
}

// This rank's micro-slice of global batch `at`: a short batch (drop_last = false) is split as evenly as it goes, so
// some ranks may get one sample fewer, or none.
std::vector<std::int64_t> DataLoader::slice(const EpochPlan& plan, const LoaderState& at) const {
  const std::int64_t begin = plan.begin[at.cursor], size = plan.begin[at.cursor + 1] - begin;
  const std::int64_t lo = begin + size * dp_rank_ / dp_size_, hi = begin + size * (dp_rank_ + 1) / dp_size_;
  return {plan.rows.begin() + lo, plan.rows.begin() + hi};
}

std::vector<std::int64_t> DataLoader::indices(const LoaderState& at) const { return slice(plan(at.epoch), at); }

LatentBatch DataLoader::load(const LoaderState& at) {
  if (order_epoch_ != at.epoch) order_ = plan(at.epoch), order_epoch_ = at.epoch;
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
