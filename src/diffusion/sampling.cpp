// The samplers of GaussianDiffusion: one ancestral (DDPM) or DDIM step, and the loops over all steps.
#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "core/error.hpp"
#include "diffusion/gaussian_diffusion.hpp"

namespace opendit::diffusion {
namespace {

// 1 where t != 0, else 0, shaped [N, 1, ...] in x's dtype.
at::Tensor nonzero_mask(const at::Tensor& t, const at::Tensor& x) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[0] = t.size(0);
  return (t != 0).to(x.scalar_type()).view(shape);
}

void check_noise(const at::Tensor& noise, const at::Tensor& x, const char* what) {
  if (!noise.defined() || noise.sizes() != x.sizes()) {
    throw Error(cat(what, ": expected noise of x's shape ", x.sizes(), ", found ",
                    noise.defined() ? cat(noise.sizes()) : std::string("none")));
  }
}

// The per-step noise of a sampling loop: `steps` draws of standard normal noise of x's shape and dtype, in loop
// order, each identical to at::randn(x.sizes(), generator) on the generator's device (an undefined generator: the
// default one of x's device). When the generator is on the CPU and x on a GPU, it draws a chunk of steps ahead
// into pinned memory and sends the chunk with one non-blocking copy, so that no step waits for a host-to-device
// copy (one per step would be a host sync per step). It never draws more than `steps`, so the generator ends in
// the state that one draw per step leaves.
class StepNoise {
 public:
  StepNoise(const at::Tensor& x, at::Generator generator, int64_t steps)
      : x_(x), generator_(std::move(generator)), left_(steps) {}

  at::Tensor next() {
    if (left_ <= 0) throw Error("sampling loop: asked for more noise draws than steps");
    at::Tensor z = draw();
    --left_;
    return z;
  }

 private:
  at::Tensor draw() {
    if (!generator_.defined()) return at::randn(x_.sizes(), x_.options());
    const at::Device gen_device = generator_.device();
    if (gen_device == x_.device()) return at::randn(x_.sizes(), generator_, x_.options());
    if (!gen_device.is_cpu() || x_.device().is_cpu()) {
      return at::randn(x_.sizes(), generator_, x_.options().device(gen_device)).to(x_.device());
    }
    if (used_ == chunk_.size(0)) refill();
    return chunk_[used_++];
  }

  // Draws the next min(left_, a chunk) steps on the CPU and sends them to x's device.
  void refill() {
    // A few steps at a time: the first chunk delays the first step, and a chunk's memory stays small.
    constexpr int64_t kChunkSteps = 16, kChunkBytes = 64ll << 20;
    const int64_t per_step = std::max<int64_t>(1, x_.numel() * x_.element_size());
    const int64_t n = std::min({left_, kChunkSteps, std::max<int64_t>(1, kChunkBytes / per_step)});
    std::vector<int64_t> shape{n};
    shape.insert(shape.end(), x_.sizes().begin(), x_.sizes().end());
    at::Tensor host = at::empty(shape, x_.options().device(at::kCPU).pinned_memory(true));  // [n, N, C, ...]
    for (int64_t k = 0; k < n; ++k) host[k].copy_(at::randn(x_.sizes(), generator_, x_.options().device(at::kCPU)));
    // The caching host allocator keeps `host` from reuse until this copy has finished.
    chunk_ = host.to(x_.device(), /*non_blocking=*/true);
    used_ = 0;
  }

  at::Tensor x_;
  at::Generator generator_;
  int64_t left_;  // draws not made yet
  at::Tensor chunk_ = at::empty({0});
  int64_t used_ = 0;
};

void check_start(const at::Tensor& noise, const char* what) {
  if (!noise.defined() || noise.dim() < 2) {
    throw Error(cat(what, ": expected starting noise [N, C, ...], found ",
                    noise.defined() ? cat(noise.sizes()) : std::string("none")));
  }
}

}  // namespace

StepResult GaussianDiffusion::p_sample(const Denoiser& denoise_fn, const at::Tensor& x, const at::Tensor& t,
                                       const at::Tensor& noise, bool clip_denoised) const {
  check_timesteps(t, x, "p_sample");
  check_noise(noise, x, "p_sample");
  const MeanVariance out = p_mean_variance(call_model(denoise_fn, x, t), x, t, clip_denoised);
  StepResult step;
  step.sample = out.mean + nonzero_mask(t, x) * at::exp(0.5 * out.log_variance) * noise.to(x.scalar_type());
  step.pred_xstart = out.pred_xstart;
  return step;
}

StepResult GaussianDiffusion::ddim_sample(const Denoiser& denoise_fn, const at::Tensor& x, const at::Tensor& t,
                                          double eta, const at::Tensor& noise, bool clip_denoised) const {
  check_timesteps(t, x, "ddim_sample");
  if (!(eta >= 0.0)) throw Error(cat("DDIM eta: expected a value >= 0, found ", eta));
  if (eta > 0.0) check_noise(noise, x, "ddim_sample");
  const MeanVariance out = p_mean_variance(call_model(denoise_fn, x, t), x, t, clip_denoised);
  // Re-derived, so that a clipped pred_xstart stays consistent with eps.
  const at::Tensor eps = predict_eps_from_xstart(x, t, out.pred_xstart);
  const at::Tensor abar = extract(alphas_cumprod_, t, x);
  const at::Tensor abar_prev = extract(alphas_cumprod_prev_, t, x);
  const at::Tensor sigma = eta * at::sqrt((1 - abar_prev) / (1 - abar)) * at::sqrt(1 - abar / abar_prev);
  StepResult step;
  step.sample = out.pred_xstart * at::sqrt(abar_prev) + at::sqrt(1 - abar_prev - sigma * sigma) * eps;
  if (eta > 0.0) step.sample = step.sample + nonzero_mask(t, x) * sigma * noise.to(x.scalar_type());
  step.pred_xstart = out.pred_xstart;
  return step;
}

at::Tensor GaussianDiffusion::p_sample_loop(const Denoiser& denoise_fn, const at::Tensor& noise,
                                            at::Generator generator, const StepCallback& on_step,
                                            bool clip_denoised) const {
  check_start(noise, "p_sample_loop");
  at::NoGradGuard no_grad;
  const int total = static_cast<int>(num_timesteps());
  at::Tensor x = noise;
  StepNoise draws(x, generator, num_timesteps() - 1);
  for (int64_t i = num_timesteps() - 1; i >= 0; --i) {
    const at::Tensor t = at::full({x.size(0)}, i, x.options().dtype(at::kLong));
    const at::Tensor z = i > 0 ? draws.next() : at::zeros_like(x);
    x = p_sample(denoise_fn, x, t, z, clip_denoised).sample;
    if (on_step) on_step(total - static_cast<int>(i), total);
  }
  return x;
}

at::Tensor GaussianDiffusion::ddim_sample_loop(const Denoiser& denoise_fn, const at::Tensor& noise, double eta,
                                               at::Generator generator, const StepCallback& on_step,
                                               bool clip_denoised) const {
  check_start(noise, "ddim_sample_loop");
  if (!(eta >= 0.0)) throw Error(cat("DDIM eta: expected a value >= 0, found ", eta));
  at::NoGradGuard no_grad;
  const int total = static_cast<int>(num_timesteps());
  at::Tensor x = noise;
  StepNoise draws(x, generator, eta > 0.0 ? num_timesteps() - 1 : 0);
  for (int64_t i = num_timesteps() - 1; i >= 0; --i) {
    const at::Tensor t = at::full({x.size(0)}, i, x.options().dtype(at::kLong));
    at::Tensor z;
    if (eta > 0.0) z = i > 0 ? draws.next() : at::zeros_like(x);
    x = ddim_sample(denoise_fn, x, t, eta, z, clip_denoised).sample;
    if (on_step) on_step(total - static_cast<int>(i), total);
  }
  return x;
}

}  // namespace opendit::diffusion
