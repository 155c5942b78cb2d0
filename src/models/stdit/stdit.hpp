// STDiT (Open-Sora v1.0, hpcaitech/Open-Sora tag v1.0.0): a text-to-video DiT whose blocks attend over space per
// frame, then over time per position, then to the caption. The official state-dict names, shapes, block order and
// initialisation (Open-Sora's weights map 1:1), built from the shared layers and fused ops that DiT uses.
//
//   x [N, C, T, H, W] latents -> tokens [N, T' S, D] (T' = T / pt, S = (H/ph)(W/pw), row-major over (t, h, w))
//   block: x += gate_msa * spatial_attn(LN(x) (1 + scale_msa) + shift_msa)       per frame     [(N T'), S, D]
//          x += gate_msa * temporal_attn(x (+ temporal table in block 0 only))  per position  [(N S), T', D]
//          x += cross_attn(x, caption tokens, caption mask)                      no norm, no gate
//          x += gate_mlp * mlp(LN(x) (1 + scale_mlp) + shift_mlp)
//   (shift, scale, gate) x 2 = blocks.i.scale_shift_table [6, D] + t_block(t) [N, 6, D]   (adaLN-single)
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
#include "models/stdit/config.hpp"

namespace opendit::models::stdit {

class STDiT : public Model {
 public:
  // float32 CPU tensors initialised like Open-Sora's code from `seed` (zero final linear, zero cross_attn.proj and
  // attn_temp.proj: a fresh model outputs zeros and equals its spatial model per frame); without a seed, a
  // description on the meta device.
  STDiT(const STDiTConfig& cfg, std::optional<uint64_t> seed);

  const STDiTConfig& config() const { return cfg_; }

  std::string type() const override { return "stdit"; }
  std::string describe() const override { return cfg_.describe(); }
  std::string config_json() const override { return config_to_json(cfg_); }
  std::vector<int64_t> sample_shape() const override {
    return {cfg_.in_channels, cfg_.frames, cfg_.height, cfg_.width};
  }
  int64_t out_channels() const override { return cfg_.out_channels(); }
  double forward_flops(const std::vector<int64_t>& sample_shape) const override;

  ConditionSpec condition_spec() const override;
  // The null caption (y_embedding's first L rows) read through each sample's own mask, as Open-Sora does.
  Condition null_condition(const Condition& like) const override;
  void check_condition(const Condition& cond) const override;

  // x [N, C, T, H, W], t [N] float, cond.text [N, L, caption_channels] (L <= text_length), cond.text_mask [N, L]
  // (true at valid tokens; at least one per sample) -> [N, C_out, T, H, W].
  at::Tensor forward(const at::Tensor& x, const at::Tensor& t, const Condition& cond) const override;
  void set_recompute_blocks(int blocks) override { recompute_blocks_ = blocks; }
  int depth() const override { return cfg_.depth; }

  // Open-Sora's files carry pos_embed and pos_embed_temporal for the size they were trained at; the tables are
  // recomputed for this model's size, so imports drop them (Open-Sora's loader does the same).
  StateDict import_weights(const StateDict& sd, const std::string& origin) const override;
  std::map<std::string, std::string> weight_metadata() const override;

 protected:
  std::string explain_weights(const StateDict& sd) const override { return closest_preset_text(sd); }

 private:
  // Where a rank's tokens are: whole samples without sp; with sp the frames T are split over the group (padded to a
  // multiple of P), and for dsp the positions S are padded too (the temporal attention shards them).
  struct Layout {
    layers::SeqParallel sp;
    int64_t t = 0, s = 0;              // the model's frames (after patching) and positions
    int64_t t_local = 0, s_local = 0;  // a rank's frames (T/P, padded) and positions (S, or S padded for dsp)
  };
  Layout layout() const;
  struct Block {
    at::Tensor table;  // scale_shift_table [6, D]
    layers::Linear qkv, proj, q, kv, cproj, fc1, fc2, tqkv, tproj;
    std::vector<at::Tensor> tensors() const;
    static Block from(const std::vector<at::Tensor>& t, size_t first);
    // x [N, Tl S', D], t0 [N, 6 D], y [N, L, D], mask [N, L] bool, tpe [1, T', D] or undefined -> [N, Tl S', D]
    at::Tensor forward(const at::Tensor& x, const at::Tensor& t0, const at::Tensor& y, const at::Tensor& mask,
                       const at::Tensor& tpe, const Layout& l, int64_t heads) const;
  };
  void init_weights(uint64_t seed);

  STDiTConfig cfg_;
  int recompute_blocks_ = 0;
  at::Tensor pos_embed_, pos_embed_temporal_;  // [1, S, D], [1, T', D]: frozen, recomputed
  layers::PatchEmbed3d x_embedder_;
  layers::TimestepEmbedder t_embedder_;
  layers::Linear t_block_;     // SiLU, then Linear(D, 6 D)
  at::Tensor y_embedding_;     // [text_length, caption_channels]: the null caption (a buffer, never trained)
  // A host copy of it for training's caption dropout, which runs on the host batch: reading the device tensor
  // there would sync every micro-step. Refreshed when y_embedding_ is replaced (moved, cast, loaded into).
  mutable at::Tensor null_host_;
  mutable const void* null_host_of_ = nullptr;
  mutable int64_t null_host_version_ = -1;
  layers::GeluMlp y_proj_;     // caption_channels -> D -> D
  std::vector<Block> blocks_;
  layers::T2IFinalLayer final_layer_;
};

// STDiT's registry entry (models/stdit/type.cpp).
ModelType model_type();

}  // namespace opendit::models::stdit
