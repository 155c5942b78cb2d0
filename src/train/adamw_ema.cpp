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

}  // namespace

void adamw_ema_step(const AdamWShard& shard, const AdamWConfig& cfg, int64_t step, double clip_scale,
                    double ema_decay) {
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
  if (step < 1) throw std::invalid_argument(cat("adamw_ema_step: step ", step, " < 1"));
  kernels::AdamWScalars k;
  k.lr = cfg.lr, k.beta1 = cfg.beta1, k.beta2 = cfg.beta2, k.eps = cfg.eps, k.weight_decay = cfg.weight_decay;
  k.step_size = cfg.lr / (1 - std::pow(cfg.beta1, double(step)));
  k.bias_correction2_sqrt = std::pow(1 - std::pow(cfg.beta2, double(step)), 0.5);
  k.clip_scale = clip_scale, k.ema_decay = ema_decay;
  // One fused pass on the GPU; the ATen definition (cuda/reference.cpp) elsewhere.
  kernels::adamw_ema({shard.param, shard.grad, shard.exp_avg, shard.exp_avg_sq, shard.ema, shard.decay_mask,
                      shard.working},
                     k);
}

double clip_scale_for(double total_norm, double max_norm) {
  if (max_norm <= 0) return 1.0;
  return std::min(max_norm / (total_norm + 1e-6), 1.0);
}

}  // namespace opendit::train
