#include "diffusion/likelihood.hpp"

#include <cmath>
#include <vector>

#include "core/error.hpp"

namespace opendit::diffusion {

at::Tensor normal_kl(const at::Tensor& mean1, const at::Tensor& logvar1, const at::Tensor& mean2,
                     const at::Tensor& logvar2) {
  const at::Tensor diff = mean1 - mean2;
  return 0.5 * (logvar2 - logvar1 - 1.0 + at::exp(logvar1 - logvar2) + diff * diff * at::exp(-logvar2));
}

at::Tensor approx_standard_normal_cdf(const at::Tensor& x) {
  const double k = std::sqrt(2.0 / 3.14159265358979323846);
  return 0.5 * (1.0 + at::tanh(k * (x + 0.044715 * x * x * x)));
}

at::Tensor discretized_gaussian_log_likelihood(const at::Tensor& x, const at::Tensor& means,
                                               const at::Tensor& log_scales) {
  if (x.sizes() != means.sizes() || x.sizes() != log_scales.sizes()) {
    throw Error(cat("discretized Gaussian likelihood: expected x, means and log_scales of one shape, found ",
                    x.sizes(), ", ", means.sizes(), " and ", log_scales.sizes()));
  }
  const double half_bin = 1.0 / 255.0;
  const at::Tensor centered = x - means;
  const at::Tensor inv_stdv = at::exp(-log_scales);
  const at::Tensor cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + half_bin));
  const at::Tensor cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - half_bin));
  const at::Tensor log_cdf_plus = at::log(cdf_plus.clamp_min(1e-12));
  const at::Tensor log_one_minus_cdf_min = at::log((1.0 - cdf_min).clamp_min(1e-12));
  const at::Tensor log_cdf_delta = at::log((cdf_plus - cdf_min).clamp_min(1e-12));
  return at::where(x < -0.999, log_cdf_plus, at::where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta));
}

at::Tensor mean_flat(const at::Tensor& x) {
  if (x.dim() <= 1) return x;
  std::vector<int64_t> dims;
  for (int64_t d = 1; d < x.dim(); ++d) dims.push_back(d);
  return x.mean(dims);
}

}  // namespace opendit::diffusion
