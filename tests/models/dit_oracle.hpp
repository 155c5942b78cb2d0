// The test oracle of DiT: the plain ATen composition of the official model (at::layer_norm, at::gelu, separate
// linears), written independently of the fused layers that production runs on every device. It reads the model's
// own tensors, so gradients through it land on the model's parameters.
#pragma once
#include <ATen/ATen.h>

#include "models/dit/dit.hpp"

namespace opendit::test {

// x [N, C, H, W], t [N] float, y [N] int64 -> [N, C_out, H, W], with the tensors of `model`.
at::Tensor dit_oracle_forward(const models::dit::DiT& model, const at::Tensor& x, const at::Tensor& t,
                              const at::Tensor& y);

inline models::Condition labels_of(const at::Tensor& y) {
  models::Condition c;
  c.labels = y;
  return c;
}

}  // namespace opendit::test
