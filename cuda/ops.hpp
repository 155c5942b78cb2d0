// The fused operations of DiT training and sampling. Each has a definition on ATen ops (cuda/reference.cpp, used on
// the CPU, and the ground truth of the GPU tests) and, when opendit is built with CUDA, a fused kernel (cuda/*.cu)
// that runs on torch's current stream for CUDA tensors of dtype float32 or bfloat16. Every other case (CPU tensors,
// float64, a build without nvcc) runs the reference. Shapes: N batch, T tokens, D channels.
//
// Statistics and reductions are accumulated in float32 (float64 for float64 inputs); outputs have the input's dtype
// unless stated. Any N, T, D >= 1 are allowed, including sizes that are not multiples of 8.
#pragma once
#include <ATen/ATen.h>

namespace opendit::kernels {

// ---- a. LayerNorm (no affine) fused with adaLN modulation --------------------------------------------------------
// y = (x - mean) * rstd * (1 + scale) + shift, mean/rstd over D, rstd = 1 / sqrt(var + eps) (biased variance).
// x [N, T, D] contiguous; shift, scale [N, D] with unit stride along D (rows may be strided: chunks of the adaLN
// output). mean, rstd [N, T] in float32 (float64 for float64 x) are what the backward needs besides x and scale.
struct NormModulate {
  at::Tensor y, mean, rstd;
};
NormModulate norm_modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale, double eps);

// dx [N, T, D] (x's dtype); dshift = sum_t dy, dscale = sum_t dy * xhat, both [N, D] in shift's dtype.
// dres (optional, [N, T, D] in x's dtype): the gradient that reaches x by the block's residual path, added to dx in
// float32 before dx is rounded (one pass, where autograd would add the two gradients in a separate one).
// shift (optional, as norm_modulate's): also h = norm_modulate's y again, from the saved statistics and in the same
// arithmetic (on a GPU the same bits), in x's dtype: the input of the linear after the norm, whose weight gradient
// needs it, from the pass that reads x anyway instead of a recompute of its own.
struct NormModulateGrads {
  at::Tensor dx, dshift, dscale, h;
};
NormModulateGrads norm_modulate_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                                         const at::Tensor& rstd, const at::Tensor& scale,
                                         const at::Tensor& dres = {}, const at::Tensor& shift = {});

// ---- b. gated residual -------------------------------------------------------------------------------------------
// out = x + gate * (y + bias); x, y [N, T, D] contiguous; gate [N, D] with unit stride along D; bias [D] optional
// (the bias of the projection that made y, added here instead of by its GEMM, so that its gradient comes from the
// sums this backward makes anyway rather than from a reduction of dy of its own).
at::Tensor gated_residual(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate,
                          const at::Tensor& bias = {});

// dy = dout * gate [N, T, D]; dgate = sum_t dout * (y + bias) [N, D] in gate's dtype; with a bias,
// dbias = sum_n gate[n] * sum_t dout [D] in float32 (float64 for float64 tokens). (dx is dout itself.)
struct GatedResidualGrads {
  at::Tensor dy, dgate, dbias;
};
GatedResidualGrads gated_residual_backward(const at::Tensor& dout, const at::Tensor& y, const at::Tensor& gate,
                                           const at::Tensor& bias = {});

// ---- c. bias + GELU (tanh approximation) -------------------------------------------------------------------------
// g = gelu_tanh(a + bias): a [..., K] contiguous, bias [K].
// gelu_tanh(u) = 0.5 u (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3)))
at::Tensor bias_gelu(const at::Tensor& a, const at::Tensor& bias);

// da = dg * gelu_tanh'(a + bias) (a's dtype, a's shape); dbias = sum over all rows of da [K] in bias's dtype.
// reuse_dg: the caller gives dg up, and the kernel may write da over it (one [..., K] buffer less at the peak of
// the MLP's backward); the reference ignores it. with_gelu: g = gelu_tanh(a + bias) too, in the same pass (the
// MLP's backward needs the GELU output for fc2's weight gradient: one read of a instead of two).
struct BiasGeluGrads {
  at::Tensor da, dbias;
  at::Tensor g;  // with_gelu only
};
BiasGeluGrads bias_gelu_backward(const at::Tensor& dg, const at::Tensor& a, const at::Tensor& bias,
                                 bool reuse_dg = false, bool with_gelu = false);

// ---- d. AdamW + EMA in one pass ----------------------------------------------------------------------------------
// Over flat 1-D tensors of one length n on one device, in torch.optim.AdamW's order of operations:
//   g = grad * clip_scale
//   param *= 1 - lr * weight_decay                      (where decay_mask is true; everywhere if it is undefined)
//   exp_avg += (g - exp_avg) * (1 - beta1)              (lerp)
//   exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * g * g
//   param -= step_size * exp_avg / (sqrt(exp_avg_sq) / bias_correction2_sqrt + eps)
//   ema = ema * ema_decay + (1 - ema_decay) * param     (if ema is defined)
//   working = param in working's dtype                  (if working is defined)
// param, grad, exp_avg, exp_avg_sq, ema: float32 (float64 on the reference path); decay_mask bool; working any float.
struct AdamWScalars {
  double lr = 1e-4, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
  double step_size = 1e-4;             // lr / (1 - beta1^step)
  double bias_correction2_sqrt = 1.0;  // sqrt(1 - beta2^step)
  double clip_scale = 1.0, ema_decay = 0.9999;
};
// scalars (optional, so that a CUDA graph can replay updates whose scalars change every step): float64 [6] on
// param's device, {lr, step_size, bias_correction2_sqrt, ema_decay, clip_scale, skip}; read on the device in place of
// those fields of AdamWScalars (beta1, beta2, eps, weight_decay stay), and skip != 0 leaves every tensor untouched.
enum AdamWDynamic : int64_t { kDynLr, kDynStepSize, kDynBc2Sqrt, kDynEmaDecay, kDynClip, kDynSkip, kDynCount };
struct AdamWTensors {
  at::Tensor param, grad, exp_avg, exp_avg_sq, ema, decay_mask, working;
  at::Tensor scalars;
};
void adamw_ema(const AdamWTensors& t, const AdamWScalars& s);

// ---- e. GroupNorm + SiLU (the VAE) -------------------------------------------------------------------------------
// y = silu((x - mean) * rstd * weight + bias) (silu optional), mean/rstd over each group of C / groups channels and
// all H W positions of a sample, rstd = 1 / sqrt(var + eps) (biased variance). x [N, C, H, W]; weight, bias [C].
// The kernel takes channels-last x (NHWC in memory, what cuDNN's fastest convolutions read and write) and returns
// channels-last y; other layouts, and channel counts it does not tile (C / vector width must divide 256), run the
// definition (at::group_norm), whose output is made channels-last when x was.
at::Tensor group_norm_silu(const at::Tensor& x, int64_t groups, const at::Tensor& weight, const at::Tensor& bias,
                           double eps, bool silu);

// ---- f. residual add + RMSNorm (T5) -----------------------------------------------------------------------------
// x += delta (when delta is defined; x float32 [M, D] contiguous, updated in place), then
// out = x * rsqrt(mean_D(x^2) + eps) * weight, computed in float32 and rounded once to out_dtype.
at::Tensor add_rms_norm(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight, double eps,
                        at::ScalarType out_dtype);

// ---- g. gated GELU (T5 v1.1's feed-forward) ---------------------------------------------------------------------
// ab [..., 2 F] contiguous (a, then b: one GEMM's output) -> gelu_tanh(a) * b [..., F] in ab's dtype.
at::Tensor gated_gelu(const at::Tensor& ab);

// ---- h. GEMMs with fused epilogues (cuBLASLt on a GPU) -------------------------------------------------------
// Row-major, as torch stores them: x [M, K] and w [O, K] contiguous, b [O]; one dtype for all. On a GPU each is one
// cuBLASLt matmul whose epilogue does the elementwise part (float32 accumulation); where cuBLASLt offers no
// algorithm for a shape (it says so once on stderr) and elsewhere, the definition runs (a GEMM, then ATen ops).
//
// linear_gelu: pre = x w^T + b and out = gelu_tanh(pre), both [M, O]; pre is what the backward needs
// (bias_gelu_backward with a zero bias). On the GPU the GEMM writes both (GELU_AUX_BIAS), where a GEMM then a
// bias+GELU pass would read the product back. (cuBLASLt's DGELU_BGRAD backward epilogue is not used: on the H200
// at DiT-XL/2's shapes it ran as a separate 0.6 ms kernel, 4x bias_gelu_backward.)
struct LinearGelu {
  at::Tensor out, pre;
};
LinearGelu linear_gelu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b);

// The parameter gradients of y = x w^T + b: dy [M, O], x [M, K] -> dw = dy^T x [O, K] and, when `bias`,
// db = sum over rows of dy [O], in dy's dtype (BGRADB: the bias gradient from the GEMM that reads dy anyway).
struct LinearGrads {
  at::Tensor dw, db;
};
LinearGrads linear_wgrad(const at::Tensor& dy, const at::Tensor& x, bool bias);

// The same written into float32 tensors (the trainer's flat gradient buffer): dw [O, K] and db [O] (or undefined)
// contiguous float32 on dy's device; accumulate: added to what they hold (later micro-batches), else overwritten.
// On the GPU the GEMM writes float32 straight from its accumulators (beta = 1 to accumulate): no bf16 gradient and
// no copy into the buffer.
void linear_wgrad_into(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& dw, const at::Tensor& db,
                       bool accumulate);

// How many calls of this section on a GPU ran the definition because cuBLASLt offered no algorithm (tests and
// benchmarks check that the fast path ran).
int64_t gemm_epilogue_fallbacks();

// ---- i. self-attention on the packed qkv projection (cuDNN's fused attention on a GPU) ----------------------------
// qkv [N, T, 3, H, hd] contiguous (the qkv linear's output [N, T, 3 D] viewed per head) -> out [N, T, H, hd]
// contiguous in qkv's dtype, out = softmax(q k^T hd^-1/2) v per sample and head (no mask), and stats [N, H, T]
// = logsumexp over keys of q k^T hd^-1/2 (natural log), float32 (float64 for float64 qkv): what the backward needs.
// On a GPU, bfloat16/float16 qkv with hd a multiple of 8 up to 128 runs cuDNN's fused attention (the frontend graph
// API), reading q, k, v in place; other cases, and shapes cuDNN declines (said once on stderr), run the definition.
struct PackedAttention {
  at::Tensor out, stats;
};
PackedAttention packed_attention(const at::Tensor& qkv);

// dout [N, T, H, hd] in qkv's dtype (made contiguous), with qkv, out and stats of the forward -> dqkv
// [N, T, 3, H, hd] contiguous in qkv's dtype: dq, dk, dv written by cuDNN straight into their slices of one buffer
// (no stack of three separate gradients for the qkv linear's backward).
at::Tensor packed_attention_backward(const at::Tensor& dout, const at::Tensor& qkv, const at::Tensor& out,
                                     const at::Tensor& stats);

// True when packed_attention (and its backward) on this qkv runs cuDNN: builds and caches the cuDNN graphs for its
// shape if needed, so call it outside CUDA graph capture. False without CUDA.
bool packed_attention_uses_cudnn(const at::Tensor& qkv);

// ---- j. attention along the middle axis of a packed qkv (short sequences: STDiT's temporal attention) ----------
// qkv [B, T, S, 3, H, hd] contiguous: the qkv linear's output [B, T S, 3 D] for tokens laid out as T frames of S
// positions, viewed per head -> out [B, T, S, H, hd] contiguous in qkv's dtype: for each b, position s and head,
// attention over the T entries of the middle axis, out = softmax(q k^T hd^-1/2) v, where keys t >= valid are hidden
// (valid in [1, T]; -1: none), and stats [B, S, H, T] = logsumexp over keys of the scaled scores, float32 (float64
// for float64 qkv). The layout is the one the linears before and after read and write, so frames need no transpose
// copies; S = 1 is ordinary self-attention over T tokens (section i's layout).
// On a GPU, float32/bfloat16 qkv with T <= 64 and hd <= 128 (whose tiles fit the device's shared memory) runs one
// kernel in which a thread block holds one (b, s, head)'s T rows of q, k and v in shared memory (cuDNN's fused
// attention works in tiles of 64-128 queries, of which a 16-frame sequence fills a small part); other cases run the
// definition. bfloat16 with T = 16 and hd a multiple of 8 (STDiT's and Latte's frames) runs on tensor cores instead:
// one warp a group, P and dS rounded to bfloat16 as the MMA operands (cuda/short_attention_mma.cu).
struct ShortAttention {
  at::Tensor out, stats;
};
ShortAttention short_attention(const at::Tensor& qkv, int64_t valid = -1);

// dout [B, T, S, H, hd] in qkv's dtype (made contiguous), with qkv, out and stats of the forward -> dqkv
// [B, T, S, 3, H, hd] contiguous in qkv's dtype: the gradient the qkv linear needs, in one buffer.
at::Tensor short_attention_backward(const at::Tensor& dout, const at::Tensor& qkv, const at::Tensor& out,
                                    const at::Tensor& stats, int64_t valid = -1);

// True when short_attention on this qkv runs the kernel (see above); false without CUDA.
bool short_attention_fused(const at::Tensor& qkv);

// ---- references (ATen ops; any device and float dtype) -----------------------------------------------------------
namespace reference {
at::Tensor group_norm_silu(const at::Tensor& x, int64_t groups, const at::Tensor& weight, const at::Tensor& bias,
                           double eps, bool silu);
at::Tensor add_rms_norm(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight, double eps,
                        at::ScalarType out_dtype);
at::Tensor gated_gelu(const at::Tensor& ab);
NormModulate norm_modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale, double eps);
NormModulateGrads norm_modulate_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                                         const at::Tensor& rstd, const at::Tensor& scale, const at::Tensor& dres,
                                         const at::Tensor& shift);
at::Tensor gated_residual(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate, const at::Tensor& bias);
GatedResidualGrads gated_residual_backward(const at::Tensor& dout, const at::Tensor& y, const at::Tensor& gate,
                                           const at::Tensor& bias);
at::Tensor bias_gelu(const at::Tensor& a, const at::Tensor& bias);
BiasGeluGrads bias_gelu_backward(const at::Tensor& dg, const at::Tensor& a, const at::Tensor& bias,
                                 bool reuse_dg = false, bool with_gelu = false);  // reuse_dg ignored
void adamw_ema(const AdamWTensors& t, const AdamWScalars& s);
LinearGelu linear_gelu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b);
LinearGrads linear_wgrad(const at::Tensor& dy, const at::Tensor& x, bool bias);
void linear_wgrad_into(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& dw, const at::Tensor& db,
                       bool accumulate);
PackedAttention packed_attention(const at::Tensor& qkv);
at::Tensor packed_attention_backward(const at::Tensor& dout, const at::Tensor& qkv, const at::Tensor& out,
                                     const at::Tensor& stats);
ShortAttention short_attention(const at::Tensor& qkv, int64_t valid);
at::Tensor short_attention_backward(const at::Tensor& dout, const at::Tensor& qkv, const at::Tensor& out,
                                    const at::Tensor& stats, int64_t valid);
}  // namespace reference

// True when the call would run a fused CUDA kernel (for benchmarks and tests that must know).
bool fused_available(const at::Tensor& like);

}  // namespace opendit::kernels
