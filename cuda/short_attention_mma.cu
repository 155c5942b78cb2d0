// j'. short_attention (section j) on tensor cores, for the shape STDiT and Latte train at: bfloat16, T = 16 frames,
// hd a multiple of 8 up to 128. One warp per (b, s, head) group: its 16 rows of q, k, v (and dout) go to shared memory
// as they are (bfloat16, rows LD = hd rounded up to 16, plus 8, elements apart, so that the fragment loads of 8
// rows hit distinct banks; the columns past hd are zero), and every product is one row of m16n8k16 MMAs:
//   forward:  S = Q K^T [16 x 16], P = exp(S scale - lse), O = P V [16 x hd];
//   backward: S and P again, dP = dO V^T, dS = P (dP - rowsum(dO O)), dV = P^T dO, dK = dS^T Q scale, dQ = dS K scale.
// P and dS are rounded to bfloat16 as the MMA's operand (as flash attention does); everything else accumulates in
// float32. A result goes through the warp's shared memory on its way out, so that global stores are whole rows.
// No atomics: results repeat bit for bit, and rows that are not 16-byte aligned load element by element into the same
// shared memory, so they give the same bits.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "cuda/short_attention_mma.hpp"

namespace opendit::kernels::cuda_impl {
namespace {

using bf16 = __nv_bfloat16;
constexpr int kT = 16;        // frames: one MMA row block
constexpr int kMaxTiles = 16;  // hd / 8 <= 16
constexpr int kLdp = 24;       // row stride of P and dS in shared memory (bank-distinct for 8 rows)

struct MmaGeometry {
  int S, H, hd, ld, valid, tiles;  // tiles: hd / 8; ld: row stride in shared memory
  float scale;
  int64_t groups, row, out_row;    // row: between frames of qkv (S 3 H hd); out_row: of out and dout (S H hd)
};

__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

__device__ __forceinline__ uint32_t ld32(const bf16* p) { return *reinterpret_cast<const uint32_t*>(p); }
__device__ __forceinline__ uint32_t pack2(bf16 lo, bf16 hi) {
  return uint32_t(__bfloat16_as_ushort(lo)) | (uint32_t(__bfloat16_as_ushort(hi)) << 16);
}
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  return pack2(__float2bfloat16_rn(lo), __float2bfloat16_rn(hi));
}

// Fragments of m16n8k16 (lane = 4 g + c): A [16 x 16] holds rows g, g + 8 and columns 2c, 2c + 1, 2c + 8, 2c + 9;
// B [16 x 8] holds rows 2c, 2c + 1, 2c + 8, 2c + 9 of column g; C [16 x 8] rows g, g + 8, columns 2c, 2c + 1.
// A = X[0:16, k0:k0+16] of a row-major X.
__device__ __forceinline__ void frag_a(const bf16* x, int ld, int k0, int g, int c, uint32_t (&a)[4]) {
  a[0] = ld32(x + g * ld + k0 + 2 * c);
  a[1] = ld32(x + (g + 8) * ld + k0 + 2 * c);
  a[2] = ld32(x + g * ld + k0 + 8 + 2 * c);
  a[3] = ld32(x + (g + 8) * ld + k0 + 8 + 2 * c);
}
// A = X^T[0:16, 0:16] of a row-major X [16 x ld] (A[m][k] = X[k][m]).
__device__ __forceinline__ void frag_a_t(const bf16* x, int ld, int g, int c, uint32_t (&a)[4]) {
  a[0] = pack2(x[2 * c * ld + g], x[(2 * c + 1) * ld + g]);
  a[1] = pack2(x[2 * c * ld + g + 8], x[(2 * c + 1) * ld + g + 8]);
  a[2] = pack2(x[(2 * c + 8) * ld + g], x[(2 * c + 9) * ld + g]);
  a[3] = pack2(x[(2 * c + 8) * ld + g + 8], x[(2 * c + 9) * ld + g + 8]);
}
// A from two C tiles (columns 0-7 and 8-15) of a float32 result: the C layout of two n8 tiles is A's k16 layout.
__device__ __forceinline__ void frag_a_c(const float (&lo)[4], const float (&hi)[4], uint32_t (&a)[4]) {
  a[0] = pack2(lo[0], lo[1]);
  a[1] = pack2(lo[2], lo[3]);
  a[2] = pack2(hi[0], hi[1]);
  a[3] = pack2(hi[2], hi[3]);
}
// B = Y^T[k0:k0+16, n0:n0+8] of a row-major Y (B[k][n] = Y[n0 + n][k0 + k]: the keys of S = Q K^T).
__device__ __forceinline__ void frag_b_t(const bf16* y, int ld, int k0, int n0, int g, int c, uint32_t& b0,
                                         uint32_t& b1) {
  b0 = ld32(y + (n0 + g) * ld + k0 + 2 * c);
  b1 = ld32(y + (n0 + g) * ld + k0 + 8 + 2 * c);
}
// B = Y[0:16, n0:n0+8] of a row-major Y (B[k][n] = Y[k][n0 + n]: the values of O = P V).
__device__ __forceinline__ void frag_b(const bf16* y, int ld, int n0, int g, int c, uint32_t& b0, uint32_t& b1) {
  b0 = pack2(y[2 * c * ld + n0 + g], y[(2 * c + 1) * ld + n0 + g]);
  b1 = pack2(y[(2 * c + 8) * ld + n0 + g], y[(2 * c + 9) * ld + n0 + g]);
}

// VEC consecutive elements, moved by one access.
template <int VEC>
struct alignas(2 * VEC) Pack {
  bf16 v[VEC];
};

// 16 rows of hd elements: src + t src_ld -> dst + t dst_ld (global <-> shared memory), by the lanes of a warp.
template <int VEC>
__device__ __forceinline__ void copy_rows(const bf16* __restrict__ src, int64_t src_ld, bf16* __restrict__ dst,
                                          int64_t dst_ld, int hd, int lane) {
  const int packs = hd / VEC;
  for (int i = lane; i < kT * packs; i += 32) {
    const int t = i / packs, col = (i % packs) * VEC;
    *reinterpret_cast<Pack<VEC>*>(dst + t * dst_ld + col) = *reinterpret_cast<const Pack<VEC>*>(src + t * src_ld + col);
  }
}

// Rows from global (src + t stride) into shared memory (dst + t ld), and zeros in columns [hd, ld - 8).
template <int VEC>
__device__ __forceinline__ void load_rows(const bf16* __restrict__ src, int64_t stride, bf16* dst, int ld, int hd,
                                          int lane) {
  copy_rows<VEC>(src, stride, dst, ld, hd, lane);
  const int pad = ld - 8 - hd;  // hd rounded up to 16, less hd: 0 or 8
  for (int i = lane; i < kT * pad; i += 32) dst[(i / pad) * ld + hd + i % pad] = __float2bfloat16_rn(0.f);
}

// acc [16 x hd] (tiles of 8 columns, C layout) into shared memory rows, times `scale`, rounded to bfloat16.
__device__ __forceinline__ void stage(const float (&acc)[kMaxTiles][4], int tiles, float scale, bf16* dst, int ld,
                                      int g, int c) {
#pragma unroll
  for (int n = 0; n < kMaxTiles; ++n) {
    if (n < tiles) {
      *reinterpret_cast<uint32_t*>(dst + g * ld + 8 * n + 2 * c) = pack2(acc[n][0] * scale, acc[n][1] * scale);
      *reinterpret_cast<uint32_t*>(dst + (g + 8) * ld + 8 * n + 2 * c) = pack2(acc[n][2] * scale, acc[n][3] * scale);
    }
  }
}

// acc = A B for A [16 x 16] given as a fragment and B [16 x hd] rows of a row-major Y in shared memory.
__device__ __forceinline__ void times_rows(const uint32_t (&a)[4], const bf16* y, int ld, int tiles, int g, int c,
                                           float (&acc)[kMaxTiles][4]) {
#pragma unroll
  for (int n = 0; n < kMaxTiles; ++n) {
    if (n < tiles) {
      acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
      uint32_t b0, b1;
      frag_b(y, ld, 8 * n, g, c, b0, b1);
      mma(acc[n], a, b0, b1);
    }
  }
}

// s = X Y^T [16 x 16] (two C tiles) over hd columns of row-major X and Y in shared memory (zero past hd).
__device__ __forceinline__ void times_rows_t(const bf16* x, const bf16* y, int ld, int hd, int g, int c,
                                             float (&s)[2][4]) {
#pragma unroll
  for (int n = 0; n < 2; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
  for (int k = 0; k < kMaxTiles / 2; ++k) {
    if (16 * k < hd) {
      uint32_t a[4], b0, b1;
      frag_a(x, ld, 16 * k, g, c, a);
#pragma unroll
      for (int n = 0; n < 2; ++n) {
        frag_b_t(y, ld, 16 * k, 8 * n, g, c, b0, b1);
        mma(s[n], a, b0, b1);
      }
    }
  }
}

// The key of element i of C tile n for this lane, and its row (g or g + 8).
__device__ __forceinline__ int key_of(int n, int i, int c) { return 8 * n + 2 * c + (i & 1); }

template <int VEC>
__global__ void __launch_bounds__(128) mma_fwd(const bf16* __restrict__ qkv, bf16* __restrict__ out,
                                               float* __restrict__ stats, MmaGeometry geo) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const int64_t grp = int64_t(blockIdx.x) * (blockDim.x / 32) + warp;
  if (grp >= geo.groups) return;
  const int ld = geo.ld, hd = geo.hd;
  bf16* q = reinterpret_cast<bf16*>(smem) + int64_t(warp) * 3 * kT * ld;
  bf16 *k = q + kT * ld, *v = k + kT * ld;
  const GroupBase pos = group_base(grp, kT, geo.S, geo.H, hd);
  const bf16* src = qkv + pos.qkv;
  const int64_t part = int64_t(geo.H) * hd;
  load_rows<VEC>(src, geo.row, q, ld, hd, lane);
  load_rows<VEC>(src + part, geo.row, k, ld, hd, lane);
  load_rows<VEC>(src + 2 * part, geo.row, v, ld, hd, lane);
  __syncwarp();
  float s[2][4];
  times_rows_t(q, k, ld, hd, g, c, s);
  // Softmax over the 16 keys of rows g (elements 0, 1) and g + 8 (2, 3); a row's keys are spread over the 4 lanes
  // of its quad.
  float m[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int n = 0; n < 2; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      s[n][i] = key_of(n, i, c) < geo.valid ? s[n][i] * geo.scale : -INFINITY;
      m[i / 2] = fmaxf(m[i / 2], s[n][i]);
    }
  float sum[2] = {0.f, 0.f}, lse[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    m[r] = fmaxf(m[r], __shfl_xor_sync(0xffffffffu, m[r], 1));
    m[r] = fmaxf(m[r], __shfl_xor_sync(0xffffffffu, m[r], 2));
#pragma unroll
    for (int n = 0; n < 2; ++n) sum[r] += expf(s[n][2 * r] - m[r]) + expf(s[n][2 * r + 1] - m[r]);
    sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 1);
    sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 2);
    lse[r] = m[r] + logf(sum[r]);
  }
#pragma unroll
  for (int n = 0; n < 2; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) s[n][i] = expf(s[n][i] - lse[i / 2]);
  if (c == 0) stats[grp * kT + g] = lse[0], stats[grp * kT + g + 8] = lse[1];
  uint32_t p[4];
  frag_a_c(s[0], s[1], p);
  float o[kMaxTiles][4];
  times_rows(p, v, ld, geo.tiles, g, c, o);
  __syncwarp();  // every lane is done with q: the output is staged there
  stage(o, geo.tiles, 1.f, q, ld, g, c);
  __syncwarp();
  copy_rows<VEC>(q, ld, out + pos.out, geo.out_row, hd, lane);
}

template <int VEC>
__global__ void __launch_bounds__(128) mma_bwd(const bf16* __restrict__ qkv, const bf16* __restrict__ out,
                                               const bf16* __restrict__ dout, const float* __restrict__ stats,
                                               bf16* __restrict__ dqkv, MmaGeometry geo) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const int64_t grp = int64_t(blockIdx.x) * (blockDim.x / 32) + warp;
  if (grp >= geo.groups) return;
  const int ld = geo.ld, hd = geo.hd;
  bf16* q = reinterpret_cast<bf16*>(smem) + int64_t(warp) * (4 * kT * ld + 2 * kT * kLdp);
  bf16 *k = q + kT * ld, *v = k + kT * ld, *dO = v + kT * ld, *pm = dO + kT * ld, *dsm = pm + kT * kLdp;
  const GroupBase pos = group_base(grp, kT, geo.S, geo.H, hd);
  const int64_t base = pos.qkv, obase = pos.out, part = int64_t(geo.H) * hd;
  load_rows<VEC>(qkv + base, geo.row, q, ld, hd, lane);
  load_rows<VEC>(qkv + base + part, geo.row, k, ld, hd, lane);
  load_rows<VEC>(qkv + base + 2 * part, geo.row, v, ld, hd, lane);
  load_rows<VEC>(dout + obase, geo.out_row, dO, ld, hd, lane);
  __syncwarp();
  // rowsum(dO O) of row lane / 2, alternate runs of 8 columns a lane (O from global, dO from shared memory), then for
  // rows g and g + 8. The order of the sum is the same for every VEC, so unaligned rows give the same bits.
  float dot = 0.f;
  {
    const int t = lane / 2;
    const bf16* orow = out + obase + int64_t(t) * geo.out_row;
    for (int col = (lane % 2) * 8; col < hd; col += 16)
#pragma unroll
      for (int e = 0; e < 8; e += VEC) {
        const Pack<VEC> po = *reinterpret_cast<const Pack<VEC>*>(orow + col + e);
#pragma unroll
        for (int j = 0; j < VEC; ++j)
          dot = fmaf(__bfloat162float(dO[t * ld + col + e + j]), __bfloat162float(po.v[j]), dot);
      }
    dot += __shfl_xor_sync(0xffffffffu, dot, 1);
  }
  const float rowdot[2] = {__shfl_sync(0xffffffffu, dot, 2 * g), __shfl_sync(0xffffffffu, dot, 2 * (g + 8))};
  const float lse[2] = {stats[grp * kT + g], stats[grp * kT + g + 8]};
  float p[2][4], ds[2][4];
  times_rows_t(q, k, ld, hd, g, c, p);
  times_rows_t(dO, v, ld, hd, g, c, ds);
#pragma unroll
  for (int n = 0; n < 2; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      p[n][i] = key_of(n, i, c) < geo.valid ? expf(p[n][i] * geo.scale - lse[i / 2]) : 0.f;
      ds[n][i] = p[n][i] * (ds[n][i] - rowdot[i / 2]);
    }
  // P and dS [16 queries x 16 keys] to shared memory (their transposes are A operands below).
#pragma unroll
  for (int n = 0; n < 2; ++n) {
    const int col = 8 * n + 2 * c;
    *reinterpret_cast<uint32_t*>(pm + g * kLdp + col) = pack2(p[n][0], p[n][1]);
    *reinterpret_cast<uint32_t*>(pm + (g + 8) * kLdp + col) = pack2(p[n][2], p[n][3]);
    *reinterpret_cast<uint32_t*>(dsm + g * kLdp + col) = pack2(ds[n][0], ds[n][1]);
    *reinterpret_cast<uint32_t*>(dsm + (g + 8) * kLdp + col) = pack2(ds[n][2], ds[n][3]);
  }
  __syncwarp();
  bf16* dst = dqkv + base;
  float acc[kMaxTiles][4];
  uint32_t a[4];
  // dV = P^T dO, staged over dO once every lane has read it.
  frag_a_t(pm, kLdp, g, c, a);
  times_rows(a, dO, ld, geo.tiles, g, c, acc);
  __syncwarp();
  stage(acc, geo.tiles, 1.f, dO, ld, g, c);
  __syncwarp();
  copy_rows<VEC>(dO, ld, dst + 2 * part, geo.row, hd, lane);
  // dK = dS^T Q scale, staged over v (unused since dP).
  frag_a_t(dsm, kLdp, g, c, a);
  times_rows(a, q, ld, geo.tiles, g, c, acc);
  stage(acc, geo.tiles, geo.scale, v, ld, g, c);
  __syncwarp();
  copy_rows<VEC>(v, ld, dst + part, geo.row, hd, lane);
  // dQ = dS K scale, staged over q once every lane has read it.
  frag_a_c(ds[0], ds[1], a);
  times_rows(a, k, ld, geo.tiles, g, c, acc);
  __syncwarp();
  stage(acc, geo.tiles, geo.scale, q, ld, g, c);
  __syncwarp();
  copy_rows<VEC>(q, ld, dst, geo.row, hd, lane);
}

MmaGeometry mma_geometry(const at::Tensor& qkv, int64_t valid) {
  MmaGeometry g;
  g.S = int(qkv.size(2)), g.H = int(qkv.size(4)), g.hd = int(qkv.size(5));
  g.ld = (g.hd + 15) / 16 * 16 + 8;
  g.tiles = g.hd / 8;
  g.valid = valid < 0 ? kT : int(valid);
  g.scale = float(1.0 / std::sqrt(double(g.hd)));
  g.groups = qkv.size(0) * g.S * g.H;
  g.row = int64_t(g.S) * 3 * g.H * g.hd;
  g.out_row = int64_t(g.S) * g.H * g.hd;
  return g;
}

// Warps a block (at most 4) within the default 48 KB of shared memory, and the bytes they take.
struct Launch {
  int warps;
  size_t smem;
};
Launch launch_of(size_t per_warp) {
  const int warps = int(std::min<size_t>(4, (48 * 1024) / per_warp));
  return {warps, per_warp * warps};
}

template <typename F>
void with_vec(int hd, std::initializer_list<const void*> ptrs, F&& f) {
  bool aligned = hd % 8 == 0;
  for (const void* p : ptrs) aligned = aligned && reinterpret_cast<uintptr_t>(p) % 16 == 0;
  if (aligned)
    f(std::integral_constant<int, 8>{});
  else
    f(std::integral_constant<int, 1>{});
}

const bf16* cp(const at::Tensor& t) { return reinterpret_cast<const bf16*>(t.data_ptr()); }
bf16* mp(const at::Tensor& t) { return reinterpret_cast<bf16*>(t.data_ptr()); }

}  // namespace

bool short_attention_mma_takes(const at::Tensor& qkv) {
  if (qkv.scalar_type() != at::kBFloat16 || qkv.size(1) != kT || qkv.size(5) % 8 != 0 || qkv.size(5) > 128)
    return false;
  if (qkv.size(0) * qkv.size(2) * qkv.size(4) >= (int64_t(1) << 33)) return false;  // grid of groups / 4
  return at::cuda::getDeviceProperties(qkv.get_device())->major >= 8;
}

void short_attention_mma(const at::Tensor& qkv, int64_t valid, const at::Tensor& out, const at::Tensor& stats) {
  const c10::cuda::CUDAGuard guard(qkv.device());
  const MmaGeometry geo = mma_geometry(qkv, valid);
  const Launch l = launch_of(size_t(3) * kT * geo.ld * sizeof(bf16));
  const auto blocks = unsigned((geo.groups + l.warps - 1) / l.warps);
  with_vec(geo.hd, {qkv.data_ptr(), out.data_ptr()}, [&](auto vec) {
    constexpr int VEC = decltype(vec)::value;
    mma_fwd<VEC><<<blocks, 32 * l.warps, l.smem, at::cuda::getCurrentCUDAStream()>>>(cp(qkv), mp(out),
                                                                                      stats.data_ptr<float>(), geo);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void short_attention_mma_backward(const at::Tensor& dout, const at::Tensor& qkv, const at::Tensor& out,
                                  const at::Tensor& stats, int64_t valid, const at::Tensor& dqkv) {
  const c10::cuda::CUDAGuard guard(qkv.device());
  const MmaGeometry geo = mma_geometry(qkv, valid);
  const Launch l = launch_of((size_t(4) * kT * geo.ld + 2 * kT * kLdp) * sizeof(bf16));
  const auto blocks = unsigned((geo.groups + l.warps - 1) / l.warps);
  with_vec(geo.hd, {qkv.data_ptr(), out.data_ptr(), dout.data_ptr(), dqkv.data_ptr()}, [&](auto vec) {
    constexpr int VEC = decltype(vec)::value;
    mma_bwd<VEC><<<blocks, 32 * l.warps, l.smem, at::cuda::getCurrentCUDAStream()>>>(
        cp(qkv), cp(out), cp(dout), stats.data_ptr<float>(), mp(dqkv), geo);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace opendit::kernels::cuda_impl
