#include "diffusion/gaussian_diffusion.hpp"

#include <cmath>

#include "core/error.hpp"
#include "diffusion/likelihood.hpp"
#include "diffusion/schedule.hpp"

namespace opendit::diffusion {

GaussianDiffusion::GaussianDiffusion(const std::vector<double>& base_betas,
                                     const std::vector<int64_t>& kept_timesteps, bool learn_sigma)
    : learn_sigma_(learn_sigma) {
  const int64_t base_steps = static_cast<int64_t>(base_betas.size());
  for (int64_t i = 0; i < base_steps; ++i) {
    if (!(base_betas[i] > 0.0 && base_betas[i] <= 1.0)) {
      throw Error(cat("diffusion betas: expected every beta in (0, 1], found beta[", i, "] = ", base_betas[i]));
    }
  }
  std::vector<int64_t> kept = kept_timesteps;
  if (kept.empty()) {
    for (int64_t i = 0; i < base_steps; ++i) kept.push_back(i);
  }
  for (size_t k = 0; k < kept.size(); ++k) {
    if (kept[k] < 0 || kept[k] >= base_steps || (k > 0 && kept[k] <= kept[k - 1])) {
      throw Error(cat("diffusion timesteps: expected distinct ascending steps in [0, ", base_steps,
                      "), found ", kept[k], " at position ", k));
    }
  }
  if (kept.size() < 2) {
    throw Error(cat("diffusion: expected at least 2 timesteps, found ", kept.size()));
  }

  // The kept process: betas from the base cumulative products at the kept steps.
  double abar = 1.0, last_kept = 1.0;
  size_t next = 0;
  for (int64_t i = 0; i < base_steps && next < kept.size(); ++i) {
    abar *= 1.0 - base_betas[i];
    if (i == kept[next]) {
      betas_.push_back(1.0 - abar / last_kept);
      last_kept = abar;
      timestep_map_.push_back(i);
      ++next;
    }
  }

  const size_t n = betas_.size();
  alphas_cumprod_.resize(n);
  double prod = 1.0;
  for (size_t i = 0; i < n; ++i) {
    prod *= 1.0 - betas_[i];
    alphas_cumprod_[i] = prod;
  }
  alphas_cumprod_prev_.resize(n);
  alphas_cumprod_next_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    alphas_cumprod_prev_[i] = i == 0 ? 1.0 : alphas_cumprod_[i - 1];
    alphas_cumprod_next_[i] = i + 1 == n ? 0.0 : alphas_cumprod_[i + 1];
  }
  for (size_t i = 0; i < n; ++i) {
    const double a = alphas_cumprod_[i], a_prev = alphas_cumprod_prev_[i], b = betas_[i];
    sqrt_alphas_cumprod_.push_back(std::sqrt(a));
    sqrt_one_minus_alphas_cumprod_.push_back(std::sqrt(1.0 - a));
    sqrt_recip_alphas_cumprod_.push_back(std::sqrt(1.0 / a));
    sqrt_recipm1_alphas_cumprod_.push_back(std::sqrt(1.0 / a - 1.0));
    posterior_variance_.push_back(b * (1.0 - a_prev) / (1.0 - a));
    posterior_mean_coef1_.push_back(b * std::sqrt(a_prev) / (1.0 - a));
    posterior_mean_coef2_.push_back((1.0 - a_prev) * std::sqrt(1.0 - b) / (1.0 - a));
    log_betas_.push_back(std::log(b));
  }
  // The posterior variance is 0 at t = 0: its log takes t = 1's value there, and so does the fixed-large
  // variance (for a better decoder likelihood).
  for (size_t i = 0; i < n; ++i) {
    const size_t j = i == 0 ? 1 : i;
    posterior_log_variance_clipped_.push_back(std::log(posterior_variance_[j]));
    const double large = i == 0 ? posterior_variance_[1] : betas_[i];
    fixed_large_variance_.push_back(large);
    fixed_large_log_variance_.push_back(std::log(large));
  }
}

GaussianDiffusion::DeviceTables& GaussianDiffusion::DeviceTables::operator=(const DeviceTables&) {
  std::lock_guard<std::mutex> lock(mutex_);
  entries_.clear();
  return *this;
}

at::Tensor GaussianDiffusion::DeviceTables::get(const at::Tensor& host_view, at::Device device) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const Entry& e : entries_)
    if (e.data == host_view.data_ptr() && e.device == device) return e.values;
  entries_.push_back({host_view.data_ptr(), device, host_view.to(device)});
  return entries_.back().values;
}

at::Tensor GaussianDiffusion::table_on(const std::vector<double>& table, at::Device device) const {
  const at::Tensor view =
      at::from_blob(const_cast<double*>(table.data()), {static_cast<int64_t>(table.size())}, at::kDouble);
  return device.is_cpu() ? view : device_tables_.get(view, device);
}

at::Tensor GaussianDiffusion::table_on(const std::vector<int64_t>& table, at::Device device) const {
  const at::Tensor view =
      at::from_blob(const_cast<int64_t*>(table.data()), {static_cast<int64_t>(table.size())}, at::kLong);
  return device.is_cpu() ? view : device_tables_.get(view, device);
}

at::Tensor GaussianDiffusion::extract(const std::vector<double>& table, const at::Tensor& t,
                                      const at::Tensor& like) const {
  at::Tensor out = table_on(table, t.device()).index_select(0, t).to(like.scalar_type());
  std::vector<int64_t> shape(like.dim(), 1);
  shape[0] = t.size(0);
  return out.view(shape);
}

at::Tensor GaussianDiffusion::original_timesteps(const at::Tensor& t) const {
  return table_on(timestep_map_, t.device()).index_select(0, t);
}

void GaussianDiffusion::check_timesteps(const at::Tensor& t, const at::Tensor& x, const char* what) const {
  if (!t.defined() || t.dim() != 1 || t.scalar_type() != at::kLong || x.dim() < 1 || t.size(0) != x.size(0)) {
    throw Error(cat(what, ": expected timesteps as an int64 tensor [", x.dim() >= 1 ? x.size(0) : 0,
                    "] (one per sample), found ",
                    t.defined() ? cat(t.scalar_type(), " ", t.sizes()) : std::string("none")));
  }
  if (t.device().is_cpu() && t.numel() > 0) {  // elsewhere the check would cost a device sync
    const int64_t lo = t.min().item<int64_t>(), hi = t.max().item<int64_t>();
    if (lo < 0 || hi >= num_timesteps()) {
      throw Error(cat(what, ": expected timesteps in [0, ", num_timesteps(), "), found ", lo < 0 ? lo : hi));
    }
  }
}

at::Tensor GaussianDiffusion::call_model(const Denoiser& denoise_fn, const at::Tensor& x, const at::Tensor& t) const {
  at::Tensor out = denoise_fn(x, original_timesteps(t));
  const int64_t c = x.size(1), want = learn_sigma_ ? 2 * c : c;
  if (out.dim() != x.dim() || out.size(0) != x.size(0) || out.size(1) != want ||
      out.sizes().slice(2) != x.sizes().slice(2)) {
    throw Error(cat("diffusion model output: expected [", x.size(0), ", ", want, ", ...] matching x ", x.sizes(),
                    learn_sigma_ ? " (eps and variance channels)" : " (eps channels)", ", found ", out.sizes()));
  }
  return out.scalar_type() == x.scalar_type() ? out : out.to(x.scalar_type());
}

at::Tensor GaussianDiffusion::q_sample(const at::Tensor& x0, const at::Tensor& t, const at::Tensor& noise) const {
  check_timesteps(t, x0, "q_sample");
  return extract(sqrt_alphas_cumprod_, t, x0) * x0 + extract(sqrt_one_minus_alphas_cumprod_, t, x0) * noise;
}

MeanVariance GaussianDiffusion::q_posterior_mean_variance(const at::Tensor& x0, const at::Tensor& x_t,
                                                          const at::Tensor& t) const {
  check_timesteps(t, x_t, "q_posterior_mean_variance");
  MeanVariance out;
  out.mean = extract(posterior_mean_coef1_, t, x_t) * x0 + extract(posterior_mean_coef2_, t, x_t) * x_t;
  out.variance = extract(posterior_variance_, t, x_t).expand_as(x_t);
  out.log_variance = extract(posterior_log_variance_clipped_, t, x_t).expand_as(x_t);
  out.pred_xstart = x0;
  return out;
}

at::Tensor GaussianDiffusion::predict_xstart_from_eps(const at::Tensor& x_t, const at::Tensor& t,
                                                      const at::Tensor& eps) const {
  return extract(sqrt_recip_alphas_cumprod_, t, x_t) * x_t - extract(sqrt_recipm1_alphas_cumprod_, t, x_t) * eps;
}

at::Tensor GaussianDiffusion::predict_eps_from_xstart(const at::Tensor& x_t, const at::Tensor& t,
                                                      const at::Tensor& x0) const {
  return (extract(sqrt_recip_alphas_cumprod_, t, x_t) * x_t - x0) / extract(sqrt_recipm1_alphas_cumprod_, t, x_t);
}

MeanVariance GaussianDiffusion::p_mean_variance(const at::Tensor& model_output, const at::Tensor& x_t,
                                                const at::Tensor& t, bool clip_denoised) const {
  check_timesteps(t, x_t, "p_mean_variance");
  const int64_t c = x_t.size(1);
  const int64_t want = learn_sigma_ ? 2 * c : c;
  if (model_output.dim() != x_t.dim() || model_output.size(0) != x_t.size(0) || model_output.size(1) != want) {
    throw Error(cat("p_mean_variance: expected a model output [", x_t.size(0), ", ", want, ", ...], found ",
                    model_output.sizes()));
  }
  MeanVariance out;
  at::Tensor eps = model_output;
  if (learn_sigma_) {
    eps = model_output.narrow(1, 0, c);
    const at::Tensor v = model_output.narrow(1, c, c);
    const at::Tensor min_log = extract(posterior_log_variance_clipped_, t, x_t);
    const at::Tensor max_log = extract(log_betas_, t, x_t);
    const at::Tensor frac = (v + 1) / 2;  // v in [-1, 1] spans [posterior variance, beta_t]
    out.log_variance = frac * max_log + (1 - frac) * min_log;
    out.variance = at::exp(out.log_variance);
  } else {
    out.variance = extract(fixed_large_variance_, t, x_t).expand_as(x_t);
    out.log_variance = extract(fixed_large_log_variance_, t, x_t).expand_as(x_t);
  }
  out.pred_xstart = predict_xstart_from_eps(x_t, t, eps);
  if (clip_denoised) out.pred_xstart = out.pred_xstart.clamp(-1, 1);
  out.mean = q_posterior_mean_variance(out.pred_xstart, x_t, t).mean;
  return out;
}

Losses GaussianDiffusion::training_losses(const Denoiser& denoise_fn, const at::Tensor& x0, const at::Tensor& t,
                                          const at::Tensor& noise) const {
  check_timesteps(t, x0, "training_losses");
  if (!noise.defined() || noise.sizes() != x0.sizes()) {
    throw Error(cat("training_losses: expected noise of x0's shape ", x0.sizes(), ", found ",
                    noise.defined() ? cat(noise.sizes()) : std::string("none")));
  }
  const at::Tensor x_t = q_sample(x0, t, noise);
  const at::Tensor out = call_model(denoise_fn, x_t, t);
  const int64_t c = x0.size(1);
  const at::Tensor eps = out.narrow(1, 0, c);

  Losses losses;
  const at::Tensor err = eps - noise;
  losses.mse = mean_flat(err * err);
  if (!learn_sigma_) {
    losses.vb = at::zeros_like(losses.mse);
    losses.loss = losses.mse;
    return losses;
  }
  // The VB term trains only the variance: the mean comes from the detached eps.
  const at::Tensor frozen = at::cat({eps.detach(), out.narrow(1, c, c)}, 1);
  const MeanVariance model = p_mean_variance(frozen, x_t, t, /*clip_denoised=*/false);
  const MeanVariance truth = q_posterior_mean_variance(x0, x_t, t);
  const double ln2 = std::log(2.0);
  const at::Tensor kl = mean_flat(normal_kl(truth.mean, truth.log_variance, model.mean, model.log_variance)) / ln2;
  const at::Tensor nll =
      -mean_flat(discretized_gaussian_log_likelihood(x0, model.mean, 0.5 * model.log_variance)) / ln2;
  const at::Tensor at_zero = (t == 0).to(kl.device());
  // DiT's create_diffusion uses LossType.MSE: the VB term is not rescaled by num_timesteps / 1000 (which is 1
  // for the 1000-step training DiT does anyway).
  losses.vb = at::where(at_zero, nll, kl);
  losses.loss = losses.mse + losses.vb;
  return losses;
}

GaussianDiffusion make_diffusion(const std::string& respacing, const std::string& schedule, int steps,
                                 bool learn_sigma) {
  return GaussianDiffusion(betas_for(schedule, steps), space_timesteps(steps, respacing), learn_sigma);
}

}  // namespace opendit::diffusion
