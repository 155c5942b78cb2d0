// b. Gated residual out = x + gate[n] * y, forward and backward (definitions: cuda/reference.cpp).
// The forward is elementwise; the backward walks the tokens of one chunk of one sample per block and keeps
// sum_t dout * y per column in registers (cuda/token_rows.cuh).
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
template <typename A, typename P, int VEC>
__global__ void gated_residual_kernel(const A* __restrict__ x, const A* __restrict__ y, const P* __restrict__ gate,
                                      int64_t gate_stride, A* __restrict__ out, int64_t T, int64_t D, int64_t packs) {
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < packs; p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t e = p * VEC, n = e / (T * D), d = e % D;
    float xv[VEC], yv[VEC], g[VEC];
    load<A, VEC>(x + e, xv);
    load<A, VEC>(y + e, yv);
    load<P, VEC>(gate + n * gate_stride + d, g);
#pragma unroll
    for (int k = 0; k < VEC; ++k) xv[k] += g[k] * yv[k];
    store<A, VEC>(out + e, xv);
  }
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

  with_types(x, gate, [&](auto types) {
    using A = typename decltype(types)::Act;
    using P = typename decltype(types)::Par;
    constexpr int V = pack_of<A>();
    const bool packed = D % V == 0 && packs_fit(x, D, V) && packs_fit(y, D, V) && packs_fit(out, D, V) &&
                        packs_fit(gate, row_stride(gate), V);
    auto launch = [&](auto vec) {
      constexpr int VEC = decltype(vec)::value;
      const int64_t packs = x.numel() / VEC;
      const int threads = 256;
      const int64_t most = int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 8;
      gated_residual_kernel<A, P, VEC>
          <<<grid_of(std::min((packs + threads - 1) / threads, most)), threads, 0, at::cuda::getCurrentCUDAStream()>>>(
              reinterpret_cast<const A*>(x.data_ptr()), reinterpret_cast<const A*>(y.data_ptr()),
              reinterpret_cast<const P*>(gate.data_ptr()), row_stride(gate), reinterpret_cast<A*>(out.data_ptr()), T, D,
              packs);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (packed)
      launch(std::integral_constant<int, V>{});
    else
      launch(std::integral_constant<int, 1>{});
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
  bool too_wide = false;
  with_types(y, gate, [&](auto types) {
    using A = typename decltype(types)::Act;
    using P = typename decltype(types)::Par;
    constexpr int V = pack_of<A>();
    const bool packed =
        D % V == 0 && packs_fit(dout, D, V) && packs_fit(y, D, V) && packs_fit(gate, row_stride(gate), V);
    auto launch = [&](auto vec) {
      constexpr int VEC = decltype(vec)::value;
      const Team team = team_for(D / VEC, 16 / VEC);
      if (team.per == 0) return void(too_wide = true);
      with_per<VEC>(team.per, [&](auto per) {
        constexpr int PER = decltype(per)::value;
        auto kernel = gated_residual_backward_kernel<A, P, VEC, PER>;
        const Chunks ch = chunks_for(kernel, team.threads, N, T, 1);
        part = at::empty({1, N, ch.count, D}, y.options().dtype(at::kFloat));
        kernel<<<grid_of(N * ch.count), team.threads, 0, at::cuda::getCurrentCUDAStream()>>>(
            reinterpret_cast<const A*>(dout.data_ptr()), reinterpret_cast<const A*>(y.data_ptr()),
            reinterpret_cast<const P*>(gate.data_ptr()), row_stride(gate), reinterpret_cast<A*>(dy.data_ptr()),
            part.data_ptr<float>(), T, D, ch.count, ch.rows);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    };
    if (packed)
      launch(std::integral_constant<int, V>{});
    else
      launch(std::integral_constant<int, 1>{});
  });
  if (too_wide) return reference::gated_residual_backward(dout, y, gate_in);
  GatedResidualGrads out{dy, {}};
  finish_sums(part, gate_in.scalar_type(), &out.dgate, nullptr);
  return out;
}

}  // namespace opendit::kernels::cuda_impl
