#include "train/dp_optimizer.hpp"

#include <ATen/core/grad_mode.h>

#include <cmath>
#include <stdexcept>

#include "core/error.hpp"
#include "cuda/ops.hpp"

namespace opendit::train {

DpStrategy parse_dp_strategy(const std::string& name) {
  if (name == "ddp") return DpStrategy::Ddp;
  if (name == "zero1") return DpStrategy::Zero1;
  if (name == "zero2") return DpStrategy::Zero2;
  throw CollectiveError(cat("unknown data-parallel strategy '", name, "': expected ddp, zero1 or zero2"));
}

const char* dp_strategy_name(DpStrategy s) {
  switch (s) {
    case DpStrategy::Ddp: return "ddp";
    case DpStrategy::Zero1: return "zero1";
    default: return "zero2";
  }
}

// Where weight decay applies inside `r`: undefined when it applies everywhere (or nowhere matters: decay 0).
static at::Tensor decay_mask_for(const FlatLayout& layout, FlatRange r, double weight_decay, at::Device device) {
  bool any_skipped = false;
  for (const FlatEntry& e : layout.entries()) any_skipped = any_skipped || !e.decay;
  if (weight_decay == 0 || !any_skipped) return {};
  at::Tensor mask = at::zeros({r.size()}, at::TensorOptions(at::kBool));
  for (const auto& p : layout.pieces(r))
    if (layout.entries()[p.entry].decay) mask.narrow(0, p.flat - r.begin, p.count).fill_(true);
  return mask.to(device);
}

DataParallelOptimizer::DataParallelOptimizer(FlatParams& params, parallel::Communicator& comm,
                                             const DataParallelOptions& opts)
    : params_(params), comm_(comm), opts_(opts) {
  if (params.world() != comm.size() || params.rank() != comm.rank())
    throw std::invalid_argument(cat("DataParallelOptimizer: parameters sharded for rank ", params.rank(), " of ",
                                    params.world(), ", communicator is rank ", comm.rank(), " of ", comm.size()));
  if (params.data().device().type() != comm.device().type())
    throw std::invalid_argument(cat("DataParallelOptimizer: parameters on ", params.data().device().str(),
                                    ", communicator on ", comm.device().str()));
  range_ = sharded() ? params.own() : FlatRange{0, params.data().numel()};
  at::Tensor master = params.data().narrow(0, range_.begin, range_.size());
  exp_avg_ = at::zeros_like(master);
  exp_avg_sq_ = at::zeros_like(master);
  if (opts.ema) ema_ = master.clone();
  decay_mask_ = decay_mask_for(params.layout(), range_, opts.adamw.weight_decay, master.device());
  // A world of one reduces nothing: its gradient shard is the flat gradient itself (no second copy in memory).
  if (opts.strategy == DpStrategy::Zero2)
    grad_shard_ = comm.size() == 1 ? params.grad().narrow(0, range_.begin, range_.size()) : at::zeros_like(master);
}

StepStats DataParallelOptimizer::step() {
  reduce_grads();
  StepStats s;
  s.grad_norm = global_grad_norm();
  s.clip_scale = clip_scale_for(s.grad_norm, opts_.max_grad_norm);
  update(s.clip_scale);
  gather_params();
  return s;
}

void DataParallelOptimizer::reduce_grads() {
  if (comm_.size() == 1) return;  // the average over one rank
  if (opts_.strategy == DpStrategy::Zero2)
    comm_.reduce_scatter(grad_shard_, params_.grad(), parallel::ReduceOp::Avg);
  else
    comm_.all_reduce(params_.grad(), parallel::ReduceOp::Avg);
}

at::Tensor DataParallelOptimizer::grad_range() {
  if (opts_.strategy == DpStrategy::Zero2) return grad_shard_;
  return params_.grad().narrow(0, range_.begin, range_.size());
}

double DataParallelOptimizer::global_grad_norm() {
  return std::sqrt(grad_stats(at::Tensor()).cpu().data_ptr<double>()[0]);
}

at::Tensor DataParallelOptimizer::grad_stats(const at::Tensor& loss) {
  // Per-rank norm in float32 (torch's own reduction), squared and summed over the group in float64 on the device
  // (the square of a float32 is exact in float64, so one rank's norm comes back unchanged).
  const at::Tensor sum_sq = at::linalg_vector_norm(grad_range(), 2).to(at::kDouble).square().reshape({1});
  const at::Tensor more = loss.defined() ? loss.detach().to(sum_sq.device(), at::kDouble).reshape({1})
                                         : at::zeros({1}, sum_sq.options());
  at::Tensor stats = at::cat({sum_sq, more});  // [2]
  if (comm_.size() > 1) {
    if (sharded())
      comm_.all_reduce(stats, parallel::ReduceOp::Sum);
    else  // ddp: every rank holds the whole averaged gradient already
      comm_.all_reduce(stats.narrow(0, 1, 1), parallel::ReduceOp::Sum);
  }
  return stats;
}

AdamWShard DataParallelOptimizer::shard() {
  AdamWShard s;
  s.param = params_.data().narrow(0, range_.begin, range_.size());
  s.grad = grad_range();
  s.exp_avg = exp_avg_;
  s.exp_avg_sq = exp_avg_sq_;
  s.ema = ema_;
  s.decay_mask = decay_mask_;
  if (params_.working().defined()) s.working = params_.working().narrow(0, range_.begin, range_.size());
  return s;
}

void DataParallelOptimizer::update(double clip_scale) {
  ++step_;
  adamw_ema_step(shard(), opts_.adamw, step_, clip_scale, opts_.ema_decay);
}

void DataParallelOptimizer::set_ema_every(int64_t every) {
  if (every < 1) throw std::invalid_argument(cat("DataParallelOptimizer: ema_every ", every, " < 1"));
  ema_every_ = every;
}

void DataParallelOptimizer::stage_update(bool behind) {
  auto scalars = [&](int64_t t) {
    return adamw_step_scalars(opts_.adamw, t, t % ema_every_ == 0 ? opts_.ema_decay : 1.0);
  };
  const std::array<double, 4> applied = scalars(step_ + 1 + (behind ? 1 : 0)), skipped = scalars(step_ + 1);
  const std::array<double, 8> v = {applied[0], applied[1], applied[2], applied[3],
                                   skipped[0], skipped[1], skipped[2], skipped[3]};
  const at::Device device = params_.data().device();
  if (!scalars_.defined()) {
    const auto o = at::TensorOptions(at::kDouble).device(device);
    scalars_ = at::zeros({kernels::kDynCount}, o);  // skip flag 0: "the previous update was applied"
    staged_ = at::zeros({2, 4}, o);
  }
  at::Tensor host = at::tensor(at::ArrayRef<double>(v.data(), v.size()), at::kDouble).view({2, 4});
  if (device.is_cuda()) host = host.pin_memory();
  staged_.copy_(host, /*non_blocking=*/true);
}

void DataParallelOptimizer::update(const at::Tensor& stats) {
  if (!scalars_.defined()) throw std::logic_error("DataParallelOptimizer::update(stats) before stage_update()");
  at::NoGradGuard no_grad;
  // This update's lr, bias corrections and EMA decay: the candidate that the previous update's skip flag (still in
  // scalars_) selects. Without a step queued behind it, both candidates are the same.
  const at::Tensor previous_skipped = scalars_.narrow(0, kernels::kDynSkip, 1).ne(0);
  scalars_.narrow(0, kernels::kDynLr, 4).copy_(at::where(previous_skipped, staged_[1], staged_[0]));
  const at::Tensor norm_sq = stats.narrow(0, 0, 1), loss = stats.narrow(0, 1, 1);
  // clip_scale_for() on the device, in the same float64 operations.
  at::Tensor clip = at::ones_like(norm_sq);
  if (opts_.max_grad_norm > 0)
    clip = at::full_like(norm_sq, opts_.max_grad_norm).div_(norm_sq.sqrt().add_(1e-6)).clamp_max_(1.0);
  scalars_.narrow(0, kernels::kDynClip, 1).copy_(clip);
  scalars_.narrow(0, kernels::kDynSkip, 1).copy_((at::isfinite(norm_sq) & at::isfinite(loss)).logical_not());
  adamw_ema_step(shard(), opts_.adamw, scalars_);
}

void DataParallelOptimizer::gather_params() {
  if (!sharded() || comm_.size() == 1) return;  // one rank: the update wrote the whole buffer
  // In place: this rank's shard already sits at its offset of the buffer. With a working copy only that is
  // gathered (half the bytes); data() outside the own shard is then stale, gather_full_master() assembles it.
  const at::Tensor& full = params_.working().defined() ? params_.working() : params_.data();
  comm_.all_gather(full, full.narrow(0, range_.begin, range_.size()));
}

at::Tensor DataParallelOptimizer::gather(const at::Tensor& shard) {
  at::Tensor full = at::empty({params_.data().numel()}, shard.options());
  comm_.all_gather(full, shard);
  return full;
}

at::Tensor DataParallelOptimizer::gather_full_ema() {
  if (!ema_.defined()) throw std::logic_error("gather_full_ema: the optimizer keeps no EMA");
  return sharded() ? gather(ema_) : ema_.clone();
}

at::Tensor DataParallelOptimizer::gather_full_master() {
  at::Tensor master = params_.data().narrow(0, range_.begin, range_.size());
  return sharded() ? gather(master) : master.clone();
}

}  // namespace opendit::train
