#include "models/layers/modulated.hpp"

#include <torch/csrc/autograd/custom_function.h>

#include "cuda/ops.hpp"

namespace opendit::models::layers {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// [N, T, K] -> [N*T, K] (a view when contiguous).
at::Tensor rows(const at::Tensor& t) { return t.reshape({-1, t.size(-1)}); }

struct NormModulateLinear : torch::autograd::Function<NormModulateLinear> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& shift,
                            const at::Tensor& scale, const at::Tensor& w, const at::Tensor& b, double eps) {
    auto nm = kernels::norm_modulate(x, shift, scale, eps);
    ctx->save_for_backward({x, shift, scale, w, nm.mean, nm.rstd});
    ctx->saved_data["eps"] = eps;
    return at::linear(nm.y, w, b);  // [N, T, O]
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto s = ctx->get_saved_variables();
    const at::Tensor &x = s[0], &shift = s[1], &scale = s[2], &w = s[3], &mean = s[4], &rstd = s[5];
    const at::Tensor dout = rows(grad_out[0].contiguous());                        // [N*T, O]
    const at::Tensor h = kernels::norm_modulate(x, shift, scale, ctx->saved_data["eps"].toDouble()).y;
    at::Tensor dw = dout.t().mm(rows(h));                                           // [O, D]
    at::Tensor db = dout.sum(0);                                                    // [O]
    at::Tensor dh = dout.mm(w).view(x.sizes());                                     // [N, T, D]
    auto g = kernels::norm_modulate_backward(dh, x, mean, rstd, scale);
    return {g.dx, g.dshift, g.dscale, dw, db, at::Tensor()};
  }
};

struct NormModulateMlp : torch::autograd::Function<NormModulateMlp> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& shift,
                            const at::Tensor& scale, const at::Tensor& w1, const at::Tensor& b1,
                            const at::Tensor& w2, const at::Tensor& b2, double eps) {
    auto nm = kernels::norm_modulate(x, shift, scale, eps);
    at::Tensor a = at::linear(nm.y, w1);                                            // [N, T, M], before bias
    at::Tensor out = at::linear(kernels::bias_gelu(a, b1), w2, b2);                 // [N, T, D]
    ctx->save_for_backward({x, shift, scale, w1, b1, w2, nm.mean, nm.rstd, a});
    ctx->saved_data["eps"] = eps;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto s = ctx->get_saved_variables();
    const at::Tensor &x = s[0], &shift = s[1], &scale = s[2], &w1 = s[3], &b1 = s[4], &w2 = s[5], &mean = s[6],
                     &rstd = s[7], &a = s[8];
    const at::Tensor dout = rows(grad_out[0].contiguous());                        // [N*T, D]
    at::Tensor dw2 = dout.t().mm(rows(kernels::bias_gelu(a, b1)));                   // [D, M]
    at::Tensor db2 = dout.sum(0);
    // da is written over dg (a temporary): one [N, T, M] buffer less at the peak of backward.
    auto bg = kernels::bias_gelu_backward(dout.mm(w2).view(a.sizes()), a, b1, /*reuse_dg=*/true);  // da, db1 [M]
    const at::Tensor da = rows(bg.da);
    const at::Tensor h = kernels::norm_modulate(x, shift, scale, ctx->saved_data["eps"].toDouble()).y;
    at::Tensor dw1 = da.t().mm(rows(h));                                            // [M, D]
    at::Tensor dh = da.mm(w1).view(x.sizes());                                      // [N, T, D]
    auto g = kernels::norm_modulate_backward(dh, x, mean, rstd, scale);
    return {g.dx, g.dshift, g.dscale, dw1, bg.dbias, dw2, db2, at::Tensor()};
  }
};

struct GatedResidual : torch::autograd::Function<GatedResidual> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate) {
    ctx->save_for_backward({y, gate});
    return kernels::gated_residual(x, y, gate);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto s = ctx->get_saved_variables();
    const at::Tensor dout = grad_out[0].contiguous();
    auto g = kernels::gated_residual_backward(dout, s[0], s[1]);
    return {dout, g.dy, g.dgate};
  }
};

}  // namespace

at::Tensor norm_modulate_linear(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale,
                                const at::Tensor& w, const at::Tensor& b, double eps) {
  return NormModulateLinear::apply(x, shift, scale, w, b, eps);
}

at::Tensor norm_modulate_mlp(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale,
                             const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                             double eps) {
  return NormModulateMlp::apply(x, shift, scale, w1, b1, w2, b2, eps);
}

at::Tensor gated_residual(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate) {
  return GatedResidual::apply(x, y, gate);
}

at::Tensor norm_modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale, double eps) {
  const at::Tensor n = at::layer_norm(x, {x.size(-1)}, {}, {}, eps);
  return n * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1);
}

}  // namespace opendit::models::layers
