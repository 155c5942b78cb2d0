// The adaLN final layer of DiT and the unpatchify that follows it.
#pragma once
#include <ATen/ATen.h>

#include <string>

#include "models/layers/linear.hpp"

namespace opendit::models::layers {

// (shift, scale) = Linear(D, 2 D)(SiLU(c)) (names PREFIX.adaLN_modulation.1), then
// Linear(D, O)(LN(x) (1 + scale) + shift) (names PREFIX.linear) on the fused norm_modulate_linear:
// x [N, T, D], silu_c [N, D] -> [N, T, O].
struct AdaLNFinalLayer {
  Linear ada, linear;
  AdaLNFinalLayer(int64_t width, int64_t out, bool meta = false)
      : ada(width, 2 * width, meta), linear(width, out, meta) {}
  at::Tensor operator()(const at::Tensor& x, const at::Tensor& silu_c) const;
  NamedSlots slots(const std::string& prefix);  // linear first, then adaLN_modulation (the official order)
};

// Tokens back to an image: x [N, gh gw, p p C] with tokens row-major over the (gh, gw) grid and each token's
// vector laid out (p_row, p_col, channel) -> [N, C, gh p, gw p].
at::Tensor unpatchify_2d(const at::Tensor& x, int64_t gh, int64_t gw, int64_t p, int64_t channels);

}  // namespace opendit::models::layers
