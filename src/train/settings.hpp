// The training settings of a deck ([run], [data], [train], [parallel]), validated once, and the LR schedule.
#pragma once
#include <cstdint>
#include <string>

#include "config/deck.hpp"
#include "train/dp_optimizer.hpp"

namespace opendit::train {

struct TrainSettings {
  std::string run_name, out_dir, data_path;
  uint64_t seed = 0;
  int64_t global_batch = 256, steps = 1000, accumulation = 1, warmup_steps = 0, log_every = 10;
  int64_t checkpoint_blocks = 0, profile_step = 0;
  int64_t ema_every = 1, checkpoint_every = 1000, keep_checkpoints = 3, max_nonfinite = 5;
  int prefetch = 4;
  bool bf16 = true, activation_checkpointing = false, async_checkpoint = true, cuda_graph = true, run_ahead = true;
  std::string lr_schedule = "constant";
  double min_lr = 0;
  DataParallelOptions dp;  // strategy, AdamW, clipping, EMA

  std::string run_dir() const { return out_dir + "/" + run_name; }
  double lr_at(int64_t step) const;  // step counts from 0 (the first update)
};

// Reads and checks the training keys; `dp_size` is the mesh's data-parallel size (the global batch must split
// evenly into dp_size x accumulation micro-batches).
TrainSettings train_settings_from(const config::Deck& deck, int dp_size);

}  // namespace opendit::train
