// A linear layer's parameters and their state-dict names: the building block of the layers below.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

namespace opendit::models::layers {

// Tensors of a layer by state-dict name (prefix included), in state-dict order, for Model::add_param.
using NamedSlots = std::vector<std::pair<std::string, at::Tensor*>>;

// Layers make their tensors as float32 zeros until initialised or loaded; on the meta device (shapes only, no
// memory) when a model is only described (models/registry.hpp).
inline at::TensorOptions param_options(bool meta) {
  return at::TensorOptions(at::kFloat).device(meta ? at::kMeta : at::kCPU);
}

// x @ w^T + b for x [..., in], w [out, in], b [out] or undefined (no bias). The forward is at::linear; the backward
// takes the bias gradient from the weight-gradient GEMM's epilogue (cuda/ops.hpp linear_wgrad) instead of a
// separate sum, and writes into the parameters' gradient sinks when they have them (grad_sink.hpp).
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b);

// weight [out, in], bias [out].
struct Linear {
  at::Tensor w, b;
  Linear() = default;
  Linear(int64_t in, int64_t out, bool meta = false)
      : w(at::zeros({out, in}, param_options(meta))), b(at::zeros({out}, param_options(meta))) {}
  at::Tensor operator()(const at::Tensor& x) const { return linear(x, w, b); }
  NamedSlots slots(const std::string& prefix) { return {{prefix + ".weight", &w}, {prefix + ".bias", &b}}; }
};

inline void append(NamedSlots& to, NamedSlots more) { to.insert(to.end(), more.begin(), more.end()); }

// xavier_uniform on a [fan_out, fan_in] view of w (convolutions: [out, in x kernel]), as the official inits do.
inline void xavier_uniform(at::Tensor& w, at::Generator& gen) {
  const int64_t fan_out = w.size(0), fan_in = w.numel() / w.size(0);
  const double a = std::sqrt(6.0 / double(fan_in + fan_out));
  w.uniform_(-a, a, gen);
}

}  // namespace opendit::models::layers
