// The definitions of the encoders' fused operations (cuda/ops.hpp e-g) on ATen ops: what the CPU runs and what the
// GPU tests compare the kernels with, in float64. Low-precision inputs are computed in float32 and rounded once.
#include "cuda/ops.hpp"

namespace opendit::kernels::reference {

at::Tensor group_norm_silu(const at::Tensor& x, int64_t groups, const at::Tensor& weight, const at::Tensor& bias,
                           double eps, bool silu) {
  // at::group_norm computes in float32 for bfloat16 input and rounds once; on CUDA it reads NCHW, so a channels-last
  // x is copied and the result made channels-last again (the layout the next convolution reads).
  at::Tensor y = at::group_norm(x, groups, weight.to(x.scalar_type()), bias.to(x.scalar_type()), eps);
  if (silu) y = at::silu_(y);
  return x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous()
             ? y.contiguous(at::MemoryFormat::ChannelsLast)
             : y;
}

at::Tensor add_rms_norm(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight, double eps,
                        at::ScalarType out_dtype) {
  if (delta.defined()) x.add_(delta);
  const at::Tensor ms = x.pow(2).mean(-1, /*keepdim=*/true);
  return (x * at::rsqrt(ms + eps) * weight.to(x.scalar_type())).to(out_dtype);
}

at::Tensor gated_gelu(const at::Tensor& ab) {
  const int64_t F = ab.size(-1) / 2;
  const at::ScalarType dt = ab.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor a = ab.narrow(-1, 0, F).to(dt), b = ab.narrow(-1, F, F).to(dt);
  return (at::gelu(a, "tanh") * b).to(ab.scalar_type());
}

}  // namespace opendit::kernels::reference
