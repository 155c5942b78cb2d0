// a. LayerNorm (no affine) fused with adaLN modulation, forward and backward (definitions: cuda/reference.cpp).
// Rows of at most 12 x 32 packed vectors take one warp each (the backward: when its sums fit shared memory) (several rows in flight per block, shuffle reductions
// only); other rows take the row-team kernels, one block walking the tokens of one chunk of one sample
// (cuda/token_rows.cuh). The forward reads x once, the backward reads dy and x once and keeps the sums over tokens in
// registers.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda/launch.hpp"
#include "cuda/token_rows.cuh"

namespace opendit::kernels::cuda_impl {
namespace {

using namespace token_rows;

// y = (x - mean) * rstd * (1 + scale[n]) + shift[n] over rows of x [N, T, D]; mean, rstd [N, T].
// Block b: sample b / chunks, tokens [t0, t0 + rows) of it. Thread i owns packs i + j * blockDim.x, j < PER.
template <typename A, typename P, int VEC, int PER>
__global__ void __launch_bounds__(kMaxTeam)
    norm_modulate_kernel(const A* __restrict__ x, const P* __restrict__ shift, int64_t shift_stride,
                         const P* __restrict__ scale, int64_t scale_stride, A* __restrict__ y, float* __restrict__ mean,
                         float* __restrict__ rstd, int64_t T, int64_t D, int64_t chunks, int64_t rows, float eps) {
  __shared__ float buf[64];
  int flip = 0;
  const int64_t n = blockIdx.x / chunks, t0 = (blockIdx.x % chunks) * rows, t1 = min(T, t0 + rows);
  const int64_t nvec = D / VEC;
  const float inv_d = 1.0f / float(D);

  float sh[PER][VEC], sc1[PER][VEC];  // shift[n] and 1 + scale[n] for this thread's columns
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int64_t col = (threadIdx.x + int64_t(j) * blockDim.x) * VEC;
    if (col < nvec * VEC) {
      load<P, VEC>(shift + n * shift_stride + col, sh[j]);
      load<P, VEC>(scale + n * scale_stride + col, sc1[j]);
#pragma unroll
      for (int k = 0; k < VEC; ++k) sc1[j][k] += 1.0f;
    }
  }

  for (int64_t t = t0; t < t1; ++t) {
    const int64_t row = n * T + t;
    float v[PER][VEC];
    float s = 0;
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      const int64_t col = (threadIdx.x + int64_t(j) * blockDim.x) * VEC;
      if (col < nvec * VEC) {
        load<A, VEC>(x + row * D + col, v[j]);
#pragma unroll
        for (int k = 0; k < VEC; ++k) s += v[j][k];
      }
    }
    const float mu = block_sum(s, buf, flip) * inv_d;
    float q = 0;  // second pass over the registers: sum (x - mean)^2, no cancellation
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      const int64_t col = (threadIdx.x + int64_t(j) * blockDim.x) * VEC;
      if (col < nvec * VEC) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          v[j][k] -= mu;
          q += v[j][k] * v[j][k];
        }
      }
    }
    const float r = rsqrtf(block_sum(q, buf, flip) * inv_d + eps);
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      const int64_t col = (threadIdx.x + int64_t(j) * blockDim.x) * VEC;
      if (col < nvec * VEC) {
        float o[VEC];
#pragma unroll
        for (int k = 0; k < VEC; ++k) o[k] = v[j][k] * r * sc1[j][k] + sh[j][k];
        store<A, VEC>(y + row * D + col, o);
      }
    }
    if (threadIdx.x == 0) {
      mean[row] = mu;
      rstd[row] = r;
    }
  }
}

// dx = rstd * (g - mean_D(g) - xhat * mean_D(g * xhat)) (+ dres when given), g = dy * (1 + scale[n]),
// xhat = (x - mean) * rstd; and the partial sums over this block's tokens part[0, n, c] = sum dy,
// part[1, n, c] = sum dy * xhat ([2, N, chunks, D]).
template <typename A, typename P, int VEC, int PER>
__global__ void __launch_bounds__(kMaxTeam)
    norm_modulate_backward_kernel(const A* __restrict__ dy, const A* __restrict__ x, const float* __restrict__ mean,
                                  const float* __restrict__ rstd, const P* __restrict__ scale, int64_t scale_stride,
                                  const P* __restrict__ shift, int64_t shift_stride, const A* __restrict__ dres,
                                  A* __restrict__ dx, A* __restrict__ h, float* __restrict__ part, int64_t N,
                                  int64_t T, int64_t D, int64_t chunks, int64_t rows) {
  __shared__ Two buf[64];
  int flip = 0;
  const int64_t n = blockIdx.x / chunks, c = blockIdx.x % chunks, t0 = c * rows, t1 = min(T, t0 + rows);
  const int64_t nvec = D / VEC;
  const float inv_d = 1.0f / float(D);

  float sc1[PER][VEC], dshift[PER][VEC], dscale[PER][VEC];
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int64_t col = (threadIdx.x + int64_t(j) * blockDim.x) * VEC;
    if (col < nvec * VEC) load<P, VEC>(scale + n * scale_stride + col, sc1[j]);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      if (col < nvec * VEC) sc1[j][k] += 1.0f;
      dshift[j][k] = 0;
      dscale[j][k] = 0;
    }
  }

  for (int64_t t = t0; t < t1; ++t) {
    const int64_t row = n * T + t;
    const float mu = mean[row], r = rstd[row];
    float g[PER][VEC], xh[PER][VEC];
    Two s{0, 0};  // sum g, sum g * xhat
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      const int64_t col = (threadIdx.x + int64_t(j) * blockDim.x) * VEC;
      if (col < nvec * VEC) {
        float d[VEC];
        load<A, VEC>(dy + row * D + col, d);
        load<A, VEC>(x + row * D + col, xh[j]);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          xh[j][k] = (xh[j][k] - mu) * r;
          dshift[j][k] += d[k];
          dscale[j][k] += d[k] * xh[j][k];
          g[j][k] = d[k] * sc1[j][k];
          s.a += g[j][k];
          s.b += g[j][k] * xh[j][k];
        }
      }
    }
    const Two tot = block_sum(s, buf, flip);
    const float ga = tot.a * inv_d, gb = tot.b * inv_d;
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      const int64_t col = (threadIdx.x + int64_t(j) * blockDim.x) * VEC;
      if (col < nvec * VEC) {
        float o[VEC], res[VEC] = {};
        if (dres) load<A, VEC>(dres + row * D + col, res);
#pragma unroll
        for (int k = 0; k < VEC; ++k) o[k] = r * (g[j][k] - ga - xh[j][k] * gb) + res[k];
        store<A, VEC>(dx + row * D + col, o);
        if (h) {  // the forward's y: x-hat (1 + scale) + shift, as norm_modulate_kernel computes it
          float sh[VEC];
          load<P, VEC>(shift + n * shift_stride + col, sh);
#pragma unroll
          for (int k = 0; k < VEC; ++k) o[k] = xh[j][k] * sc1[j][k] + sh[k];
          store<A, VEC>(h + row * D + col, o);
        }
      }
    }
  }

#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int64_t col = (threadIdx.x + int64_t(j) * blockDim.x) * VEC;
    if (col < nvec * VEC) {
      store<float, VEC>(part + ((0 * N + n) * chunks + c) * D + col, dshift[j]);
      store<float, VEC>(part + ((1 * N + n) * chunks + c) * D + col, dscale[j]);
    }
  }
}

// The same forward in the warp-per-row layout (token_rows.cuh): warp w of block b normalizes row b * kRowWarps + w
// of x viewed as [N * T, D]; the raw packs stay in registers between the two reductions and the output pass.
template <typename A, typename P, int VEC, int NV>
__global__ void __launch_bounds__(kRowWarps * 32)
    norm_modulate_warp_kernel(const A* __restrict__ x, const P* __restrict__ shift, int64_t shift_stride,
                              const P* __restrict__ scale, int64_t scale_stride, A* __restrict__ y,
                              float* __restrict__ mean, float* __restrict__ rstd, int64_t rows, int64_t T, int64_t D,
                              float eps) {
  const int64_t row = int64_t(blockIdx.x) * kRowWarps + (threadIdx.x >> 5);
  if (row >= rows) return;  // the whole warp leaves together: no barrier follows
  const int lane = threadIdx.x & 31;
  const int64_t nvec = D / VEC, n = row / T;
  const float inv_d = 1.0f / float(D);
  const auto* xr = reinterpret_cast<const Pack<A, VEC>*>(x + row * D);
  Pack<A, VEC> raw[NV];
#pragma unroll
  for (int j = 0; j < NV; ++j)
    if (lane + 32 * j < nvec) raw[j] = xr[lane + 32 * j];
  float s = 0;
#pragma unroll
  for (int j = 0; j < NV; ++j)
    if (lane + 32 * j < nvec)
#pragma unroll
      for (int k = 0; k < VEC; ++k) s += to_float(raw[j].v[k]);
  const float mu = warp_sum(s) * inv_d;
  float q = 0;  // second pass: sum (x - mean)^2, no cancellation
#pragma unroll
  for (int j = 0; j < NV; ++j)
    if (lane + 32 * j < nvec)
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const float d = to_float(raw[j].v[k]) - mu;
        q += d * d;
      }
  const float r = rsqrtf(warp_sum(q) * inv_d + eps);
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    const int64_t v = lane + 32 * j;
    if (v < nvec) {
      float sh[VEC], sc[VEC], o[VEC];
      load<P, VEC>(shift + n * shift_stride + v * VEC, sh);
      load<P, VEC>(scale + n * scale_stride + v * VEC, sc);
#pragma unroll
      for (int k = 0; k < VEC; ++k) o[k] = (to_float(raw[j].v[k]) - mu) * r * (1.0f + sc[k]) + sh[k];
      store<A, VEC>(y + row * D + v * VEC, o);
    }
  }
  if (lane == 0) {
    mean[row] = mu;
    rstd[row] = r;
  }
}

// The same backward in the warp-per-row layout: block b covers tokens [t0, t0 + rows) of sample b / chunks, warp w
// the tokens t0 + w, t0 + w + kRowWarps, ...; each lane sums dy and dy * xhat of its columns in its warp's shared
// memory slots, and block_column_sums adds the warps' sums into part [2, N, chunks, D]; dx gets dres (when given)
// added before rounding. Dynamic shared memory:
// warp_sums_bytes(2, NV, VEC).
template <typename A, typename P, int VEC, int NV>
__global__ void __launch_bounds__(kRowWarps * 32)
    norm_modulate_backward_warp_kernel(const A* __restrict__ dy, const A* __restrict__ x,
                                       const float* __restrict__ mean, const float* __restrict__ rstd,
                                       const P* __restrict__ scale, int64_t scale_stride,
                                       const P* __restrict__ shift, int64_t shift_stride,
                                       const A* __restrict__ dres, A* __restrict__ dx, A* __restrict__ h,
                                       float* __restrict__ part, int64_t N, int64_t T, int64_t D, int64_t chunks,
                                       int64_t rows) {
  extern __shared__ float sums_buf[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t n = blockIdx.x / chunks, c = blockIdx.x % chunks, t0 = c * rows, t1 = min(T, t0 + rows);
  const int64_t nvec = D / VEC;
  const float inv_d = 1.0f / float(D);

  Pack<P, VEC> sc[NV];  // scale[n] of this lane's columns, raw
  float* sum_dy = warp_sums<2, VEC, NV>(sums_buf, 0);  // this warp's sums of dy and dy * xhat
  float* sum_dyx = warp_sums<2, VEC, NV>(sums_buf, 1);
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    if (lane + 32 * j < nvec) sc[j] = reinterpret_cast<const Pack<P, VEC>*>(scale + n * scale_stride)[lane + 32 * j];
#pragma unroll
    for (int k = 0; k < VEC; ++k) sum_dy[(j * VEC + k) * 32] = sum_dyx[(j * VEC + k) * 32] = 0;
  }

  for (int64_t t = t0 + warp; t < t1; t += kRowWarps) {
    const int64_t row = n * T + t;
    const auto* dyr = reinterpret_cast<const Pack<A, VEC>*>(dy + row * D);
    const auto* xr = reinterpret_cast<const Pack<A, VEC>*>(x + row * D);
    Pack<A, VEC> rd[NV], rx[NV];
#pragma unroll
    for (int j = 0; j < NV; ++j)
      if (lane + 32 * j < nvec) {
        rd[j] = dyr[lane + 32 * j];
        rx[j] = xr[lane + 32 * j];
      }
    const float mu = mean[row], r = rstd[row];
    Two s{0, 0};  // sum g, sum g * xhat, g = dy * (1 + scale)
#pragma unroll
    for (int j = 0; j < NV; ++j)
      if (lane + 32 * j < nvec)
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const float d = to_float(rd[j].v[k]), xh = (to_float(rx[j].v[k]) - mu) * r;
          const float g = d * (1.0f + to_float(sc[j].v[k]));
          sum_dy[(j * VEC + k) * 32] += d;
          sum_dyx[(j * VEC + k) * 32] += d * xh;
          s.a += g;
          s.b += g * xh;
        }
    const Two tot = warp_sum(s);
    const float ga = tot.a * inv_d, gb = tot.b * inv_d;
#pragma unroll
    for (int j = 0; j < NV; ++j) {
      const int64_t v = lane + 32 * j;
      if (v < nvec) {
        // The residual's gradient is read only here, not held through the row's reductions: registers bound how
        // many rows are in flight.
        float o[VEC], res[VEC] = {};
        if (dres) load<A, VEC>(dres + row * D + v * VEC, res);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const float d = to_float(rd[j].v[k]), xh = (to_float(rx[j].v[k]) - mu) * r;
          o[k] = r * (d * (1.0f + to_float(sc[j].v[k])) - ga - xh * gb) + res[k];
        }
        store<A, VEC>(dx + row * D + v * VEC, o);
        if (h) {  // the forward's y, as norm_modulate_warp_kernel computes it (shift read here, as dres is)
          float sh[VEC];
          load<P, VEC>(shift + n * shift_stride + v * VEC, sh);
#pragma unroll
          for (int k = 0; k < VEC; ++k) o[k] = (to_float(rx[j].v[k]) - mu) * r * (1.0f + to_float(sc[j].v[k])) + sh[k];
          store<A, VEC>(h + row * D + v * VEC, o);
        }
      }
    }
  }
  block_column_sums<2, VEC, NV>(sums_buf, part, N, n, chunks, c, D);
}

}  // namespace

NormModulate norm_modulate(const at::Tensor& x, const at::Tensor& shift_in, const at::Tensor& scale_in, double eps) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 3 && x.is_contiguous(), "norm_modulate: x must be a contiguous CUDA [N, T, D]");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), T = x.size(1), D = x.size(2);
  const at::Tensor shift = params_like(shift_in, x), scale = params_like(scale_in, x);
  TORCH_CHECK(shift.scalar_type() == scale.scalar_type(), "norm_modulate: shift and scale differ in dtype");
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = at::empty({N, T}, x.options().dtype(at::kFloat)), rstd = at::empty_like(mean);
  if (x.numel() == 0) return {y, mean, rstd};

  auto warp = [&](auto types, auto vec, auto nv, size_t) {  // no sums over tokens: no dynamic shared memory
    using A = typename decltype(types)::Act;
    using P = typename decltype(types)::Par;
    const int64_t rows = N * T;
    norm_modulate_warp_kernel<A, P, decltype(vec)::value, decltype(nv)::value>
        <<<grid_of((rows + kRowWarps - 1) / kRowWarps), kRowWarps * 32, 0, at::cuda::getCurrentCUDAStream()>>>(
            reinterpret_cast<const A*>(x.data_ptr()), reinterpret_cast<const P*>(shift.data_ptr()), row_stride(shift),
            reinterpret_cast<const P*>(scale.data_ptr()), row_stride(scale), reinterpret_cast<A*>(y.data_ptr()),
            mean.data_ptr<float>(), rstd.data_ptr<float>(), rows, T, D, float(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  auto team = [&](auto types, auto vec, auto per, int threads) {
    using A = typename decltype(types)::Act;
    using P = typename decltype(types)::Par;
    auto kernel = norm_modulate_kernel<A, P, decltype(vec)::value, decltype(per)::value>;
    // Up to 4 waves of short chunks: no partials to keep, and an uneven last wave costs less.
    const Chunks ch = chunks_for(kernel, threads, N, T, 4);
    kernel<<<grid_of(N * ch.count), threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        reinterpret_cast<const A*>(x.data_ptr()), reinterpret_cast<const P*>(shift.data_ptr()), row_stride(shift),
        reinterpret_cast<const P*>(scale.data_ptr()), row_stride(scale), reinterpret_cast<A*>(y.data_ptr()),
        mean.data_ptr<float>(), rstd.data_ptr<float>(), T, D, ch.count, ch.rows, float(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  // Packed rows of at most 12 x 32 packs: one warp a row (token_rows.cuh), else the row teams.
  if (!launch_rows(x, shift, {{x, D}, {shift, row_stride(shift)}, {scale, row_stride(scale)}}, 0, warp, team))
    return reference::norm_modulate(x, shift_in, scale_in, eps);
  return {y, mean, rstd};
}

NormModulateGrads norm_modulate_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean,
                                         const at::Tensor& rstd, const at::Tensor& scale_in, const at::Tensor& dres,
                                         const at::Tensor& shift_in) {
  TORCH_CHECK(
      x.is_cuda() && x.dim() == 3 && x.is_contiguous() && dy.is_contiguous() && dy.scalar_type() == x.scalar_type(),
      "norm_modulate_backward: x and dy must be contiguous CUDA [N, T, D] of one dtype");
  TORCH_CHECK(mean.scalar_type() == at::kFloat && rstd.scalar_type() == at::kFloat && mean.is_contiguous() &&
                  rstd.is_contiguous(),
              "norm_modulate_backward: mean and rstd must be contiguous float32 [N, T] (norm_modulate's)");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), T = x.size(1), D = x.size(2);
  const at::Tensor scale = params_like(scale_in, x);
  const at::Tensor shift = shift_in.defined() ? params_like(shift_in, x) : at::Tensor();
  at::Tensor dx = at::empty_like(x), h = shift.defined() ? at::empty_like(x) : at::Tensor();
  if (x.numel() == 0) {
    at::Tensor z = at::zeros({N, D}, scale_in.options());
    return {dx, z, z.clone(), h};
  }

  at::Tensor part;  // [2, N, chunks, D] float32: per-chunk sums of dy and dy * xhat
  // Either kernel (the same arguments) on `threads` per block and one wave of blocks: each leaves one partial row
  // per sum, so fewer, longer blocks keep part small.
  auto launch = [&](auto types, auto kernel, int threads, size_t smem) {
    using A = typename decltype(types)::Act;
    using P = typename decltype(types)::Par;
    const Chunks ch = chunks_for(kernel, threads, N, T, 1, smem);
    part = at::empty({2, N, ch.count, D}, x.options().dtype(at::kFloat));
    kernel<<<grid_of(N * ch.count), threads, smem, at::cuda::getCurrentCUDAStream()>>>(
        reinterpret_cast<const A*>(dy.data_ptr()), reinterpret_cast<const A*>(x.data_ptr()), mean.data_ptr<float>(),
        rstd.data_ptr<float>(), reinterpret_cast<const P*>(scale.data_ptr()), row_stride(scale),
        h.defined() ? reinterpret_cast<const P*>(shift.data_ptr()) : nullptr, h.defined() ? row_stride(shift) : 0,
        dres.defined() ? reinterpret_cast<const A*>(dres.data_ptr()) : nullptr, reinterpret_cast<A*>(dx.data_ptr()),
        h.defined() ? reinterpret_cast<A*>(h.data_ptr()) : nullptr, part.data_ptr<float>(), N, T, D, ch.count,
        ch.rows);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  auto warp = [&](auto types, auto vec, auto nv, size_t smem) {
    using A = typename decltype(types)::Act;
    using P = typename decltype(types)::Par;
    launch(types, norm_modulate_backward_warp_kernel<A, P, decltype(vec)::value, decltype(nv)::value>, kRowWarps * 32,
           smem);
  };
  auto team = [&](auto types, auto vec, auto per, int threads) {
    using A = typename decltype(types)::Act;
    using P = typename decltype(types)::Par;
    launch(types, norm_modulate_backward_kernel<A, P, decltype(vec)::value, decltype(per)::value>, threads, 0);
  };
  // Packed rows of at most 12 x 32 packs whose 2 sums fit shared memory: one warp a row, else the row teams.
  const at::Tensor& res_view = dres.defined() ? dres : dy;  // read in dy's packs: its alignment counts too
  const at::Tensor& shift_view = shift.defined() ? shift : scale;
  if (!launch_rows(x, scale, {{x, D}, {dy, D}, {res_view, D}, {scale, row_stride(scale)},
                              {shift_view, row_stride(shift_view)}}, 2, warp, team))
    return reference::norm_modulate_backward(dy, x, mean, rstd, scale_in, dres, shift_in);
  NormModulateGrads out{dx, {}, {}, h};
  finish_sums(part, scale_in.scalar_type(), &out.dshift, &out.dscale);
  return out;
}

}  // namespace opendit::kernels::cuda_impl
