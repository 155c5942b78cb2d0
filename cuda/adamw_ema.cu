// defines: cuda_impl::adamw_ema (cuda/launch.hpp); the definition and order of operations are in cuda/ops.hpp and
// cuda/reference.cpp.
//
// One pass over flat [n] tensors: read param, grad, exp_avg, exp_avg_sq (and ema, decay_mask), write param,
// exp_avg, exp_avg_sq (and ema, working). Each thread takes 4 consecutive elements per step (float4 loads) in a
// grid-stride loop. Flat shards usually start at a 16-element boundary; when every tensor is off by the same number
// of elements the first few are done one by one, and when they are off by different amounts everything is.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>

#include "cuda/launch.hpp"

namespace opendit::kernels::cuda_impl {
namespace {

constexpr int kThreads = 256;
constexpr int kVec = 4;

template <typename T>
struct alignas(sizeof(T) * kVec) Vec4 {
  T v[kVec];
};

// The scalars in float32, derived once on the host in float64.
struct Scalars {
  float clip, keep, one_minus_beta1, beta2, one_minus_beta2, bc2_sqrt, eps, neg_step_size, ema_decay,
      one_minus_ema_decay;
  bool weight_decay;  // false: param is never multiplied by keep
  double decay_rate;  // weight_decay's value, for keep from a device lr
};

// The per-step scalars from the device (AdamWDynamic order), derived in float64 as the host does (no FMA
// contraction) and rounded once. Returns false when the update is to be skipped.
__device__ __forceinline__ bool read_dynamic(const double* d, Scalars& s) {
  if (d[kDynSkip] != 0) return false;
  s.clip = float(d[kDynClip]);
  s.keep = float(__dsub_rn(1.0, __dmul_rn(d[kDynLr], s.decay_rate)));
  s.neg_step_size = float(-d[kDynStepSize]);
  s.bc2_sqrt = float(d[kDynBc2Sqrt]);
  s.ema_decay = float(d[kDynEmaDecay]);
  s.one_minus_ema_decay = float(__dsub_rn(1.0, d[kDynEmaDecay]));
  return true;
}

// Optional tensors are null pointers.
template <typename W>
struct Ptrs {
  float* param;
  const float* grad;
  float* exp_avg;
  float* exp_avg_sq;
  float* ema;
  const bool* decay_mask;
  W* working;
};

// One element, in torch.optim.AdamW's order; returns the new param and updates m, v.
__device__ __forceinline__ float adamw(float p, float grad, float& m, float& v, bool decay, const Scalars& s) {
  const float g = grad * s.clip;
  if (decay) p *= s.keep;
  m = m + s.one_minus_beta1 * (g - m);  // lerp(m, g, 1 - beta1), weight < 0.5
  v = v * s.beta2 + s.one_minus_beta2 * (g * g);
  const float denom = sqrtf(v) / s.bc2_sqrt + s.eps;
  return p + s.neg_step_size * (m / denom);
}

template <typename W>
__device__ __forceinline__ void step_one(const Ptrs<W>& t, const Scalars& s, int64_t i) {
  float m = t.exp_avg[i], v = t.exp_avg_sq[i];
  const bool decay = s.weight_decay && (t.decay_mask == nullptr || t.decay_mask[i]);
  const float p = adamw(t.param[i], t.grad[i], m, v, decay, s);
  t.param[i] = p;
  t.exp_avg[i] = m;
  t.exp_avg_sq[i] = v;
  if (t.ema != nullptr) t.ema[i] = t.ema[i] * s.ema_decay + s.one_minus_ema_decay * p;
  if (t.working != nullptr) t.working[i] = static_cast<W>(p);
}

// Elements [0, head) and [head + 4 * nvec, n) one by one; [head, head + 4 * nvec) four at a time (16-byte aligned).
template <typename W>
__global__ void adamw_ema_kernel(Ptrs<W> t, Scalars s, const double* dynamic, int64_t n, int64_t head, int64_t nvec) {
  if (dynamic != nullptr && !read_dynamic(dynamic, s)) return;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = tid; i < head; i += stride) step_one(t, s, i);
  for (int64_t i = head + kVec * nvec + tid; i < n; i += stride) step_one(t, s, i);
  for (int64_t j = tid; j < nvec; j += stride) {
    const int64_t i = head + kVec * j;
    Vec4<float> p = *reinterpret_cast<const Vec4<float>*>(t.param + i);
    const Vec4<float> g = *reinterpret_cast<const Vec4<float>*>(t.grad + i);
    Vec4<float> m = *reinterpret_cast<const Vec4<float>*>(t.exp_avg + i);
    Vec4<float> v = *reinterpret_cast<const Vec4<float>*>(t.exp_avg_sq + i);
    Vec4<bool> mask{{true, true, true, true}};
    if (t.decay_mask != nullptr) mask = *reinterpret_cast<const Vec4<bool>*>(t.decay_mask + i);
#pragma unroll
    for (int k = 0; k < kVec; ++k) p.v[k] = adamw(p.v[k], g.v[k], m.v[k], v.v[k], s.weight_decay && mask.v[k], s);
    *reinterpret_cast<Vec4<float>*>(t.param + i) = p;
    *reinterpret_cast<Vec4<float>*>(t.exp_avg + i) = m;
    *reinterpret_cast<Vec4<float>*>(t.exp_avg_sq + i) = v;
    if (t.ema != nullptr) {
      Vec4<float> e = *reinterpret_cast<const Vec4<float>*>(t.ema + i);
#pragma unroll
      for (int k = 0; k < kVec; ++k) e.v[k] = e.v[k] * s.ema_decay + s.one_minus_ema_decay * p.v[k];
      *reinterpret_cast<Vec4<float>*>(t.ema + i) = e;
    }
    if (t.working != nullptr) {
      Vec4<W> w;
#pragma unroll
      for (int k = 0; k < kVec; ++k) w.v[k] = static_cast<W>(p.v[k]);
      *reinterpret_cast<Vec4<W>*>(t.working + i) = w;
    }
  }
}

// How many elements p is past a boundary of kVec elements of size bytes each (-1 when not even element-aligned).
int64_t misalignment(const void* p, size_t bytes) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  return a % bytes ? -1 : int64_t(a / bytes % kVec);
}

template <typename W>
void launch(const AdamWTensors& t, const Scalars& s) {
  const int64_t n = t.param.numel();
  Ptrs<W> p{t.param.data_ptr<float>(),
            t.grad.data_ptr<float>(),
            t.exp_avg.data_ptr<float>(),
            t.exp_avg_sq.data_ptr<float>(),
            t.ema.defined() ? t.ema.data_ptr<float>() : nullptr,
            t.decay_mask.defined() ? t.decay_mask.data_ptr<bool>() : nullptr,
            t.working.defined() ? t.working.data_ptr<W>() : nullptr};
  // Vectorize only when all tensors reach a 4-element boundary after the same number of elements.
  const int64_t mis = misalignment(p.param, sizeof(float));
  bool same = mis >= 0;
  for (const float* q : {static_cast<const float*>(p.grad), static_cast<const float*>(p.exp_avg),
                         static_cast<const float*>(p.exp_avg_sq), static_cast<const float*>(p.ema)})
    same = same && (q == nullptr || misalignment(q, sizeof(float)) == mis);
  same = same && (p.decay_mask == nullptr || misalignment(p.decay_mask, sizeof(bool)) == mis);
  same = same && (p.working == nullptr || misalignment(p.working, sizeof(W)) == mis);
  const int64_t head = same ? std::min(n, (kVec - mis) % kVec) : n;
  const int64_t nvec = (n - head) / kVec;
  const int64_t work = std::max({nvec, head, n - head - kVec * nvec});
  int per_sm = 0;  // one wave of blocks: as many as fit on the GPU at once
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, adamw_ema_kernel<W>, kThreads, 0));
  const int64_t fill = int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * std::max(per_sm, 1);
  const auto blocks = unsigned(std::clamp<int64_t>((work + kThreads - 1) / kThreads, 1, fill));
  const double* dynamic = t.scalars.defined() ? t.scalars.data_ptr<double>() : nullptr;
  adamw_ema_kernel<W><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(p, s, dynamic, n, head, nvec);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void adamw_ema(const AdamWTensors& t, const AdamWScalars& s) {
  const at::Tensor& param = t.param;
  TORCH_CHECK(param.defined() && t.grad.defined() && t.exp_avg.defined() && t.exp_avg_sq.defined(),
              "adamw_ema: param, grad, exp_avg and exp_avg_sq are required");
  TORCH_CHECK(param.is_cuda(), "adamw_ema: the CUDA kernel needs CUDA tensors, param is on ", param.device());
  for (const at::Tensor* x : {&t.param, &t.grad, &t.exp_avg, &t.exp_avg_sq, &t.ema, &t.decay_mask, &t.working}) {
    if (!x->defined()) continue;
    TORCH_CHECK(x->dim() == 1 && x->numel() == param.numel() && x->device() == param.device() && x->is_contiguous(),
                "adamw_ema: every tensor must be a contiguous [", param.numel(), "] on ", param.device(), ", got ",
                x->sizes(), " on ", x->device());
  }
  for (const at::Tensor* x : {&t.param, &t.grad, &t.exp_avg, &t.exp_avg_sq, &t.ema})
    TORCH_CHECK(!x->defined() || x->scalar_type() == at::kFloat,
                "adamw_ema: the CUDA kernel keeps param and optimizer state in float32, got ", x->scalar_type());
  TORCH_CHECK(!t.decay_mask.defined() || t.decay_mask.scalar_type() == at::kBool, "adamw_ema: decay_mask must be bool");
  TORCH_CHECK(!t.scalars.defined() || (t.scalars.numel() == kDynCount && t.scalars.scalar_type() == at::kDouble &&
                                       t.scalars.is_contiguous() && t.scalars.device() == param.device()),
              "adamw_ema: scalars must be a contiguous float64 [", int64_t(kDynCount), "] on ", param.device());
  if (param.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(param.device());

  Scalars k;
  k.clip = float(s.clip_scale);
  k.weight_decay = s.weight_decay != 0;
  k.decay_rate = s.weight_decay;
  k.keep = float(1 - s.lr * s.weight_decay);
  k.one_minus_beta1 = float(1 - s.beta1);
  k.beta2 = float(s.beta2);
  k.one_minus_beta2 = float(1 - s.beta2);
  k.bc2_sqrt = float(s.bias_correction2_sqrt);
  k.eps = float(s.eps);
  k.neg_step_size = float(-s.step_size);
  k.ema_decay = float(s.ema_decay);
  k.one_minus_ema_decay = float(1 - s.ema_decay);

  const at::ScalarType w = t.working.defined() ? t.working.scalar_type() : at::kFloat;
  switch (w) {
    case at::kFloat: return launch<float>(t, k);
    case at::kBFloat16: return launch<at::BFloat16>(t, k);
    case at::kHalf: return launch<at::Half>(t, k);
    case at::kDouble: return launch<double>(t, k);
    default: TORCH_CHECK(false, "adamw_ema: the working copy must be float32, bfloat16, float16 or float64, got ", w);
  }
}

}  // namespace opendit::kernels::cuda_impl
