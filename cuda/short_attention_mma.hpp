// short_attention's tensor-core kernels (cuda/short_attention_mma.cu), which short_attention.cu's launchers take
// for the shapes they cover. Internal to cuda/: callers use kernels::short_attention (ops.hpp section j).
#pragma once
#include <ATen/ATen.h>

namespace opendit::kernels::cuda_impl {

#ifdef __CUDACC__
// Offsets of the row 0 of group g = (b S + s) H + h in qkv [B, T, S, 3, H, hd] and in out [B, T, S, H, hd].
struct GroupBase {
  int64_t qkv, out;
};
__device__ __forceinline__ GroupBase group_base(int64_t g, int T, int S, int H, int hd) {
  const int64_t bs = g / H, h = g % H, b = bs / S, s = bs % S;
  return {(b * T * S + s) * 3 * H * hd + h * hd, (b * T * S + s) * H * hd + h * hd};
}
#endif

// Whether the tensor-core kernels take qkv [B, T, S, 3, H, hd] (contiguous, on a GPU): bfloat16, T = 16, hd a
// multiple of 8 up to 128, a device of compute capability 8.0 or later.
bool short_attention_mma_takes(const at::Tensor& qkv);
// Write out [B, T, S, H, hd] and stats [B, S, H, T] (float32), allocated by the caller.
void short_attention_mma(const at::Tensor& qkv, int64_t valid, const at::Tensor& out, const at::Tensor& stats);
// Write dqkv (qkv's shape), allocated by the caller.
void short_attention_mma_backward(const at::Tensor& dout, const at::Tensor& qkv, const at::Tensor& out,
                                  const at::Tensor& stats, int64_t valid, const at::Tensor& dqkv);

}  // namespace opendit::kernels::cuda_impl
