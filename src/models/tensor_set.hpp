// A set of named tensors with the shapes a configuration expects: how the encoders (VAE, T5) hold their weights.
// They are not diffusion models (models/model.hpp): they are loaded from published files and run frozen, so what they
// need is a strict loader: every name the configuration implies present with its shape, nothing unexplained extra.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

namespace opendit::models {

class TensorSet {
 public:
  // Names in declaration order (the published state-dict order). Tensors start on the meta device (no memory).
  void declare(const std::string& name, std::vector<int64_t> shape);
  // The tensor of a declared name (a missing name is a programming error: opendit::Error).
  const at::Tensor& operator[](const std::string& name) const;
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  // Replaces a declared tensor by another of its shape (e.g. a view into a fused buffer).
  void set(const std::string& name, const at::Tensor& tensor);

  // Copies `sd` in, converted to `options` (device, dtype). Every declared name must be there with its shape and finite
  // values, and every name of `sd` declared unless `ignore(name)`; otherwise one opendit::Error naming `origin` lists
  // the first missing, unexpected and mis-shaped tensors (with their counts). On the meta device only names and
  // shapes are checked (`sd` may be meta tensors read from file headers).
  void load(const std::map<std::string, at::Tensor>& sd, const std::string& origin, const at::TensorOptions& options,
            const std::function<bool(const std::string&)>& ignore = {});
  // Random weights for benchmarks and tests without files: normal(0, gain / sqrt(fan_in)) for matrices and kernels
  // (fan_in = numel / rows), ones for 1-D `*.weight` (norms), zeros for biases; seeded, on `options`.
  void init_random(uint64_t seed, const at::TensorOptions& options, double gain = 1.0);

  const std::vector<std::string>& names() const { return order_; }
  const std::vector<int64_t>& shape(const std::string& name) const { return shapes_.at(name); }
  int64_t numel() const;         // parameters of every declared tensor
  at::ScalarType dtype() const;  // of the loaded tensors (undefined set: float)
  at::Device device() const;
  void to(const at::TensorOptions& options);  // every tensor

 private:
  std::vector<std::string> order_;
  std::map<std::string, std::vector<int64_t>> shapes_;
  std::unordered_map<std::string, at::Tensor> tensors_;
};

}  // namespace opendit::models
