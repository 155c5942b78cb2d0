// AdamW (decoupled weight decay, as torch.optim.AdamW) followed by DiT's EMA update, over flat float32 shards.
//
// adamw_ema_step checks the shard and runs kernels::adamw_ema (cuda/ops.hpp): one fused pass on the GPU that reads
// param, grad, exp_avg, exp_avg_sq and ema and writes param, exp_avg, exp_avg_sq, ema and the bf16 working copy;
// its ATen definition elsewhere. Both follow torch's order of operations (torch/optim/adam.py, _single_tensor_adam):
//   g = grad * clip_scale
//   param *= 1 - lr * weight_decay                 (where the decay mask is true)
//   exp_avg.lerp_(g, 1 - beta1)
//   exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * g * g
//   param -= lr / (1 - beta1^step) * exp_avg / (sqrt(exp_avg_sq) / sqrt(1 - beta2^step) + eps)
//   ema = ema * ema_decay + (1 - ema_decay) * param        (DiT's update_ema, after the update)
//   working = param rounded to working's dtype
#pragma once
#include <ATen/ATen.h>

#include <array>

namespace opendit::train {

struct AdamWConfig {
  double lr = 1e-4, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weight_decay = 0.0;  // DiT trains with 0
};

// One rank's range of the optimizer: 1-D tensors of one length on one device.
struct AdamWShard {
  at::Tensor param;                // float32 master weights (updated)
  at::Tensor grad;                 // float32, read only (scaled by clip_scale on the way in)
  at::Tensor exp_avg, exp_avg_sq;  // float32 moments (updated)
  at::Tensor ema;                  // float32 EMA weights (updated); undefined: no EMA
  at::Tensor decay_mask;           // bool, false where weight decay is skipped; undefined: decay everywhere
  at::Tensor working;              // any float dtype, overwritten with param; undefined: none
};

// `step` counts updates from 1 (torch's state["step"] after its increment); `clip_scale` multiplies the gradient
// (clip_scale_for() below, 1 without clipping). Throws std::invalid_argument on mismatched tensors.
void adamw_ema_step(const AdamWShard& shard, const AdamWConfig& cfg, int64_t step, double clip_scale,
                    double ema_decay);

// The same with the step's scalars on the device (cuda/ops.hpp, AdamWDynamic: float64 [6] {lr, step_size,
// bias_correction2_sqrt, ema_decay, clip_scale, skip}; cfg.lr is not read), so that a CUDA graph can replay it: no
// host value of the update changes from step to step. skip != 0 leaves the shard untouched.
void adamw_ema_step(const AdamWShard& shard, const AdamWConfig& cfg, const at::Tensor& scalars);

// The host's part of those scalars for update number `step` (from 1): {lr, lr / (1 - beta1^step),
// sqrt(1 - beta2^step), ema_decay}, exactly as the other overload derives them.
std::array<double, 4> adamw_step_scalars(const AdamWConfig& cfg, int64_t step, double ema_decay);

// torch.nn.utils.clip_grad_norm_'s factor: min(max_norm / (total_norm + 1e-6), 1); 1 when max_norm <= 0 (off).
double clip_scale_for(double total_norm, double max_norm);

}  // namespace opendit::train
