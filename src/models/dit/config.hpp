// DiT hyper-parameters: the official presets DiT-{S,B,L,XL}/{2,4,8}, the deck keys that set them, their JSON form
// (checkpoints and weight files) and their parameter and FLOP counts.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "config/schema.hpp"
#include "models/model.hpp"

namespace opendit::config {
class Deck;
}

namespace opendit::models::dit {

struct DiTConfig {
  int depth = 28, hidden_size = 1152, num_heads = 16, patch_size = 2;
  int in_channels = 4, input_size = 32;  // latent 32x32x4 for 256^2 images (VAE factor 8)
  int num_classes = 1000;                // label num_classes is the null (CFG) class
  bool learn_sigma = true;               // out_channels = 2 x in_channels (eps and the variance interpolation v)
  double mlp_ratio = 4.0;
  double class_dropout_prob = 0.1;       // training only

  int out_channels() const { return learn_sigma ? 2 * in_channels : in_channels; }
  int grid() const { return input_size / patch_size; }  // tokens per side
  int tokens() const { return grid() * grid(); }
  int head_dim() const { return hidden_size / num_heads; }
  int mlp_hidden() const { return static_cast<int>(hidden_size * mlp_ratio); }
  int64_t num_parameters() const;  // including the frozen pos_embed
  double forward_flops() const;    // multiply-adds x 2 for one sample's forward pass at input_size
  double forward_flops(int64_t tokens) const;

  void validate() const;  // throws opendit::CollectiveError naming the offending key (every rank checks alike)
  std::string describe() const;
};

// "DiT-XL/2" etc.: depth, width, heads and patch of the official presets; other fields keep their defaults.
DiTConfig preset(const std::string& name);
const std::vector<std::string>& preset_names();

// The deck keys DiT reads ([model]) and the config they describe: model.preset, then any explicit key overrides it.
std::vector<config::Option> deck_options();
DiTConfig config_from(const config::Deck& deck);

// The JSON that checkpoints ("model" attribute) and weight files ("config" metadata) carry; the inverse throws
// opendit::Error on bad JSON. The format predates the model registry: it has no "type" (a missing type is "dit").
std::string config_to_json(const DiTConfig& cfg);
DiTConfig config_from_json(const std::string& json);

// What DiT a state dict (official names) holds: depth, width, patch, channels, classes, learn_sigma, input size;
// heads from the preset of that width, or 0 when no preset has it. Used to explain mismatches and by convert.
DiTConfig infer_config(const StateDict& sd);
std::string closest_preset_text(const StateDict& sd);

}  // namespace opendit::models::dit
