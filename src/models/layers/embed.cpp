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

PatchEmbed3d::PatchEmbed3d(int64_t channels, int64_t width, int64_t t, int64_t h, int64_t w_, bool meta)
    : w(at::zeros({width, channels, t, h, w_}, param_options(meta))),
      b(at::zeros({width}, param_options(meta))),
      pt(t),
      ph(h),
      pw(w_) {}

at::Tensor PatchEmbed3d::operator()(const at::Tensor& x) const {
  return at::conv3d(x, w, b, {pt, ph, pw}).flatten(2).transpose(1, 2);                  // [N, T S, D]
}

NamedSlots PatchEmbed3d::slots(const std::string& prefix) {
  return {{prefix + ".proj.weight", &w}, {prefix + ".proj.bias", &b}};
}

at::Tensor GeluMlp::operator()(const at::Tensor& x) const { return fc2(at::gelu(fc1(x), "tanh")); }

NamedSlots GeluMlp::slots(const std::string& prefix, const std::string& first, const std::string& second) {
  NamedSlots s = fc1.slots(prefix + "." + first);
  append(s, fc2.slots(prefix + "." + second));
  return s;
}

namespace {

// [M] positions (float64) -> [M, dim]: sin(p w_k), then cos(p w_k), w_k = 10000^(-k / (dim/2)).
at::Tensor sincos_1d(int64_t dim, const at::Tensor& pos) {
  auto f64 = at::TensorOptions().dtype(at::kDouble);
  const int64_t half = dim / 2;
  at::Tensor omega = 1.0 / at::pow(10000.0, at::arange(half, f64) / static_cast<double>(half));  // [dim/2]
  at::Tensor out = pos.unsqueeze(1) * omega.unsqueeze(0);                                        // [M, dim/2]
  return at::cat({at::sin(out), at::cos(out)}, 1);
}

}  // namespace

at::Tensor pos_embed_2d(int64_t dim, int64_t gh, int64_t gw, double scale) {
  auto f32 = at::TensorOptions().dtype(at::kFloat);
  at::Tensor rows = (at::arange(gh, f32) / static_cast<float>(scale)).to(at::kDouble);
  at::Tensor cols = (at::arange(gw, f32) / static_cast<float>(scale)).to(at::kDouble);
  at::Tensor row = rows.repeat_interleave(gw), col = cols.repeat({gh});                      // [gh gw]
  return at::cat({sincos_1d(dim / 2, col), sincos_1d(dim / 2, row)}, 1).to(at::kFloat).unsqueeze(0);
}

at::Tensor pos_embed_1d(int64_t dim, int64_t length, double scale) {
  at::Tensor pos = at::arange(length, at::TensorOptions().dtype(at::kDouble)) / scale;
  return sincos_1d(dim, pos).to(at::kFloat).unsqueeze(0);                                    // [1, length, dim]
}

at::Tensor pos_embed_2d(int64_t dim, int64_t grid) { return pos_embed_2d(dim, grid, grid, 1.0); }

}  // namespace opendit::models::layers
