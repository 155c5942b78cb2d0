// The definitions of the fused operations on ATen ops (see cuda/ops.hpp): what the CPU runs (one forward path on
// every device) and what the GPU tests compare the kernels with, in float64. Built from ATen's own fused CPU ops
// (LayerNorm, GELU, addcmul) so that the CPU path is about as fast as the plain composition it replaces.
// Low-precision inputs are computed in float32 and rounded once at the end, as the kernels do.
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>

#include "cuda/ops.hpp"

namespace opendit::kernels::reference {
namespace {

at::ScalarType opmath(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// [N, D] -> [N, 1, D] in the compute dtype.
at::Tensor per_sample(const at::Tensor& v, at::ScalarType dt) { return v.to(dt).unsqueeze(1); }

}  // namespace

NormModulate norm_modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale, double eps) {
  const auto dt = opmath(x);
  const int64_t D = x.size(-1);
  // LayerNorm without affine returns mean and rstd (biased variance) beside x-hat: one pass on every device.
  auto [xhat, mean, rstd] = at::native_layer_norm(x.to(dt), {D}, {}, {}, eps);           // rstd [N, T, 1]
  at::Tensor y = at::addcmul(per_sample(shift, dt), xhat, 1 + per_sample(scale, dt));    // x-hat (1 + scale) + shift
  return {y.to(x.scalar_type()), mean.squeeze(-1), rstd.squeeze(-1)};
}

NormModulateGrads norm_modulate_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                                         const at::Tensor& rstd, const at::Tensor& scale, const at::Tensor& dres,
                                         const at::Tensor& shift) {
  const auto dt = opmath(x);
  const int64_t D = x.size(-1);
  at::Tensor xf = x.to(dt), dyf = dy.to(dt), m = mean.to(dt).unsqueeze(-1), r = rstd.to(dt).unsqueeze(-1);
  at::Tensor dxhat = dyf * (1 + per_sample(scale, dt));                                   // [N, T, D]
  // dx = rstd (dxhat - mean_D(dxhat) - xhat mean_D(dxhat xhat)): LayerNorm's own backward.
  at::Tensor dx = std::get<0>(at::native_layer_norm_backward(dxhat, xf, {D}, m, r, {}, {}, {true, false, false}));
  if (dres.defined()) dx = dx + dres.to(dt);
  at::Tensor xhat = (xf - m) * r;
  at::Tensor h;  // norm_modulate's y from the saved statistics
  if (shift.defined()) h = at::addcmul(per_sample(shift, dt), xhat, 1 + per_sample(scale, dt)).to(x.scalar_type());
  return {dx.to(x.scalar_type()), dyf.sum(1).to(scale.scalar_type()), (dyf * xhat).sum(1).to(scale.scalar_type()),
          h};
}

namespace {
// y + bias in the compute dtype (y alone without a bias).
at::Tensor biased(const at::Tensor& y, const at::Tensor& bias, at::ScalarType dt) {
  return bias.defined() ? y.to(dt) + bias.to(dt) : y.to(dt);
}
}  // namespace

at::Tensor gated_residual(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate, const at::Tensor& bias) {
  const auto dt = opmath(x);
  return at::addcmul(x.to(dt), per_sample(gate, dt), biased(y, bias, dt)).to(x.scalar_type());
}

GatedResidualGrads gated_residual_backward(const at::Tensor& dout, const at::Tensor& y, const at::Tensor& gate,
                                           const at::Tensor& bias) {
  const auto dt = opmath(dout);
  at::Tensor d = dout.to(dt);
  GatedResidualGrads g{(d * per_sample(gate, dt)).to(y.scalar_type()),
                       (d * biased(y, bias, dt)).sum(1).to(gate.scalar_type()), {}};
  if (bias.defined()) g.dbias = (gate.to(dt) * d.sum(1)).sum(0);  // sum_n gate[n] * sum_t dout
  return g;
}

// gelu_tanh(u) = 0.5 u (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3))): torch's GELU with approximate = "tanh".
at::Tensor bias_gelu(const at::Tensor& a, const at::Tensor& bias) {
  const auto dt = opmath(a);
  return at::gelu(a.to(dt) + bias.to(dt), "tanh").to(a.scalar_type());
}

BiasGeluGrads bias_gelu_backward(const at::Tensor& dg, const at::Tensor& a, const at::Tensor& bias, bool,
                                 bool with_gelu) {
  const auto dt = opmath(a);
  const at::Tensor u = a.to(dt) + bias.to(dt);
  at::Tensor da = at::gelu_backward(dg.to(dt), u, "tanh");
  return {da.to(a.scalar_type()), da.reshape({-1, a.size(-1)}).sum(0).to(bias.scalar_type()),
          with_gelu ? at::gelu(u, "tanh").to(a.scalar_type()) : at::Tensor()};
}

// The GEMMs with epilogues (cuda/gemm_epilogue.cpp): torch's linear, then the elementwise part.
LinearGelu linear_gelu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  at::Tensor pre = at::linear(x, w, b);  // [M, O]
  return {at::gelu(pre.to(opmath(pre)), "tanh").to(pre.scalar_type()), pre};
}

LinearGrads linear_wgrad(const at::Tensor& dy, const at::Tensor& x, bool bias) {
  return {dy.t().mm(x), bias ? dy.sum(0) : at::Tensor()};  // [O, K], [O]
}

void linear_wgrad_into(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& dw, const at::Tensor& db,
                       bool accumulate) {
  at::NoGradGuard no_grad;
  const auto g = linear_wgrad(dy, x, db.defined());
  accumulate ? dw.add_(g.dw.to(dw.scalar_type())) : dw.copy_(g.dw);
  if (db.defined()) accumulate ? db.add_(g.db.to(db.scalar_type())) : db.copy_(g.db);
}

// Attention along the middle axis, in the compute dtype: q, k, v [B, S, H, T, hd] views of qkv [B, T, S, 3, H, hd].
namespace {
struct Heads {
  at::Tensor q, k, v;
  double scale;
  at::Tensor key_mask;  // [T] bool, true = hidden; undefined: every key
};
Heads split_heads(const at::Tensor& qkv, int64_t valid, at::ScalarType dt) {
  const at::Tensor x = qkv.to(dt).permute({0, 2, 4, 3, 1, 5});  // [B, S, H, 3, T, hd]
  const int64_t T = qkv.size(1);
  at::Tensor mask;
  if (valid >= 0 && valid < T) mask = at::arange(T, qkv.options().dtype(at::kLong)) >= valid;
  return {x.select(3, 0), x.select(3, 1), x.select(3, 2), 1.0 / std::sqrt(double(qkv.size(5))), mask};
}
// Scaled scores [B, S, H, T, T], hidden keys at -inf.
at::Tensor scores(const Heads& h) {
  at::Tensor s = at::matmul(h.q, h.k.transpose(-2, -1)) * h.scale;
  return h.key_mask.defined() ? s.masked_fill(h.key_mask, -INFINITY) : s;
}
}  // namespace

ShortAttention short_attention(const at::Tensor& qkv, int64_t valid) {
  const Heads h = split_heads(qkv, valid, opmath(qkv));
  const at::Tensor s = scores(h);
  const at::Tensor lse = at::logsumexp(s, -1, /*keepdim=*/true);          // [B, S, H, T, 1]
  const at::Tensor o = at::matmul((s - lse).exp(), h.v);                   // [B, S, H, T, hd]
  return {o.permute({0, 3, 1, 2, 4}).contiguous().to(qkv.scalar_type()), lse.squeeze(-1)};
}

// dV = P^T dO, dP = dO V^T, dS = P (dP - rowsum(dO O)), dQ = dS K scale, dK = dS^T Q scale (P recomputed).
at::Tensor short_attention_backward(const at::Tensor& dout, const at::Tensor& qkv, const at::Tensor& out,
                                    const at::Tensor&, int64_t valid) {
  const auto dt = opmath(qkv);
  const Heads h = split_heads(qkv, valid, dt);
  const at::Tensor d_o = dout.to(dt).permute({0, 2, 3, 1, 4}), o = out.to(dt).permute({0, 2, 3, 1, 4});
  const at::Tensor p = at::softmax(scores(h), -1);                         // [B, S, H, T, T]
  const at::Tensor dv = at::matmul(p.transpose(-2, -1), d_o);
  const at::Tensor dp = at::matmul(d_o, h.v.transpose(-2, -1));
  const at::Tensor ds = p * (dp - (d_o * o).sum(-1, /*keepdim=*/true));
  const at::Tensor dq = at::matmul(ds, h.k) * h.scale, dk = at::matmul(ds.transpose(-2, -1), h.q) * h.scale;
  // [B, S, H, 3, T, hd] -> [B, T, S, 3, H, hd]
  return at::stack({dq, dk, dv}, 3).permute({0, 4, 1, 3, 2, 5}).contiguous().to(qkv.scalar_type());
}

// The packed layout is the middle-axis one with one position (S = 1).
PackedAttention packed_attention(const at::Tensor& qkv) {
  ShortAttention r = short_attention(qkv.unsqueeze(2), -1);
  return {r.out.squeeze(2), r.stats.squeeze(1)};
}

at::Tensor packed_attention_backward(const at::Tensor& dout, const at::Tensor& qkv, const at::Tensor& out,
                                     const at::Tensor& stats) {
  return short_attention_backward(dout.unsqueeze(2), qkv.unsqueeze(2), out.unsqueeze(2), stats.unsqueeze(1), -1)
      .squeeze(2);
}

void adamw_ema(const AdamWTensors& all, const AdamWScalars& host) {
  at::NoGradGuard no_grad;
  AdamWScalars s = host;
  if (all.scalars.defined()) {  // the device's values (a host read: this definition is not for CUDA graphs)
    const at::Tensor c = all.scalars.to(at::kCPU);
    const double* d = c.data_ptr<double>();
    if (d[kDynSkip] != 0) return;
    s.lr = d[kDynLr], s.step_size = d[kDynStepSize], s.bias_correction2_sqrt = d[kDynBc2Sqrt];
    s.ema_decay = d[kDynEmaDecay], s.clip_scale = d[kDynClip];
  }
  // Slices of a few MiB keep the temporaries (scaled gradient, denominator) small and in cache.
  const int64_t n = all.param.numel(), chunk = int64_t(1) << 20;
  for (int64_t b = 0; b < n; b += chunk) {
    const int64_t len = std::min(chunk, n - b);
    auto cut = [&](const at::Tensor& t) { return t.defined() ? t.narrow(0, b, len) : t; };
    at::Tensor p = cut(all.param), grad = cut(all.grad), m = cut(all.exp_avg), v = cut(all.exp_avg_sq),
               ema = cut(all.ema), mask = cut(all.decay_mask), working = cut(all.working);
    const at::Tensor g = s.clip_scale == 1.0 ? grad : grad * s.clip_scale;
    if (s.weight_decay != 0) {
      const double keep = 1 - s.lr * s.weight_decay;
      if (mask.defined())
        p.mul_(at::where(mask, at::scalar_tensor(keep, p.options()), at::scalar_tensor(1.0, p.options())));
      else
        p.mul_(keep);
    }
    m.lerp_(g, 1 - s.beta1);
    v.mul_(s.beta2).addcmul_(g, g, 1 - s.beta2);
    const at::Tensor denom = (v.sqrt() / s.bias_correction2_sqrt).add_(s.eps);
    p.addcdiv_(m, denom, -s.step_size);
    if (ema.defined()) ema.mul_(s.ema_decay).add_(p, 1 - s.ema_decay);
    if (working.defined()) working.copy_(p);
  }
}

}  // namespace opendit::kernels::reference
