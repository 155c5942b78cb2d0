// The adaLN final layer of DiT and the unpatchify that follows it.
#pragma once
#include <ATen/ATen.h>

#include <array>
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

// PixArt's and Open-Sora's final layer (adaLN-single): (shift, scale) = table [2, D] + t (the timestep embedding,
// not projected), then Linear(D, O)(LN(x) (1 + scale) + shift) (names PREFIX.scale_shift_table, PREFIX.linear):
// x [N, T, D], t [N, D] -> [N, T, O].
struct T2IFinalLayer {
  at::Tensor table;
  Linear linear;
  T2IFinalLayer(int64_t width, int64_t out, bool meta = false);
  at::Tensor operator()(const at::Tensor& x, const at::Tensor& t) const;
  NamedSlots slots(const std::string& prefix);  // scale_shift_table, then linear (the official order)
  NamedSlots slots_named(const std::string& table_name, const std::string& linear_prefix);  // diffusers' names
};

// Tokens back to an image: x [N, gh gw, p p C] with tokens row-major over the (gh, gw) grid and each token's
// vector laid out (p_row, p_col, channel) -> [N, C, gh p, gw p].
at::Tensor unpatchify_2d(const at::Tensor& x, int64_t gh, int64_t gw, int64_t p, int64_t channels);

// Tokens back to a video: x [N, gt gh gw, pt ph pw C] (tokens row-major over (t, h, w), each vector laid out
// (pt, ph, pw, channel)) -> [N, C, gt pt, gh ph, gw pw].
at::Tensor unpatchify_3d(const at::Tensor& x, const std::array<int64_t, 3>& grid, const std::array<int64_t, 3>& patch,
                         int64_t channels);

}  // namespace opendit::models::layers
