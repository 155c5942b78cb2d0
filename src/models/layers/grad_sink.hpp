// Gradient sinks: where the trainer keeps a parameter's gradient (a float32 view of its flat buffer) and whether one
// has arrived in this step. With a sink, the backward of a linear layer writes its weight and bias gradients there
// itself (the GEMM's float32 output, accumulated over micro-batches) and returns none to autograd; without one it
// returns them as usual. The trainer sets the sinks (train/flat_params.cpp); models only look them up.
#pragma once
#include <ATen/ATen.h>

#include "cuda/ops.hpp"

namespace opendit::models::layers {

struct GradSink {
  at::Tensor dest;       // float32, the parameter's shape, contiguous
  char* fresh = nullptr;  // 1 until the step's first gradient arrives (then written, later added); owned by the setter
};

// Keyed by the parameter tensor itself (its TensorImpl): the tensor the model computes with.
void set_grad_sink(const at::Tensor& param, const GradSink& sink);
void remove_grad_sink(const at::Tensor& param);
const GradSink* find_grad_sink(const at::Tensor& param);  // nullptr: none

// The weight and bias gradients of y = x w^T + b, dy [M, O], x [M, K], b [O] or undefined: written into the sinks of
// w and b when they have them (then returned undefined), else returned (dw [O, K], db [O] in dy's dtype).
// A parameter's gradient computed in float32 (or wider) by some other backward (a bias added in gated_residual):
// written into (or, after the step's first, added to) the parameter's sink when it has one on grad's device, and
// then returned undefined; else returned in the parameter's dtype.
at::Tensor param_grad(const at::Tensor& param, const at::Tensor& grad);

kernels::LinearGrads linear_param_grads(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w,
                                        const at::Tensor& b);

}  // namespace opendit::models::layers
