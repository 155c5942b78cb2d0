// DiT (Peebles & Xie 2023), class-conditional: the model of facebookresearch/DiT with its official state-dict names,
// shapes and initialisation (weights map 1:1), built from the shared layers (models/layers/) on the fused ops that
// run as CUDA kernels on a GPU and as their ATen definitions elsewhere.
#pragma once
#include <ATen/ATen.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "models/dit/config.hpp"
#include "models/layers/embed.hpp"
#include "models/layers/final_layer.hpp"
#include "models/layers/linear.hpp"
#include "models/model.hpp"
#include "models/registry.hpp"

namespace opendit::models::dit {

class DiT : public Model {
 public:
  // float32 CPU tensors initialised like the official code from `seed` (adaLN-Zero: the model outputs zeros);
  // without a seed, tensors on the meta device: a description (shapes, sizes, FLOPs) that holds no memory.
  DiT(const DiTConfig& cfg, std::optional<uint64_t> seed);

  const DiTConfig& config() const { return cfg_; }

  std::string type() const override { return "dit"; }
  std::string describe() const override { return cfg_.describe(); }
  std::string config_json() const override { return config_to_json(cfg_); }
  std::vector<int64_t> sample_shape() const override { return {cfg_.in_channels, cfg_.input_size, cfg_.input_size}; }
  int64_t out_channels() const override { return cfg_.out_channels(); }
  double forward_flops(const std::vector<int64_t>& sample_shape) const override;

  ConditionSpec condition_spec() const override;
  Condition null_condition(const Condition& like) const override;
  void check_condition(const Condition& cond) const override;

  // x [N, C_in, H, W], t [N] float, cond.labels [N] int64 in [0, num_classes] -> [N, C_out, H, W].
  at::Tensor forward(const at::Tensor& x, const at::Tensor& t, const Condition& cond) const override;
  void set_recompute_blocks(int blocks) override { recompute_blocks_ = blocks; }
  std::string sp_mode_problem(layers::SpMode mode) const override;  // dsp: no temporal axis
  int depth() const override { return cfg_.depth; }

  std::vector<std::string> layouts() const override { return {"opendit", "diffusers"}; }
  StateDict import_weights(const StateDict& sd, const std::string& origin) const override;
  StateDict export_weights(const StateDict& official, const std::string& layout) const override;
  std::map<std::string, std::string> weight_metadata() const override;

 protected:
  std::string explain_weights(const StateDict& sd) const override { return closest_preset_text(sd); }

 private:
  // One block's tensors; recompute passes them as inputs so that their gradients flow through it.
  struct Block {
    layers::Linear qkv, proj, fc1, fc2, ada;
    std::vector<at::Tensor> tensors() const;
    static Block from(const std::vector<at::Tensor>& t, size_t first);  // the inverse, from t[first...]
    // x [N, T, D], silu_c [N, D] -> [N, T, D]
    at::Tensor forward(const at::Tensor& x, const at::Tensor& silu_c, int64_t heads, int64_t tokens,
                       const layers::SeqParallel& sp) const;
  };
  void init_weights(uint64_t seed);

  DiTConfig cfg_;
  int recompute_blocks_ = 0;
  at::Tensor pos_embed_;  // [1, T, D], frozen
  layers::PatchEmbed2d x_embedder_;
  layers::TimestepEmbedder t_embedder_;
  at::Tensor y_table_;  // [num_classes + 1, D]
  std::vector<Block> blocks_;
  layers::AdaLNFinalLayer final_layer_;
};

// DiT's registry entry (models/dit/type.cpp).
ModelType model_type();

}  // namespace opendit::models::dit
