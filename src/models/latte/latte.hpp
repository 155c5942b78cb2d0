// Latte (Ma et al. 2024) in the layout of diffusers' LatteTransformer3DModel, the layout of the published Latte-1
// weights: a text-to-video DiT whose blocks alternate between a spatial transformer block per frame (self-attention,
// cross-attention to the caption, MLP) and a temporal transformer block per spatial position (self-attention,
// MLP), each with its own adaLN-single scale_shift_table. Built from STDiT's layers and fused ops. State-dict names
// are diffusers' own (pos_embed.proj, adaln_single.*, caption_projection.*, transformer_blocks.N.*,
// temporal_transformer_blocks.N.*, scale_shift_table, proj_out), so published weights load as they are.
//
//   x [N, C, T, H, W] -> per frame tokens [N T, S, D] (+ 2D sin-cos table)
//   block i: spatial   x += gate_msa * attn1(LN(x)(1 + scale) + shift); x += attn2(x, caption, mask);
//                      x += gate_mlp * ff(LN(x)(1 + scale) + shift)                              [(N T), S, D]
//            temporal  (block 0: x += 1D sin-cos table over frames, into the residual stream)
//                      x += gate_msa * attn1(...); x += gate_mlp * ff(...)                      [(N S), T, D]
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <vector>

#include "models/layers/embed.hpp"
#include "models/layers/final_layer.hpp"
#include "models/layers/linear.hpp"
#include "models/model.hpp"
#include "models/registry.hpp"

namespace opendit::models::latte {

struct LatteConfig {
  int depth = 28, hidden_size = 1152, num_heads = 16, patch_size = 2;
  int in_channels = 4, out_channels = 8;         // Latte-1: learned sigma
  int sample_size = 64, video_length = 16;       // latent H = W, frames
  int caption_channels = 4096, text_length = 120;
  int s_tokens() const { return (sample_size / patch_size) * (sample_size / patch_size); }
  int64_t num_parameters() const;
  double forward_flops(int64_t frames, int64_t s_tokens, int64_t caption_tokens) const;
  void validate() const;  // throws opendit::CollectiveError naming the offending key
  std::string describe() const;
};

LatteConfig config_from(const config::Deck& deck);
std::string config_to_json(const LatteConfig& c);
LatteConfig config_from_json(const std::string& json);  // opendit's JSON, or a diffusers config.json

class Latte : public Model {
 public:
  Latte(const LatteConfig& cfg, std::optional<uint64_t> seed);
  const LatteConfig& config() const { return cfg_; }

  std::string type() const override { return "latte"; }
  std::string describe() const override { return cfg_.describe(); }
  std::string config_json() const override { return config_to_json(cfg_); }
  std::vector<int64_t> sample_shape() const override {
    return {cfg_.in_channels, cfg_.video_length, cfg_.sample_size, cfg_.sample_size};
  }
  int64_t out_channels() const override { return cfg_.out_channels; }
  double forward_flops(const std::vector<int64_t>& sample_shape) const override;

  // Captions, no learned null caption: guidance runs against the negative prompt's embedding (the sampler asks
  // for it: ConditionSpec::null_is_text), and training has no caption dropout.
  ConditionSpec condition_spec() const override;
  Condition null_condition(const Condition& like) const override;
  Condition drop_condition(const Condition& cond, const at::Tensor& drop) const override { return cond; }
  void check_condition(const Condition& cond) const override;

  // x [N, C, T, H, W], t [N], cond.text [N, L, caption_channels] + mask -> [N, out_channels, T, H, W].
  at::Tensor forward(const at::Tensor& x, const at::Tensor& t, const Condition& cond) const override;
  void set_recompute_blocks(int blocks) override { recompute_blocks_ = blocks; }
  int depth() const override { return cfg_.depth; }

  std::vector<std::string> layouts() const override { return {"opendit", "diffusers"}; }
  // The two tables are recomputed for this model's size: imports drop them (diffusers' files do not hold them).
  StateDict import_weights(const StateDict& sd, const std::string& origin) const override;
  StateDict export_weights(const StateDict& official, const std::string& layout) const override;
  std::map<std::string, std::string> weight_metadata() const override;

 private:
  // One spatial or temporal block: a packed-qkv self-attention (diffusers keeps to_q, to_k, to_v: packed per call),
  // cross-attention (spatial only) and the MLP.
  struct Block {
    at::Tensor table;  // scale_shift_table [6, D]
    layers::Linear q, k, v, o, q2, k2, v2, o2, fc1, fc2;
    bool cross = false;
    std::vector<at::Tensor> tensors() const;
    static Block from(const std::vector<at::Tensor>& t, size_t first, bool cross);
    // x [B, Lq, D], mod_t0 [B, 6 D] (the timestep projection of each row's sample), y [N, L, D], mask [N, L]
    // valid: the real sequence length when x carries sp padding (-1: none); sp: on when this block's sequences
    // are sharded over the group (ulysses / fastseq temporal blocks), else off.
    // frames > 0 (a temporal block, sp off): x is [N, frames S, D], whole frames of S positions, and the
    // self-attention runs across the frames of each position (layers::frame_attention): no transposes.
    at::Tensor forward(const at::Tensor& x, const at::Tensor& t0, const at::Tensor& y, const at::Tensor& mask,
                       int64_t heads, int64_t groups, int64_t valid, const layers::SeqParallel& sp,
                       int64_t frames = 0) const;
  };
  at::Tensor run_block(const Block& b, bool recompute, const at::Tensor& x, const at::Tensor& t0,
                       const at::Tensor& y, const at::Tensor& mask, int64_t groups, int64_t valid = -1,
                       const layers::SeqParallel& sp = {}, int64_t frames = 0) const;
  void init_weights(uint64_t seed);

  LatteConfig cfg_;
  int recompute_blocks_ = 0;
  at::Tensor pos_embed_, temp_pos_embed_;  // [1, S, D], [1, T, D]: recomputed (diffusers' buffers)
  layers::PatchEmbed2d x_embedder_;        // pos_embed.proj
  layers::TimestepEmbedder t_embedder_;    // adaln_single.emb.timestep_embedder.linear_1/2
  layers::Linear t_block_;                 // adaln_single.linear (after SiLU)
  layers::GeluMlp y_proj_;                 // caption_projection.linear_1/2
  std::vector<Block> spatial_, temporal_;
  layers::T2IFinalLayer final_layer_;      // scale_shift_table, proj_out
};

ModelType model_type();

}  // namespace opendit::models::latte
