#include "diffusion/guidance.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"

namespace opendit::diffusion {

Denoiser classifier_free_guidance(ConditionalDenoiser net, const at::Tensor& labels, const GuidanceOptions& options) {
  if (!(options.scale >= 0.0) || !std::isfinite(options.scale)) {
    throw Error(cat("classifier-free guidance scale: expected a finite value >= 0, found ", options.scale));
  }
  if (!net) throw Error("classifier-free guidance: expected a network, found none");
  if (!labels.defined() || labels.dim() != 1 || labels.scalar_type() != at::kLong) {
    throw Error(cat("classifier-free guidance labels: expected an int64 tensor [N], found ",
                    labels.defined() ? cat(labels.scalar_type(), " ", labels.sizes()) : std::string("none")));
  }
  const at::Tensor y = at::cat({labels, at::full_like(labels, options.null_label)});
  const GuidanceOptions opt = options;
  return [net = std::move(net), y, opt](const at::Tensor& x, const at::Tensor& t) -> at::Tensor {
    const int64_t n = x.size(0), c = x.size(1);
    if (y.size(0) != 2 * n) {
      throw Error(cat("classifier-free guidance: expected ", n, " labels for a batch of ", n, ", found ",
                      y.size(0) / 2));
    }
    const at::Tensor out = net(at::cat({x, x}), at::cat({t, t}), y.to(x.device()));
    const int64_t channels = out.dim() >= 2 ? out.size(1) : 0;
    if (out.dim() != x.dim() || out.size(0) != 2 * n || (channels != c && channels != 2 * c)) {
      throw Error(cat("classifier-free guidance: expected the network to return [", 2 * n, ", ", c, " or ", 2 * c,
                      ", ...], found ", out.sizes()));
    }
    const at::Tensor cond = out.narrow(0, 0, n), uncond = out.narrow(0, n, n);
    const int64_t g = opt.guide_first_channels_only3 ? std::min<int64_t>(3, c) : c;
    const at::Tensor cond_g = cond.narrow(1, 0, g), uncond_g = uncond.narrow(1, 0, g);
    const at::Tensor guided = uncond_g + opt.scale * (cond_g - uncond_g);
    if (g == channels) return guided;
    return at::cat({guided, cond.narrow(1, g, channels - g)}, 1);
  };
}

}  // namespace opendit::diffusion
