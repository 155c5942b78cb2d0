#include "models/layers/recompute.hpp"

#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/autograd.h>

namespace opendit::models::layers {

namespace {

// The function to recompute, carried through the autograd context.
struct FnHolder : torch::CustomClassHolder {
  RecomputeFn fn;
};

struct Recompute : torch::autograd::Function<Recompute> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, at::TensorList inputs,
                            c10::intrusive_ptr<FnHolder> holder) {
    ctx->save_for_backward(inputs.vec());
    ctx->saved_data["fn"] = at::IValue::make_capsule(holder);
    at::NoGradGuard no_grad;  // nothing inside is recorded: the activations are freed at once
    return holder->fn(inputs.vec());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto holder = c10::static_intrusive_pointer_cast<FnHolder>(ctx->saved_data["fn"].toCapsule());
    std::vector<at::Tensor> saved = ctx->get_saved_variables();
    std::vector<at::Tensor> inputs, wanted;
    for (const auto& s : saved) {
      at::Tensor d = s.detach();
      d.requires_grad_(s.requires_grad());
      inputs.push_back(d);
      if (s.requires_grad()) wanted.push_back(d);
    }
    at::Tensor out;
    {
      at::AutoGradMode enable(true);
      out = holder->fn(inputs);
    }
    auto grads = torch::autograd::grad({out}, wanted, {grad_out[0]}, /*retain_graph=*/false,
                                       /*create_graph=*/false, /*allow_unused=*/true);
    // One gradient per tensor input (undefined where none is wanted), then one for the holder argument.
    torch::autograd::variable_list result;
    size_t k = 0;
    for (const auto& s : saved) result.push_back(s.requires_grad() ? grads[k++] : at::Tensor());
    result.push_back(at::Tensor());
    return result;
  }
};

}  // namespace

at::Tensor recomputed(RecomputeFn fn, const std::vector<at::Tensor>& inputs) {
  auto holder = c10::make_intrusive<FnHolder>();
  holder->fn = std::move(fn);
  return Recompute::apply(at::TensorList(inputs), holder);
}

}  // namespace opendit::models::layers
