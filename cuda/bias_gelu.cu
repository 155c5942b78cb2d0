// defines: cuda_impl::bias_gelu, cuda_impl::bias_gelu_backward (cuda/launch.hpp); definitions in cuda/reference.cpp.
//
// a is viewed as [M, K] (M = all leading dims). Each thread owns VEC consecutive columns (one 16-byte load of a)
// and walks down the rows, so the bias of its columns is read once into registers and no index needs a division.
// Blocks are (bx, by) threads: bx across column vectors, by across rows. The backward sums da over the rows each
// thread visits, then over the by rows of its block (shared memory), writes one fp32 partial row per blockIdx.y,
// and a second kernel adds the partials of each column in a fixed order: dbias is deterministic on a given GPU.
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
constexpr int kRows = 4;  // rows a thread loads at once (16-byte loads in flight per thread, per input)
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCoeff = 0.044715f;

template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

// One tanh for both: the backward's GELU output (with_gelu) has the forward kernel's bits.
__device__ __forceinline__ float gelu_tanh_th(float u) { return tanhf(kSqrt2OverPi * (u + kGeluCoeff * (u * u) * u)); }

__device__ __forceinline__ float gelu_tanh(float u) { return 0.5f * u * (1.f + gelu_tanh_th(u)); }

// gelu_tanh'(u), and *g = gelu_tanh(u)
__device__ __forceinline__ float gelu_tanh_grad(float u, float* g) {
  const float th = gelu_tanh_th(u);
  *g = 0.5f * u * (1.f + th);
  return 0.5f * (1.f + th) + 0.5f * u * (1.f - th * th) * kSqrt2OverPi * (1.f + 3.f * kGeluCoeff * (u * u));
}

// g [M, K] = gelu_tanh(a [M, K] + bias [K]); requires K % V == 0 and 16-byte aligned a, g when V > 1.
template <typename T, typename B, int V>
__global__ void bias_gelu_kernel(const T* __restrict__ a, const B* __restrict__ bias, T* __restrict__ g, int64_t M,
                                 int64_t K) {
  const int64_t col = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  if (col >= K) return;
  float b[V];
#pragma unroll
  for (int j = 0; j < V; ++j) b[j] = static_cast<float>(bias[col + j]);
  const int64_t step = int64_t(gridDim.y) * blockDim.y;
  for (int64_t row = int64_t(blockIdx.y) * blockDim.y + threadIdx.y; row < M; row += kRows * step) {
    Vec<T, V> x[kRows];  // kRows rows' loads issued before any arithmetic
#pragma unroll
    for (int u = 0; u < kRows; ++u)
      if (row + u * step < M) x[u] = *reinterpret_cast<const Vec<T, V>*>(a + (row + u * step) * K + col);
#pragma unroll
    for (int u = 0; u < kRows; ++u)
      if (row + u * step < M) {
        Vec<T, V> y;
#pragma unroll
        for (int j = 0; j < V; ++j) y.v[j] = static_cast<T>(gelu_tanh(static_cast<float>(x[u].v[j]) + b[j]));
        *reinterpret_cast<Vec<T, V>*>(g + (row + u * step) * K + col) = y;
      }
  }
}

// da [M, K] = dg * gelu_tanh'(a + bias); partial [gridDim.y, K] = sum of da over the rows of each blockIdx.y; and,
// when g is not null, g [M, K] = gelu_tanh(a + bias).
// dg and da may be one buffer (reuse_dg): each element is read, then written, by the same thread, so they are not
// __restrict__.
template <typename T, typename B, int V>
__global__ void bias_gelu_backward_kernel(const T* dg, const T* __restrict__ a,
                                          const B* __restrict__ bias, T* da, T* __restrict__ g,
                                          float* __restrict__ partial, int64_t M, int64_t K) {
  extern __shared__ float smem[];  // [blockDim.y, blockDim.x * V]
  const int64_t col = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  const bool active = col < K;  // inactive threads still reach __syncthreads
  float b[V], acc[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    b[j] = active ? static_cast<float>(bias[col + j]) : 0.f;
    acc[j] = 0.f;
  }
  if (active) {
    const int64_t step = int64_t(gridDim.y) * blockDim.y;
    for (int64_t row = int64_t(blockIdx.y) * blockDim.y + threadIdx.y; row < M; row += kRows * step) {
      Vec<T, V> x[kRows], d[kRows];  // kRows rows' loads issued before any arithmetic (rows still added in order)
#pragma unroll
      for (int u = 0; u < kRows; ++u)
        if (row + u * step < M) {
          const int64_t i = (row + u * step) * K + col;
          x[u] = *reinterpret_cast<const Vec<T, V>*>(a + i);
          d[u] = *reinterpret_cast<const Vec<T, V>*>(dg + i);
        }
#pragma unroll
      for (int u = 0; u < kRows; ++u)
        if (row + u * step < M) {
          Vec<T, V> y, out;
#pragma unroll
          for (int j = 0; j < V; ++j) {
            float gj;
            const float v = static_cast<float>(d[u].v[j]) * gelu_tanh_grad(static_cast<float>(x[u].v[j]) + b[j], &gj);
            y.v[j] = static_cast<T>(v);
            out.v[j] = static_cast<T>(gj);
            acc[j] += v;  // the fp32 value, not the rounded one: dbias is the sum of exact da
          }
          *reinterpret_cast<Vec<T, V>*>(da + (row + u * step) * K + col) = y;
          if (g != nullptr) *reinterpret_cast<Vec<T, V>*>(g + (row + u * step) * K + col) = out;
        }
    }
  }
  const int width = blockDim.x * V;
#pragma unroll
  for (int j = 0; j < V; ++j) smem[threadIdx.y * width + threadIdx.x * V + j] = acc[j];
  __syncthreads();
  if (threadIdx.y != 0 || !active) return;
  float* out = partial + int64_t(blockIdx.y) * K + col;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    float s = 0.f;
    for (int r = 0; r < int(blockDim.y); ++r) s += smem[r * width + threadIdx.x * V + j];
    out[j] = s;
  }
}

// dbias [K] = sum over r of partial [R, K] in a fixed order: block (32, kSumLanes) takes 32 columns, lane y adds the
// rows r = y, y + kSumLanes, ... in order, then lane 0 adds the kSumLanes results in order (deterministic). Many
// independent loads per column instead of one thread walking all R rows.
constexpr int kSumLanes = 16;
template <typename B>
__global__ void sum_partials_kernel(const float* __restrict__ partial, B* __restrict__ dbias, int64_t R, int64_t K) {
  __shared__ float lanes[kSumLanes][33];
  const int64_t k = int64_t(blockIdx.x) * 32 + threadIdx.x;
  float s = 0.f;
  if (k < K)
    for (int64_t r = threadIdx.y; r < R; r += kSumLanes) s += partial[r * K + k];
  lanes[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y != 0 || k >= K) return;
  float total = 0.f;
#pragma unroll
  for (int y = 0; y < kSumLanes; ++y) total += lanes[y][threadIdx.x];
  dbias[k] = static_cast<B>(total);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The launch shape for [M, K] with V columns per thread: bx threads across the K / V column vectors (the width of
// {256, 192, 128, 64, 32} that leaves the fewest idle lanes), by = 256 / bx across rows, and one wave of blocks
// (as many as fit on the GPU at once) but no more row blocks than there are rows.
struct Launch {
  dim3 grid, block;
};
template <typename Kernel>
Launch launch_shape(Kernel kernel, int64_t M, int64_t K, int V, bool shared_per_thread) {
  const int64_t cols = (K + V - 1) / V;
  int bx = 32;
  int64_t best_idle = INT64_MAX;
  for (int w : {256, 192, 128, 64, 32}) {
    const int64_t idle = (cols + w - 1) / w * w - cols;
    if (idle < best_idle) best_idle = idle, bx = w;
  }
  const int by = kThreads / bx;
  const int64_t gx = (cols + bx - 1) / bx;
  const int threads = bx * by;
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &per_sm, kernel, threads, shared_per_thread ? size_t(threads) * V * sizeof(float) : 0));
  const int64_t target = int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * std::max(per_sm, 1);
  const int64_t gy = std::clamp<int64_t>((target + gx - 1) / gx, 1, std::min<int64_t>((M + by - 1) / by, 65535));
  return {dim3(unsigned(gx), unsigned(gy)), dim3(unsigned(bx), unsigned(by))};
}

template <typename Fn>
void dispatch_types(const at::Tensor& a, const at::Tensor& bias, const char* what, Fn&& fn) {
  const auto ta = a.scalar_type(), tb = bias.scalar_type();
  TORCH_CHECK((ta == at::kFloat || ta == at::kBFloat16) && (tb == at::kFloat || tb == at::kBFloat16), what,
              ": the CUDA kernel takes float32 or bfloat16 a and bias, got ", ta, " and ", tb);
  if (ta == at::kFloat && tb == at::kFloat) fn(float(), float());
  else if (ta == at::kFloat) fn(float(), at::BFloat16());
  else if (tb == at::kFloat) fn(at::BFloat16(), float());
  else fn(at::BFloat16(), at::BFloat16());
}

void check_inputs(const at::Tensor& a, const at::Tensor& bias, const char* what) {
  TORCH_CHECK(a.is_cuda() && a.dim() >= 1 && a.is_contiguous(), what, ": a must be a contiguous CUDA tensor");
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == a.size(-1) && bias.is_contiguous() && bias.device() == a.device(),
              what, ": bias must be a contiguous [", a.size(-1), "] on ", a.device(), ", got ", bias.sizes(), " on ",
              bias.device());
}

}  // namespace

at::Tensor bias_gelu(const at::Tensor& a, const at::Tensor& bias) {
  check_inputs(a, bias, "bias_gelu");
  const c10::cuda::CUDAGuard guard(a.device());
  at::Tensor g = at::empty_like(a, at::MemoryFormat::Contiguous);
  const int64_t K = a.size(-1), M = K == 0 ? 0 : a.numel() / K;
  if (a.numel() == 0) return g;
  auto stream = at::cuda::getCurrentCUDAStream();
  dispatch_types(a, bias, "bias_gelu", [&](auto t, auto b) {
    using T = decltype(t);
    using B = decltype(b);
    constexpr int V = 16 / sizeof(T);
    const T* pa = a.data_ptr<T>();
    T* pg = g.data_ptr<T>();
    const B* pb = bias.data_ptr<B>();
    if (K % V == 0 && aligned16(pa) && aligned16(pg)) {
      const Launch l = launch_shape(bias_gelu_kernel<T, B, V>, M, K, V, false);
      bias_gelu_kernel<T, B, V><<<l.grid, l.block, 0, stream>>>(pa, pb, pg, M, K);
    } else {
      const Launch l = launch_shape(bias_gelu_kernel<T, B, 1>, M, K, 1, false);
      bias_gelu_kernel<T, B, 1><<<l.grid, l.block, 0, stream>>>(pa, pb, pg, M, K);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return g;
}

BiasGeluGrads bias_gelu_backward(const at::Tensor& dg, const at::Tensor& a, const at::Tensor& bias,
                                 bool reuse_dg, bool with_gelu) {
  check_inputs(a, bias, "bias_gelu_backward");
  TORCH_CHECK(dg.sizes() == a.sizes() && dg.scalar_type() == a.scalar_type() && dg.device() == a.device() &&
                  dg.is_contiguous(),
              "bias_gelu_backward: dg must be a contiguous ", a.scalar_type(), " ", a.sizes(), " on ", a.device());
  const c10::cuda::CUDAGuard guard(a.device());
  at::Tensor da = reuse_dg ? dg : at::empty_like(a, at::MemoryFormat::Contiguous);
  at::Tensor gout = with_gelu ? at::empty_like(a, at::MemoryFormat::Contiguous) : at::Tensor();
  const int64_t K = a.size(-1), M = K == 0 ? 0 : a.numel() / K;
  if (M == 0) return {da, at::zeros_like(bias), gout};
  at::Tensor dbias = at::empty_like(bias);
  auto stream = at::cuda::getCurrentCUDAStream();
  dispatch_types(a, bias, "bias_gelu_backward", [&](auto t, auto b) {
    using T = decltype(t);
    using B = decltype(b);
    constexpr int V = 16 / sizeof(T);
    const T *pdg = dg.data_ptr<T>(), *pa = a.data_ptr<T>();
    T* pda = da.data_ptr<T>();
    T* pg = with_gelu ? gout.data_ptr<T>() : nullptr;
    const B* pb = bias.data_ptr<B>();
    const bool vec = K % V == 0 && aligned16(pdg) && aligned16(pa) && aligned16(pda) && (!pg || aligned16(pg));
    const Launch l = vec ? launch_shape(bias_gelu_backward_kernel<T, B, V>, M, K, V, true)
                         : launch_shape(bias_gelu_backward_kernel<T, B, 1>, M, K, 1, true);
    at::Tensor partial = at::empty({int64_t(l.grid.y), K}, a.options().dtype(at::kFloat));
    const size_t shared = size_t(l.block.x) * l.block.y * (vec ? V : 1) * sizeof(float);
    if (vec)
      bias_gelu_backward_kernel<T, B, V>
          <<<l.grid, l.block, shared, stream>>>(pdg, pa, pb, pda, pg, partial.data_ptr<float>(), M, K);
    else
      bias_gelu_backward_kernel<T, B, 1>
          <<<l.grid, l.block, shared, stream>>>(pdg, pa, pb, pda, pg, partial.data_ptr<float>(), M, K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    sum_partials_kernel<B><<<unsigned((K + 31) / 32), dim3(32, kSumLanes), 0, stream>>>(
        partial.data_ptr<float>(), dbias.data_ptr<B>(), int64_t(l.grid.y), K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {da, dbias, gout};
}

}  // namespace opendit::kernels::cuda_impl
