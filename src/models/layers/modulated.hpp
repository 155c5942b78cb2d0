// The adaLN-modulated pieces of DiT-style blocks as autograd functions over the fused operations of cuda/ops.hpp
// (CUDA kernels on a GPU, their ATen definitions elsewhere: one forward path on every device). Each saves only
// what its backward needs and recomputes the cheap rest: the LayerNorm+modulate output is rebuilt from x and its
// statistics instead of being stored, and the MLP keeps its fc1 output before the GELU (the GELU output is
// recomputed). GEMM epilogues (cuda/ops.hpp, h) add fc1's bias and apply the GELU, and sum the bias gradients in
// the weight-gradient GEMMs; with the trainer's gradient sinks (grad_sink.hpp) those write weight and bias
// gradients straight into its float32 buffer.
// Shapes: x [N, T, D]; shift, scale, gate [N, D] (chunks of the adaLN output, unit stride along D).
#pragma once
#include <ATen/ATen.h>

namespace opendit::models::layers {

// LayerNorm(x) * (1 + scale) + shift, then x @ w^T + b: w [O, D], b [O] -> [N, T, O].
at::Tensor norm_modulate_linear(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale,
                                const at::Tensor& w, const at::Tensor& b, double eps);

// The MLP on the modulated LayerNorm: gelu_tanh(h @ w1^T + b1) @ w2^T + b2, h = LN(x) * (1 + scale) + shift.
// w1 [M, D], b1 [M], w2 [D, M], b2 [D] -> [N, T, D].
at::Tensor norm_modulate_mlp(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale,
                             const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                             double eps);

// The same two with the block's residual stream passed through: out as above, and res, x itself (a view) for the
// caller's gated_residual in place of x. The gradient that reaches res is added to dx inside the LayerNorm backward,
// so the two gradients of x (through the branch, along the residual) never meet in a separate addition.
struct Branch {
  at::Tensor out, res;
};
Branch norm_modulate_linear_res(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale,
                                const at::Tensor& w, const at::Tensor& b, double eps);
Branch norm_modulate_mlp_res(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale,
                             const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                             double eps);

// LN(x) * (1 + scale) + shift on ATen ops (the input of a projection made elsewhere: fastseq) -> [N, T, D].
at::Tensor norm_modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale, double eps);

// x + gate * (y + bias), y [N, T, D], bias [D] optional: the bias of the projection that made y (which then runs
// without one), whose gradient comes from this backward's sums instead of a reduction of its own; with a gradient
// sink it is written there in float32.
at::Tensor gated_residual(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate,
                          const at::Tensor& bias = {});

}  // namespace opendit::models::layers
