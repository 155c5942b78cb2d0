#include "models/layers/embed.hpp"

#include <cmath>

namespace opendit::models::layers {

at::Tensor timestep_features(const at::Tensor& t, int64_t dim) {
  const int64_t half = dim / 2;
  auto f32 = t.options().dtype(at::kFloat);
  at::Tensor freqs = at::exp(-std::log(10000.0) * at::arange(half, f32) / static_cast<double>(half));  // [half]
  at::Tensor args = t.to(at::kFloat).unsqueeze(1) * freqs.unsqueeze(0);                              // [N, half]
  at::Tensor emb = at::cat({at::cos(args), at::sin(args)}, -1);                                       // [N, 2 half]
  if (dim % 2) emb = at::cat({emb, at::zeros_like(emb.narrow(1, 0, 1))}, -1);
  return emb;
}

at::Tensor TimestepEmbedder::operator()(const at::Tensor& t) const {
  at::Tensor f = timestep_features(t, kFeatures).to(fc0.w.scalar_type());                // [N, 256]
  return fc2(at::silu(fc0(f)));                                                            // [N, D]
}

NamedSlots TimestepEmbedder::slots(const std::string& prefix) {
  NamedSlots s = fc0.slots(prefix + ".mlp.0");
  append(s, fc2.slots(prefix + ".mlp.2"));
  return s;
}

PatchEmbed2d::PatchEmbed2d(int64_t channels, int64_t width, int64_t patch, bool meta)
    : w(at::zeros({width, channels, patch, patch}, param_options(meta))),
      b(at::zeros({width}, param_options(meta))),
      p(patch) {}

at::Tensor PatchEmbed2d::operator()(const at::Tensor& x) const {
  return at::conv2d(x, w, b, {p, p}).flatten(2).transpose(1, 2);                         // [N, T, D]
}

NamedSlots PatchEmbed2d::slots(const std::string& prefix) {
  return {{prefix + ".proj.weight", &w}, {prefix + ".proj.bias", &b}};
}

at::Tensor pos_embed_2d(int64_t dim, int64_t grid) {
  auto f64 = at::TensorOptions().dtype(at::kDouble);
  const int64_t quarter = dim / 4;
  at::Tensor omega = 1.0 / at::pow(10000.0, at::arange(quarter, f64) / static_cast<double>(quarter));  // [D/4]
  at::Tensor pos = at::arange(grid, f64);
  at::Tensor row = pos.repeat_interleave(grid), col = pos.repeat({grid});                              // [T]
  auto sincos = [&](const at::Tensor& p) {
    at::Tensor out = p.unsqueeze(1) * omega.unsqueeze(0);                                              // [T, D/4]
    return at::cat({at::sin(out), at::cos(out)}, 1);                                                   // [T, D/2]
  };
  return at::cat({sincos(col), sincos(row)}, 1).to(at::kFloat).unsqueeze(0);                           // [1, T, D]
}

}  // namespace opendit::models::layers
