// Classifier-free guidance (Ho & Salimans 2022) as a Denoiser for the samplers of GaussianDiffusion.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>

#include "diffusion/gaussian_diffusion.hpp"

namespace opendit::diffusion {

// A class-conditional network: (x [M, C, ...], original timesteps int64 [M], labels int64 [M]) -> [M, C or 2C, ...].
using ConditionalDenoiser =
    std::function<at::Tensor(const at::Tensor& x, const at::Tensor& t_original, const at::Tensor& y)>;

struct GuidanceOptions {
  double scale = 4.0;         // guidance scale s >= 0; 1 gives the conditional prediction, 0 the unconditional one
  int64_t null_label = 1000;  // the "no class" label the network was trained with (class dropout); DiT: num_classes
  // Default (false): guide every eps channel, i.e. the first C = x.size(1) output channels, the standard method.
  // true: reproduce the official DiT sampler, which guides only channels 0..2 (min(3, C)); the remaining eps
  // channel(s) then pass through unguided from the conditional half, like the variance channels.
  bool guide_first_channels_only3 = false;
};

// Wraps `net` for labels y [N]: each call runs ONE forward on [x; x] with timesteps [t; t] and labels
// [y; null_label], then returns [N, ...] with eps = uncond + s * (cond - uncond) on the guided channels and the
// conditional half's values on every other channel (the variance channels when the output has 2C). Labels are
// moved to x's device. Throws opendit::Error for s < 0 (now) and for labels or outputs of the wrong size (when
// called).
Denoiser classifier_free_guidance(ConditionalDenoiser net, const at::Tensor& labels, const GuidanceOptions& options);

}  // namespace opendit::diffusion
