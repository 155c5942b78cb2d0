// The embedding layers of DiT-style models: sinusoidal timestep features and their MLP, 2D patch embedding and the
// fixed 2D sin-cos position table. (The 3D patch embedding of video models comes with them.)
#pragma once
#include <ATen/ATen.h>

#include <string>

#include "models/layers/linear.hpp"

namespace opendit::models::layers {

// Sinusoidal timestep features [N, dim] of t [N] (float; fractional allowed): [cos(t f_k), sin(t f_k)] with
// f_k = exp(-ln(10000) k / (dim/2)), cos first (DiT's and Open-Sora's convention).
at::Tensor timestep_features(const at::Tensor& t, int64_t dim);

// t [N] -> [N, D]: Linear(256, D), SiLU, Linear(D, D) on the 256 features (names PREFIX.mlp.0, PREFIX.mlp.2).
struct TimestepEmbedder {
  static constexpr int64_t kFeatures = 256;
  Linear fc0, fc2;
  explicit TimestepEmbedder(int64_t width, bool meta = false)
      : fc0(kFeatures, width, meta), fc2(width, width, meta) {}
  at::Tensor operator()(const at::Tensor& t) const;  // the features in fc0's dtype
  NamedSlots slots(const std::string& prefix);
};

// A Conv2d with kernel = stride = p (names PREFIX.proj.weight [D, C, p, p], PREFIX.proj.bias [D]):
// x [N, C, H, W] -> tokens [N, (H/p) (W/p), D], row-major over the (H/p, W/p) grid.
struct PatchEmbed2d {
  at::Tensor w, b;
  int64_t p = 1;
  PatchEmbed2d(int64_t channels, int64_t width, int64_t patch, bool meta = false);
  at::Tensor operator()(const at::Tensor& x) const;
  NamedSlots slots(const std::string& prefix);
};

// The fixed 2D sin-cos position table [1, grid*grid, dim] (float32; computed in float64), MAE style: the first
// dim/2 channels encode the column, the second dim/2 the row; each half is [sin, cos].
at::Tensor pos_embed_2d(int64_t dim, int64_t grid);

}  // namespace opendit::models::layers
