#include "models/layers/grad_sink.hpp"

#include <mutex>
#include <unordered_map>

namespace opendit::models::layers {
namespace {

std::mutex sinks_mutex;
std::unordered_map<const c10::TensorImpl*, GradSink>& sinks() {
  static std::unordered_map<const c10::TensorImpl*, GradSink> all;
  return all;
}

}  // namespace

void set_grad_sink(const at::Tensor& param, const GradSink& sink) {
  TORCH_CHECK(sink.dest.defined() && sink.dest.scalar_type() == at::kFloat && sink.dest.is_contiguous() &&
                  sink.dest.sizes() == param.sizes() && sink.fresh,
              "set_grad_sink: the destination must be a contiguous float32 tensor of the parameter's shape ",
              param.sizes());
  std::lock_guard<std::mutex> lock(sinks_mutex);
  sinks()[param.unsafeGetTensorImpl()] = sink;
}

void remove_grad_sink(const at::Tensor& param) {
  std::lock_guard<std::mutex> lock(sinks_mutex);
  sinks().erase(param.unsafeGetTensorImpl());
}

const GradSink* find_grad_sink(const at::Tensor& param) {
  if (!param.defined()) return nullptr;
  std::lock_guard<std::mutex> lock(sinks_mutex);
  auto it = sinks().find(param.unsafeGetTensorImpl());
  return it == sinks().end() ? nullptr : &it->second;  // entries stay put until removed (unordered_map nodes)
}

at::Tensor param_grad(const at::Tensor& param, const at::Tensor& grad) {
  const GradSink* sink = find_grad_sink(param);
  if (!sink || sink->dest.device() != grad.device()) return grad.to(param.scalar_type());
  if (*sink->fresh)
    sink->dest.copy_(grad.view(sink->dest.sizes()));
  else
    sink->dest.add_(grad.view(sink->dest.sizes()));
  *sink->fresh = 0;
  return {};
}

kernels::LinearGrads linear_param_grads(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w,
                                        const at::Tensor& b) {
  const GradSink* sw = find_grad_sink(w);
  const GradSink* sb = b.defined() ? find_grad_sink(b) : nullptr;
  // One call serves both only when they are in the same state (both still empty this step, or both written).
  const bool sunk = sw && sw->dest.device() == dy.device() && (!b.defined() || (sb && *sb->fresh == *sw->fresh));
  if (!sunk) return kernels::linear_wgrad(dy, x, b.defined());
  kernels::linear_wgrad_into(dy, x, sw->dest, sb ? sb->dest : at::Tensor(), /*accumulate=*/*sw->fresh == 0);
  *sw->fresh = 0;
  if (sb) *sb->fresh = 0;
  return {};
}

}  // namespace opendit::models::layers
