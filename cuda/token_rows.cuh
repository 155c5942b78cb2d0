// Shared pieces of the kernels over token tensors [N, T, D] with per-sample vectors [N, D] (norm_modulate.cu,
// gated_residual.cu): vector loads of 16 bytes, a block-wide sum, the "row team" and "warp-per-row" layouts, and the
// launchers' choice among them (launch_rows).
//
// Row team: one thread block walks the rows (tokens) of one chunk of one sample. Thread i owns the columns of the
// vectors i, i + blockDim.x, ... (PER of them, VEC elements each), in every row, so it can hold a row in registers
// and accumulate sums over tokens per column without talking to other threads; only statistics over D need the
// whole block. Sums over tokens end in a float32 buffer of per-chunk partials [K, N, chunks, D] that finish_sums()
// adds up in a fixed order (deterministic, and never across samples).
#pragma once
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>

namespace opendit::kernels::cuda_impl::token_rows {

// ---- element access ------------------------------------------------------------------------------------------------
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// VEC consecutive elements, aligned so that one (or for 32 bytes, two) 16-byte accesses move them.
constexpr int align_of(int bytes) { return bytes < 16 ? bytes : 16; }
template <typename T, int VEC>
struct alignas(align_of(int(sizeof(T)) * VEC)) Pack {
  T v[VEC];
};

// Elements of A in 16 bytes: the pack of rows whose length and addresses allow it (else packs of 1).
template <typename A>
constexpr int pack_of() {
  return 16 / int(sizeof(A));
}

template <typename T, int VEC>
__device__ __forceinline__ void load(const T* p, float (&out)[VEC]) {
  const Pack<T, VEC> pk = *reinterpret_cast<const Pack<T, VEC>*>(p);
#pragma unroll
  for (int k = 0; k < VEC; ++k) out[k] = to_float(pk.v[k]);
}

template <typename T, int VEC>
__device__ __forceinline__ void store(T* p, const float (&in)[VEC]) {
  Pack<T, VEC> pk;
#pragma unroll
  for (int k = 0; k < VEC; ++k) pk.v[k] = from_float<T>(in[k]);
  *reinterpret_cast<Pack<T, VEC>*>(p) = pk;
}

// ---- block-wide sums -----------------------------------------------------------------------------------------------
struct Two {
  float a, b;
};
__device__ __forceinline__ Two operator+(Two x, Two y) { return {x.a + y.a, x.b + y.b}; }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ Two warp_sum(Two v) { return {warp_sum(v.a), warp_sum(v.b)}; }

// Sum of v over the block (blockDim.x a multiple of 32, every thread calls); every thread gets the same total.
// buf holds 2 x 32 slots used in turn (flip), so one barrier per call is enough: a thread writes a half only after
// the barrier of the previous call, which every thread reaches after it has read that half two calls ago.
template <typename V>
__device__ __forceinline__ V block_sum(V v, V* buf, int& flip) {
  v = warp_sum(v);
  V* half = buf + 32 * flip;
  flip ^= 1;
  if ((threadIdx.x & 31) == 0) half[threadIdx.x >> 5] = v;
  __syncthreads();
  V total = half[0];
  for (int w = 1; w < int(blockDim.x >> 5); ++w) total = total + half[w];
  return total;
}

// ---- warp-per-row layout -------------------------------------------------------------------------------------------
// One warp owns a row of nvec packs (VEC elements each); lane l holds packs l + 32 j, j < NV, so a row's loads are
// all issued before its warp-shuffle reductions and no block barrier sits in the row loop. kRowWarps warps a block.
constexpr int kRowWarps = 4;

// Packs per lane for rows of nvec packs: the smallest of {1, ..., 6, 8, 9, 12} >= ceil(nvec / 32) (DiT widths 384,
// 768, 1024, 1152 need no idle slot), or 0 when the row is too wide for the warp layout (row teams then).
inline int nv_for(int64_t nvec) {
  const int64_t need = (nvec + 31) / 32;
  for (int nv : {1, 2, 3, 4, 5, 6, 8, 9, 12})
    if (need <= nv) return nv;
  return 0;
}
template <typename Fn>
void with_nv(int nv, Fn&& fn) {
  switch (nv) {
    case 1: return fn(std::integral_constant<int, 1>{});
    case 2: return fn(std::integral_constant<int, 2>{});
    case 3: return fn(std::integral_constant<int, 3>{});
    case 4: return fn(std::integral_constant<int, 4>{});
    case 5: return fn(std::integral_constant<int, 5>{});
    case 6: return fn(std::integral_constant<int, 6>{});
    case 8: return fn(std::integral_constant<int, 8>{});
    case 9: return fn(std::integral_constant<int, 9>{});
    case 12: return fn(std::integral_constant<int, 12>{});
  }
  TORCH_CHECK(false, "token_rows: no warp-per-row kernel for ", nv, " packs per lane");
}

// Column sums over tokens in the warp layout live in shared memory, not registers (which hold the rows in flight):
// warp w owns K sums of NV * VEC * 32 floats, slot ((j * VEC + e) * 32 + lane) for element e of pack lane + 32 j
// (conflict-free). Bytes of dynamic shared memory for a block; the launchers use the warp layout only when this is
// at most kWarpSumsBytes (the default limit, no opt-in needed).
constexpr size_t kWarpSumsBytes = 48 * 1024;
inline size_t warp_sums_bytes(int K, int nv, int vec) { return size_t(kRowWarps) * K * nv * vec * 32 * sizeof(float); }

template <int K, int VEC, int NV>
__device__ __forceinline__ float* warp_sums(float* buf, int k) {
  return buf + ((threadIdx.x >> 5) * K + k) * (NV * VEC * 32) + (threadIdx.x & 31);
}

// part[k, n, c, d] = sum over warps w (in order) of warp w's sum k at column d ([K, N, chunks, D] float32). Every
// thread of the block calls, after its last update of its warp's sums.
template <int K, int VEC, int NV>
__device__ __forceinline__ void block_column_sums(const float* buf, float* part, int64_t N, int64_t n, int64_t chunks,
                                                  int64_t c, int64_t D) {
  __syncthreads();
  constexpr int kSlots = NV * VEC * 32;
  for (int64_t i = threadIdx.x; i < K * D; i += blockDim.x) {
    const int64_t k = i / D, d = i - k * D, v = d / VEC, e = d - v * VEC;
    const int64_t slot = ((v / 32) * VEC + e) * 32 + v % 32;
    float s = 0;
    for (int w = 0; w < kRowWarps; ++w) s += buf[(w * K + k) * kSlots + slot];
    part[((k * N + n) * chunks + c) * D + d] = s;
  }
}

// ---- host side -----------------------------------------------------------------------------------------------------
inline bool aligned(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// True when an [rows, D] view (row stride in elements) of t can be read in packs of vec elements.
inline bool packs_fit(const at::Tensor& t, int64_t row_stride, int vec) {
  const int bytes = align_of(int(t.element_size()) * vec);
  return aligned(t.data_ptr(), bytes) && (row_stride * t.element_size()) % bytes == 0;
}

// Threads per block (a multiple of 32, at most kMaxTeam) and packs per thread (a power of two up to max_per) for
// rows of nvec packs: the fewest packs per thread that need at most 256 threads, else max_per packs on up to
// kMaxTeam threads. per == 0: the row is too wide for registers (the caller falls back to the ATen definition).
// Kernels keep at most 5 x 16 floats of row data per thread, which fits the 128 registers of 512-thread blocks.
constexpr int kMaxTeam = 512;
struct Team {
  int threads = 0, per = 0;
};
inline int round_warps(int64_t threads) { return int(std::max<int64_t>(32, (threads + 31) / 32 * 32)); }
inline Team team_for(int64_t nvec, int max_per) {
  for (int per = 1; per <= max_per; per *= 2)
    if ((nvec + per - 1) / per <= 256) return {round_warps((nvec + per - 1) / per), per};
  const int64_t threads = (nvec + max_per - 1) / max_per;
  if (threads <= kMaxTeam) return {round_warps(threads), max_per};
  return {};
}

// Calls fn(std::integral_constant<int, PER>) for per in {1, 2, 4, 8, 16} with PER * VEC <= 16 (16 floats a thread).
template <int VEC, typename Fn>
void with_per(int per, Fn&& fn) {
  switch (per) {
    case 1:
      return fn(std::integral_constant<int, 1>{});
    case 2:
      if constexpr (2 * VEC <= 16) return fn(std::integral_constant<int, 2>{});
      break;
    case 4:
      if constexpr (4 * VEC <= 16) return fn(std::integral_constant<int, 4>{});
      break;
    case 8:
      if constexpr (8 * VEC <= 16) return fn(std::integral_constant<int, 8>{});
      break;
    case 16:
      if constexpr (16 * VEC <= 16) return fn(std::integral_constant<int, 16>{});
      break;
  }
  TORCH_CHECK(false, "token_rows: no kernel for ", per, " packs of ", VEC, " per thread");
}

// The element types of a launch: activations A (float or bfloat16) and per-sample vectors P (A's type, or float32
// when the caller's vectors have another dtype and were converted: see params_like).
template <typename A, typename P>
struct Types {
  using Act = A;
  using Par = P;
};
template <typename Fn>
void with_types(const at::Tensor& x, const at::Tensor& param, Fn&& fn) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "fused kernels take float32 or bfloat16 tokens, got ", x.scalar_type());
  if (x.scalar_type() == at::kFloat) return fn(Types<float, float>{});
  if (param.scalar_type() == at::kBFloat16) return fn(Types<__nv_bfloat16, __nv_bfloat16>{});
  return fn(Types<__nv_bfloat16, float>{});
}

// A per-sample vector [N, D] as the kernels read it: x's dtype kept, any other converted to float32 (tiny).
inline at::Tensor params_like(const at::Tensor& p, const at::Tensor& x) {
  at::Tensor q = p.scalar_type() == x.scalar_type() ? p : p.to(at::kFloat).contiguous();
  TORCH_CHECK(q.dim() == 2 && q.stride(1) == 1 && q.device() == x.device(),
              "per-sample vectors must be [N, D] with unit stride along D on the tokens' device");
  return q;
}
// Row stride in elements (0 for one sample, whose stride torch may leave arbitrary).
inline int64_t row_stride(const at::Tensor& p) { return p.size(0) == 1 ? 0 : p.stride(0); }

// ---- the launchers' choice of kernel -------------------------------------------------------------------------------
// A tensor that a kernel reads or writes in packs, as [rows, D] with this row stride in elements.
struct PackedView {
  const at::Tensor& t;
  int64_t row_stride;
};

// Calls fn(Types<A, P>, std::integral_constant<int, VEC>) for tokens x [N, T, D] and a per-sample vector param
// (with_types): VEC = pack_of<A>() when D and every view allow packs of 16 bytes (packs_fit), else 1.
template <typename Fn>
void with_vec(const at::Tensor& x, const at::Tensor& param, std::initializer_list<PackedView> views, Fn&& fn) {
  with_types(x, param, [&](auto types) {
    constexpr int V = pack_of<typename decltype(types)::Act>();
    bool packed = x.size(2) % V == 0;
    for (const PackedView& v : views) packed = packed && packs_fit(v.t, v.row_stride, V);
    if (packed) return fn(types, std::integral_constant<int, V>{});
    fn(types, std::integral_constant<int, 1>{});
  });
}

// Launches the kernel for tokens x [N, T, D] in with_vec's packs: packed rows of at most 12 x 32 packs (nv_for)
// whose `sums` column sums over tokens (0: none) fit kWarpSumsBytes take one warp a row, warp(types, vec, nv, smem)
// with smem = warp_sums_bytes(sums, nv, VEC); other rows take a row team, team(types, vec, per, threads) (team_for).
// types, vec, nv and per are the constants of with_vec, with_nv and with_per. Returns false, having launched
// nothing, when the row is too wide for a team: the caller then runs the reference.
template <typename WarpFn, typename TeamFn>
bool launch_rows(const at::Tensor& x, const at::Tensor& param, std::initializer_list<PackedView> views, int sums,
                 WarpFn&& warp, TeamFn&& team) {
  const int64_t D = x.size(2);
  bool fits = true;
  with_vec(x, param, views, [&](auto types, auto vec) {
    constexpr int VEC = decltype(vec)::value;
    if constexpr (VEC > 1) {  // packed (pack_of is 4 or 8)
      const int nv = nv_for(D / VEC);
      const size_t smem = warp_sums_bytes(sums, nv, VEC);
      if (nv > 0 && smem <= kWarpSumsBytes) return with_nv(nv, [&](auto nvc) { warp(types, vec, nvc, smem); });
    }
    const Team tm = team_for(D / VEC, 16 / VEC);
    if (tm.per == 0) return void(fits = false);
    with_per<VEC>(tm.per, [&](auto per) { team(types, vec, per, tm.threads); });
  });
  return fits;
}

// Resident blocks of `kernel` per SM at `threads` per block on the current device (cached: the query costs
// microseconds, and a process launches a handful of (kernel, width) pairs).
// smem: the launch's dynamic shared memory (the warp kernels' column sums), which can bound residency too.
template <typename Kernel>
int blocks_per_sm(Kernel kernel, int threads, size_t smem = 0) {
  static std::mutex mutex;
  static std::map<std::tuple<const void*, int, size_t, int>, int> cache;
  const auto key =
      std::make_tuple(reinterpret_cast<const void*>(kernel), threads, smem, int(at::cuda::current_device()));
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  int blocks = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, smem));
  return cache[key] = std::max(blocks, 1);
}

// Splits the T tokens of each of N samples into chunks so that the N * chunks blocks fill the GPU at most `waves`
// times: one wave where each block leaves partial sums (fewer partials, and blocks of equal length end together).
struct Chunks {
  int64_t count, rows;  // chunks per sample, tokens per chunk (the last may have fewer)
};
template <typename Kernel>
Chunks chunks_for(Kernel kernel, int threads, int64_t N, int64_t T, int waves, size_t smem = 0) {
  const int64_t wave =
      int64_t(blocks_per_sm(kernel, threads, smem)) * at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t want = std::min<int64_t>(T, std::max<int64_t>(1, waves * wave / N));
  const int64_t rows = (T + want - 1) / want;
  return {(T + rows - 1) / rows, rows};
}

inline dim3 grid_of(int64_t blocks) {
  TORCH_CHECK(blocks >= 1 && blocks <= INT32_MAX, "token_rows: ", blocks, " blocks do not fit a grid");
  return dim3(unsigned(blocks));
}

// out[k][n, d] = sum_c part[k, n, c, d] for k < K (at most 2); part [K, N, chunks, D] float32, out [N, D].
template <typename O>
__global__ void finish_sums_kernel(const float* part, O* out0, O* out1, int K, int64_t N, int64_t chunks, int64_t D) {
  const int64_t total = K * N * D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = i / (N * D), nd = i % (N * D), n = nd / D, d = nd % D;
    const float* p = part + ((k * N + n) * chunks) * D + d;
    float s = 0;
    for (int64_t c = 0; c < chunks; ++c) s += p[c * D];
    (k == 0 ? out0 : out1)[nd] = from_float<O>(s);
  }
}

// Sums the partials into K tensors [N, D] of dtype `dtype`.
inline void finish_sums(const at::Tensor& part, at::ScalarType dtype, at::Tensor* out0, at::Tensor* out1) {
  const int K = int(part.size(0));
  const int64_t N = part.size(1), chunks = part.size(2), D = part.size(3);
  const bool direct = dtype == at::kFloat || dtype == at::kBFloat16;  // else float32, then converted
  const auto opts = part.options().dtype(direct ? dtype : at::kFloat);
  *out0 = at::empty({N, D}, opts);
  if (K > 1) *out1 = at::empty({N, D}, opts);
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((K * N * D + threads - 1) / threads, 65536);
  auto stream = at::cuda::getCurrentCUDAStream();
  if (opts.dtype() == at::kBFloat16) {
    auto* o1 = K > 1 ? reinterpret_cast<__nv_bfloat16*>(out1->data_ptr()) : nullptr;
    finish_sums_kernel<<<blocks, threads, 0, stream>>>(
        part.data_ptr<float>(), reinterpret_cast<__nv_bfloat16*>(out0->data_ptr()), o1, K, N, chunks, D);
  } else {
    float* o1 = K > 1 ? out1->data_ptr<float>() : nullptr;
    finish_sums_kernel<<<blocks, threads, 0, stream>>>(part.data_ptr<float>(), out0->data_ptr<float>(), o1, K, N,
                                                       chunks, D);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!direct) {
    *out0 = out0->to(dtype);
    if (K > 1) *out1 = out1->to(dtype);
  }
}

}  // namespace opendit::kernels::cuda_impl::token_rows
