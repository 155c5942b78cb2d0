#include "models/dit/config.hpp"

#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>

#include "config/deck.hpp"
#include "core/error.hpp"
#include "core/strings.hpp"

namespace opendit::models::dit {

namespace {
struct Preset {
  const char* size;
  int depth, hidden, heads;
};
constexpr Preset kPresets[] = {{"XL", 28, 1152, 16}, {"L", 24, 1024, 16}, {"B", 12, 768, 12}, {"S", 12, 384, 6}};
constexpr int kPatches[] = {2, 4, 8};
}  // namespace

const std::vector<std::string>& preset_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const auto& p : kPresets)
      for (int patch : kPatches) n.push_back(std::string("DiT-") + p.size + "/" + std::to_string(patch));
    return n;
  }();
  return names;
}

DiTConfig preset(const std::string& name) {
  for (const auto& p : kPresets)
    for (int patch : kPatches)
      if (name == std::string("DiT-") + p.size + "/" + std::to_string(patch)) {
        DiTConfig c;
        c.depth = p.depth, c.hidden_size = p.hidden, c.num_heads = p.heads, c.patch_size = patch;
        return c;
      }
  throw CollectiveError(cat("model.preset = \"", name, "\" is not a DiT preset (model.type = \"dit\"; its presets: ",
                            join(preset_names(), ", "), ")"));
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

double DiTConfig::forward_flops() const { return forward_flops(tokens()); }

double DiTConfig::forward_flops(int64_t token_count) const {
  const double D = hidden_size, T = double(token_count), M = mlp_hidden(), p = patch_size;
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
    if (!ok) throw CollectiveError("model: " + msg);
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

DiTConfig config_from(const config::Deck& deck) {
  std::string name = deck.get_string("model.preset");
  if (name == "auto") name = "DiT-XL/2";
  DiTConfig c = name == "custom" ? DiTConfig{} : preset(name);
  auto override_int = [&](const char* key, int& field) {
    int64_t v = deck.get_int(key);
    if (v > 0) field = static_cast<int>(v);
    else if (name == "custom") throw CollectiveError(cat(key, " must be set when model.preset = \"custom\""));
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

std::vector<config::Option> deck_options() {
  using config::Type;
  const double inf = 1e300;
  std::vector<std::string> presets = {"auto", "custom"};
  for (const auto& n : preset_names()) presets.push_back(n);
  return {
      {"model.preset", Type::Choice, std::string("auto"), "Official size preset of the model type (`auto`: its "
       "largest: DiT-XL/2, STDiT-XL/2, Latte-XL/2), or `custom` (then set depth, hidden_size, num_heads and "
       "patch_size).",
       -inf, inf, presets},
      {"model.depth", Type::Int, int64_t{0}, "Transformer blocks; 0 = from the preset.", 0, 1000, {}},
      {"model.hidden_size", Type::Int, int64_t{0}, "Token width D; 0 = from the preset.", 0, 1 << 16, {}},
      {"model.num_heads", Type::Int, int64_t{0}, "Attention heads (must divide hidden_size); 0 = from the preset.",
       0, 1024, {}},
      {"model.patch_size", Type::Int, int64_t{0}, "Patch side p (tokens = (input_size/p)^2); 0 = from the preset.",
       0, 64, {}},
      {"model.in_channels", Type::Int, int64_t{4}, "Input channels (4 for SD-VAE latents).", 1, 1024, {}},
      {"model.input_size", Type::Int, int64_t{32}, "Input side in pixels or latent cells (32 = 256^2 images with "
       "the VAE's factor 8).", 1, 1 << 14, {}},
      {"model.num_classes", Type::Int, int64_t{1000}, "Classes; label num_classes is the null class of "
       "classifier-free guidance.", 1, 1 << 24, {}},
      {"model.learn_sigma", Type::Bool, true, "Also predict the variance (output channels = 2 x in_channels).",
       -inf, inf, {}},
      {"model.mlp_ratio", Type::Float, 4.0, "MLP hidden width / hidden_size.", 0.25, 64, {}},
      {"model.class_dropout_prob", Type::Float, 0.1, "Training: probability of replacing the condition by the null "
       "one (DiT: the null class; STDiT: the null caption), for classifier-free guidance.", 0, 1, {}},
  };
}

std::string config_to_json(const DiTConfig& c) {
  nlohmann::ordered_json j = {{"depth", c.depth},         {"hidden_size", c.hidden_size}, {"num_heads", c.num_heads},
                              {"patch_size", c.patch_size}, {"in_channels", c.in_channels}, {"input_size", c.input_size},
                              {"num_classes", c.num_classes}, {"learn_sigma", c.learn_sigma}, {"mlp_ratio", c.mlp_ratio}};
  return j.dump();
}

DiTConfig config_from_json(const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw Error(cat("not a DiT configuration: ", text));
  DiTConfig c;
  try {
    c.depth = j.at("depth"), c.hidden_size = j.at("hidden_size"), c.num_heads = j.at("num_heads");
    c.patch_size = j.at("patch_size"), c.in_channels = j.at("in_channels"), c.input_size = j.at("input_size");
    c.num_classes = j.at("num_classes"), c.learn_sigma = j.at("learn_sigma"), c.mlp_ratio = j.at("mlp_ratio");
  } catch (const nlohmann::json::exception& e) {
    throw Error(cat("DiT configuration ", text, ": ", e.what()));
  }
  c.validate();
  return c;
}

DiTConfig infer_config(const StateDict& sd) {
  DiTConfig c;
  c.num_heads = 0;
  auto get = [&](const std::string& k) -> const at::Tensor* {
    auto it = sd.find(k);
    return it == sd.end() ? nullptr : &it->second;
  };
  if (auto w = get("x_embedder.proj.weight"); w && w->dim() == 4)
    c.hidden_size = w->size(0), c.in_channels = w->size(1), c.patch_size = w->size(2);
  c.depth = 0;
  while (get("blocks." + std::to_string(c.depth) + ".attn.qkv.weight")) ++c.depth;
  if (auto y = get("y_embedder.embedding_table.weight"); y && y->dim() == 2) c.num_classes = y->size(0) - 1;
  if (auto f = get("final_layer.linear.weight"); f && f->dim() == 2 && c.patch_size > 0)
    c.learn_sigma = f->size(0) == 2 * c.patch_size * c.patch_size * c.in_channels;
  if (auto pe = get("pos_embed"); pe && pe->dim() == 3)
    c.input_size = static_cast<int>(std::lround(std::sqrt(double(pe->size(1))))) * c.patch_size;
  if (auto fc1 = get("blocks.0.mlp.fc1.weight"); fc1 && fc1->dim() == 2 && c.hidden_size > 0)
    c.mlp_ratio = double(fc1->size(0)) / c.hidden_size;
  for (const auto& name : preset_names()) {
    DiTConfig p = preset(name);
    if (p.hidden_size == c.hidden_size) c.num_heads = p.num_heads;
  }
  return c;
}

std::string closest_preset_text(const StateDict& sd) {
  DiTConfig c = infer_config(sd);
  for (const auto& name : preset_names()) {
    DiTConfig p = preset(name);
    if (p.depth == c.depth && p.hidden_size == c.hidden_size && p.patch_size == c.patch_size)
      return cat("The weights look like ", name, " (input ", c.input_size, ", ", c.in_channels, " channels, ",
                 c.num_classes, " classes, learn_sigma ", c.learn_sigma ? "on" : "off", ").");
  }
  return cat("The weights look like a custom DiT: depth ", c.depth, ", hidden ", c.hidden_size, ", patch ",
             c.patch_size, ", input ", c.input_size, ", ", c.in_channels, " channels, ", c.num_classes,
             " classes, learn_sigma ", c.learn_sigma ? "on" : "off", ".");
}

}  // namespace opendit::models::dit
