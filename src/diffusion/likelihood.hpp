// Gaussian divergence and likelihood terms of the diffusion variational bound (IDDPM, Nichol & Dhariwal 2021).
// Every function works elementwise in the dtype of its inputs and broadcasts like ATen arithmetic.
#pragma once
#include <ATen/ATen.h>

namespace opendit::diffusion {

// KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), in nats.
at::Tensor normal_kl(const at::Tensor& mean1, const at::Tensor& logvar1, const at::Tensor& mean2,
                     const at::Tensor& logvar2);

// The tanh approximation of the standard normal CDF: 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))).
at::Tensor approx_standard_normal_cdf(const at::Tensor& x);

// log P(x) in nats of a Gaussian N(means, exp(log_scales)^2) discretized to 256 bins over [-1, 1] (bin half
// width 1/255); the outermost bins reach to -inf (x < -0.999) and +inf (x > 0.999). Probabilities are clamped
// to 1e-12 before the log. x, means and log_scales must have one shape.
at::Tensor discretized_gaussian_log_likelihood(const at::Tensor& x, const at::Tensor& means,
                                               const at::Tensor& log_scales);

// Mean over every dimension but the first: [N, ...] -> [N].
at::Tensor mean_flat(const at::Tensor& x);

}  // namespace opendit::diffusion
