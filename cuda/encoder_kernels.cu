// defines: cuda_impl::group_norm_silu, cuda_impl::add_rms_norm, cuda_impl::gated_gelu (cuda/launch.hpp); definitions
// in cuda/encoder_reference.cpp.
//
// GroupNorm + SiLU on channels-last x, viewed as [N, HW, C]. Each thread owns V consecutive channels (one vector
// load; V divides C / groups, so they lie in one group) and walks down the positions of its block's chunk, so the
// per-channel weight and bias and the group's statistics sit in registers. Three kernels:
//   stats    grid (S, N): sum and sum of squares per group over a chunk of HW / S positions, shifted by the group's
//            first value (no cancellation when the mean is large against the spread); [N, S, G] partials.
//   finalize grid N: the S partials of each group added in a fixed order (float64) -> mean, rstd [N, G].
//   apply    grid (S, N): y = silu((x - mean) rstd w + b).
// Partials are added in a fixed order everywhere: the result is the same on every run.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cuda/launch.hpp"

namespace opendit::kernels::cuda_impl {
namespace {

constexpr int kThreads = 256;
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCoeff = 0.044715f;

template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

__device__ __forceinline__ float silu(float u) { return u / (1.f + __expf(-u)); }
__device__ __forceinline__ float gelu_tanh(float u) {
  return 0.5f * u * (1.f + tanhf(kSqrt2OverPi * (u + kGeluCoeff * u * u * u)));
}

// partial [N, S, G, 2]: (sum, sum of squares) of x - pivot over this block's positions, pivot = x[n, 0, group's first
// channel]. Threads: cv = t % CV (channel vector), lane = t / CV (position offset), lanes = 256 / CV.
template <typename T, int V>
__global__ void gn_stats_kernel(const T* __restrict__ x, float* __restrict__ partial, int64_t HW, int C, int G,
                                int64_t chunk) {
  __shared__ float s_sum[kThreads], s_sq[kThreads];
  const int CV = C / V, lanes = kThreads / CV, cv = threadIdx.x % CV, lane = threadIdx.x / CV;
  const int n = blockIdx.y, s = blockIdx.x, S = gridDim.x, cg = C / G, g = cv * V / cg;
  const T* xs = x + int64_t(n) * HW * C;
  const float pivot = static_cast<float>(xs[g * cg]);
  const int64_t begin = int64_t(s) * chunk, end = min(HW, begin + chunk);
  float sum = 0.f, sq = 0.f;
  for (int64_t p = begin + lane; p < end; p += lanes) {
    const Vec<T, V> v = *reinterpret_cast<const Vec<T, V>*>(xs + p * C + cv * V);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float d = static_cast<float>(v.v[j]) - pivot;
      sum += d;
      sq += d * d;
    }
  }
  s_sum[threadIdx.x] = sum;
  s_sq[threadIdx.x] = sq;
  __syncthreads();
  // Thread k < G adds the threads of group k: channel vectors [k cg / V, (k + 1) cg / V) of every lane, in order.
  if (threadIdx.x < G) {
    const int k = threadIdx.x, per = cg / V;
    double a = 0, b = 0;
    for (int l = 0; l < lanes; ++l)
      for (int c = k * per; c < (k + 1) * per; ++c) a += s_sum[l * CV + c], b += s_sq[l * CV + c];
    float* out = partial + ((int64_t(n) * S + s) * G + k) * 2;
    out[0] = static_cast<float>(a);
    out[1] = static_cast<float>(b);
  }
}

template <typename T>
__global__ void gn_finalize_kernel(const T* __restrict__ x, const float* __restrict__ partial,
                                   float2* __restrict__ stats, int64_t HW, int C, int G, int S, double eps) {
  const int n = blockIdx.x, cg = C / G;
  for (int k = threadIdx.x; k < G; k += blockDim.x) {
    double a = 0, b = 0;
    for (int s = 0; s < S; ++s) {
      const float* p = partial + ((int64_t(n) * S + s) * G + k) * 2;
      a += p[0], b += p[1];
    }
    const double count = double(HW) * cg, m = a / count, var = fmax(b / count - m * m, 0.0);
    const double pivot = static_cast<float>(x[int64_t(n) * HW * C + k * cg]);
    stats[int64_t(n) * G + k] = make_float2(static_cast<float>(pivot + m), static_cast<float>(1.0 / sqrt(var + eps)));
  }
}

template <typename T, int V, bool SILU>
__global__ void gn_apply_kernel(const T* __restrict__ x, const float2* __restrict__ stats, const T* __restrict__ w,
                                const T* __restrict__ b, T* __restrict__ y, int64_t HW, int C, int G, int64_t chunk) {
  const int CV = C / V, lanes = kThreads / CV, cv = threadIdx.x % CV, lane = threadIdx.x / CV;
  const int n = blockIdx.y, cg = C / G;
  const float2 st = stats[int64_t(n) * G + cv * V / cg];
  float scale[V], shift[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    scale[j] = st.y * static_cast<float>(w[cv * V + j]);
    shift[j] = static_cast<float>(b[cv * V + j]) - st.x * scale[j];
  }
  const int64_t begin = int64_t(blockIdx.x) * chunk, end = min(HW, begin + chunk), base = int64_t(n) * HW * C;
  for (int64_t p = begin + lane; p < end; p += lanes) {
    const int64_t i = base + p * C + cv * V;
    const Vec<T, V> v = *reinterpret_cast<const Vec<T, V>*>(x + i);
    Vec<T, V> o;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float u = static_cast<float>(v.v[j]) * scale[j] + shift[j];
      o.v[j] = static_cast<T>(SILU ? silu(u) : u);
    }
    *reinterpret_cast<Vec<T, V>*>(y + i) = o;
  }
}

template <typename T, int V>
void launch_group_norm(const at::Tensor& x, at::Tensor& y, const at::Tensor& w, const at::Tensor& b, int G, double eps,
                       bool act) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const int lanes = kThreads / int(C / V);
  // About four blocks per SM over the batch, each chunk a whole number of lane rows.
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  int64_t S = std::max<int64_t>(1, std::min<int64_t>((4 * sms + N - 1) / N, (HW + lanes - 1) / lanes));
  S = std::min<int64_t>(S, 65535);
  int64_t chunk = (HW + S - 1) / S;
  chunk = (chunk + lanes - 1) / lanes * lanes;
  S = (HW + chunk - 1) / chunk;
  auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor partial = at::empty({N, S, G, 2}, x.options().dtype(at::kFloat));
  at::Tensor stats = at::empty({N, G, 2}, x.options().dtype(at::kFloat));
  const dim3 grid(static_cast<unsigned>(S), static_cast<unsigned>(N));
  const T* xp = reinterpret_cast<const T*>(x.data_ptr());
  gn_stats_kernel<T, V><<<grid, kThreads, 0, stream>>>(xp, partial.data_ptr<float>(), HW, int(C), G, chunk);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  gn_finalize_kernel<T><<<static_cast<unsigned>(N), 64, 0, stream>>>(
      xp, partial.data_ptr<float>(), reinterpret_cast<float2*>(stats.data_ptr<float>()), HW, int(C), G, int(S), eps);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto apply = act ? gn_apply_kernel<T, V, true> : gn_apply_kernel<T, V, false>;
  apply<<<grid, kThreads, 0, stream>>>(
      xp, reinterpret_cast<const float2*>(stats.data_ptr<float>()), reinterpret_cast<const T*>(w.data_ptr()),
      reinterpret_cast<const T*>(b.data_ptr()), reinterpret_cast<T*>(y.data_ptr()), HW, int(C), G, chunk);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void group_norm_typed(const at::Tensor& x, at::Tensor& y, const at::Tensor& w, const at::Tensor& b, int G, double eps,
                      bool act) {
  const int64_t cg = x.size(1) / G, width = 16 / sizeof(T);
  if (width >= 8 && cg % 8 == 0) return launch_group_norm<T, (16 / sizeof(T) >= 8 ? 8 : 1)>(x, y, w, b, G, eps, act);
  if (width >= 4 && cg % 4 == 0) return launch_group_norm<T, 4>(x, y, w, b, G, eps, act);
  if (cg % 2 == 0) return launch_group_norm<T, 2>(x, y, w, b, G, eps, act);
  launch_group_norm<T, 1>(x, y, w, b, G, eps, act);
}

// out [M, D] = (x += delta) * rsqrt(mean(x^2) + eps) * w: one block per row, x in float32, four columns a thread.
template <typename D, typename W, typename O>
__global__ void add_rms_norm_kernel(float* __restrict__ x, const D* __restrict__ delta, const W* __restrict__ w,
                                    O* __restrict__ out, int64_t cols, float eps) {
  __shared__ float warp_sums[kThreads / 32];
  __shared__ float total;
  float* xr = x + int64_t(blockIdx.x) * cols;
  float sq = 0.f;
  for (int64_t c = int64_t(threadIdx.x) * 4; c < cols; c += int64_t(kThreads) * 4) {
    float4 v = *reinterpret_cast<float4*>(xr + c);
    if (delta) {
      const D* dr = delta + int64_t(blockIdx.x) * cols + c;
      v.x += static_cast<float>(dr[0]), v.y += static_cast<float>(dr[1]);
      v.z += static_cast<float>(dr[2]), v.w += static_cast<float>(dr[3]);
      *reinterpret_cast<float4*>(xr + c) = v;
    }
    sq += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
  }
  for (int o = 16; o > 0; o /= 2) sq += __shfl_xor_sync(0xffffffffu, sq, o);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = sq;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.f;
    for (int i = 0; i < kThreads / 32; ++i) s += warp_sums[i];
    total = rsqrtf(s / static_cast<float>(cols) + eps);
  }
  __syncthreads();
  const float r = total;
  O* orow = out + int64_t(blockIdx.x) * cols;
  for (int64_t c = int64_t(threadIdx.x) * 4; c < cols; c += int64_t(kThreads) * 4) {
    const float4 v = *reinterpret_cast<const float4*>(xr + c);
    orow[c] = static_cast<O>(v.x * r * static_cast<float>(w[c]));
    orow[c + 1] = static_cast<O>(v.y * r * static_cast<float>(w[c + 1]));
    orow[c + 2] = static_cast<O>(v.z * r * static_cast<float>(w[c + 2]));
    orow[c + 3] = static_cast<O>(v.w * r * static_cast<float>(w[c + 3]));
  }
}

template <typename T, int V>
__global__ void gated_gelu_kernel(const T* __restrict__ ab, T* __restrict__ g, int64_t M, int64_t F) {
  const int64_t vecs = F / V, total = M * vecs;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / vecs, col = (i % vecs) * V;
    const Vec<T, V> a = *reinterpret_cast<const Vec<T, V>*>(ab + row * 2 * F + col);
    const Vec<T, V> b = *reinterpret_cast<const Vec<T, V>*>(ab + row * 2 * F + F + col);
    Vec<T, V> o;
#pragma unroll
    for (int j = 0; j < V; ++j)
      o.v[j] = static_cast<T>(gelu_tanh(static_cast<float>(a.v[j])) * static_cast<float>(b.v[j]));
    *reinterpret_cast<Vec<T, V>*>(g + row * F + col) = o;
  }
}

}  // namespace

at::Tensor group_norm_silu(const at::Tensor& x, int64_t groups, const at::Tensor& weight, const at::Tensor& bias,
                           double eps, bool silu) {
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  if (x.numel() == 0) return y;
  if (x.scalar_type() == at::kBFloat16)
    group_norm_typed<at::BFloat16>(x, y, weight, bias, int(groups), eps, silu);
  else
    group_norm_typed<float>(x, y, weight, bias, int(groups), eps, silu);
  return y;
}

at::Tensor add_rms_norm(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight, double eps,
                        at::ScalarType out_dtype) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t cols = x.size(-1), rows = x.numel() / cols;
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(out_dtype));
  if (rows == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  const float e = static_cast<float>(eps);
  auto go = [&](auto* dp, auto* wp, auto* op) {
    add_rms_norm_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x.data_ptr<float>(), dp, wp, op, cols, e);
  };
  auto with_out = [&](auto* dp, auto* wp) {
    if (out_dtype == at::kBFloat16)
      go(dp, wp, reinterpret_cast<at::BFloat16*>(out.data_ptr()));
    else
      go(dp, wp, out.data_ptr<float>());
  };
  auto with_weight = [&](auto* dp) {
    if (weight.scalar_type() == at::kBFloat16)
      with_out(dp, reinterpret_cast<const at::BFloat16*>(weight.data_ptr()));
    else
      with_out(dp, weight.data_ptr<float>());
  };
  if (!delta.defined())
    with_weight(static_cast<const float*>(nullptr));
  else if (delta.scalar_type() == at::kBFloat16)
    with_weight(reinterpret_cast<const at::BFloat16*>(delta.data_ptr()));
  else
    with_weight(delta.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor gated_gelu(const at::Tensor& ab) {
  const c10::cuda::CUDAGuard guard(ab.device());
  const int64_t F = ab.size(-1) / 2, M = ab.numel() / (2 * F);
  std::vector<int64_t> shape(ab.sizes().begin(), ab.sizes().end());
  shape.back() = F;
  at::Tensor g = at::empty(shape, ab.options());
  if (g.numel() == 0) return g;
  auto stream = at::cuda::getCurrentCUDAStream();
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  if (ab.scalar_type() == at::kBFloat16) {
    const int64_t blocks = std::min<int64_t>((M * F / 8 + kThreads - 1) / kThreads, int64_t(sms) * 16);
    gated_gelu_kernel<at::BFloat16, 8><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        reinterpret_cast<const at::BFloat16*>(ab.data_ptr()), reinterpret_cast<at::BFloat16*>(g.data_ptr()), M, F);
  } else {
    const int64_t blocks = std::min<int64_t>((M * F / 4 + kThreads - 1) / kThreads, int64_t(sms) * 16);
    gated_gelu_kernel<float, 4>
        <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(ab.data_ptr<float>(), g.data_ptr<float>(), M, F);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return g;
}

}  // namespace opendit::kernels::cuda_impl
