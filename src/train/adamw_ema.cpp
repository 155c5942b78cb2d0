#include "train/adamw_ema.hpp"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "core/error.hpp"
#include "cuda/ops.hpp"

namespace opendit::train {
namespace {

void check(const at::Tensor& t, const at::Tensor& like, const char* role, bool must_be_f32) {
  if (!t.defined()) return;
  if (t.dim() != 1 || t.numel() != like.numel() || t.device() != like.device() || !t.is_contiguous())
    throw std::invalid_argument(cat("adamw_ema_step: ", role, " is ", t.sizes(), " on ", t.device().str(),
                                    ", expected a contiguous [", like.numel(), "] on ", like.device().str()));
  if (must_be_f32 && t.scalar_type() != at::kFloat)
    throw std::invalid_argument(cat("adamw_ema_step: ", role, " is ", t.scalar_type(), ", expected float32"));
}

void check_shard(const AdamWShard& shard) {
  const at::Tensor& p = shard.param;
  if (!p.defined() || !shard.grad.defined() || !shard.exp_avg.defined() || !shard.exp_avg_sq.defined())
    throw std::invalid_argument("adamw_ema_step: param, grad, exp_avg and exp_avg_sq are required");
  check(p, p, "param", true);
  check(shard.grad, p, "grad", true);
  check(shard.exp_avg, p, "exp_avg", true);
  check(shard.exp_avg_sq, p, "exp_avg_sq", true);
  check(shard.ema, p, "ema", true);
  check(shard.decay_mask, p, "decay_mask", false);
  check(shard.working, p, "working", false);
  if (shard.decay_mask.defined() && shard.decay_mask.scalar_type() != at::kBool)
    throw std::invalid_argument("adamw_ema_step: decay_mask must be bool");
}

kernels::AdamWScalars fixed_scalars(const AdamWConfig& cfg) {
  kernels::AdamWScalars k;
  k.lr = cfg.lr, k.beta1 = cfg.beta1, k.beta2 = cfg.beta2, k.eps = cfg.eps, k.weight_decay = cfg.weight_decay;
  return k;
}

// One fused pass on the GPU; the ATen definition (cuda/reference.cpp) elsewhere.
void run(const AdamWShard& shard, const kernels::AdamWScalars& k, const at::Tensor& scalars) {
  kernels::adamw_ema({shard.param, shard.grad, shard.exp_avg, shard.exp_avg_sq, shard.ema, shard.decay_mask,
                      shard.working, scalars},
                     k);
}

}  // namespace

std::array<double, 4> adamw_step_scalars(const AdamWConfig& cfg, int64_t step, double ema_decay) {
  if (step < 1) throw std::invalid_argument(cat("adamw_ema_step: step ", step, " < 1"));
  return {cfg.lr, cfg.lr / (1 - std::pow(cfg.beta1, double(step))),
          std::pow(1 - std::pow(cfg.beta2, double(step)), 0.5), ema_decay};
}

void adamw_ema_step(const AdamWShard& shard, const AdamWConfig& cfg, int64_t step, double clip_scale,
                    double ema_decay) {
  check_shard(shard);
  const std::array<double, 4> v = adamw_step_scalars(cfg, step, ema_decay);
  kernels::AdamWScalars k = fixed_scalars(cfg);
  k.step_size = v[1], k.bias_correction2_sqrt = v[2], k.ema_decay = v[3], k.clip_scale = clip_scale;
  run(shard, k, at::Tensor());
}

void adamw_ema_step(const AdamWShard& shard, const AdamWConfig& cfg, const at::Tensor& scalars) {
  check_shard(shard);
  if (!scalars.defined() || scalars.dim() != 1 || scalars.numel() != kernels::kDynCount ||
      scalars.scalar_type() != at::kDouble || scalars.device() != shard.param.device())
    throw std::invalid_argument(cat("adamw_ema_step: scalars must be a float64 [", int64_t(kernels::kDynCount),
                                    "] on ", shard.param.device().str()));
  run(shard, fixed_scalars(cfg), scalars.contiguous());
}

double clip_scale_for(double total_norm, double max_norm) {
  if (max_norm <= 0) return 1.0;
  return std::min(max_norm / (total_norm + 1e-6), 1.0);
}

}  // namespace opendit::train
