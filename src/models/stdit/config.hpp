// STDiT hyper-parameters (Open-Sora v1.0's spatial-temporal DiT): the presets STDiT-{S,B,XL}/2, the deck keys that
// set them, their JSON form (checkpoints and weight files) and their parameter and FLOP counts.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "config/schema.hpp"
#include "models/model.hpp"

namespace opendit::config {
class Deck;
}

namespace opendit::models::stdit {

struct STDiTConfig {
  int depth = 28, hidden_size = 1152, num_heads = 16;
  int patch_t = 1, patch_h = 2, patch_w = 2;  // Conv3d kernel = stride (Open-Sora v1.0: (1, 2, 2))
  int in_channels = 4;
  int frames = 16, height = 32, width = 32;   // the latent [C, T, H, W] the model is built for
  int caption_channels = 4096, text_length = 120;  // T5-XXL width, model_max_length
  bool learn_sigma = true;                    // Open-Sora's pred_sigma: 2 x in_channels outputs
  double mlp_ratio = 4.0;
  double space_scale = 1.0, time_scale = 1.0;  // position tables: positions / scale (0.5 at 256^2, 1.0 at 512^2)
  double class_dropout_prob = 0.1;             // training: the caption replaced by the null caption

  int out_channels() const { return learn_sigma ? 2 * in_channels : in_channels; }
  int t_tokens() const { return frames / patch_t; }
  int grid_h() const { return height / patch_h; }
  int grid_w() const { return width / patch_w; }
  int s_tokens() const { return grid_h() * grid_w(); }
  int patch_volume() const { return patch_t * patch_h * patch_w; }
  int mlp_hidden() const { return static_cast<int>(hidden_size * mlp_ratio); }
  int64_t num_parameters() const;  // including the frozen tables and the null caption
  // Multiply-adds x 2 of one sample's forward at T x S tokens (latent frames / patch_t, cells / patch area) and
  // L caption tokens.
  double forward_flops(int64_t t_tokens, int64_t s_tokens, int64_t caption_tokens) const;

  void validate() const;  // throws opendit::CollectiveError naming the offending key (every rank checks alike)
  std::string describe() const;
};

// "STDiT-XL/2" (Open-Sora v1.0's), "STDiT-B/2", "STDiT-S/2": depth, width and heads; other fields keep defaults.
STDiTConfig preset(const std::string& name);
const std::vector<std::string>& preset_names();

// The [model] keys STDiT reads beside those it shares with DiT; the config a deck describes.
std::vector<config::Option> deck_options();
STDiTConfig config_from(const config::Deck& deck);

// The JSON of checkpoints and weight files ("type": "stdit"); the inverse throws opendit::Error on bad JSON.
std::string config_to_json(const STDiTConfig& cfg);
STDiTConfig config_from_json(const std::string& json);

// What STDiT a state dict (official names) holds: sizes the tensors tell; heads from the preset of that width (0
// when none has it); the latent size from pos_embed / pos_embed_temporal when present (else 0).
STDiTConfig infer_config(const StateDict& sd);
std::string closest_preset_text(const StateDict& sd);

}  // namespace opendit::models::stdit
