// Batches of a LatentDataset for data-parallel training.
//
// Every epoch visits the samples in a permutation seeded by (seed, epoch). Global batch b is the slice
// [b * B, (b + 1) * B) of that permutation; it is split into dp_size contiguous micro-slices and dp rank r reads only
// slice r. A dataset of several buckets (opendit.latents v2: shapes) is batched bucket by bucket: each bucket's rows
// in their own seeded permutation cut into global batches, and the batches of all buckets in a seeded order, so
// that every batch has one shape. With one bucket this is exactly the single permutation above. Ranks of one sequence-parallel group pass the same dp_rank and so get the same samples. Concatenating
// the micro-batches of ranks 0..dp_size-1 gives exactly what a single rank reads with the same seed.
//
// With prefetch > 0 a background thread reads the next batches into a bounded queue while the caller computes.
// Batches stay on the host (pinned when asked and CUDA is there); the caller copies them to its device.
//
//   DataLoader loader(dataset, 256, mesh.coord().dp_rank, mesh.dp_size(), seed);
//   LatentBatch b = loader.next();               // [256 / dp_size, C, H, W] float32
//   LoaderState s = loader.state();              // save with the checkpoint ...
//   loader.restore(s);                           // ... and continue with exactly the next batch
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "io/latent_dataset.hpp"

namespace opendit::io {

// Where a loader stands: the next batch next() returns is batch `cursor` of epoch `epoch`.
struct LoaderState {
  std::int64_t epoch = 0;
  std::int64_t cursor = 0;  // batches consumed in this epoch
  bool operator==(const LoaderState& o) const { return epoch == o.epoch && cursor == o.cursor; }
};

struct DataLoaderOptions {
  bool drop_last = true;    // false: the last, partial global batch too, split as evenly as it goes
  int prefetch = 4;         // batches read ahead by a background thread; 0: read in next()
  bool pin_memory = false;  // pinned host memory for the float tensors (ignored without CUDA)
  std::vector<std::int64_t> buckets;  // the buckets to draw from (LatentDataset::buckets()); empty: all
};

class DataLoader {
 public:
  DataLoader(std::shared_ptr<const LatentDataset> dataset, std::int64_t global_batch, int dp_rank, int dp_size,
             std::uint64_t seed, DataLoaderOptions options = {});
  ~DataLoader();  // stops and joins the prefetch thread, also mid-epoch
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  LatentBatch next();  // this rank's part of the next global batch; epochs roll over
  LoaderState state() const { return consumed_; }
  void restore(const LoaderState& state);

  std::int64_t batches_per_epoch() const { return batches_; }
  std::int64_t global_batch() const { return global_batch_; }
  std::int64_t local_batch() const { return global_batch_ / dp_size_; }  // the last batch may be smaller (!drop_last)
  bool pinned() const { return pin_; }

  // The rows batch `at` gives this rank, in batch order.
  std::vector<std::int64_t> indices(const LoaderState& at) const;
  // The permutation of [0, n) for one epoch: at::randperm on a CPU generator seeded from (seed, epoch).
  static at::Tensor epoch_order(std::int64_t n, std::uint64_t seed, std::int64_t epoch);

 private:
  // One epoch's global batches: batch c holds rows[begin[c], begin[c + 1]) (all of one bucket).
  struct EpochPlan {
    std::vector<std::int64_t> rows, begin;
  };
  EpochPlan plan(std::int64_t epoch) const;
  LoaderState advance(LoaderState s) const;
  std::vector<std::int64_t> slice(const EpochPlan& plan, const LoaderState& at) const;
  LatentBatch load(const LoaderState& at);  // the worker's (or next()'s) read, with a cached permutation
  void start_worker();
  void stop_worker();
  void work();

  std::shared_ptr<const LatentDataset> dataset_;
  std::int64_t global_batch_, batches_;
  int dp_rank_, dp_size_;
  std::uint64_t seed_;
  DataLoaderOptions options_;
  bool pin_;
  LoaderState consumed_;  // what next() returns next

  // Only load() touches these: the worker thread when prefetching, the caller otherwise.
  std::int64_t order_epoch_ = -1;
  EpochPlan order_;

  // The prefetch queue.
  struct Slot {
    LoaderState at;
    LatentBatch batch;
    std::exception_ptr error;
  };
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Slot> queue_;
  LoaderState produced_;  // what the worker reads next
  bool stop_ = false;
  std::thread worker_;
};

}  // namespace opendit::io
