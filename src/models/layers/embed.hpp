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

// A Conv3d with kernel = stride = (pt, ph, pw) (names PREFIX.proj.weight [D, C, pt, ph, pw], PREFIX.proj.bias [D]):
// x [N, C, T, H, W] -> tokens [N, (T/pt) (H/ph) (W/pw), D], row-major over (t, h, w).
struct PatchEmbed3d {
  at::Tensor w, b;
  int64_t pt = 1, ph = 1, pw = 1;
  PatchEmbed3d(int64_t channels, int64_t width, int64_t pt, int64_t ph, int64_t pw, bool meta = false);
  at::Tensor operator()(const at::Tensor& x) const;
  NamedSlots slots(const std::string& prefix);
};

// The fixed 2D sin-cos position table [1, grid*grid, dim] (float32; computed in float64), MAE style: the first
// dim/2 channels encode the column, the second dim/2 the row; each half is [sin, cos].
at::Tensor pos_embed_2d(int64_t dim, int64_t grid);
// The same over a gh x gw grid (tokens row-major) with positions divided by `scale` (in float32 first, as Open-Sora's
// numpy code does): [1, gh gw, dim].
at::Tensor pos_embed_2d(int64_t dim, int64_t gh, int64_t gw, double scale);
// The 1D table [1, length, dim] of positions / scale: [sin, cos] halves (Open-Sora's temporal table).
at::Tensor pos_embed_1d(int64_t dim, int64_t length, double scale);

// Linear(in, hidden), GELU (tanh), Linear(hidden, out) (names PREFIX.fc1, PREFIX.fc2): timm's Mlp as PixArt and
// Open-Sora project captions with it. x [..., in] -> [..., out].
struct GeluMlp {
  Linear fc1, fc2;
  GeluMlp(int64_t in, int64_t hidden, int64_t out, bool meta = false) : fc1(in, hidden, meta), fc2(hidden, out, meta) {}
  at::Tensor operator()(const at::Tensor& x) const;
  // Names PREFIX.first, PREFIX.second (timm: fc1, fc2; diffusers' PixArtAlphaTextProjection: linear_1, linear_2).
  NamedSlots slots(const std::string& prefix, const std::string& first = "fc1", const std::string& second = "fc2");
};

}  // namespace opendit::models::layers
