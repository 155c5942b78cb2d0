// Classifier-free guidance (Ho & Salimans 2022) as a Denoiser for the samplers of diffusion::GaussianDiffusion.
#pragma once
#include <ATen/ATen.h>

#include <functional>

#include "diffusion/gaussian_diffusion.hpp"
#include "models/model.hpp"
#include "parallel/communicator.hpp"

namespace opendit::sample {

// A conditional network: (x [M, C, ...], original timesteps int64 [M], the condition of M samples)
// -> [M, C or 2C, ...].
using ConditionalDenoiser =
    std::function<at::Tensor(const at::Tensor& x, const at::Tensor& t_original, const models::Condition& cond)>;

struct GuidanceOptions {
  double scale = 4.0;  // guidance scale s >= 0; 1 gives the conditional prediction, 0 the unconditional one
  // Default (false): guide every eps channel, i.e. the first C = x.size(1) output channels, the standard method.
  // true: reproduce the official DiT sampler, which guides only channels 0..2 (min(3, C)); the remaining eps
  // channel(s) then pass through unguided from the conditional half, like the variance channels.
  bool guide_first_channels_only3 = false;
};

// Wraps `net` for the condition `cond` of N samples and its null counterpart `null` (Model::null_condition): each
// call runs ONE forward on [x; x] with timesteps [t; t] and condition [cond; null], then returns [N, ...] with
// eps = uncond + s * (cond - uncond) on the guided channels and the conditional half's values on every other channel
// (the variance channels when the output has 2C). The conditions are moved to x's device once. Throws
// opendit::Error for s < 0 or mismatched conditions (now), and for a batch or output of the wrong size (when called).
diffusion::Denoiser classifier_free_guidance(ConditionalDenoiser net, const models::Condition& cond,
                                             const models::Condition& null, const GuidanceOptions& options);

// The same guidance with the two halves on two ranks (CFG-parallel, as xDiT does): rank 0 of `pair` runs the
// conditional forward, rank 1 the unconditional one, an all-gather brings both to both, and each combines them as
// above: the same result as one rank's, at half the batch per forward.
diffusion::Denoiser classifier_free_guidance_parallel(ConditionalDenoiser net, const models::Condition& cond,
                                                      const models::Condition& null, const GuidanceOptions& options,
                                                      parallel::Communicator& pair);

}  // namespace opendit::sample
