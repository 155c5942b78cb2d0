// The data-parallel optimizer over one dp group: gradient synchronisation (DDP, ZeRO-1, ZeRO-2), global-norm
// clipping, the AdamW+EMA update of this rank's range, and the parameter all-gather.
//
//             gradient                         optimizer state + EMA      parameters after the update
//   ddp       all-reduce (avg) the whole grad  whole buffer, every rank   already everywhere
//   zero1     all-reduce (avg) the whole grad  own shard [r*S, (r+1)*S)   all-gather the shards
//   zero2     reduce-scatter (avg) to the shard own shard                 all-gather the shards
//
// The EMA lives exactly where the optimizer state does and is never communicated while training;
// gather_full_ema() assembles it for export. The gradient norm is global: each rank's sum of squares over the
// part it owns, all-reduced over the group (ddp: the whole averaged gradient, the same on every rank).
// step() runs the phases in order; they are public so that bucketed, overlapped versions can replace them.
#pragma once
#include <ATen/ATen.h>

#include <string>
#include <utility>

#include "parallel/communicator.hpp"
#include "train/adamw_ema.hpp"
#include "train/flat_params.hpp"

namespace opendit::train {

enum class DpStrategy { Ddp, Zero1, Zero2 };
DpStrategy parse_dp_strategy(const std::string& name);  // "ddp", "zero1", "zero2"; else opendit::CollectiveError
const char* dp_strategy_name(DpStrategy s);

struct DataParallelOptions {
  DpStrategy strategy = DpStrategy::Zero2;
  AdamWConfig adamw;
  double max_grad_norm = 0.0;  // 0: no clipping
  bool ema = true;
  double ema_decay = 0.9999;
};

struct StepStats {
  double grad_norm = 0;   // global L2 norm of the averaged gradient, before clipping
  double clip_scale = 1;  // the factor the gradient was multiplied by
};

class DataParallelOptimizer {
 public:
  // `params` were built for comm.size() ranks with this rank's comm.rank(), on comm's device. The EMA starts as a
  // copy of the parameters (DiT's update_ema(ema, model, decay=0)).
  DataParallelOptimizer(FlatParams& params, parallel::Communicator& comm, const DataParallelOptions& opts);

  // One optimizer step from this rank's local gradient in params.grad(); every rank of the group calls it.
  StepStats step();

  // The phases of step().
  void reduce_grads();             // ddp/zero1: params.grad() averaged in place; zero2: own shard into grad_shard
  double global_grad_norm();       // collective for zero1/zero2
  // Collective, device work only: float64 [2] on the device, {the squared global gradient norm, `loss` summed over
  // the group} (loss: a scalar on the device, e.g. the step's loss; undefined: 0). The trainer reads it once per step.
  at::Tensor grad_stats(const at::Tensor& loss);
  void update(double clip_scale);  // AdamW + EMA over state_range(); advances step_count()
  // The update as device work only, so that a CUDA graph can replay it. stage_update() copies the host's scalars of
  // update step_count() + 1 (lr, bias corrections, EMA decay) to the device (outside a graph: they change every
  // step); update(stats) derives the clip factor from grad_stats() on the device and skips the update altogether
  // (parameters, moments and EMA untouched) when the norm or the loss is not finite; commit_update() advances
  // step_count() once the host has read the stats and knows whether the update was applied.
  // behind = true: the previous step is still queued, its stats unread. Its update is number step_count() + 1 if it
  // is applied, so both candidates for this one are staged (step_count() + 2 and + 1) and update(stats) takes the
  // one that the previous update's skip flag, on the device, selects: the host can queue a step before it has read
  // the previous one's stats, and the result is the same as if it had waited.
  void stage_update(bool behind = false);
  void update(const at::Tensor& stats);
  void commit_update(bool applied) { step_ += applied ? 1 : 0; }
  void gather_params();            // zero1/zero2: the updated shards into params.data(), or working() if any

  // Collective: the whole EMA / master weights [padded] on every rank, for export.
  at::Tensor gather_full_ema();
  at::Tensor gather_full_master();

  // The optimizer state of this rank, for checkpoints: tensors [state_range().size()] covering state_range().
  FlatRange state_range() const { return range_; }
  at::Tensor& exp_avg() { return exp_avg_; }
  at::Tensor& exp_avg_sq() { return exp_avg_sq_; }
  at::Tensor& ema() { return ema_; }  // undefined without EMA
  int64_t step_count() const { return step_; }
  void set_step_count(int64_t step) { step_ = step; }
  const DataParallelOptions& options() const { return opts_; }
  void set_lr(double lr) { opts_.adamw.lr = lr; }  // the schedule's value for the next update
  // stage_update(): the EMA moves on updates number k * every only (train.ema_every); the decay of others is 1.
  void set_ema_every(int64_t every);

 private:
  bool sharded() const { return opts_.strategy != DpStrategy::Ddp; }
  at::Tensor grad_range();  // the averaged gradient over state_range()
  AdamWShard shard();       // what the update reads and writes
  at::Tensor gather(const at::Tensor& shard);

  FlatParams& params_;
  parallel::Communicator& comm_;
  DataParallelOptions opts_;
  FlatRange range_;
  at::Tensor exp_avg_, exp_avg_sq_, ema_, decay_mask_, grad_shard_;
  at::Tensor scalars_;  // float64 [kernels::kDynCount] on the device: update(stats)'s per-step scalars
  at::Tensor staged_;   // float64 [2, 4] on the device: stage_update()'s candidates (previous update applied, skipped)
  int64_t ema_every_ = 1;
  int64_t step_ = 0;
};

}  // namespace opendit::train
