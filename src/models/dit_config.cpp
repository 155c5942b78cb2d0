#include "models/dit_config.hpp"

#include <sstream>

#include "config/deck.hpp"
#include "core/error.hpp"

namespace opendit::models {

namespace {
struct Preset {
  const char* size;
  int depth, hidden, heads;
};
constexpr Preset kPresets[] = {{"XL", 28, 1152, 16}, {"L", 24, 1024, 16}, {"B", 12, 768, 12}, {"S", 12, 384, 6}};
constexpr int kPatches[] = {2, 4, 8};
}  // namespace

const std::vector<std::string>& dit_preset_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const auto& p : kPresets)
      for (int patch : kPatches) n.push_back(std::string("DiT-") + p.size + "/" + std::to_string(patch));
    return n;
  }();
  return names;
}

DiTConfig dit_preset(const std::string& name) {
  for (const auto& p : kPresets)
    for (int patch : kPatches)
      if (name == std::string("DiT-") + p.size + "/" + std::to_string(patch)) {
        DiTConfig c;
        c.depth = p.depth, c.hidden_size = p.hidden, c.num_heads = p.heads, c.patch_size = patch;
        return c;
      }
  throw Error(cat("unknown DiT preset '", name, "'"));
}

int64_t DiTConfig::num_parameters() const {
  const int64_t D = hidden_size, p = patch_size, M = mlp_hidden();
  int64_t n = int64_t(tokens()) * D;                             // pos_embed
  n += D * in_channels * p * p + D;                              // x_embedder
  n += 256 * D + D + D * D + D;                                  // t_embedder
  n += int64_t(num_classes + 1) * D;                             // y_embedder (+ null class)
  int64_t block = 3 * D * D + 3 * D + D * D + D                  // attn qkv, proj
                  + M * D + M + D * M + D                        // mlp fc1, fc2
                  + 6 * D * D + 6 * D;                           // adaLN_modulation
  n += depth * block;
  n += 2 * D * D + 2 * D + p * p * out_channels() * D + p * p * out_channels();  // final layer
  return n;
}

double DiTConfig::forward_flops() const {
  const double D = hidden_size, T = tokens(), M = mlp_hidden(), p = patch_size;
  double macs = T * D * in_channels * p * p;                     // patch embedding
  macs += 256 * D + D * D;                                       // timestep MLP
  double block = T * (3 * D * D + D * D + 2 * D * M)             // qkv, proj, mlp
                 + 2 * T * T * D                                 // q k^T and attn v
                 + 6 * D * D;                                    // adaLN
  macs += depth * block + 2 * D * D + T * D * p * p * out_channels();
  return 2 * macs;
}

void DiTConfig::validate() const {
  auto need = [](bool ok, const std::string& msg) {
    if (!ok) throw Error("model: " + msg);
  };
  need(depth >= 1, cat("model.depth must be >= 1, found ", depth));
  need(hidden_size >= 1 && num_heads >= 1 && hidden_size % num_heads == 0,
       cat("model.hidden_size (", hidden_size, ") must be a multiple of model.num_heads (", num_heads, ")"));
  need(hidden_size % 4 == 0, cat("model.hidden_size must be a multiple of 4 for the 2D sin-cos position table, found ",
                                 hidden_size));
  need(patch_size >= 1 && input_size % patch_size == 0,
       cat("model.input_size (", input_size, ") must be a multiple of model.patch_size (", patch_size, ")"));
  need(in_channels >= 1, cat("model.in_channels must be >= 1, found ", in_channels));
  need(num_classes >= 1, cat("model.num_classes must be >= 1, found ", num_classes));
}

std::string DiTConfig::describe() const {
  std::ostringstream os;
  os << "DiT depth " << depth << ", hidden " << hidden_size << ", heads " << num_heads << ", patch " << patch_size
     << ", input " << input_size << "x" << input_size << "x" << in_channels << " (" << tokens() << " tokens), "
     << num_classes << " classes, learn_sigma " << (learn_sigma ? "on" : "off") << ", "
     << num_parameters() / 1e6 << " M parameters, " << forward_flops() / 1e9 << " GFLOP/forward";
  return os.str();
}

DiTConfig dit_config_from(const config::Deck& deck) {
  const std::string& preset = deck.get_string("model.preset");
  DiTConfig c = preset == "custom" ? DiTConfig{} : dit_preset(preset);
  auto override_int = [&](const char* key, int& field) {
    int64_t v = deck.get_int(key);
    if (v > 0) field = static_cast<int>(v);
    else if (preset == "custom") throw Error(cat(key, " must be set when model.preset = \"custom\""));
  };
  override_int("model.depth", c.depth);
  override_int("model.hidden_size", c.hidden_size);
  override_int("model.num_heads", c.num_heads);
  override_int("model.patch_size", c.patch_size);
  c.in_channels = static_cast<int>(deck.get_int("model.in_channels"));
  c.input_size = static_cast<int>(deck.get_int("model.input_size"));
  c.num_classes = static_cast<int>(deck.get_int("model.num_classes"));
  c.learn_sigma = deck.get_bool("model.learn_sigma");
  c.mlp_ratio = deck.get_float("model.mlp_ratio");
  c.class_dropout_prob = deck.get_float("model.class_dropout_prob");
  c.validate();
  return c;
}

}  // namespace opendit::models
