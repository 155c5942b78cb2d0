// Multi-head attention for the models: self-attention from a packed qkv projection and cross-attention to a
// padded key sequence (caption tokens), both on at::scaled_dot_product_attention, and the choice of its GPU kernel.
// Sequence parallelism is a setting of the attention (models/layers/seq_parallel.hpp).
#pragma once
#include <ATen/ATen.h>

#include <string>

namespace opendit::models::layers {

// Self-attention over the tokens of each sample: qkv [N, T, 3 D] as the fused qkv linear writes it (q, then k, then
// v; within each, head h at channels [h hd, (h + 1) hd)) -> [N, T, D], heads concatenated, before the output
// projection. Scale hd^-1/2. valid >= 0: only the first `valid` tokens are keys (the rest are sequence-parallel
// padding; a mask then goes to the kernel), -1: every token.
// On the GPU with the attention setting "auto", sequences of up to 64 tokens (float32/bfloat16, hd <= 128) run
// kernels::short_attention's kernel (masked or not). Otherwise,
// on the GPU without a mask, in bfloat16/float16 with a head dim cuDNN takes, and with the attention setting "auto"
// or "cudnn", it runs kernels::packed_attention (cuDNN through its frontend; with or without autograd, so a
// recomputed block repeats its forward), whose backward writes the packed [N, T, 3 D] gradient directly; otherwise
// at::scaled_dot_product_attention.
at::Tensor self_attention(const at::Tensor& qkv, int64_t heads, int64_t valid = -1);

// Self-attention across the frames of each position, for tokens laid out as T frames of S positions:
// qkv [N, T S, 3 D] (the qkv linear's output on [N, T S, D]) -> [N, T S, D] in the same layout, where each position
// s attends over its T frames (keys t >= valid hidden; -1: none). kernels::short_attention reads and writes this
// layout in place, so no [N, S, T] transpose copies are made before the qkv linear or after the output projection;
// on the CPU it is that op's definition. On a GPU where the kernel does not take the shape (T > 64, hd > 128, other
// dtypes) or the attention setting is not "auto", the frames are transposed into a batch of sequences for
// self_attention.
at::Tensor frame_attention(const at::Tensor& qkv, int64_t frames, int64_t heads, int64_t valid = -1);

// Cross-attention of queries q [N, T, D] to keys and values kv [N, L, 2 D] (k, then v: the packed kv linear),
// where key_mask [N, L] (bool, true = attend) hides each sample's padding -> [N, T, D]. Each sample needs at least one
// valid key (an all-padding sample would give NaN). The mask is passed to the attention kernel as a broadcast
// [N, 1, 1, L] view: no per-head or per-query copy is made.
// groups > 1: each sample's T queries are G groups of T / G (STDiT: the frames) that attend to the same keys as
// separate batch entries. The result is the same; the kernels' backward then reduces dk and dv over G times more
// thread blocks (cuDNN's backward parallelises over keys, of which a caption has only ~120): on an H100/H200 at
// STDiT-XL/2 16x512^2 the backward takes half the time.
at::Tensor cross_attention(const at::Tensor& q, const at::Tensor& kv, const at::Tensor& key_mask, int64_t heads,
                           int64_t groups = 1);

// Which kernel at::scaled_dot_product_attention runs on the GPU (a process-wide torch setting).
// "auto": cuDNN, then flash, memory-efficient, math (on the H100 at head dim 72 and 256 tokens cuDNN's forward is
// the fastest); "cudnn" | "flash" | "efficient" | "math": that one first, the rest in the auto order after it.
// torch takes the first backend in the order that supports the inputs (dtype, head dim, mask, ...), so every
// choice still runs everywhere. Also decides whether self_attention may train through kernels::packed_attention
// ("auto", "cudnn"; the default before any call) or not (the others), and whether short sequences take
// kernels::short_attention ("auto" only). Throws opendit::Error for an unknown name.
void set_attention_backend(const std::string& name);

}  // namespace opendit::models::layers
