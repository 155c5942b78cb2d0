// The hyper-parameters of a T5 encoder as transformers' config.json gives them (T5 v1.1 as DeepFloyd/t5-v1_1-xxl,
// and the original T5), checked: another architecture's config is refused by name.
#pragma once
#include <cstdint>
#include <string>

namespace opendit::models::t5 {

struct T5Config {
  int64_t vocab_size = 32128, d_model = 4096, d_kv = 64, d_ff = 10240, num_layers = 24, num_heads = 64;
  int64_t relative_attention_num_buckets = 32, relative_attention_max_distance = 128;
  bool gated = true;  // v1.1 "gated-gelu": gelu_tanh(wi_0 x) * wi_1 x; the original T5 "relu": relu(wi x)
  double layer_norm_epsilon = 1e-6;

  int64_t inner() const { return num_heads * d_kv; }
  int64_t num_parameters() const;      // the encoder's: embedding, blocks, final norm
  double flops(int64_t tokens) const;  // multiply-adds x 2 of one sequence of `tokens` tokens
  void validate(const std::string& origin) const;
  std::string to_json() const;   // a transformers config.json
  std::string describe() const;  // "T5 encoder: 24 layers, d_model 4096, ..."
};

T5Config t5_xxl_config();  // DeepFloyd/t5-v1_1-xxl, Open-Sora v1.0's text encoder
// config.json text -> config; throws opendit::Error naming `origin` (bad JSON, not a T5, unsupported activation).
T5Config t5_config_from_json(const std::string& json, const std::string& origin);

}  // namespace opendit::models::t5
