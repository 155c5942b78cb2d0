// DiT hyper-parameters, the official presets DiT-{S,B,L,XL}/{2,4,8}, and their FLOP count.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace opendit::config {
class Deck;
}

namespace opendit::models {

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
  double forward_flops() const;    // multiply-adds x 2 for one sample's forward pass

  void validate() const;  // throws opendit::Error naming the offending key
  std::string describe() const;
};

// "DiT-XL/2" etc.: depth, width, heads and patch of the official presets; other fields keep their defaults.
DiTConfig dit_preset(const std::string& name);
const std::vector<std::string>& dit_preset_names();

// The [model] section of a deck: model.preset, then any explicit model.* key overrides it.
DiTConfig dit_config_from(const config::Deck& deck);

}  // namespace opendit::models
