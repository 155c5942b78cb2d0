// Gaussian diffusion for training and sampling DiT (the DDPM/IDDPM process as facebookresearch/DiT uses it):
// epsilon prediction, a learned-range variance (or DiT's fixed "large" variance without it), the MSE + VB
// training loss, ancestral DDPM and DDIM sampling, and timestep respacing.
//
// Conventions:
//  - Tensors are [N, C, ...]; timesteps t are int64 [N] indices into THIS (possibly respaced) diffusion,
//    0 .. num_timesteps() - 1. The network is always called with the ORIGINAL base-process indices
//    (timestep_map()[t]), never rescaled.
//  - Coefficient tables are float64; each is gathered at t, cast to x's dtype and only then used, as the
//    reference does; so float32 inputs run in float32 and float64 inputs run entirely in float64.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

namespace opendit::diffusion {

// The network: (x_t [N, C, ...], original timesteps int64 [N]) -> [N, C, ...] (eps) or [N, 2C, ...] (eps, v)
// with v in [-1, 1] selecting the log-variance between the posterior's and beta_t's.
using Denoiser = std::function<at::Tensor(const at::Tensor& x, const at::Tensor& t_original)>;
// Called after each sampling step with (steps done, total steps).
using StepCallback = std::function<void(int step, int total)>;

struct MeanVariance {
  at::Tensor mean, variance, log_variance, pred_xstart;  // each of x's shape
};
struct StepResult {
  at::Tensor sample, pred_xstart;
};
// Per-sample [N] terms: loss = mse + vb. vb is in bits per dimension (unscaled, as DiT's LossType.MSE);
// it is all zeros when the diffusion does not learn sigma.
struct Losses {
  at::Tensor loss, mse, vb;
};

class GaussianDiffusion {
 public:
  // base_betas: the betas of the base process (betas_for). kept_timesteps: the base steps to keep, ascending
  // and distinct (space_timesteps); empty keeps all. The kept process has betas 1 - abar_i / abar_{i-1} from the
  // base cumulative products at the kept steps. learn_sigma: the model outputs 2C channels and the variance is
  // learned in range; otherwise the variance is fixed to DiT's FIXED_LARGE (beta_t, with t = 0 taking the
  // posterior variance of t = 1). Throws opendit::Error on invalid betas or timesteps, or fewer than 2 steps.
  GaussianDiffusion(const std::vector<double>& base_betas, const std::vector<int64_t>& kept_timesteps,
                    bool learn_sigma);

  int64_t num_timesteps() const { return static_cast<int64_t>(betas_.size()); }
  bool learn_sigma() const { return learn_sigma_; }
  const std::vector<int64_t>& timestep_map() const { return timestep_map_; }

  // float64 tables, one entry per step of this diffusion.
  const std::vector<double>& betas() const { return betas_; }
  const std::vector<double>& alphas_cumprod() const { return alphas_cumprod_; }
  const std::vector<double>& alphas_cumprod_prev() const { return alphas_cumprod_prev_; }
  const std::vector<double>& alphas_cumprod_next() const { return alphas_cumprod_next_; }
  const std::vector<double>& posterior_variance() const { return posterior_variance_; }
  const std::vector<double>& posterior_log_variance_clipped() const { return posterior_log_variance_clipped_; }
  const std::vector<double>& posterior_mean_coef1() const { return posterior_mean_coef1_; }
  const std::vector<double>& posterior_mean_coef2() const { return posterior_mean_coef2_; }

  // Samples q(x_t | x_0) = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.
  at::Tensor q_sample(const at::Tensor& x0, const at::Tensor& t, const at::Tensor& noise) const;
  // The posterior q(x_{t-1} | x_t, x_0): mean, variance and clipped log-variance, each of x_t's shape.
  MeanVariance q_posterior_mean_variance(const at::Tensor& x0, const at::Tensor& x_t, const at::Tensor& t) const;
  // p(x_{t-1} | x_t) from a network output [N, C or 2C, ...] (2C exactly when learn_sigma()).
  MeanVariance p_mean_variance(const at::Tensor& model_output, const at::Tensor& x_t, const at::Tensor& t,
                               bool clip_denoised = false) const;
  at::Tensor predict_xstart_from_eps(const at::Tensor& x_t, const at::Tensor& t, const at::Tensor& eps) const;
  at::Tensor predict_eps_from_xstart(const at::Tensor& x_t, const at::Tensor& t, const at::Tensor& x0) const;

  // The training loss at timesteps t with the given noise: MSE(eps_hat, noise) over non-batch dims, plus, when
  // learning sigma, the VB term computed with eps_hat DETACHED (only the variance channels learn from it): the
  // KL between posterior and model in bits, or at t = 0 the discretized-Gaussian NLL of x0 in bits (x0 in
  // [-1, 1]); like DiT, not rescaled by num_timesteps() / 1000. Results are [N] in x0's dtype.
  Losses training_losses(const Denoiser& denoise_fn, const at::Tensor& x0, const at::Tensor& t,
                         const at::Tensor& noise) const;

  // One ancestral step x_t -> x_{t-1}: mean + exp(log_variance / 2) * noise, with no noise where t == 0.
  // noise (x's shape) is required.
  StepResult p_sample(const Denoiser& denoise_fn, const at::Tensor& x, const at::Tensor& t, const at::Tensor& noise,
                      bool clip_denoised = false) const;
  // One DDIM step (Song et al. eq. 12) with sigma = eta * sqrt((1 - abar_prev) / (1 - abar)) *
  // sqrt(1 - abar / abar_prev); eps is re-derived from pred_xstart. noise may be undefined when eta == 0.
  StepResult ddim_sample(const Denoiser& denoise_fn, const at::Tensor& x, const at::Tensor& t, double eta,
                         const at::Tensor& noise, bool clip_denoised = false) const;

  // Full samplers from x_T = noise down to x_0, without autograd. Fresh noise for every step with t > 0 is drawn
  // with at::randn from `generator` (in x's dtype, on the generator's device, then moved to x's), so one seed
  // gives one result; an undefined generator uses the default one of that device.
  at::Tensor p_sample_loop(const Denoiser& denoise_fn, const at::Tensor& noise, at::Generator generator = {},
                           const StepCallback& on_step = nullptr, bool clip_denoised = false) const;
  at::Tensor ddim_sample_loop(const Denoiser& denoise_fn, const at::Tensor& noise, double eta = 0.0,
                              at::Generator generator = {}, const StepCallback& on_step = nullptr,
                              bool clip_denoised = false) const;

 private:
  // table[t] as [N, 1, ...] in like's dtype on t's device.
  at::Tensor extract(const std::vector<double>& table, const at::Tensor& t, const at::Tensor& like) const;
  at::Tensor original_timesteps(const at::Tensor& t) const;
  void check_timesteps(const at::Tensor& t, const at::Tensor& x, const char* what) const;
  at::Tensor call_model(const Denoiser& denoise_fn, const at::Tensor& x, const at::Tensor& t) const;
  // A table as a 1-D tensor on `device`: a view of the vector on the CPU, a cached copy elsewhere.
  at::Tensor table_on(const std::vector<double>& table, at::Device device) const;
  at::Tensor table_on(const std::vector<int64_t>& table, at::Device device) const;

  // Copies of the tables on devices other than the CPU, made on first use: a step on a GPU then gathers its
  // coefficients there instead of copying a table from pageable host memory (a copy that waits for the GPU, i.e.
  // a host sync per coefficient per step). Entries are keyed by the tables' addresses, so a copied or moved
  // GaussianDiffusion starts with an empty cache. Thread-safe.
  class DeviceTables {
   public:
    DeviceTables() = default;
    DeviceTables(const DeviceTables&) {}
    DeviceTables& operator=(const DeviceTables&);
    at::Tensor get(const at::Tensor& host_view, at::Device device);

   private:
    struct Entry {
      const void* data;
      at::Device device;
      at::Tensor values;
    };
    std::mutex mutex_;
    std::vector<Entry> entries_;
  };
  mutable DeviceTables device_tables_;

  bool learn_sigma_;
  std::vector<int64_t> timestep_map_;
  std::vector<double> betas_, alphas_cumprod_, alphas_cumprod_prev_, alphas_cumprod_next_;
  std::vector<double> sqrt_alphas_cumprod_, sqrt_one_minus_alphas_cumprod_;
  std::vector<double> sqrt_recip_alphas_cumprod_, sqrt_recipm1_alphas_cumprod_;
  std::vector<double> posterior_variance_, posterior_log_variance_clipped_;
  std::vector<double> posterior_mean_coef1_, posterior_mean_coef2_;
  std::vector<double> log_betas_;                                  // learned-range upper bound
  std::vector<double> fixed_large_variance_, fixed_large_log_variance_;
};

// DiT's create_diffusion: betas_for(schedule, steps) respaced by space_timesteps(steps, respacing).
GaussianDiffusion make_diffusion(const std::string& respacing, const std::string& schedule = "linear",
                                 int steps = 1000, bool learn_sigma = true);

}  // namespace opendit::diffusion
