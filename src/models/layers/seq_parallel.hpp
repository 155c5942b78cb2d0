// Sequence parallelism as a setting of the models' attention: the sp group's communicator (parallel/communicator.hpp,
// an interface: models never see MPI or NCCL) and the algorithm. Each rank of an sp group holds 1/P of a sample's
// tokens; the collectives below are autograd functions, so the backward pass communicates too.
//
//   ulysses  (DeepSpeed-Ulysses) q, k, v all-to-all from sequence shards to head shards, full-sequence attention on
//            H/P heads, the output all-to-all back: per attention 3 M/P + M/P bytes leave each rank's buffers
//   fastseq  (OpenDiT) the attention input all-gathered (M/P) in chunks overlapped with the GEMM of the local heads'
//            q, k, v; attention on H/P heads; the output all-to-all back (M/P)
//   dsp      (Dynamic Sequence Parallelism, video models) the activation [N, T, S, D] is sharded on T or on S, the
//            attention over the other axis is local; one all-to-all switches the axis before the temporal
//            attention and one switches back (2 M/P per block)
// M: the bytes of one full activation [N, tokens, D]. Sizes that do not divide by P are padded: extra tokens are
// masked out of every attention as keys and cut off after the final gather; extra heads are zero and dropped. The
// result equals P = 1 up to rounding.
//
// Gradients: a replicated tensor's gradient is summed over the sp group by the trainer. So sp_split's backward puts
// the shard's gradient into zeros of the full size (the group's sum is the whole gradient), and sp_gather's backward
// takes the own shard of a gradient that every rank computed alike, times P (the trainer divides the loss by P, so
// that parameters after the gather, computed on every rank, also sum to their gradient).
#pragma once
#include <ATen/ATen.h>

#include <string>

#include "parallel/communicator.hpp"

namespace opendit::models::layers {

enum class SpMode { Ulysses, FastSeq, Dsp };
SpMode parse_sp_mode(const std::string& name);  // "ulysses" | "fastseq" | "dsp"; else opendit::Error
const char* sp_mode_name(SpMode mode);

struct SeqParallel {
  parallel::Communicator* comm = nullptr;  // the sp group; null (or a group of 1): no sequence parallelism
  SpMode mode = SpMode::Ulysses;
  int chunks = 2;  // fastseq: the all-gather in this many pieces, each overlapped with the previous piece's GEMM

  bool on() const { return comm != nullptr && comm->size() > 1; }
  int size() const { return on() ? comm->size() : 1; }
  int rank() const { return on() ? comm->rank() : 0; }
  // n rounded up to a multiple of the group size, and the share of one rank.
  int64_t padded(int64_t n) const { return (n + size() - 1) / size() * size(); }
  int64_t local(int64_t n) const { return padded(n) / size(); }
};

// x full (the same on every rank) -> this rank's shard along `dim`, after padding dim with zeros to a multiple of P.
at::Tensor sp_split(const at::Tensor& x, int64_t dim, const SeqParallel& sp);
// Shards along `dim` -> the whole (rank after rank), cut to its first `length` entries.
at::Tensor sp_gather(const at::Tensor& x, int64_t dim, int64_t length, const SeqParallel& sp);
// The shards move from `scatter_dim` to `gather_dim`: x [.., A, .., B/P, ..] -> [.., A/P, .., B, ..] (A divisible
// by P). Backward: the inverse all-to-all.
at::Tensor sp_all_to_all(const at::Tensor& x, int64_t scatter_dim, int64_t gather_dim, const SeqParallel& sp);

// Self-attention over sequences sharded on dim 1 across the group (ulysses): qkv [N, T/P, 3 D] (this rank's tokens,
// q, k, v of every head) -> [N, T/P, D]. `valid`: the real sequence length (keys beyond it are padding), -1: all.
at::Tensor ulysses_attention(const at::Tensor& qkv, int64_t heads, int64_t valid, const SeqParallel& sp);
// The same with fastseq: x [N, T/P, D] (the attention input, before the qkv projection w [3 D, D], b [3 D]) ->
// [N, T/P, D].
at::Tensor fastseq_attention(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t heads,
                             int64_t valid, const SeqParallel& sp);

// The self-attention of a block: q, k, v = x' w^T + b with x' = LN(x) (1 + scale) + shift (shift undefined: x' = x),
// x [N, T', D] -> [N, T', D] before the output projection. sp off: the sequence is local (T' = T; the fused
// norm_modulate_linear); ulysses / fastseq: T' = T/P, this rank's shard of a sequence spread over the group.
// valid: the real sequence length (padding keys hidden), -1: all. residual (optional): set to what the caller's
// residual path reads in place of x (norm_modulate_linear_res's pass-through where the fused projection runs, so
// that the residual's gradient joins dx in its LayerNorm backward; else x).
at::Tensor projected_self_attention(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale,
                                    const at::Tensor& w, const at::Tensor& b, int64_t heads, int64_t valid,
                                    const SeqParallel& sp, at::Tensor* residual = nullptr);

}  // namespace opendit::models::layers
