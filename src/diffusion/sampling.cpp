// The samplers of GaussianDiffusion: one ancestral (DDPM) or DDIM step, and the loops over all steps.
#include <cmath>
#include <optional>

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

// Standard normal noise of x's shape and dtype from the generator, on the generator's device, then on x's.
at::Tensor draw_noise(const at::Tensor& x, const at::Generator& generator) {
  if (!generator.defined()) return at::randn(x.sizes(), x.options());
  const at::Device gen_device = generator.device();
  at::Tensor z = at::randn(x.sizes(), generator, x.options().device(gen_device));
  return gen_device == x.device() ? z : z.to(x.device());
}

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
                                            at::Generator generator, const Progress& progress,
                                            bool clip_denoised) const {
  check_start(noise, "p_sample_loop");
  at::NoGradGuard no_grad;
  const int total = static_cast<int>(num_timesteps());
  at::Tensor x = noise;
  for (int64_t i = num_timesteps() - 1; i >= 0; --i) {
    const at::Tensor t = at::full({x.size(0)}, i, x.options().dtype(at::kLong));
    const at::Tensor z = i > 0 ? draw_noise(x, generator) : at::zeros_like(x);
    x = p_sample(denoise_fn, x, t, z, clip_denoised).sample;
    if (progress) progress(total - static_cast<int>(i), total);
  }
  return x;
}

at::Tensor GaussianDiffusion::ddim_sample_loop(const Denoiser& denoise_fn, const at::Tensor& noise, double eta,
                                               at::Generator generator, const Progress& progress,
                                               bool clip_denoised) const {
  check_start(noise, "ddim_sample_loop");
  if (!(eta >= 0.0)) throw Error(cat("DDIM eta: expected a value >= 0, found ", eta));
  at::NoGradGuard no_grad;
  const int total = static_cast<int>(num_timesteps());
  at::Tensor x = noise;
  for (int64_t i = num_timesteps() - 1; i >= 0; --i) {
    const at::Tensor t = at::full({x.size(0)}, i, x.options().dtype(at::kLong));
    at::Tensor z;
    if (eta > 0.0) z = i > 0 ? draw_noise(x, generator) : at::zeros_like(x);
    x = ddim_sample(denoise_fn, x, t, eta, z, clip_denoised).sample;
    if (progress) progress(total - static_cast<int>(i), total);
  }
  return x;
}

}  // namespace opendit::diffusion
