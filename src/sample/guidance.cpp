#include "sample/guidance.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"

namespace opendit::sample {

diffusion::Denoiser classifier_free_guidance(ConditionalDenoiser net, const models::Condition& cond,
                                             const models::Condition& null, const GuidanceOptions& options) {
  if (!(options.scale >= 0.0) || !std::isfinite(options.scale)) {
    throw Error(cat("classifier-free guidance scale: expected a finite value >= 0, found ", options.scale));
  }
  if (!net) throw Error("classifier-free guidance: expected a network, found none");
  cond.check("classifier-free guidance: the condition");
  null.check("classifier-free guidance: the null condition");
  if (cond.batch() == 0 || null.batch() != cond.batch())
    throw Error(cat("classifier-free guidance: expected a condition and a null condition of one batch, found ",
                    cond.batch(), " and ", null.batch(), " samples"));
  const models::Condition both = models::Condition::cat(cond, null);  // [cond; null]
  const int64_t batch = cond.batch();
  const GuidanceOptions opt = options;
  return [net = std::move(net), both, batch, opt](const at::Tensor& x, const at::Tensor& t) -> at::Tensor {
    const int64_t n = x.size(0), c = x.size(1);
    if (batch != n) {
      throw Error(cat("classifier-free guidance: expected ", n, " conditions for a batch of ", n, ", found ", batch));
    }
    // A no-op when the conditions are on x's device already (a captured CUDA graph must not copy from the host).
    const at::Tensor out = net(at::cat({x, x}), at::cat({t, t}), both.to(x.device()));
    const int64_t channels = out.dim() >= 2 ? out.size(1) : 0;
    if (out.dim() != x.dim() || out.size(0) != 2 * n || (channels != c && channels != 2 * c)) {
      throw Error(cat("classifier-free guidance: expected the network to return [", 2 * n, ", ", c, " or ", 2 * c,
                      ", ...], found ", out.sizes()));
    }
    const at::Tensor cond_out = out.narrow(0, 0, n), uncond = out.narrow(0, n, n);
    const int64_t g = opt.guide_first_channels_only3 ? std::min<int64_t>(3, c) : c;
    const at::Tensor cond_g = cond_out.narrow(1, 0, g), uncond_g = uncond.narrow(1, 0, g);
    const at::Tensor guided = uncond_g + opt.scale * (cond_g - uncond_g);
    if (g == channels) return guided;
    return at::cat({guided, cond_out.narrow(1, g, channels - g)}, 1);
  };
}

}  // namespace opendit::sample
