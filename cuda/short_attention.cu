// j. Attention along the middle axis of qkv [B, T, S, 3, H, hd] for short T (definition: cuda/reference.cpp).
// One thread block per (b, s, head): it copies that group's T rows of q, k and v (each hd contiguous elements, rows
// S 3 H hd apart) into shared memory as float32, and does the whole attention there: scores, softmax, output (and in
// the backward P, dS and the three gradients). At STDiT's 16 frames a group is 16 x 72 per tensor, which fills a
// small part of cuDNN's tiles of 64-128 queries. The kernels are bound by shared-memory bandwidth (hence the
// register tiles below), not by DRAM: on the H200 they move 21-24% of copy bandwidth.
// Rows in shared memory are hd + 1 floats apart (odd), so threads reading the same column of different rows hit
// different banks. Everything is computed in float32 and rounded once; no atomics, so results repeat bit for bit.
// bfloat16 at T = 16 (STDiT's and Latte's frames) goes to the tensor-core kernels of short_attention_mma.cu instead.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cmath>
#include <map>
#include <mutex>
#include <set>

#include "cuda/launch.hpp"
#include "cuda/short_attention_mma.hpp"
#include "cuda/token_rows.cuh"

namespace opendit::kernels::cuda_impl {
namespace {

using token_rows::from_float;
using token_rows::Pack;
using token_rows::to_float;

constexpr int kThreads = 128;

// The layout of one problem; element strides.
struct Geometry {
  int T, S, H, hd, valid;  // valid: keys [0, valid) are visible
  float scale;
  int64_t row;             // between consecutive t of qkv: S 3 H hd
  int64_t out_row;         // between consecutive t of out (and dout): S H hd

  // The group of block g = (b S + s) H + h: offsets of its q row 0 in qkv and of its row 0 in out.
  __device__ int64_t qkv_base(int64_t g) const { return group_base(g, T, S, H, hd).qkv; }
  __device__ int64_t out_base(int64_t g) const { return group_base(g, T, S, H, hd).out; }
};

// Copies `rows` rows of hd elements, src + t * stride, into dst + t * ld (float32), VEC elements a load.
template <typename E, int VEC>
__device__ __forceinline__ void load_rows(const E* __restrict__ src, int64_t stride, float* dst, int ld, int rows,
                                          int hd) {
  const int packs = hd / VEC;
  for (int i = threadIdx.x; i < rows * packs; i += blockDim.x) {
    const int t = i / packs, c = (i % packs) * VEC;
    const Pack<E, VEC> p = *reinterpret_cast<const Pack<E, VEC>*>(src + t * stride + c);
#pragma unroll
    for (int k = 0; k < VEC; ++k) dst[t * ld + c + k] = to_float(p.v[k]);
  }
}

// Each thread computes a tile of kR rows by kC columns of a result, so that kR + kC values read from shared memory
// serve kR kC multiply-adds: shared-memory bandwidth, not DRAM, is what bounds one output a thread at STDiT's sizes.
// Lanes of a warp read the same rows of one operand (broadcasts) and consecutive or bank-distinct rows of the other.
constexpr int kR = 4;

// acc[r][c] = sum_d a[(i0 + r) ld + d] b[(j0 + c) ld + d]; rows past T read row T - 1 (their results unused).
template <int kC>
__device__ __forceinline__ void dot_tile(const float* a, const float* b, int ld, int i0, int j0, int T, int hd,
                                         float (&acc)[kR][kC]) {
  int ra[kR], rb[kC];
#pragma unroll
  for (int r = 0; r < kR; ++r) ra[r] = min(i0 + r, T - 1) * ld;
#pragma unroll
  for (int c = 0; c < kC; ++c) rb[c] = min(j0 + c, T - 1) * ld;
#pragma unroll
  for (int r = 0; r < kR; ++r)
#pragma unroll
    for (int c = 0; c < kC; ++c) acc[r][c] = 0;
  for (int d = 0; d < hd; ++d) {
    float av[kR], bv[kC];
#pragma unroll
    for (int r = 0; r < kR; ++r) av[r] = a[ra[r] + d];
#pragma unroll
    for (int c = 0; c < kC; ++c) bv[c] = b[rb[c] + d];
#pragma unroll
    for (int r = 0; r < kR; ++r)
#pragma unroll
      for (int c = 0; c < kC; ++c) acc[r][c] = fmaf(av[r], bv[c], acc[r][c]);
  }
}

// acc[r][c] = sum_{j < n} w(t0 + r, j) m[j ld + d0 + c step], where w(t, j) = w[t lw + j] or, kTransposed,
// w[j lw + t]; rows past T and columns past hd read the last one (their results unused).
template <bool kTransposed, int kC>
__device__ __forceinline__ void mix_tile(const float* w, int lw, const float* m, int ld, int t0, int d0, int step,
                                         int n, int T, int hd, float (&acc)[kR][kC]) {
  int at[kR], col[kC];
#pragma unroll
  for (int r = 0; r < kR; ++r) at[r] = kTransposed ? min(t0 + r, T - 1) : min(t0 + r, T - 1) * lw;
#pragma unroll
  for (int c = 0; c < kC; ++c) col[c] = min(d0 + c * step, hd - 1);
#pragma unroll
  for (int r = 0; r < kR; ++r)
#pragma unroll
    for (int c = 0; c < kC; ++c) acc[r][c] = 0;
  for (int j = 0; j < n; ++j) {
    float wv[kR], mv[kC];
#pragma unroll
    for (int r = 0; r < kR; ++r) wv[r] = kTransposed ? w[j * lw + at[r]] : w[at[r] + j];
#pragma unroll
    for (int c = 0; c < kC; ++c) mv[c] = m[j * ld + col[c]];
#pragma unroll
    for (int r = 0; r < kR; ++r)
#pragma unroll
      for (int c = 0; c < kC; ++c) acc[r][c] = fmaf(wv[r], mv[c], acc[r][c]);
  }
}

// Tiles of the [T, T] scores (kR queries x kSC keys) and of the [T, hd] outputs (kR rows x kOC columns, the columns
// d0, d0 + step, ... with step = ceil(hd / kOC), so that consecutive lanes read consecutive columns).
constexpr int kSC = 2, kOC = 4;
struct Tiles {
  int rows, keys, cols, step;
  __device__ Tiles(int T, int hd)
      : rows((T + kR - 1) / kR), keys((T + kSC - 1) / kSC), cols((hd + kOC - 1) / kOC), step(cols) {}
};

template <typename E, int VEC>
__global__ void __launch_bounds__(kThreads) short_attention_fwd(const E* __restrict__ qkv, E* __restrict__ out,
                                                                 float* __restrict__ stats, Geometry g) {
  extern __shared__ float sm[];
  const int T = g.T, hd = g.hd, ld = hd + 1, lp = T + 1;
  const Tiles tl(T, hd);
  float *q = sm, *k = q + T * ld, *v = k + T * ld, *p = v + T * ld;  // q, k, v [T][ld]; p [T][lp]
  const int64_t grp = blockIdx.x;
  const E* src = qkv + g.qkv_base(grp);
  const int64_t part = int64_t(g.H) * hd;  // q -> k -> v
  load_rows<E, VEC>(src, g.row, q, ld, T, hd);
  load_rows<E, VEC>(src + part, g.row, k, ld, T, hd);
  load_rows<E, VEC>(src + 2 * part, g.row, v, ld, T, hd);
  __syncthreads();
  for (int idx = threadIdx.x; idx < tl.rows * tl.keys; idx += blockDim.x) {  // scaled scores, hidden keys -inf
    const int i0 = (idx / tl.keys) * kR, j0 = (idx % tl.keys) * kSC;
    float acc[kR][kSC];
    dot_tile(q, k, ld, i0, j0, T, hd, acc);
#pragma unroll
    for (int r = 0; r < kR; ++r)
#pragma unroll
      for (int c = 0; c < kSC; ++c)
        if (i0 + r < T && j0 + c < T) p[(i0 + r) * lp + j0 + c] = j0 + c < g.valid ? acc[r][c] * g.scale : -INFINITY;
  }
  __syncthreads();
  // Softmax, one thread a query row (T <= 64: at most half the block).
  for (int i = threadIdx.x; i < T; i += blockDim.x) {
    float m = -INFINITY, sum = 0;
    for (int j = 0; j < T; ++j) m = fmaxf(m, p[i * lp + j]);
    for (int j = 0; j < T; ++j) sum += expf(p[i * lp + j] - m);
    const float lse = m + logf(sum);
    for (int j = 0; j < T; ++j) p[i * lp + j] = expf(p[i * lp + j] - lse);
    stats[grp * T + i] = lse;
  }
  __syncthreads();
  E* dst = out + g.out_base(grp);
  for (int idx = threadIdx.x; idx < tl.rows * tl.cols; idx += blockDim.x) {  // O = P V
    const int t0 = (idx / tl.cols) * kR, d0 = idx % tl.cols;
    float acc[kR][kOC];
    mix_tile<false>(p, lp, v, ld, t0, d0, tl.step, T, T, hd, acc);
#pragma unroll
    for (int r = 0; r < kR; ++r)
#pragma unroll
      for (int c = 0; c < kOC; ++c)
        if (t0 + r < T && d0 + c * tl.step < hd)
          dst[(t0 + r) * g.out_row + d0 + c * tl.step] = from_float<E>(acc[r][c]);
  }
}

template <typename E, int VEC>
__global__ void __launch_bounds__(kThreads) short_attention_bwd(const E* __restrict__ qkv, const E* __restrict__ out,
                                                                 const E* __restrict__ dout,
                                                                 const float* __restrict__ stats,
                                                                 E* __restrict__ dqkv, Geometry g) {
  extern __shared__ float sm[];
  const int T = g.T, hd = g.hd, ld = hd + 1, lp = T + 1;
  const Tiles tl(T, hd);
  float *q = sm, *k = q + T * ld, *v = k + T * ld, *o = v + T * ld, *dO = o + T * ld;  // [T][ld] each
  float *p = dO + T * ld, *ds = p + T * lp, *rowdot = ds + T * lp;                       // [T][lp], [T][lp], [T]
  const int64_t grp = blockIdx.x;
  const int64_t base = g.qkv_base(grp), obase = g.out_base(grp), part = int64_t(g.H) * hd;
  load_rows<E, VEC>(qkv + base, g.row, q, ld, T, hd);
  load_rows<E, VEC>(qkv + base + part, g.row, k, ld, T, hd);
  load_rows<E, VEC>(qkv + base + 2 * part, g.row, v, ld, T, hd);
  load_rows<E, VEC>(out + obase, g.out_row, o, ld, T, hd);
  load_rows<E, VEC>(dout + obase, g.out_row, dO, ld, T, hd);
  __syncthreads();
  for (int i = threadIdx.x; i < T; i += blockDim.x) {  // rowsum(dO O)
    float acc = 0;
    for (int d = 0; d < hd; ++d) acc = fmaf(dO[i * ld + d], o[i * ld + d], acc);
    rowdot[i] = acc;
  }
  __syncthreads();
  // P = exp(S - lse), dS = P (dO V^T - rowsum(dO O)); hidden keys: P = dS = 0.
  for (int idx = threadIdx.x; idx < tl.rows * tl.keys; idx += blockDim.x) {
    const int i0 = (idx / tl.keys) * kR, j0 = (idx % tl.keys) * kSC;
    float s[kR][kSC], dp[kR][kSC];
    dot_tile(q, k, ld, i0, j0, T, hd, s);
    dot_tile(dO, v, ld, i0, j0, T, hd, dp);
#pragma unroll
    for (int r = 0; r < kR; ++r)
#pragma unroll
      for (int c = 0; c < kSC; ++c) {
        const int i = i0 + r, j = j0 + c;
        if (i >= T || j >= T) continue;
        const float pij = j < g.valid ? expf(s[r][c] * g.scale - stats[grp * T + i]) : 0.f;
        p[i * lp + j] = pij;
        ds[i * lp + j] = pij * (dp[r][c] - rowdot[i]);
      }
  }
  __syncthreads();
  // dQ = dS K scale, dK = dS^T Q scale, dV = P^T dO; written as the [T, 3, H, hd] slices of this group.
  E* dst = dqkv + base;
  const int per = tl.rows * tl.cols;
  for (int idx = threadIdx.x; idx < 3 * per; idx += blockDim.x) {
    const int which = idx / per, t0 = ((idx % per) / tl.cols) * kR, d0 = idx % tl.cols;
    float acc[kR][kOC];
    if (which == 0)
      mix_tile<false>(ds, lp, k, ld, t0, d0, tl.step, T, T, hd, acc);
    else if (which == 1)
      mix_tile<true>(ds, lp, q, ld, t0, d0, tl.step, T, T, hd, acc);
    else
      mix_tile<true>(p, lp, dO, ld, t0, d0, tl.step, T, T, hd, acc);
    const float scale = which == 2 ? 1.f : g.scale;
#pragma unroll
    for (int r = 0; r < kR; ++r)
#pragma unroll
      for (int c = 0; c < kOC; ++c)
        if (t0 + r < T && d0 + c * tl.step < hd)
          dst[(t0 + r) * g.row + which * part + d0 + c * tl.step] = from_float<E>(acc[r][c] * scale);
  }
}

Geometry geometry(const at::Tensor& qkv, int64_t valid) {
  TORCH_CHECK(qkv.size(0) * qkv.size(2) * qkv.size(4) < (int64_t(1) << 31), "short_attention: ",
              qkv.size(0) * qkv.size(2) * qkv.size(4), " (b, s, head) groups exceed one launch's grid");
  Geometry g;
  g.T = int(qkv.size(1)), g.S = int(qkv.size(2)), g.H = int(qkv.size(4)), g.hd = int(qkv.size(5));
  g.valid = valid < 0 ? g.T : int(valid);
  g.scale = float(1.0 / std::sqrt(double(g.hd)));
  g.row = int64_t(g.S) * 3 * g.H * g.hd;
  g.out_row = int64_t(g.S) * g.H * g.hd;
  return g;
}

size_t fwd_smem(const Geometry& g) { return sizeof(float) * (3 * g.T * (g.hd + 1) + g.T * (g.T + 1)); }
size_t bwd_smem(const Geometry& g) { return sizeof(float) * (5 * g.T * (g.hd + 1) + 2 * g.T * (g.T + 1) + g.T); }

// Calls f with the widest pack whose loads every row allows: 16 bytes when hd fills whole packs and the tensors are
// 16-byte aligned, else one element.
template <typename E, typename F>
void with_pack(int hd, std::initializer_list<const void*> ptrs, F&& f) {
  constexpr int kVec = 16 / int(sizeof(E));
  bool aligned = hd % kVec == 0;
  for (const void* p : ptrs) aligned = aligned && reinterpret_cast<uintptr_t>(p) % 16 == 0;
  if (aligned)
    f(std::integral_constant<int, kVec>{});
  else
    f(std::integral_constant<int, 1>{});
}

// The most dynamic shared memory a block of this device may opt in to (227 KB on an H100/H200, 163 KB on an A100).
int smem_limit(int device) {
  static std::mutex mu;
  static std::map<int, int> limits;
  const std::lock_guard<std::mutex> lock(mu);
  auto it = limits.find(device);
  if (it == limits.end()) {
    int v = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    it = limits.emplace(device, v).first;
  }
  return it->second;
}

// Shared memory past the default 48 KB needs an opt-in per kernel and device, a call that CUDA graph capture does
// not allow: made for every instantiation at once, up to the device's limit, at the first problem on the device
// that needs it (STDiT's and Latte's 16 frames of 72 channels take 15-26 KB and never do). If that first problem
// comes inside a capture, a clear error says to run one eagerly first.
constexpr size_t kDefaultSmem = 48 * 1024;
void allow_large_smem(size_t bytes, int device) {
  if (bytes <= kDefaultSmem) return;
  static std::mutex mu;
  static std::set<int> done;
  const std::lock_guard<std::mutex> lock(mu);
  if (done.count(device)) return;
  cudaStreamCaptureStatus status;
  C10_CUDA_CHECK(cudaStreamIsCapturing(at::cuda::getCurrentCUDAStream(), &status));
  TORCH_CHECK(status == cudaStreamCaptureStatusNone, "short_attention: the first problem that needs more than 48 KB ",
              "of shared memory came inside CUDA graph capture; run one such call eagerly first");
  const int n = smem_limit(device);
  auto allow = [n](auto kernel) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, n));
  };
  allow(short_attention_fwd<float, 1>), allow(short_attention_fwd<float, 4>);
  allow(short_attention_fwd<__nv_bfloat16, 1>), allow(short_attention_fwd<__nv_bfloat16, 8>);
  allow(short_attention_bwd<float, 1>), allow(short_attention_bwd<float, 4>);
  allow(short_attention_bwd<__nv_bfloat16, 1>), allow(short_attention_bwd<__nv_bfloat16, 8>);
  done.insert(device);
}

template <typename E>
const E* cptr(const at::Tensor& t) {
  return reinterpret_cast<const E*>(t.data_ptr());
}
template <typename E>
E* mptr(const at::Tensor& t) {
  return reinterpret_cast<E*>(t.data_ptr());
}

}  // namespace

bool short_attention_fits(const at::Tensor& qkv) {
  if (qkv.size(0) * qkv.size(2) * qkv.size(4) >= (int64_t(1) << 31)) return false;  // one launch's grid
  return bwd_smem(geometry(qkv, -1)) <= size_t(smem_limit(qkv.get_device()));
}

ShortAttention short_attention(const at::Tensor& qkv, int64_t valid) {
  const c10::cuda::CUDAGuard guard(qkv.device());
  const Geometry g = geometry(qkv, valid);
  const int64_t B = qkv.size(0), groups = B * g.S * g.H;
  at::Tensor out = at::empty({B, g.T, g.S, g.H, g.hd}, qkv.options());
  at::Tensor stats = at::empty({B, g.S, g.H, g.T}, qkv.options().dtype(at::kFloat));
  if (short_attention_mma_takes(qkv)) {  // STDiT's and Latte's 16 frames in bfloat16: tensor cores
    short_attention_mma(qkv, valid, out, stats);
    return {out, stats};
  }
  auto launch = [&](auto e) {
    using E = decltype(e);
    with_pack<E>(g.hd, {qkv.data_ptr(), out.data_ptr()}, [&](auto vec) {
      constexpr int VEC = decltype(vec)::value;
      allow_large_smem(fwd_smem(g), qkv.get_device());
      short_attention_fwd<E, VEC><<<groups, kThreads, fwd_smem(g), at::cuda::getCurrentCUDAStream()>>>(
          cptr<E>(qkv), mptr<E>(out), stats.data_ptr<float>(), g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  };
  if (qkv.scalar_type() == at::kBFloat16)
    launch(__nv_bfloat16{});
  else
    launch(float{});
  return {out, stats};
}

at::Tensor short_attention_backward(const at::Tensor& dout, const at::Tensor& qkv, const at::Tensor& out,
                                    const at::Tensor& stats, int64_t valid) {
  const c10::cuda::CUDAGuard guard(qkv.device());
  const Geometry g = geometry(qkv, valid);
  const int64_t groups = qkv.size(0) * g.S * g.H;
  at::Tensor dqkv = at::empty_like(qkv);
  if (short_attention_mma_takes(qkv)) {
    short_attention_mma_backward(dout, qkv, out, stats, valid, dqkv);
    return dqkv;
  }
  auto launch = [&](auto e) {
    using E = decltype(e);
    with_pack<E>(g.hd, {qkv.data_ptr(), out.data_ptr(), dout.data_ptr()}, [&](auto vec) {
      constexpr int VEC = decltype(vec)::value;
      allow_large_smem(bwd_smem(g), qkv.get_device());
      short_attention_bwd<E, VEC><<<groups, kThreads, bwd_smem(g), at::cuda::getCurrentCUDAStream()>>>(
          cptr<E>(qkv), cptr<E>(out), cptr<E>(dout), stats.data_ptr<float>(), mptr<E>(dqkv), g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  };
  if (qkv.scalar_type() == at::kBFloat16)
    launch(__nv_bfloat16{});
  else
    launch(float{});
  return dqkv;
}

}  // namespace opendit::kernels::cuda_impl
