// b. Gated residual out = x + gate[n] * y, forward and backward (definitions: cuda/reference.cpp).
// The forward is elementwise (4 packs a thread); the backward walks the tokens of one chunk of one sample per block
// (one warp a row for packed rows of at most 12 x 32 vectors whose sums fit shared memory, else row teams) and keeps sum_t dout * y per column in
// registers (cuda/token_rows.cuh).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda/launch.hpp"
#include "cuda/token_rows.cuh"

namespace opendit::kernels::cuda_impl {
namespace {

using namespace token_rows;

// out = x + gate[n] * y over x, y, out [N, T, D] in packs of VEC (D % VEC == 0, so a pack never spans two rows).
// Block b covers packs [b * kUnroll * blockDim.x, (b + 1) * kUnroll * blockDim.x): every thread issues the loads of
// its kUnroll packs (coalesced, blockDim.x apart) before any arithmetic, so 2 * kUnroll 16-byte loads are in flight.
constexpr int kUnroll = 4;
template <typename A, typename P, int VEC>
__global__ void gated_residual_kernel(const A* __restrict__ x, const A* __restrict__ y, const P* __restrict__ gate,
                                      int64_t gate_stride, A* __restrict__ out, int64_t T, int64_t D, int64_t packs) {
  const int64_t base = int64_t(blockIdx.x) * kUnroll * blockDim.x + threadIdx.x;
  Pack<A, VEC> xv[kUnroll], yv[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t p = base + int64_t(u) * blockDim.x;
    if (p < packs) {
      xv[u] = reinterpret_cast<const Pack<A, VEC>*>(x)[p];
      yv[u] = reinterpret_cast<const Pack<A, VEC>*>(y)[p];
    }
  }
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t p = base + int64_t(u) * blockDim.x;
    if (p < packs) {
      const int64_t e = p * VEC, row = e / D, d = e - row * D, n = row / T;
      float g[VEC], o[VEC];
      load<P, VEC>(gate + n * gate_stride + d, g);
#pragma unroll
      for (int k = 0; k < VEC; ++k) o[k] = to_float(xv[u].v[k]) + g[k] * to_float(yv[u].v[k]);
      store<A, VEC>(out + e, o);
    }
  }
}

// Backward in the warp-per-row layout (token_rows.cuh): dy = dout * gate[n]; block b covers tokens [t0, t0 + rows)
// of sample b / chunks, warp w the tokens t0 + w, t0 + w + kRowWarps, ...; each lane sums dout * y of its columns in
// its warp's shared memory slots and block_column_sums writes part [1, N, chunks, D]. Dynamic shared memory:
// warp_sums_bytes(1, NV, VEC).
template <typename A, typename P, int VEC, int NV>
__global__ void __launch_bounds__(kRowWarps * 32)
    gated_residual_backward_warp_kernel(const A* __restrict__ dout, const A* __restrict__ y,
                                        const P* __restrict__ gate, int64_t gate_stride, A* __restrict__ dy,
                                        float* __restrict__ part, int64_t N, int64_t T, int64_t D, int64_t chunks,
                                        int64_t rows) {
  extern __shared__ float sums_buf[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t n = blockIdx.x / chunks, c = blockIdx.x % chunks, t0 = c * rows, t1 = min(T, t0 + rows);
  const int64_t nvec = D / VEC;
  Pack<P, VEC> g[NV];
  float* sum = warp_sums<1, VEC, NV>(sums_buf, 0);  // this warp's sums of dout * y
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    if (lane + 32 * j < nvec) g[j] = reinterpret_cast<const Pack<P, VEC>*>(gate + n * gate_stride)[lane + 32 * j];
#pragma unroll
    for (int k = 0; k < VEC; ++k) sum[(j * VEC + k) * 32] = 0;
  }
  for (int64_t t = t0 + warp; t < t1; t += kRowWarps) {
    const int64_t row = n * T + t;
    const auto* dr = reinterpret_cast<const Pack<A, VEC>*>(dout + row * D);
    const auto* yr = reinterpret_cast<const Pack<A, VEC>*>(y + row * D);
    Pack<A, VEC> rd[NV], ry[NV];
#pragma unroll
    for (int j = 0; j < NV; ++j)
      if (lane + 32 * j < nvec) {
        rd[j] = dr[lane + 32 * j];
        ry[j] = yr[lane + 32 * j];
      }
#pragma unroll
    for (int j = 0; j < NV; ++j) {
      const int64_t v = lane + 32 * j;
      if (v < nvec) {
        float o[VEC];
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const float d = to_float(rd[j].v[k]);
          sum[(j * VEC + k) * 32] += d * to_float(ry[j].v[k]);
          o[k] = d * to_float(g[j].v[k]);
        }
        store<A, VEC>(dy + row * D + v * VEC, o);
      }
    }
  }
  block_column_sums<1, VEC, NV>(sums_buf, part, N, n, chunks, c, D);
}

// dy = dout * gate[n] [N, T, D], and part[0, n, c] = sum over this block's tokens of dout * y ([1, N, chunks, D]).
// Block b: sample b / chunks, tokens [t0, t0 + rows) of it. Thread i owns packs i + j * blockDim.x, j < PER.
template <typename A, typename P, int VEC, int PER>
__global__ void __launch_bounds__(kMaxTeam)
    gated_residual_backward_kernel(const A* __restrict__ dout, const A* __restrict__ y, const P* __restrict__ gate,
                                   int64_t gate_stride, A* __restrict__ dy, float* __restrict__ part, int64_t T,
                                   int64_t D, int64_t chunks, int64_t rows) {
  const int64_t n = blockIdx.x / chunks, c = blockIdx.x % chunks, t0 = c * rows, t1 = min(T, t0 + rows);
  const int64_t nvec = D / VEC;

  float g[PER][VEC], dgate[PER][VEC];
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int64_t col = (threadIdx.x + int64_t(j) * blockDim.x) * VEC;
    if (col < nvec * VEC) load<P, VEC>(gate + n * gate_stride + col, g[j]);
#pragma unroll
    for (int k = 0; k < VEC; ++k) dgate[j][k] = 0;
  }

  for (int64_t t = t0; t < t1; ++t) {
    const int64_t row = n * T + t;
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      const int64_t col = (threadIdx.x + int64_t(j) * blockDim.x) * VEC;
      if (col < nvec * VEC) {
        float d[VEC], yv[VEC], o[VEC];
        load<A, VEC>(dout + row * D + col, d);
        load<A, VEC>(y + row * D + col, yv);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          dgate[j][k] += d[k] * yv[k];
          o[k] = d[k] * g[j][k];
        }
        store<A, VEC>(dy + row * D + col, o);
      }
    }
  }

#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int64_t col = (threadIdx.x + int64_t(j) * blockDim.x) * VEC;
    if (col < nvec * VEC) store<float, VEC>(part + (n * chunks + c) * D + col, dgate[j]);
  }
}

}  // namespace

at::Tensor gated_residual(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate_in) {
  TORCH_CHECK(
      x.is_cuda() && x.dim() == 3 && x.is_contiguous() && y.is_contiguous() && y.scalar_type() == x.scalar_type(),
      "gated_residual: x and y must be contiguous CUDA [N, T, D] of one dtype");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t T = x.size(1), D = x.size(2);
  const at::Tensor gate = params_like(gate_in, x);
  at::Tensor out = at::empty_like(x);
  if (x.numel() == 0) return out;

  with_vec(x, gate, {{x, D}, {y, D}, {out, D}, {gate, row_stride(gate)}}, [&](auto types, auto vec) {
    using A = typename decltype(types)::Act;
    using P = typename decltype(types)::Par;
    constexpr int VEC = decltype(vec)::value;
    const int64_t packs = x.numel() / VEC;
    const int threads = 256;
    gated_residual_kernel<A, P, VEC><<<grid_of((packs + kUnroll * threads - 1) / (kUnroll * threads)), threads, 0,
                                       at::cuda::getCurrentCUDAStream()>>>(
        reinterpret_cast<const A*>(x.data_ptr()), reinterpret_cast<const A*>(y.data_ptr()),
        reinterpret_cast<const P*>(gate.data_ptr()), row_stride(gate), reinterpret_cast<A*>(out.data_ptr()), T, D,
        packs);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

GatedResidualGrads gated_residual_backward(const at::Tensor& dout, const at::Tensor& y, const at::Tensor& gate_in) {
  TORCH_CHECK(
      y.is_cuda() && y.dim() == 3 && y.is_contiguous() && dout.is_contiguous() && dout.scalar_type() == y.scalar_type(),
      "gated_residual_backward: dout and y must be contiguous CUDA [N, T, D] of one dtype");
  const c10::cuda::CUDAGuard guard(y.device());
  const int64_t N = y.size(0), T = y.size(1), D = y.size(2);
  const at::Tensor gate = params_like(gate_in, y);
  at::Tensor dy = at::empty_like(y);
  if (y.numel() == 0) return {dy, at::zeros({N, D}, gate_in.options())};

  at::Tensor part;  // [1, N, chunks, D] float32: per-chunk sums of dout * y
  auto warp = [&](auto types, auto vec, auto nv, size_t smem) {
    using A = typename decltype(types)::Act;
    using P = typename decltype(types)::Par;
    auto kernel = gated_residual_backward_warp_kernel<A, P, decltype(vec)::value, decltype(nv)::value>;
    const Chunks ch = chunks_for(kernel, kRowWarps * 32, N, T, 1);
    part = at::empty({1, N, ch.count, D}, y.options().dtype(at::kFloat));
    kernel<<<grid_of(N * ch.count), kRowWarps * 32, smem, at::cuda::getCurrentCUDAStream()>>>(
        reinterpret_cast<const A*>(dout.data_ptr()), reinterpret_cast<const A*>(y.data_ptr()),
        reinterpret_cast<const P*>(gate.data_ptr()), row_stride(gate), reinterpret_cast<A*>(dy.data_ptr()),
        part.data_ptr<float>(), N, T, D, ch.count, ch.rows);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  auto team = [&](auto types, auto vec, auto per, int threads) {
    using A = typename decltype(types)::Act;
    using P = typename decltype(types)::Par;
    auto kernel = gated_residual_backward_kernel<A, P, decltype(vec)::value, decltype(per)::value>;
    const Chunks ch = chunks_for(kernel, threads, N, T, 1);
    part = at::empty({1, N, ch.count, D}, y.options().dtype(at::kFloat));
    kernel<<<grid_of(N * ch.count), threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        reinterpret_cast<const A*>(dout.data_ptr()), reinterpret_cast<const A*>(y.data_ptr()),
        reinterpret_cast<const P*>(gate.data_ptr()), row_stride(gate), reinterpret_cast<A*>(dy.data_ptr()),
        part.data_ptr<float>(), T, D, ch.count, ch.rows);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  // Packed rows of at most 12 x 32 packs whose sum fits shared memory: one warp a row, else the row teams.
  if (!launch_rows(y, gate, {{dout, D}, {y, D}, {gate, row_stride(gate)}}, 1, warp, team))
    return reference::gated_residual_backward(dout, y, gate_in);
  GatedResidualGrads out{dy, {}};
  finish_sums(part, gate_in.scalar_type(), &out.dgate, nullptr);
  return out;
}

}  // namespace opendit::kernels::cuda_impl
