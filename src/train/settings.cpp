#include "train/settings.hpp"

#include <cmath>

#include "core/error.hpp"

namespace opendit::train {

double TrainSettings::lr_at(int64_t step) const {
  const double peak = dp.adamw.lr;
  if (step < warmup_steps) return peak * double(step + 1) / double(warmup_steps);
  if (lr_schedule == "cosine") {
    double span = std::max<int64_t>(1, steps - warmup_steps);
    double progress = std::min(1.0, double(step - warmup_steps) / span);
    return min_lr + 0.5 * (peak - min_lr) * (1 + std::cos(M_PI * progress));
  }
  return peak;
}

TrainSettings train_settings_from(const config::Deck& deck, int dp_size) {
  TrainSettings s;
  s.run_name = deck.get_string("run.name");
  s.out_dir = deck.get_string("run.out_dir");
  s.seed = static_cast<uint64_t>(deck.get_int("run.seed"));
  s.data_path = deck.get_string("data.path");
  s.global_batch = deck.get_int("data.global_batch");
  s.prefetch = static_cast<int>(deck.get_int("data.prefetch"));
  s.steps = deck.get_int("train.steps");
  s.accumulation = deck.get_int("train.accumulation");
  s.bf16 = deck.get_string("train.precision") == "bf16";
  s.activation_checkpointing = deck.get_bool("train.activation_checkpointing");
  s.checkpoint_blocks = deck.get_int("train.checkpoint_blocks");
  s.profile_step = deck.get_int("train.profile_step");
  s.cuda_graph = deck.get_bool("train.cuda_graph");
  s.run_ahead = deck.get_bool("train.run_ahead");
  s.lr_schedule = deck.get_string("train.lr_schedule");
  s.warmup_steps = deck.get_int("train.warmup_steps");
  s.min_lr = deck.get_float("train.min_lr");
  s.log_every = deck.get_int("train.log_every");
  s.checkpoint_every = deck.get_int("train.checkpoint_every");
  s.keep_checkpoints = deck.get_int("train.keep_checkpoints");
  s.async_checkpoint = deck.get_bool("train.async_checkpoint");
  s.max_nonfinite = deck.get_int("train.max_nonfinite_steps");
  s.dp.strategy = parse_dp_strategy(deck.get_string("parallel.strategy"));
  s.dp.adamw.lr = deck.get_float("train.lr");
  s.dp.adamw.beta1 = deck.get_float("train.beta1");
  s.dp.adamw.beta2 = deck.get_float("train.beta2");
  s.dp.adamw.eps = deck.get_float("train.eps");
  s.dp.adamw.weight_decay = deck.get_float("train.weight_decay");
  s.dp.max_grad_norm = deck.get_float("train.grad_clip");
  s.dp.ema = true;
  s.dp.ema_decay = deck.get_float("train.ema_decay");
  s.ema_every = deck.get_int("train.ema_every");
  if (s.data_path.empty()) throw Error("data.path is not set: training needs a dataset (an opendit.latents HDF5 file)");
  if (s.global_batch % (int64_t(dp_size) * s.accumulation) != 0)
    throw Error(cat("data.global_batch = ", s.global_batch, " must be a multiple of the data-parallel size (", dp_size,
                    ") x train.accumulation (", s.accumulation, ")"));
  if (s.min_lr > s.dp.adamw.lr) throw Error(cat("train.min_lr (", s.min_lr, ") exceeds train.lr (", s.dp.adamw.lr, ")"));
  return s;
}

}  // namespace opendit::train
