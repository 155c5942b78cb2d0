// Latte's hyper-parameters (deck keys, JSON, sizes) and its entry in the model registry (models/registry.cpp).
#include <nlohmann/json.hpp>
#include <sstream>

#include "config/deck.hpp"
#include "core/error.hpp"
#include "core/strings.hpp"
#include "models/latte/latte.hpp"

namespace opendit::models::latte {

int64_t LatteConfig::num_parameters() const {
  const int64_t D = hidden_size, M = 4 * D, p = patch_size, Cc = caption_channels;
  int64_t n = int64_t(s_tokens()) * D + int64_t(video_length) * D;  // the two tables
  n += D * in_channels * p * p + D;                                  // pos_embed.proj
  n += 256 * D + D + D * D + D + 6 * D * D + 6 * D;                  // adaln_single
  n += Cc * D + D + D * D + D;                                       // caption_projection
  const int64_t attn = 4 * (D * D + D), mlp = M * D + M + D * M + D;
  n += depth * (6 * D + 2 * attn + mlp);                             // spatial blocks (self + cross)
  n += depth * (6 * D + attn + mlp);                                 // temporal blocks
  n += 2 * D + p * p * out_channels * D + p * p * out_channels;      // scale_shift_table, proj_out
  return n;
}

double LatteConfig::forward_flops(int64_t T, int64_t S, int64_t L) const {
  const double D = hidden_size, tok = double(T) * double(S);
  double macs = tok * D * in_channels * patch_size * patch_size + double(L) * (caption_channels * D + D * D);
  macs += depth * (tok * (4 * D * D + 2 * D * D + 8 * D * D)         // spatial: self-attention, cross q/o, MLP
                   + double(L) * 2 * D * D                           // cross k/v on the caption
                   + tok * 2 * D * double(S + L)                     // spatial and cross scores and values
                   + tok * (4 * D * D + 8 * D * D) + tok * 2 * D * double(T));  // temporal block
  macs += tok * D * patch_size * patch_size * out_channels;
  return 2 * macs;
}

void LatteConfig::validate() const {
  auto need = [](bool ok, const std::string& msg) {
    if (!ok) throw CollectiveError("model: " + msg);
  };
  need(depth >= 1, cat("model.depth must be >= 1, found ", depth));
  need(hidden_size >= 1 && num_heads >= 1 && hidden_size % num_heads == 0 && hidden_size % 4 == 0,
       cat("model.hidden_size (", hidden_size, ") must be a multiple of 4 and of model.num_heads (", num_heads, ")"));
  need(patch_size >= 1 && sample_size % patch_size == 0,
       cat("model.input_size (", sample_size, ") must be a multiple of model.patch_size (", patch_size, ")"));
  need(in_channels >= 1 && out_channels >= 1 && video_length >= 1 && caption_channels >= 1 && text_length >= 1,
       "model: channels, frames and caption sizes must be >= 1");
}

std::string LatteConfig::describe() const {
  std::ostringstream os;
  os << "Latte depth " << depth << " (spatial + temporal), hidden " << hidden_size << ", heads " << num_heads
     << ", patch " << patch_size << ", latent " << in_channels << "x" << video_length << "x" << sample_size << "x"
     << sample_size << ", captions " << text_length << " x " << caption_channels << ", " << out_channels
     << " output channels, " << num_parameters() / 1e6 << " M parameters, "
     << forward_flops(video_length, s_tokens(), text_length) / 1e12 << " TFLOP/forward";
  return os.str();
}

LatteConfig config_from(const config::Deck& deck) {
  std::string name = deck.get_string("model.preset");
  if (name != "auto" && name != "custom" && name != "Latte-XL/2")
    throw CollectiveError(cat("model.preset = \"", name, "\" is not a Latte preset (model.type = \"latte\"; its "
                              "preset: Latte-XL/2)"));
  // Keys other video models read that Latte has no use for: a value given for one is a mistake, not a no-op.
  for (const char* key : {"model.input_width", "model.temporal_patch", "model.space_scale", "model.time_scale",
                          "model.mlp_ratio", "model.class_dropout_prob", "model.num_classes"})
    if (deck.origin(key) != "default")
      throw CollectiveError(cat(key, " (", deck.origin(key), "): not a key of model.type = \"latte\" (square "
                                "latents of input_size, 4x MLP, no caption dropout: it has no null caption)"));
  LatteConfig c;
  auto size = [&](const char* key, int& field) {
    const int64_t v = deck.get_int(key);
    if (v > 0) field = static_cast<int>(v);
    else if (name == "custom") throw CollectiveError(cat(key, " must be set when model.preset = \"custom\""));
  };
  size("model.depth", c.depth);
  size("model.hidden_size", c.hidden_size);
  size("model.num_heads", c.num_heads);
  size("model.patch_size", c.patch_size);
  c.in_channels = static_cast<int>(deck.get_int("model.in_channels"));
  c.out_channels = deck.get_bool("model.learn_sigma") ? 2 * c.in_channels : c.in_channels;
  c.sample_size = static_cast<int>(deck.get_int("model.input_size"));
  c.video_length = static_cast<int>(deck.get_int("model.num_frames"));
  c.caption_channels = static_cast<int>(deck.get_int("model.caption_channels"));
  c.text_length = static_cast<int>(deck.get_int("model.text_length"));
  c.validate();
  return c;
}

std::string config_to_json(const LatteConfig& c) {
  nlohmann::ordered_json j = {{"type", "latte"},
                              {"num_layers", c.depth},
                              {"num_attention_heads", c.num_heads},
                              {"attention_head_dim", c.hidden_size / c.num_heads},
                              {"patch_size", c.patch_size},
                              {"in_channels", c.in_channels},
                              {"out_channels", c.out_channels},
                              {"sample_size", c.sample_size},
                              {"video_length", c.video_length},
                              {"caption_channels", c.caption_channels},
                              {"text_length", c.text_length}};
  return j.dump();
}

// opendit's JSON uses diffusers' config keys, so a Latte-1 transformer/config.json reads the same way.
LatteConfig config_from_json(const std::string& text) {
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw Error(cat("not a Latte configuration: ", text));
  LatteConfig c;
  try {
    c.depth = j.at("num_layers"), c.num_heads = j.at("num_attention_heads");
    c.hidden_size = c.num_heads * j.at("attention_head_dim").get<int>();
    c.patch_size = j.at("patch_size"), c.in_channels = j.at("in_channels");
    c.out_channels = j.contains("out_channels") && !j["out_channels"].is_null() ? j["out_channels"].get<int>()
                                                                               : c.in_channels;
    c.sample_size = j.at("sample_size"), c.video_length = j.value("video_length", 16);
    c.caption_channels = j.at("caption_channels"), c.text_length = j.value("text_length", 120);
    for (const char* key : {"norm_type", "activation_fn"})
      if (j.contains(key) && j[key].is_string()) {
        const std::string v = j[key];
        if (v != (std::string(key) == "norm_type" ? "ada_norm_single" : "gelu-approximate"))
          throw Error(cat("Latte configuration: ", key, " = \"", v, "\" (opendit's Latte is ada_norm_single with "
                          "gelu-approximate, as Latte-1)"));
      }
  } catch (const nlohmann::json::exception& e) {
    throw Error(cat("Latte configuration ", text.substr(0, 200), ": ", e.what()));
  }
  try {
    c.validate();
  } catch (const CollectiveError& e) {
    throw Error(cat("Latte configuration: ", e.what()));
  }
  return c;
}

namespace {

std::string why_not_latte(const StateDict& sd) {
  if (!sd.count("temporal_transformer_blocks.0.attn1.to_q.weight"))
    return "not Latte weights (no 'temporal_transformer_blocks.0.attn1.to_q.weight')";
  return "";
}

}  // namespace

ModelType model_type() {
  ModelType t;
  t.name = "latte";
  t.summary = "text-to-video Latte in the layout of diffusers' LatteTransformer3DModel (Latte-1's weights), "
              "preset Latte-XL/2";
  t.options = {};  // every key it reads is declared by dit or stdit (preset choices: Latte-XL/2 below)
  t.options.push_back({"model.preset", config::Type::Choice, std::string("auto"),
                       "Official size preset of the model type.", -1e300, 1e300, {"auto", "custom", "Latte-XL/2"}});
  t.from_deck = [](const config::Deck& deck, std::optional<uint64_t> seed) -> std::unique_ptr<Model> {
    return std::make_unique<Latte>(config_from(deck), seed);
  };
  t.from_config_json = [](const std::string& json, std::optional<uint64_t> seed) -> std::unique_ptr<Model> {
    return std::make_unique<Latte>(config_from_json(json), seed);
  };
  t.not_mine = why_not_latte;
  t.from_weights = [](const StateDict&, const std::string& config_json,
                      const std::string& origin) -> std::unique_ptr<Model> {
    if (config_json.empty())
      throw Error(cat(origin, ": Latte weights without diffusers' config.json beside them: pass --config DECK "
                              "(model.type = \"latte\" and its sizes)"));
    return std::make_unique<Latte>(config_from_json(config_json), uint64_t{0});
  };
  t.contradictions = [](const config::Deck& deck, const std::string& json) {
    const LatteConfig rec = config_from_json(json);
    std::vector<Contradiction> out;
    auto cmp = [&](const char* name, int recorded, bool zero_unset) {
      const std::string key = cat("model.", name);
      const int64_t v = deck.get_int(key);
      if (deck.origin(key) != "default" && !(zero_unset && v == 0) && v != recorded)
        out.push_back({key, std::to_string(v), cat(name, " ", recorded)});
    };
    cmp("depth", rec.depth, true);
    cmp("hidden_size", rec.hidden_size, true);
    cmp("num_heads", rec.num_heads, true);
    cmp("patch_size", rec.patch_size, true);
    cmp("in_channels", rec.in_channels, false);
    cmp("input_size", rec.sample_size, false);
    cmp("num_frames", rec.video_length, false);
    cmp("caption_channels", rec.caption_channels, false);
    cmp("text_length", rec.text_length, false);
    if (deck.origin("model.learn_sigma") != "default" &&
        deck.get_bool("model.learn_sigma") != (rec.out_channels == 2 * rec.in_channels))
      out.push_back({"model.learn_sigma", deck.get_bool("model.learn_sigma") ? "true" : "false",
                     cat("out_channels ", rec.out_channels)});
    return out;
  };
  return t;
}

}  // namespace opendit::models::latte
