#include "models/layers/attention.hpp"

#include <ATen/Context.h>
#include <ATen/SDPBackend.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "core/error.hpp"
#include "cuda/ops.hpp"

namespace opendit::models::layers {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Whether the attention setting lets self_attention train through kernels::packed_attention (cuDNN): "auto" and
// "cudnn" do; an explicit other backend keeps at::scaled_dot_product_attention.
std::atomic<bool> packed_cudnn_allowed{true};
// Whether it lets self_attention take kernels::short_attention's kernel for short sequences: "auto" only.
std::atomic<bool> short_kernel_allowed{true};

// Self-attention on the packed qkv [N, T, 3, H, hd] whose backward hands the qkv linear one packed gradient
// (kernels::packed_attention_backward) -> [N, T, H, hd].
struct PackedAttentionFn : torch::autograd::Function<PackedAttentionFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& qkv) {
    auto r = kernels::packed_attention(qkv);
    ctx->save_for_backward({qkv, r.out, r.stats});
    return r.out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto s = ctx->get_saved_variables();
    return {kernels::packed_attention_backward(grad_out[0].contiguous(), s[0], s[1], s[2])};
  }
};

// Attention along the middle axis of qkv [B, T, S, 3, H, hd] (kernels::short_attention) -> [B, T, S, H, hd], whose
// backward hands the qkv linear one packed gradient.
struct ShortAttentionFn : torch::autograd::Function<ShortAttentionFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& qkv, int64_t valid) {
    auto r = kernels::short_attention(qkv, valid);
    ctx->save_for_backward({qkv, r.out, r.stats});
    ctx->saved_data["valid"] = valid;
    return r.out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto s = ctx->get_saved_variables();
    return {kernels::short_attention_backward(grad_out[0], s[0], s[1], s[2], ctx->saved_data["valid"].toInt()),
            at::Tensor()};
  }
};

}  // namespace

at::Tensor frame_attention(const at::Tensor& qkv, int64_t frames, int64_t heads, int64_t valid) {
  TORCH_CHECK(qkv.dim() == 3 && frames >= 1 && heads >= 1 && qkv.size(1) % frames == 0 &&
                  qkv.size(2) % (3 * heads) == 0,
              "frame_attention: qkv must be [N, ", frames, " S, 3 D] with D a multiple of ", heads, ", got ",
              qkv.sizes());
  const int64_t N = qkv.size(0), T = frames, S = qkv.size(1) / T, D = qkv.size(2) / 3, hd = D / heads;
  const at::Tensor packed = qkv.contiguous().view({N, T, S, 3, heads, hd});
  if (!qkv.is_cuda() || (short_kernel_allowed.load() && kernels::short_attention_fused(packed)))
    return ShortAttentionFn::apply(packed, valid).view({N, T * S, D});
  // Sequences the kernel does not take: positions as a batch of T-token sequences (two transpose copies).
  at::Tensor seq = packed.view({N, T, S, 3 * D}).transpose(1, 2).reshape({N * S, T, 3 * D});
  return self_attention(seq, heads, valid).view({N, S, T, D}).transpose(1, 2).reshape({N, T * S, D});
}

at::Tensor self_attention(const at::Tensor& qkv, int64_t heads, int64_t valid) {
  const int64_t N = qkv.size(0), T = qkv.size(1), D = qkv.size(2) / 3, hd = D / heads;
  // On the GPU without a mask: the packed op, whose backward writes dq, dk, dv into one [N, T, 3 D] gradient (the
  // path below stacks three separate ones). Forwards without autograd take it too, so that a recomputed block
  // (activation checkpointing) repeats its first forward bit for bit. Its cuDNN graphs are built on the first
  // (eager) call.
  if (qkv.is_cuda() && short_kernel_allowed.load()) {  // short sequences (STDiT's, Latte's frames): one kernel
    const at::Tensor packed = qkv.contiguous().view({N, T, 1, 3, heads, hd});
    if (kernels::short_attention_fused(packed)) return ShortAttentionFn::apply(packed, valid).view({N, T, D});
  }
  if (qkv.is_cuda() && (valid < 0 || valid == T) && packed_cudnn_allowed.load()) {
    const at::Tensor packed = qkv.contiguous().view({N, T, 3, heads, hd});
    if (kernels::packed_attention_uses_cudnn(packed)) return PackedAttentionFn::apply(packed).view({N, T, D});
  }
  // unbind (not indexing): its backward stacks dq, dk, dv straight into one contiguous [N, T, 3, H, hd] gradient,
  // where three index backwards would each zero-fill and copy a full-size buffer and then be summed.
  auto q_k_v = qkv.view({N, T, 3, heads, hd}).unbind(2);                                   // 3 x [N, T, H, hd]
  at::Tensor mask;  // [1, 1, 1, T] bool: padding keys hidden
  if (valid >= 0 && valid < T)
    mask = (at::arange(T, qkv.options().dtype(at::kLong)) < valid).view({1, 1, 1, T});
  at::Tensor a = at::scaled_dot_product_attention(q_k_v[0].transpose(1, 2), q_k_v[1].transpose(1, 2),
                                                  q_k_v[2].transpose(1, 2),
                                                  mask.defined() ? std::optional<at::Tensor>(mask) : std::nullopt);
  return a.transpose(1, 2).reshape({N, T, D});                                             // [N, T, D]
}

at::Tensor cross_attention(const at::Tensor& q, const at::Tensor& kv, const at::Tensor& key_mask, int64_t heads,
                           int64_t groups) {
  const int64_t N = q.size(0), T = q.size(1), D = q.size(2), L = kv.size(1), hd = D / heads, G = groups;
  TORCH_CHECK(kv.dim() == 3 && kv.size(0) == N && kv.size(2) == 2 * D, "cross_attention: kv must be [", N,
              ", L, ", 2 * D, "], got ", kv.sizes());
  TORCH_CHECK(key_mask.dim() == 2 && key_mask.size(0) == N && key_mask.size(1) == L,
              "cross_attention: key_mask must be [", N, ", ", L, "], got ", key_mask.sizes());
  TORCH_CHECK(G >= 1 && T % G == 0, "cross_attention: ", T, " queries do not split into ", G, " groups");
  // k, v [N G, H, L, hd]: each sample's keys repeated for its G query groups (a copy of L tokens, not of queries).
  auto k_v = kv.view({N, 1, L, 2, heads, hd}).expand({N, G, L, 2, heads, hd}).reshape({N * G, L, 2, heads, hd})
                 .unbind(2);                                                              // 2 x [N G, L, H, hd]
  const at::Tensor mask = key_mask.to(at::kBool).view({N, 1, 1, 1, L}).expand({N, G, 1, 1, L})
                              .reshape({N * G, 1, 1, L});                                  // broadcast over H, T
  at::Tensor a = at::scaled_dot_product_attention(q.reshape({N * G, T / G, heads, hd}).transpose(1, 2),
                                                  k_v[0].transpose(1, 2), k_v[1].transpose(1, 2), mask);
  return a.transpose(1, 2).reshape({N, T, D});                                             // [N, T, D]
}

void set_attention_backend(const std::string& name) {
  using B = at::SDPBackend;
  std::vector<B> order = {B::cudnn_attention, B::flash_attention, B::efficient_attention, B::math, B::overrideable};
  if (name != "auto") {
    B first = name == "cudnn"       ? B::cudnn_attention
              : name == "flash"     ? B::flash_attention
              : name == "efficient" ? B::efficient_attention
              : name == "math"      ? B::math
                                    : B::error;
    if (first == B::error)
      throw Error(cat("model.attention = \"", name, "\": expected auto, cudnn, flash, efficient or math"));
    order.erase(std::find(order.begin(), order.end(), first));
    order.insert(order.begin(), first);
  }
  packed_cudnn_allowed.store(order.front() == B::cudnn_attention);
  short_kernel_allowed.store(name == "auto");
  std::vector<int64_t> ids;
  for (B b : order) ids.push_back(static_cast<int64_t>(b));
  auto& ctx = at::globalContext();
  ctx.setSDPUseCuDNN(true);
  ctx.setSDPUseFlash(true);
  ctx.setSDPUseMemEfficient(true);
  ctx.setSDPUseMath(true);
  ctx.setSDPPriorityOrder(ids);
}

}  // namespace opendit::models::layers
