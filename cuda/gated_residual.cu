// b. Gated residual out = x + gate[n] * (y + bias), forward and backward (definitions: cuda/reference.cpp).
// The forward is elementwise (4 packs a thread); the backward walks the tokens of one chunk of one sample per block
// (one warp a row for packed rows of at most 12 x 32 vectors whose sums fit shared memory, else row teams) and
// keeps sum_t dout * (y + bias) (and with a bias sum_t dout) per column (cuda/token_rows.cuh).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda/launch.hpp"
#include "cuda/token_rows.cuh"

namespace opendit::kernels::cuda_impl {
namespace {

using namespace token_rows;

// out = x + gate[n] * (y + bias) over x, y, out [N, T, D] in packs of VEC (D % VEC == 0, so a pack never spans two
// rows); bias [D] or nullptr.
// Block b covers packs [b * kUnroll * blockDim.x, (b + 1) * kUnroll * blockDim.x): every thread issues the loads of
// its kUnroll packs (coalesced, blockDim.x apart) before any arithmetic, so 2 * kUnroll 16-byte loads are in flight.
constexpr int kUnroll = 4;
// I: the index type of the row/column arithmetic, 32-bit where the element count allows (a 64-bit division is a
// long instruction sequence, two per pack: with them this kernel ran at 68% of copy bandwidth, without at 80%).
template <typename A, typename P, int VEC, typename I>
__global__ void gated_residual_kernel(const A* __restrict__ x, const A* __restrict__ y, const P* __restrict__ gate,
                                      int64_t gate_stride, const P* __restrict__ bias, A* __restrict__ out, int64_t T,
                                      int64_t D, int64_t packs) {
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
      const I e = I(p) * VEC, row = e / I(D), d = e - row * I(D), n = row / I(T);
      float g[VEC], b[VEC] = {}, o[VEC];
      load<P, VEC>(gate + n * gate_stride + d, g);
      if (bias) load<P, VEC>(bias + d, b);
#pragma unroll
      for (int k = 0; k < VEC; ++k) o[k] = to_float(xv[u].v[k]) + g[k] * (to_float(yv[u].v[k]) + b[k]);
      store<A, VEC>(out + e, o);
    }
  }
}

// Backward in the warp-per-row layout (token_rows.cuh): dy = dout * gate[n]; block b covers tokens [t0, t0 + rows)
// of sample b / chunks, warp w the tokens t0 + w, t0 + w + kRowWarps, ...; each lane sums dout * (y + bias) (and,
// K = 2, with a bias, dout) of its columns in its warp's shared memory slots and block_column_sums writes
// part [K, N, chunks, D]. Dynamic shared memory: warp_sums_bytes(K, NV, VEC).
template <typename A, typename P, int VEC, int NV, int K>
__global__ void __launch_bounds__(kRowWarps * 32)
    gated_residual_backward_warp_kernel(const A* __restrict__ dout, const A* __restrict__ y,
                                        const P* __restrict__ gate, int64_t gate_stride, const P* __restrict__ bias,
                                        A* __restrict__ dy, float* __restrict__ part, int64_t N, int64_t T, int64_t D,
                                        int64_t chunks, int64_t rows) {
  extern __shared__ float sums_buf[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t n = blockIdx.x / chunks, c = blockIdx.x % chunks, t0 = c * rows, t1 = min(T, t0 + rows);
  const int64_t nvec = D / VEC;
  Pack<P, VEC> g[NV], b[NV];
  float* sum = warp_sums<K, VEC, NV>(sums_buf, 0);      // this warp's sums of dout * (y + bias)
  float* sum_d = warp_sums<K, VEC, NV>(sums_buf, K - 1);  // and of dout (K = 2)
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    if (lane + 32 * j < nvec) {
      g[j] = reinterpret_cast<const Pack<P, VEC>*>(gate + n * gate_stride)[lane + 32 * j];
      if constexpr (K == 2) b[j] = reinterpret_cast<const Pack<P, VEC>*>(bias)[lane + 32 * j];
    }
#pragma unroll
    for (int k = 0; k < VEC; ++k) sum[(j * VEC + k) * 32] = sum_d[(j * VEC + k) * 32] = 0;
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
          if constexpr (K == 2) {
            sum[(j * VEC + k) * 32] += d * (to_float(ry[j].v[k]) + to_float(b[j].v[k]));
            sum_d[(j * VEC + k) * 32] += d;
          } else {
            sum[(j * VEC + k) * 32] += d * to_float(ry[j].v[k]);
          }
          o[k] = d * to_float(g[j].v[k]);
        }
        store<A, VEC>(dy + row * D + v * VEC, o);
      }
    }
  }
  block_column_sums<K, VEC, NV>(sums_buf, part, N, n, chunks, c, D);
}

// dy = dout * gate[n] [N, T, D], and over this block's tokens part[0, n, c] = sum dout * (y + bias) and, K = 2 (with
// a bias), part[1, n, c] = sum dout ([K, N, chunks, D]). Block b: sample b / chunks, tokens [t0, t0 + rows) of it.
// Thread i owns packs i + j * blockDim.x, j < PER.
template <typename A, typename P, int VEC, int PER, int K>
__global__ void __launch_bounds__(kMaxTeam)
    gated_residual_backward_kernel(const A* __restrict__ dout, const A* __restrict__ y, const P* __restrict__ gate,
                                   int64_t gate_stride, const P* __restrict__ bias, A* __restrict__ dy,
                                   float* __restrict__ part, int64_t N, int64_t T, int64_t D, int64_t chunks,
                                   int64_t rows) {
  const int64_t n = blockIdx.x / chunks, c = blockIdx.x % chunks, t0 = c * rows, t1 = min(T, t0 + rows);
  const int64_t nvec = D / VEC;

  float g[PER][VEC], b[PER][VEC], dgate[PER][VEC], dsum[PER][VEC];
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int64_t col = (threadIdx.x + int64_t(j) * blockDim.x) * VEC;
#pragma unroll
    for (int k = 0; k < VEC; ++k) b[j][k] = dgate[j][k] = dsum[j][k] = 0;
    if (col < nvec * VEC) {
      load<P, VEC>(gate + n * gate_stride + col, g[j]);
      if constexpr (K == 2) load<P, VEC>(bias + col, b[j]);
    }
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
          dgate[j][k] += d[k] * (yv[k] + b[j][k]);
          if constexpr (K == 2) dsum[j][k] += d[k];
          o[k] = d[k] * g[j][k];
        }
        store<A, VEC>(dy + row * D + col, o);
      }
    }
  }

#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int64_t col = (threadIdx.x + int64_t(j) * blockDim.x) * VEC;
    if (col < nvec * VEC) {
      store<float, VEC>(part + (n * chunks + c) * D + col, dgate[j]);
      if constexpr (K == 2) store<float, VEC>(part + ((N + n) * chunks + c) * D + col, dsum[j]);
    }
  }
}

// The two sums of the backward with a bias from its partials part [2, N, chunks, D]: dgate[n, d] = sum_c
// part[0, n, c, d] (O: the gate's dtype) and dbias[d] = sum_n gate[n, d] * sum_c part[1, n, c, d] (float32 [D]).
// Block b: columns [32 b, 32 b + 32); thread (i, g) = (threadIdx.x % 32, threadIdx.x / 32) takes column 32 b + i of
// the samples g, g + 32, ...; the 32 partial dbias add in a fixed order (deterministic).
template <typename P, typename O>
__global__ void __launch_bounds__(1024) finish_bias_sums_kernel(const float* __restrict__ part,
                                                                const P* __restrict__ gate, int64_t gate_stride,
                                                                O* __restrict__ dgate, float* __restrict__ dbias,
                                                                int64_t N, int64_t chunks, int64_t D) {
  __shared__ float acc[32][33];
  const int i = threadIdx.x & 31, grp = threadIdx.x >> 5;
  const int64_t d = int64_t(blockIdx.x) * 32 + i;
  float s = 0;
  if (d < D)
    for (int64_t n = grp; n < N; n += 32) {
      const float* p0 = part + (n * chunks) * D + d;
      const float* p1 = part + ((N + n) * chunks) * D + d;
      float s0 = 0, s1 = 0;
#pragma unroll 4
      for (int64_t c = 0; c < chunks; ++c) {
        s0 += p0[c * D];
        s1 += p1[c * D];
      }
      dgate[n * D + d] = from_float<O>(s0);
      s += to_float(gate[n * gate_stride + d]) * s1;
    }
  acc[grp][i] = s;
  __syncthreads();
  if (grp == 0 && d < D) {
    float t = 0;
    for (int k = 0; k < 32; ++k) t += acc[k][i];
    dbias[d] = t;
  }
}

// bias [D] as the kernels read it: a one-row per-sample vector (row stride 0) in the gate's element type.
at::Tensor bias_like(const at::Tensor& bias, const at::Tensor& gate) {
  return bias.defined() ? bias.to(gate.scalar_type()).contiguous().view({1, -1}) : at::Tensor();
}
const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

}  // namespace

at::Tensor gated_residual(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate_in,
                          const at::Tensor& bias_in) {
  TORCH_CHECK(
      x.is_cuda() && x.dim() == 3 && x.is_contiguous() && y.is_contiguous() && y.scalar_type() == x.scalar_type(),
      "gated_residual: x and y must be contiguous CUDA [N, T, D] of one dtype");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t T = x.size(1), D = x.size(2);
  const at::Tensor gate = params_like(gate_in, x), bias = bias_like(bias_in, gate);
  at::Tensor out = at::empty_like(x);
  if (x.numel() == 0) return out;

  with_vec(x, gate, {{x, D}, {y, D}, {out, D}, {gate, row_stride(gate)}, {bias.defined() ? bias : gate, 0}},
           [&](auto types, auto vec) {
    using A = typename decltype(types)::Act;
    using P = typename decltype(types)::Par;
    constexpr int VEC = decltype(vec)::value;
    const int64_t packs = x.numel() / VEC;
    const int threads = 256;
    auto run = [&](auto kernel) {
      kernel<<<grid_of((packs + kUnroll * threads - 1) / (kUnroll * threads)), threads, 0,
               at::cuda::getCurrentCUDAStream()>>>(
          reinterpret_cast<const A*>(x.data_ptr()), reinterpret_cast<const A*>(y.data_ptr()),
          reinterpret_cast<const P*>(gate.data_ptr()), row_stride(gate), static_cast<const P*>(ptr_or_null(bias)),
          reinterpret_cast<A*>(out.data_ptr()), T, D, packs);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (x.numel() < (int64_t(1) << 32))
      run(gated_residual_kernel<A, P, VEC, uint32_t>);
    else
      run(gated_residual_kernel<A, P, VEC, int64_t>);
  });
  return out;
}

GatedResidualGrads gated_residual_backward(const at::Tensor& dout, const at::Tensor& y, const at::Tensor& gate_in,
                                           const at::Tensor& bias_in) {
  TORCH_CHECK(
      y.is_cuda() && y.dim() == 3 && y.is_contiguous() && dout.is_contiguous() && dout.scalar_type() == y.scalar_type(),
      "gated_residual_backward: dout and y must be contiguous CUDA [N, T, D] of one dtype");
  const c10::cuda::CUDAGuard guard(y.device());
  const int64_t N = y.size(0), T = y.size(1), D = y.size(2);
  const at::Tensor gate = params_like(gate_in, y), bias = bias_like(bias_in, gate);
  const bool with_bias = bias.defined();
  at::Tensor dy = at::empty_like(y);
  if (y.numel() == 0)
    return {dy, at::zeros({N, D}, gate_in.options()),
            with_bias ? at::zeros({D}, y.options().dtype(at::kFloat)) : at::Tensor()};

  at::Tensor part;  // [K, N, chunks, D] float32: per-chunk sums of dout * (y + bias) and (K = 2) of dout
  auto launch = [&](auto types, auto kernel, int threads, size_t smem) {
    using A = typename decltype(types)::Act;
    using P = typename decltype(types)::Par;
    const Chunks ch = chunks_for(kernel, threads, N, T, 1, smem);
    part = at::empty({with_bias ? 2 : 1, N, ch.count, D}, y.options().dtype(at::kFloat));
    kernel<<<grid_of(N * ch.count), threads, smem, at::cuda::getCurrentCUDAStream()>>>(
        reinterpret_cast<const A*>(dout.data_ptr()), reinterpret_cast<const A*>(y.data_ptr()),
        reinterpret_cast<const P*>(gate.data_ptr()), row_stride(gate), static_cast<const P*>(ptr_or_null(bias)),
        reinterpret_cast<A*>(dy.data_ptr()), part.data_ptr<float>(), N, T, D, ch.count, ch.rows);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  auto warp = [&](auto types, auto vec, auto nv, size_t) {
    using A = typename decltype(types)::Act;
    using P = typename decltype(types)::Par;
    constexpr int VEC = decltype(vec)::value, NV = decltype(nv)::value;
    if (with_bias)
      launch(types, gated_residual_backward_warp_kernel<A, P, VEC, NV, 2>, kRowWarps * 32,
             warp_sums_bytes(2, NV, VEC));
    else
      launch(types, gated_residual_backward_warp_kernel<A, P, VEC, NV, 1>, kRowWarps * 32,
             warp_sums_bytes(1, NV, VEC));
  };
  auto team = [&](auto types, auto vec, auto per, int threads) {
    using A = typename decltype(types)::Act;
    using P = typename decltype(types)::Par;
    constexpr int VEC = decltype(vec)::value, PER = decltype(per)::value;
    if (with_bias)
      launch(types, gated_residual_backward_kernel<A, P, VEC, PER, 2>, threads, 0);
    else
      launch(types, gated_residual_backward_kernel<A, P, VEC, PER, 1>, threads, 0);
  };
  // Packed rows of at most 12 x 32 packs whose sums fit shared memory: one warp a row, else the row teams.
  if (!launch_rows(y, gate, {{dout, D}, {y, D}, {gate, row_stride(gate)}, {with_bias ? bias : gate, 0}},
                   with_bias ? 2 : 1, warp, team))
    return reference::gated_residual_backward(dout, y, gate_in, bias_in);
  GatedResidualGrads out{dy, {}, {}};
  // dgate in the gate's dtype where the kernels write it (float32, bfloat16), else float32 then converted.
  const at::ScalarType gdt = gate_in.scalar_type();
  const bool direct = gdt == at::kFloat || gdt == at::kBFloat16;
  if (!with_bias) {
    finish_sums(part, gdt, &out.dgate, nullptr);
    return out;
  }
  out.dgate = at::empty({N, D}, y.options().dtype(direct ? gdt : at::kFloat));
  out.dbias = at::empty({D}, y.options().dtype(at::kFloat));
  with_types(y, gate, [&](auto types) {
    using P = typename decltype(types)::Par;
    auto launch_finish = [&](auto* dgate) {
      finish_bias_sums_kernel<<<grid_of((D + 31) / 32), 1024, 0, at::cuda::getCurrentCUDAStream()>>>(
          part.data_ptr<float>(), reinterpret_cast<const P*>(gate.data_ptr()), row_stride(gate), dgate,
          out.dbias.data_ptr<float>(), N, part.size(2), D);
    };
    if (out.dgate.scalar_type() == at::kBFloat16)
      launch_finish(reinterpret_cast<__nv_bfloat16*>(out.dgate.data_ptr()));
    else
      launch_finish(out.dgate.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (!direct) out.dgate = out.dgate.to(gdt);
  return out;
}

}  // namespace opendit::kernels::cuda_impl
