// cuda/ops.hpp: shape checks shared by both paths, then the fused kernel or the reference.
#include <ATen/core/grad_mode.h>

#include <cstdint>
#include <vector>

#include "cuda/ops.hpp"
#if defined(OPENDIT_WITH_CUDA)
#include "cuda/launch.hpp"
#else
// Without nvcc there are no launchers: cuda_impl names the reference, so route() runs the reference either way.
namespace opendit::kernels::cuda_impl {
using namespace reference;
}
#endif

namespace opendit::kernels {
namespace {

// The fused launcher when `fused`, else the reference (the same signature), on the same arguments.
template <typename R, typename... P, typename... Args>
R route(bool fused, R (*cuda)(P...), R (*ref)(P...), const Args&... args) {
  return fused ? cuda(args...) : ref(args...);
}

void check_tokens(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.dim() == 3 && t.is_contiguous(), what, " must be a contiguous [N, T, D] tensor, got ", t.sizes(),
              t.is_contiguous() ? "" : " (not contiguous)");
}

// [N, D] per-sample vector with unit stride along D, matching tokens [N, T, D].
void check_per_sample(const at::Tensor& v, const at::Tensor& tokens, const char* what) {
  TORCH_CHECK(v.dim() == 2 && v.size(0) == tokens.size(0) && v.size(1) == tokens.size(2) && v.stride(1) == 1 &&
                  v.stride(0) >= v.size(1),
              what, " must be [N, D] = [", tokens.size(0), ", ", tokens.size(2), "] with unit stride along D, got ",
              v.sizes(), " strides ", v.strides());
  TORCH_CHECK(v.device() == tokens.device(), what, " is on ", v.device(), ", the tokens on ", tokens.device());
}

// An optional [D] vector matching tokens [N, T, D].
void check_bias(const at::Tensor& b, const at::Tensor& tokens, const char* what) {
  if (!b.defined()) return;
  TORCH_CHECK(b.dim() == 1 && b.size(0) == tokens.size(2) && b.is_contiguous() && b.device() == tokens.device(),
              what, " must be a contiguous [", tokens.size(2), "] on ", tokens.device(), ", got ", b.sizes(), " on ",
              b.device());
}

void check_same(const at::Tensor& a, const at::Tensor& b, const char* what) {
  TORCH_CHECK(a.sizes() == b.sizes() && a.device() == b.device() && a.is_contiguous(), what, " must be contiguous ",
              b.sizes(), " on ", b.device(), ", got ", a.sizes(), " on ", a.device());
}

}  // namespace

bool fused_available(const at::Tensor& like) {
#if defined(OPENDIT_WITH_CUDA)
  return like.is_cuda() && (like.scalar_type() == at::kFloat || like.scalar_type() == at::kBFloat16);
#else
  (void)like;
  return false;
#endif
}

NormModulate norm_modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale, double eps) {
  check_tokens(x, "norm_modulate: x");
  check_per_sample(shift, x, "norm_modulate: shift");
  check_per_sample(scale, x, "norm_modulate: scale");
  TORCH_CHECK(shift.scalar_type() == scale.scalar_type(), "norm_modulate: shift and scale differ in dtype");
  return route(fused_available(x), cuda_impl::norm_modulate, reference::norm_modulate, x, shift, scale, eps);
}

NormModulateGrads norm_modulate_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                                         const at::Tensor& rstd, const at::Tensor& scale, const at::Tensor& dres,
                                         const at::Tensor& shift) {
  check_tokens(x, "norm_modulate_backward: x");
  check_same(dy, x, "norm_modulate_backward: dy");
  TORCH_CHECK(dy.scalar_type() == x.scalar_type(), "norm_modulate_backward: dy and x differ in dtype");
  TORCH_CHECK(mean.sizes() == x.sizes().slice(0, 2) && rstd.sizes() == mean.sizes() && mean.is_contiguous() &&
                  rstd.is_contiguous(),
              "norm_modulate_backward: mean and rstd must be contiguous [N, T]");
  check_per_sample(scale, x, "norm_modulate_backward: scale");
  if (dres.defined()) {
    check_same(dres, x, "norm_modulate_backward: dres");
    TORCH_CHECK(dres.scalar_type() == x.scalar_type(), "norm_modulate_backward: dres and x differ in dtype");
  }
  if (shift.defined()) {
    check_per_sample(shift, x, "norm_modulate_backward: shift");
    TORCH_CHECK(shift.scalar_type() == scale.scalar_type(), "norm_modulate_backward: shift and scale differ in dtype");
  }
  return route(fused_available(x), cuda_impl::norm_modulate_backward, reference::norm_modulate_backward, dy, x, mean,
               rstd, scale, dres, shift);
}

at::Tensor gated_residual(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate, const at::Tensor& bias) {
  check_tokens(x, "gated_residual: x");
  check_same(y, x, "gated_residual: y");
  TORCH_CHECK(y.scalar_type() == x.scalar_type(), "gated_residual: x and y differ in dtype");
  check_per_sample(gate, x, "gated_residual: gate");
  check_bias(bias, x, "gated_residual: bias");
  return route(fused_available(x), cuda_impl::gated_residual, reference::gated_residual, x, y, gate, bias);
}

GatedResidualGrads gated_residual_backward(const at::Tensor& dout, const at::Tensor& y, const at::Tensor& gate,
                                           const at::Tensor& bias) {
  check_tokens(y, "gated_residual_backward: y");
  check_same(dout, y, "gated_residual_backward: dout");
  TORCH_CHECK(dout.scalar_type() == y.scalar_type(), "gated_residual_backward: dout and y differ in dtype");
  check_per_sample(gate, y, "gated_residual_backward: gate");
  check_bias(bias, y, "gated_residual_backward: bias");
  return route(fused_available(y), cuda_impl::gated_residual_backward, reference::gated_residual_backward, dout, y,
               gate, bias);
}

at::Tensor bias_gelu(const at::Tensor& a, const at::Tensor& bias) {
  TORCH_CHECK(a.dim() >= 1 && a.is_contiguous(), "bias_gelu: a must be contiguous, got ", a.sizes());
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == a.size(-1) && bias.is_contiguous() && bias.device() == a.device(),
              "bias_gelu: bias must be a contiguous [", a.size(-1), "] on ", a.device(), ", got ", bias.sizes());
  // The kernel takes a float32 or bfloat16 bias; any other runs the definition.
  return route(fused_available(a) && fused_available(bias), cuda_impl::bias_gelu, reference::bias_gelu, a, bias);
}

BiasGeluGrads bias_gelu_backward(const at::Tensor& dg, const at::Tensor& a, const at::Tensor& bias,
                                 bool reuse_dg, bool with_gelu) {
  TORCH_CHECK(a.dim() >= 1 && a.is_contiguous(), "bias_gelu_backward: a must be contiguous, got ", a.sizes());
  check_same(dg, a, "bias_gelu_backward: dg");
  TORCH_CHECK(dg.scalar_type() == a.scalar_type(), "bias_gelu_backward: dg and a differ in dtype");
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == a.size(-1) && bias.is_contiguous() && bias.device() == a.device(),
              "bias_gelu_backward: bias must be a contiguous [", a.size(-1), "] on ", a.device());
  return route(fused_available(a) && fused_available(bias), cuda_impl::bias_gelu_backward,
               reference::bias_gelu_backward, dg, a, bias, reuse_dg, with_gelu);
}

void adamw_ema(const AdamWTensors& t, const AdamWScalars& s) {
  const at::Tensor& p = t.param;
  TORCH_CHECK(p.defined() && t.grad.defined() && t.exp_avg.defined() && t.exp_avg_sq.defined(),
              "adamw_ema: param, grad, exp_avg and exp_avg_sq are required");
  for (const at::Tensor* x : {&t.param, &t.grad, &t.exp_avg, &t.exp_avg_sq, &t.ema, &t.decay_mask, &t.working}) {
    if (!x->defined()) continue;
    TORCH_CHECK(x->dim() == 1 && x->numel() == p.numel() && x->device() == p.device() && x->is_contiguous(),
                "adamw_ema: every tensor must be a contiguous [", p.numel(), "] on ", p.device(), ", got ",
                x->sizes(), " on ", x->device());
  }
  for (const at::Tensor* x : {&t.grad, &t.exp_avg, &t.exp_avg_sq, &t.ema})
    TORCH_CHECK(!x->defined() || x->scalar_type() == p.scalar_type(), "adamw_ema: optimizer state must be ",
                p.scalar_type(), " like param, got ", x->scalar_type());
  TORCH_CHECK(!t.decay_mask.defined() || t.decay_mask.scalar_type() == at::kBool, "adamw_ema: decay_mask must be bool");
  TORCH_CHECK(!t.scalars.defined() || (t.scalars.dim() == 1 && t.scalars.numel() == kDynCount &&
                                       t.scalars.scalar_type() == at::kDouble && t.scalars.is_contiguous() &&
                                       t.scalars.device() == p.device()),
              "adamw_ema: scalars must be a contiguous float64 [", int64_t(kDynCount), "] on ", p.device());
  at::NoGradGuard no_grad;
  route(p.is_cuda() && p.scalar_type() == at::kFloat, cuda_impl::adamw_ema, reference::adamw_ema, t, s);
}

at::Tensor group_norm_silu(const at::Tensor& x, int64_t groups, const at::Tensor& weight, const at::Tensor& bias,
                           double eps, bool silu) {
  TORCH_CHECK(x.dim() == 4 && groups >= 1 && x.size(1) % groups == 0,
              "group_norm_silu: x must be [N, C, H, W] with C a multiple of ", groups, " groups, got ", x.sizes());
  const int64_t C = x.size(1);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == C && bias.sizes() == weight.sizes() &&
                  weight.device() == x.device() && bias.device() == x.device(),
              "group_norm_silu: weight and bias must be [", C, "] on ", x.device());
  // The kernel's tiling: channels-last x, float32/bfloat16 throughout, C / vector width dividing 256 threads.
  const int64_t cg = C / groups, width = x.scalar_type() == at::kBFloat16 ? 8 : 4;
  int64_t v = 1;
  while (v * 2 <= width && cg % (v * 2) == 0) v *= 2;
  const bool tiles = C / v <= 256 && 256 % (C / v) == 0;
  const bool aligned = reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0;
  const bool fused = fused_available(x) && x.is_contiguous(at::MemoryFormat::ChannelsLast) && tiles && aligned &&
                     weight.scalar_type() == x.scalar_type() && bias.scalar_type() == x.scalar_type() &&
                     weight.is_contiguous() && bias.is_contiguous();
  return route(fused, cuda_impl::group_norm_silu, reference::group_norm_silu, x, groups, weight, bias, eps, silu);
}

at::Tensor add_rms_norm(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight, double eps,
                        at::ScalarType out_dtype) {
  TORCH_CHECK(x.dim() >= 1 && x.is_contiguous() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
              "add_rms_norm: x must be a contiguous float32 (or float64) tensor, got ", x.sizes(), " ",
              x.scalar_type());
  TORCH_CHECK(!delta.defined() || (delta.sizes() == x.sizes() && delta.device() == x.device() && delta.is_contiguous()),
              "add_rms_norm: delta must be contiguous ", x.sizes(), " on ", x.device());
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1) && weight.device() == x.device(),
              "add_rms_norm: weight must be [", x.size(-1), "] on ", x.device());
  const bool fused = fused_available(x) && x.scalar_type() == at::kFloat && x.size(-1) % 4 == 0 &&
                     reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 &&
                     (!delta.defined() || fused_available(delta)) && fused_available(weight) &&
                     weight.is_contiguous() && (out_dtype == at::kFloat || out_dtype == at::kBFloat16);
  return route(fused, cuda_impl::add_rms_norm, reference::add_rms_norm, x, delta, weight, eps, out_dtype);
}

at::Tensor gated_gelu(const at::Tensor& ab) {
  TORCH_CHECK(ab.dim() >= 1 && ab.is_contiguous() && ab.size(-1) % 2 == 0,
              "gated_gelu: ab must be contiguous with an even last dimension, got ", ab.sizes());
  const int64_t F = ab.size(-1) / 2;
  const bool fused = fused_available(ab) && F % (ab.scalar_type() == at::kBFloat16 ? 8 : 4) == 0 &&
                     reinterpret_cast<uintptr_t>(ab.data_ptr()) % 16 == 0;
  return route(fused, cuda_impl::gated_gelu, reference::gated_gelu, ab);
}


namespace {
// qkv [N, T, 3, H, hd] contiguous, floating point.
void check_packed_qkv(const at::Tensor& qkv, const char* op) {
  TORCH_CHECK(qkv.dim() == 5, op, ": qkv must be [N, T, 3, H, hd] (5-D), got ", qkv.sizes());
  TORCH_CHECK(qkv.size(2) == 3, op, ": qkv's third dimension must be 3 (q, k, v), got ", qkv.sizes());
  TORCH_CHECK(qkv.is_contiguous(), op, ": qkv must be contiguous");
  TORCH_CHECK(at::isFloatingType(qkv.scalar_type()), op, ": qkv must be floating point, got ", qkv.scalar_type());
  TORCH_CHECK(qkv.numel() > 0, op, ": qkv is empty: ", qkv.sizes());
}

// cuDNN's fused attention: 16-bit CUDA tensors, hd a multiple of 8 up to 128, 16-byte aligned q, k, v.
bool cudnn_attention_shape(const at::Tensor& qkv) {
#if defined(OPENDIT_WITH_CUDA)
  const int64_t hd = qkv.size(4);
  return qkv.is_cuda() && (qkv.scalar_type() == at::kBFloat16 || qkv.scalar_type() == at::kHalf) &&
         hd % 8 == 0 && hd <= 128 && reinterpret_cast<uintptr_t>(qkv.data_ptr()) % 16 == 0;
#else
  (void)qkv;
  return false;
#endif
}
// The backward's other arguments: dout and out of the forward's output shape and qkv's dtype and device (out
// contiguous), stats of shape s_shape in float32 (float64 for float64 qkv), contiguous.
void check_attention_grads(const char* op, const at::Tensor& dout, const at::Tensor& qkv, const at::Tensor& out,
                           const at::Tensor& stats, const std::vector<int64_t>& o_shape,
                           const std::vector<int64_t>& s_shape) {
  TORCH_CHECK(dout.sizes() == o_shape && dout.device() == qkv.device(), op, ": dout must be ",
              at::IntArrayRef(o_shape), " on ", qkv.device(), ", got ", dout.sizes(), " on ", dout.device());
  TORCH_CHECK(dout.scalar_type() == qkv.scalar_type(), op, ": dout and qkv differ in dtype (", dout.scalar_type(),
              " vs ", qkv.scalar_type(), ")");
  TORCH_CHECK(out.sizes() == dout.sizes() && out.device() == dout.device() && out.is_contiguous(), op,
              ": out must be contiguous ", dout.sizes(), " on ", dout.device(), ", got ", out.sizes(), " on ",
              out.device());
  TORCH_CHECK(out.scalar_type() == qkv.scalar_type(), op, ": out and qkv differ in dtype");
  const auto s_type = qkv.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(stats.sizes() == s_shape && stats.is_contiguous() && stats.device() == qkv.device() &&
                  stats.scalar_type() == s_type,
              op, ": stats must be a contiguous ", s_type, " ", at::IntArrayRef(s_shape), " on ", qkv.device(),
              ", got ", stats.scalar_type(), " ", stats.sizes());
}
}  // namespace

PackedAttention packed_attention(const at::Tensor& qkv) {
  check_packed_qkv(qkv, "packed_attention");
  return route(cudnn_attention_shape(qkv), cuda_impl::packed_attention, reference::packed_attention, qkv);
}

at::Tensor packed_attention_backward(const at::Tensor& dout_in, const at::Tensor& qkv, const at::Tensor& out,
                                     const at::Tensor& stats) {
  check_packed_qkv(qkv, "packed_attention_backward");
  const int64_t N = qkv.size(0), T = qkv.size(1), H = qkv.size(3), hd = qkv.size(4);
  check_attention_grads("packed_attention_backward", dout_in, qkv, out, stats, {N, T, H, hd}, {N, H, T});
  const at::Tensor dout = dout_in.contiguous();
  return route(cudnn_attention_shape(qkv) && reinterpret_cast<uintptr_t>(dout.data_ptr()) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(out.data_ptr()) % 16 == 0,
               cuda_impl::packed_attention_backward, reference::packed_attention_backward, dout, qkv, out, stats);
}

namespace {
// The kernel's tiles are T x T and T x hd floats in shared memory: up to 198 KB for the backward at these bounds
// (short_attention_fits also checks the device's limit: 163 KB on an A100).
constexpr int64_t kShortMaxT = 64, kShortMaxHd = 128;

// qkv [B, T, S, 3, H, hd] contiguous, floating point; valid -1 or in [1, T].
void check_middle_qkv(const at::Tensor& qkv, int64_t valid, const char* op) {
  TORCH_CHECK(qkv.dim() == 6 && qkv.size(3) == 3, op, ": qkv must be [B, T, S, 3, H, hd] (6-D, q, k, v third), got ",
              qkv.sizes());
  TORCH_CHECK(qkv.is_contiguous(), op, ": qkv must be contiguous");
  TORCH_CHECK(at::isFloatingType(qkv.scalar_type()), op, ": qkv must be floating point, got ", qkv.scalar_type());
  TORCH_CHECK(qkv.numel() > 0, op, ": qkv is empty: ", qkv.sizes());
  TORCH_CHECK(valid == -1 || (valid >= 1 && valid <= qkv.size(1)), op, ": valid must be -1 or in [1, ",
              qkv.size(1), "], got ", valid);
}
}  // namespace

bool short_attention_fused(const at::Tensor& qkv) {
#if defined(OPENDIT_WITH_CUDA)
  return fused_available(qkv) && qkv.dim() == 6 && qkv.size(1) <= kShortMaxT && qkv.size(5) <= kShortMaxHd &&
         cuda_impl::short_attention_fits(qkv);
#else
  (void)qkv;
  return false;
#endif
}

ShortAttention short_attention(const at::Tensor& qkv, int64_t valid) {
  check_middle_qkv(qkv, valid, "short_attention");
  return route(short_attention_fused(qkv), cuda_impl::short_attention, reference::short_attention, qkv, valid);
}

at::Tensor short_attention_backward(const at::Tensor& dout_in, const at::Tensor& qkv, const at::Tensor& out,
                                    const at::Tensor& stats, int64_t valid) {
  check_middle_qkv(qkv, valid, "short_attention_backward");
  const int64_t B = qkv.size(0), T = qkv.size(1), S = qkv.size(2), H = qkv.size(4), hd = qkv.size(5);
  check_attention_grads("short_attention_backward", dout_in, qkv, out, stats, {B, T, S, H, hd}, {B, S, H, T});
  return route(short_attention_fused(qkv), cuda_impl::short_attention_backward, reference::short_attention_backward,
               dout_in.contiguous(), qkv, out, stats, valid);
}

bool packed_attention_uses_cudnn(const at::Tensor& qkv) {
  check_packed_qkv(qkv, "packed_attention_uses_cudnn");
#if defined(OPENDIT_WITH_CUDA)
  return cudnn_attention_shape(qkv) && cuda_impl::packed_attention_builds(qkv);
#else
  return false;
#endif
}

}  // namespace opendit::kernels
