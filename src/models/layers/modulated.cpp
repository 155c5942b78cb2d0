#include "models/layers/modulated.hpp"

#include <torch/csrc/autograd/custom_function.h>

#include <map>
#include <mutex>
#include <optional>
#include <tuple>

#include "cuda/ops.hpp"
#include "models/layers/grad_sink.hpp"

namespace opendit::models::layers {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Zeros [n] for the GELU of fc1's output, which holds the bias already: one per size, dtype and device for the
// process (never freed: a GPU tensor must not outlive the CUDA context at exit), not a fill per backward.
const at::Tensor& zero_bias(int64_t n, const at::TensorOptions& o) {
  static std::mutex mutex;
  static auto& cache = *new std::map<std::tuple<int64_t, int, int, int>, at::Tensor>;
  std::lock_guard<std::mutex> lock(mutex);
  at::Tensor& z = cache[{n, int(o.dtype().toScalarType()), int(o.device().type()), int(o.device().index())}];
  if (!z.defined()) z = at::zeros({n}, o);
  return z;
}

// An optional tensor argument of an autograd function: empty when undefined (then no input of the function).
std::optional<at::Tensor> optional(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// [N, T, K] -> [N*T, K] (a view when contiguous).
at::Tensor rows(const at::Tensor& t) { return t.reshape({-1, t.size(-1)}); }

// {out} or, with `residual`, {out, x}: autograd returns an input as a view of it with this function's gradient edge,
// so the gradient of the caller's residual path arrives here as grad_out[1] and joins dx inside the LayerNorm
// backward kernel (the residual gradient, [N, T, D]).
variable_list with_residual(at::Tensor out, const at::Tensor& x, bool residual) {
  if (!residual) return {std::move(out)};
  return {std::move(out), x};
}
at::Tensor residual_grad(const variable_list& grad_out) {
  return grad_out.size() > 1 && grad_out[1].defined() ? grad_out[1].contiguous() : at::Tensor();
}

struct NormModulateLinear : torch::autograd::Function<NormModulateLinear> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& shift,
                               const at::Tensor& scale, const at::Tensor& w, const at::Tensor& b, double eps,
                               bool residual) {
    auto nm = kernels::norm_modulate(x, shift, scale, eps);
    ctx->save_for_backward({x, shift, scale, w, b, nm.mean, nm.rstd});
    return with_residual(at::linear(nm.y, w, b), x, residual);                      // [N, T, O]
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto s = ctx->get_saved_variables();
    const at::Tensor &x = s[0], &shift = s[1], &scale = s[2], &w = s[3], &b = s[4], &mean = s[5], &rstd = s[6];
    const at::Tensor dout = rows(grad_out[0].contiguous());                        // [N*T, O]
    at::Tensor dh = dout.mm(w).view(x.sizes());                                     // [N, T, D]
    // The norm's backward also gives its forward output h again (the linear's input, not kept from the forward).
    auto g = kernels::norm_modulate_backward(dh, x, mean, rstd, scale, residual_grad(grad_out), shift);
    auto wg = linear_param_grads(dout, rows(g.h), w, b);                            // dw [O, D], db [O]
    return {g.dx, g.dshift, g.dscale, wg.dw, wg.db, at::Tensor(), at::Tensor()};
  }
};

// b2 optional: autograd takes no undefined tensor as an input, but an empty optional is no input at all.
struct NormModulateMlp : torch::autograd::Function<NormModulateMlp> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& shift,
                               const at::Tensor& scale, const at::Tensor& w1, const at::Tensor& b1,
                               const at::Tensor& w2, const std::optional<at::Tensor>& b2_in, double eps,
                               bool residual) {
    const at::Tensor b2 = b2_in.value_or(at::Tensor());
    auto nm = kernels::norm_modulate(x, shift, scale, eps);
    auto fc1 = kernels::linear_gelu(rows(nm.y), w1, b1);                            // out, pre [N*T, M]
    at::Tensor out = at::linear(fc1.out, w2, b2).view(x.sizes());                   // [N, T, D]
    ctx->save_for_backward({x, shift, scale, w1, w2, b2, nm.mean, nm.rstd, fc1.pre});
    return with_residual(std::move(out), x, residual);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto s = ctx->get_saved_variables();
    const at::Tensor &x = s[0], &shift = s[1], &scale = s[2], &w1 = s[3], &w2 = s[4], &b2 = s[5], &mean = s[6],
                     &rstd = s[7], &pre = s[8];                                     // pre [N*T, M]: fc1 + bias
    const at::Tensor dout = rows(grad_out[0].contiguous());                        // [N*T, D]
    const at::Tensor& zero = zero_bias(pre.size(1), pre.options());
    // One pass over pre gives da (written over dg, a temporary) and the GELU output again, which fc2's weight
    // gradient reads and which is freed before the fc1 GEMMs.
    auto bg = kernels::bias_gelu_backward(dout.mm(w2), pre, zero, /*reuse_dg=*/true, /*with_gelu=*/true);
    auto wg2 = linear_param_grads(dout, bg.g, w2, b2);                              // dw2 [D, M], db2 [D]
    bg.g = at::Tensor();                                                            // da [N*T, M], db1 [M] stay
    at::Tensor dh = bg.da.mm(w1).view(x.sizes());                                   // [N, T, D]
    auto g = kernels::norm_modulate_backward(dh, x, mean, rstd, scale, residual_grad(grad_out), shift);
    auto wg1 = linear_param_grads(bg.da, rows(g.h), w1, at::Tensor());              // dw1 [M, D]
    return {g.dx, g.dshift, g.dscale, wg1.dw, bg.dbias, wg2.dw, wg2.db, at::Tensor(), at::Tensor()};
  }
};

// bias optional (see NormModulateMlp).
struct GatedResidual : torch::autograd::Function<GatedResidual> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate,
                            const std::optional<at::Tensor>& bias_in) {
    const at::Tensor bias = bias_in.value_or(at::Tensor());
    ctx->save_for_backward({y, gate, bias});
    return kernels::gated_residual(x, y, gate, bias);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto s = ctx->get_saved_variables();
    const at::Tensor &y = s[0], &gate = s[1], &bias = s[2];
    const at::Tensor dout = grad_out[0].contiguous();
    auto g = kernels::gated_residual_backward(dout, y, gate, bias);
    // The bias gradient (float32) goes to its sink, or back to autograd in the bias's dtype.
    return {dout, g.dy, g.dgate, bias.defined() ? param_grad(bias, g.dbias) : at::Tensor()};
  }
};

}  // namespace

at::Tensor norm_modulate_linear(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale,
                                const at::Tensor& w, const at::Tensor& b, double eps) {
  return NormModulateLinear::apply(x, shift, scale, w, b, eps, false)[0];
}

Branch norm_modulate_linear_res(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale,
                                const at::Tensor& w, const at::Tensor& b, double eps) {
  auto o = NormModulateLinear::apply(x, shift, scale, w, b, eps, true);
  return {o[0], o[1]};
}

at::Tensor norm_modulate_mlp(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale,
                             const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                             double eps) {
  return NormModulateMlp::apply(x, shift, scale, w1, b1, w2, optional(b2), eps, false)[0];
}

Branch norm_modulate_mlp_res(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale,
                             const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                             double eps) {
  auto o = NormModulateMlp::apply(x, shift, scale, w1, b1, w2, optional(b2), eps, true);
  return {o[0], o[1]};
}

at::Tensor gated_residual(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate, const at::Tensor& bias) {
  return GatedResidual::apply(x, y, gate, optional(bias));
}

at::Tensor norm_modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale, double eps) {
  const at::Tensor n = at::layer_norm(x, {x.size(-1)}, {}, {}, eps);
  return n * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1);
}

}  // namespace opendit::models::layers
