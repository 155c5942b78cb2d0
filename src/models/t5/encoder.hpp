// The encoder of T5 (transformers' T5EncoderModel, parameter names as it saves them): caption token ids -> one
// embedding per token, what Open-Sora conditions its video models on (T5 v1.1 XXL, 120 tokens).
//   pre-norm blocks: x += o(attention(rms(x))); x += wo(gelu_tanh(wi_0 rms(x)) * wi_1 rms(x)); rms(x) at the end
//   attention scores are not scaled by 1/sqrt(d_kv); a learned relative-position bias of block 0 is shared by all.
// In bf16 the weights and matrix products are bf16 while the residual stream and the norms stay float32, so the
// output is closer to float32's than transformers' all-bf16 run (tests and bench/RESULTS.md give both errors).
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <string>
#include <vector>

#include "models/t5/config.hpp"
#include "models/tensor_set.hpp"

namespace opendit::models::t5 {

class T5Encoder {
 public:
  explicit T5Encoder(const T5Config& config);  // tensors on the meta device until load() or init_random()

  const T5Config& config() const { return config_; }
  const TensorSet& weights() const { return w_; }
  // A T5EncoderModel state dict, or a whole T5 (T5ForConditionalGeneration: its decoder.* and lm_head.weight are
  // not needed and skipped). The embedding may be named shared.weight or encoder.embed_tokens.weight.
  void load(const std::map<std::string, at::Tensor>& sd, const std::string& origin, const at::TensorOptions& options);
  // Random weights drawn as T5 initialises them (benchmarks, tests without files), seeded.
  void init_random(uint64_t seed, const at::TensorOptions& options);

  // ids [B, L] int64, mask [B, L] (nonzero at valid tokens; padding keys are not attended to) -> [B, L, d_model]
  // float32, every position (padding positions too, as transformers returns them).
  at::Tensor forward(const at::Tensor& ids, const at::Tensor& mask) const;
  // The relative-position bucket of every (query, key) pair of a length-L sequence: [L, L] int64.
  at::Tensor position_buckets(int64_t length) const;

 private:
  void fuse();  // q|k|v and wi_0|wi_1 into one matrix each (one GEMM instead of three and two)

  T5Config config_;
  TensorSet w_;
  std::vector<at::Tensor> qkv_, wi_;  // per layer: [3 inner, d_model], [2 d_ff, d_model] (gated)
};

}  // namespace opendit::models::t5
