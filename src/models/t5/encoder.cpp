#include "models/t5/encoder.hpp"

#include <ATen/Context.h>
#include <ATen/Functions.h>

#include <cmath>
#include <limits>

#include "core/error.hpp"
#include "core/strings.hpp"
#include "cuda/ops.hpp"

namespace opendit::models::t5 {

namespace {
std::string block(int64_t i, const char* rest) { return cat("encoder.block.", i, ".layer.", rest); }
bool starts_with(const std::string& s, const char* p) { return s.rfind(p, 0) == 0; }
}  // namespace

T5Encoder::T5Encoder(const T5Config& config) : config_(config) {
  config_.validate("T5 encoder");
  const int64_t d = config_.d_model, inner = config_.inner(), ff = config_.d_ff;
  w_.declare("shared.weight", {config_.vocab_size, d});
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    for (const char* m : {"q", "k", "v"}) w_.declare(block(i, "0.SelfAttention.") + m + ".weight", {inner, d});
    w_.declare(block(i, "0.SelfAttention.o.weight"), {d, inner});
    if (i == 0)
      w_.declare(block(0, "0.SelfAttention.relative_attention_bias.weight"),
                 {config_.relative_attention_num_buckets, config_.num_heads});
    w_.declare(block(i, "0.layer_norm.weight"), {d});
    if (config_.gated) {
      w_.declare(block(i, "1.DenseReluDense.wi_0.weight"), {ff, d});
      w_.declare(block(i, "1.DenseReluDense.wi_1.weight"), {ff, d});
    } else {
      w_.declare(block(i, "1.DenseReluDense.wi.weight"), {ff, d});
    }
    w_.declare(block(i, "1.DenseReluDense.wo.weight"), {d, ff});
    w_.declare(block(i, "1.layer_norm.weight"), {d});
  }
  w_.declare("encoder.final_layer_norm.weight", {d});
}

void T5Encoder::load(const std::map<std::string, at::Tensor>& sd, const std::string& origin,
                     const at::TensorOptions& options) {
  std::map<std::string, at::Tensor> named = sd;
  // The encoder's embedding is shared with the decoder: files keep it as shared.weight, as the tied
  // encoder.embed_tokens.weight, or both.
  auto tied = named.find("encoder.embed_tokens.weight");
  if (tied != named.end()) {
    if (!named.count("shared.weight")) named["shared.weight"] = tied->second;
    named.erase("encoder.embed_tokens.weight");
  }
  w_.load(named, origin, options, [](const std::string& n) {
    return starts_with(n, "decoder.") || n == "lm_head.weight";  // the rest of a whole T5
  });
  fuse();
}

void T5Encoder::init_random(uint64_t seed, const at::TensorOptions& options) {
  w_.init_random(seed, options);
  // T5's own initialisation scales (transformers' T5 _init_weights): the attention scores are not divided by
  // sqrt(d_kv), so q is drawn smaller; with plain 1/sqrt(fan_in) weights the softmax saturates and a bf16 run is
  // no guide to a trained model's.
  const double d = static_cast<double>(config_.d_model), dk = static_cast<double>(config_.d_kv);
  at::Generator gen = at::globalContext().defaultGenerator(options.device()).clone();
  gen.set_current_seed(seed + 1);
  auto draw = [&](const std::string& name, double stddev) {
    const at::Tensor& t = w_[name];
    w_.set(name, at::empty(t.sizes(), t.options().dtype(at::kFloat)).normal_(0, stddev, gen).to(t.scalar_type()));
  };
  draw("shared.weight", 1.0);
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    const std::string a = block(i, "0.SelfAttention."), f = block(i, "1.DenseReluDense.");
    draw(a + "q.weight", 1.0 / std::sqrt(d * dk));
    draw(a + "k.weight", 1.0 / std::sqrt(d));
    draw(a + "v.weight", 1.0 / std::sqrt(d));
    draw(a + "o.weight", 1.0 / std::sqrt(static_cast<double>(config_.inner())));
    for (const char* w : {"wi_0.weight", "wi_1.weight", "wi.weight"})
      if (w_.has(f + w)) draw(f + w, 1.0 / std::sqrt(d));
    draw(f + "wo.weight", 1.0 / std::sqrt(static_cast<double>(config_.d_ff)));
  }
  draw(block(0, "0.SelfAttention.relative_attention_bias.weight"), 1.0 / std::sqrt(d));
  fuse();
}

void T5Encoder::fuse() {
  qkv_.clear();
  wi_.clear();
  const int64_t inner = config_.inner(), ff = config_.d_ff;
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    const std::string a = block(i, "0.SelfAttention.");
    qkv_.push_back(at::cat({w_[a + "q.weight"], w_[a + "k.weight"], w_[a + "v.weight"]}));
    const char* m[] = {"q.weight", "k.weight", "v.weight"};
    for (int j = 0; j < 3; ++j) w_.set(a + m[j], qkv_.back().narrow(0, j * inner, inner));  // no second copy
    if (config_.gated) {
      const std::string f = block(i, "1.DenseReluDense.");
      wi_.push_back(at::cat({w_[f + "wi_0.weight"], w_[f + "wi_1.weight"]}));
      w_.set(f + "wi_0.weight", wi_.back().narrow(0, 0, ff));
      w_.set(f + "wi_1.weight", wi_.back().narrow(0, ff, ff));
    }
  }
}

// Bidirectional buckets: half for keys after the query; within each half, exact distances below half of the half,
// then logarithmically wider buckets up to max_distance, the last bucket for everything farther.
at::Tensor T5Encoder::position_buckets(int64_t length) const {
  const at::Tensor pos = at::arange(length, at::kLong);
  const at::Tensor rel = pos.unsqueeze(0) - pos.unsqueeze(1);  // [q, k]: key - query
  const int64_t half = config_.relative_attention_num_buckets / 2, exact = half / 2;
  const at::Tensor n = rel.abs();
  // Float32 arithmetic in the order transformers uses, so that the truncation picks the same buckets.
  at::Tensor large = at::log(n.clamp_min(1).to(at::kFloat) / static_cast<double>(exact)) /
                     std::log(static_cast<double>(config_.relative_attention_max_distance) / exact) *
                     static_cast<double>(half - exact);
  large = (large.to(at::kLong) + exact).clamp_max(half - 1);
  return (rel > 0).to(at::kLong) * half + at::where(n < exact, n, large);
}

at::Tensor T5Encoder::forward(const at::Tensor& ids, const at::Tensor& mask) const {
  if (ids.dim() != 2 || ids.scalar_type() != at::kLong)
    throw Error(cat("T5 encoder: ids must be [B, L] int64, got ", shape_str(ids.sizes()), " ", ids.scalar_type()));
  if (mask.sizes() != ids.sizes())
    throw Error(cat("T5 encoder: mask ", shape_str(mask.sizes()), " does not match ids ", shape_str(ids.sizes())));
  const int64_t B = ids.size(0), L = ids.size(1), H = config_.num_heads, dk = config_.d_kv, inner = config_.inner();
  const at::ScalarType dt = w_.dtype();
  const at::Device dev = w_.device();
  const at::Tensor tokens = ids.to(dev);
  const int64_t vocab = config_.vocab_size;
  if (tokens.numel() > 0 && (tokens.min().item<int64_t>() < 0 || tokens.max().item<int64_t>() >= vocab))
    throw Error(cat("T5 encoder: token ids must lie in [0, ", vocab, ")"));

  // Attention bias [B, H, L, L]: the relative-position bias of block 0, and a large negative value at padding keys.
  const at::Tensor buckets = position_buckets(L).to(dev);
  const at::Tensor table = w_[block(0, "0.SelfAttention.relative_attention_bias.weight")];    // [buckets, H]
  const at::Tensor pos_bias = at::embedding(table, buckets).permute({2, 0, 1}).unsqueeze(0);  // [1, H, L, L]
  const double lowest = dt == at::kBFloat16 ? -3.3895313892515355e38 : std::numeric_limits<float>::lowest();
  const at::Tensor pad = (mask.to(dev) == 0).view({B, 1, 1, L}).to(dt) * lowest;
  const at::Tensor bias = (pos_bias + pad).contiguous();

  // The residual stream x [B, L, d] stays float32; each sub-layer's output is added to it by the next norm, fused
  // (x += delta, then RMS-normalised and scaled, rounded once to the run's dtype).
  at::Tensor x = at::embedding(w_["shared.weight"], tokens).to(at::kFloat).contiguous();
  const double eps = config_.layer_norm_epsilon;
  at::Tensor delta;  // what the last sub-layer adds to x; undefined before the first
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    at::Tensor h = kernels::add_rms_norm(x, delta, w_[block(i, "0.layer_norm.weight")], eps, dt);
    auto qkv = at::linear(h, qkv_[i]).view({B, L, 3, H, dk}).unbind(2);  // 3 x [B, L, H, dk]
    at::Tensor a = at::scaled_dot_product_attention(qkv[0].transpose(1, 2), qkv[1].transpose(1, 2),
                                                    qkv[2].transpose(1, 2), bias, 0.0, false, /*scale=*/1.0);
    delta = at::linear(a.transpose(1, 2).reshape({B, L, inner}), w_[block(i, "0.SelfAttention.o.weight")]);
    h = kernels::add_rms_norm(x, delta, w_[block(i, "1.layer_norm.weight")], eps, dt);
    // Gated: one GEMM [B, L, 2 d_ff] (wi_0 x, then wi_1 x), then gelu_tanh(wi_0 x) * wi_1 x in one pass.
    const at::Tensor g = config_.gated ? kernels::gated_gelu(at::linear(h, wi_[i]))
                                       : at::relu(at::linear(h, w_[block(i, "1.DenseReluDense.wi.weight")]));
    delta = at::linear(g, w_[block(i, "1.DenseReluDense.wo.weight")]);
  }
  return kernels::add_rms_norm(x, delta, w_["encoder.final_layer_norm.weight"], eps, at::kFloat);
}

}  // namespace opendit::models::t5
