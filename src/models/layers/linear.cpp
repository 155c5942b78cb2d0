#include "models/layers/linear.hpp"

#include <torch/csrc/autograd/custom_function.h>

#include "cuda/ops.hpp"
#include "models/layers/grad_sink.hpp"

namespace opendit::models::layers {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// b optional: autograd takes no undefined tensor as an input, but an empty optional is no input at all.
struct LinearFn : torch::autograd::Function<LinearFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                            const std::optional<at::Tensor>& b_in) {
    const at::Tensor b = b_in.value_or(at::Tensor());
    ctx->save_for_backward({x, w, b});
    return at::linear(x, w, b);  // [..., out]
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto s = ctx->get_saved_variables();
    const at::Tensor &x = s[0], &w = s[1], &b = s[2];
    const at::Tensor dy = grad_out[0].contiguous().view({-1, w.size(0)});           // [M, out]
    at::Tensor dx;
    if (ctx->needs_input_grad(0)) dx = dy.mm(w).view(x.sizes());                    // [..., in]
    at::Tensor dw, db;
    if (ctx->needs_input_grad(1) || (b.defined() && ctx->needs_input_grad(2))) {
      auto g = linear_param_grads(dy, x.contiguous().view({-1, w.size(1)}), w, b);
      dw = g.dw, db = g.db;                                                         // [out, in], [out]
    }
    return {dx, dw, db};
  }
};

}  // namespace

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  // Without autograd (inference, the encoders) the custom function would only add bookkeeping. With it, the weight
  // (and bias) gradients go through linear_param_grads: into their sinks, with or without a bias.
  if (!at::GradMode::is_enabled() || !(x.requires_grad() || w.requires_grad() || (b.defined() && b.requires_grad())))
    return at::linear(x, w, b);
  return LinearFn::apply(x, w, b.defined() ? std::optional<at::Tensor>(b) : std::nullopt);
}

}  // namespace opendit::models::layers
