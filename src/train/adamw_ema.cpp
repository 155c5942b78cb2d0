#include "train/adamw_ema.hpp"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "core/error.hpp"

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

AdamWShard slice(const AdamWShard& s, int64_t begin, int64_t n) {
  auto cut = [&](const at::Tensor& t) { return t.defined() ? t.narrow(0, begin, n) : t; };
  return {cut(s.param), cut(s.grad), cut(s.exp_avg), cut(s.exp_avg_sq), cut(s.ema), cut(s.decay_mask),
          cut(s.working)};
}

void step_range(const AdamWShard& s, const AdamWConfig& cfg, int64_t step, double clip_scale, double ema_decay) {
  const at::Tensor g = clip_scale == 1.0 ? s.grad : s.grad * clip_scale;
  if (cfg.weight_decay != 0) {
    const double keep = 1 - cfg.lr * cfg.weight_decay;
    if (s.decay_mask.defined())
      s.param.mul_(at::where(s.decay_mask, at::scalar_tensor(keep, s.param.options()),
                             at::scalar_tensor(1.0, s.param.options())));
    else
      s.param.mul_(keep);
  }
  s.exp_avg.lerp_(g, 1 - cfg.beta1);
  s.exp_avg_sq.mul_(cfg.beta2).addcmul_(g, g, 1 - cfg.beta2);
  const double bias_correction1 = 1 - std::pow(cfg.beta1, double(step));
  const double bias_correction2 = 1 - std::pow(cfg.beta2, double(step));
  const double step_size = cfg.lr / bias_correction1;
  const double bias_correction2_sqrt = std::pow(bias_correction2, 0.5);
  const at::Tensor denom = (s.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(cfg.eps);
  s.param.addcdiv_(s.exp_avg, denom, -step_size);
  if (s.ema.defined()) s.ema.mul_(ema_decay).add_(s.param, 1 - ema_decay);
  if (s.working.defined()) s.working.copy_(s.param);
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
  at::NoGradGuard no_grad;
  // Slices of a few MiB keep the temporaries (scaled grad, denominator) in cache and their memory bounded.
  const int64_t n = p.numel(), chunk = int64_t(1) << 20;
  for (int64_t b = 0; b < n; b += chunk)
    step_range(slice(shard, b, std::min(chunk, n - b)), cfg, step, clip_scale, ema_decay);
}

double clip_scale_for(double total_norm, double max_norm) {
  if (max_norm <= 0) return 1.0;
  return std::min(max_norm / (total_norm + 1e-6), 1.0);
}

}  // namespace opendit::train
