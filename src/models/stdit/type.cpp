// STDiT's entry in the model registry (models/registry.cpp).
#include <nlohmann/json.hpp>

#include "config/deck.hpp"
#include "core/error.hpp"
#include "core/strings.hpp"
#include "models/registry.hpp"
#include "models/stdit/stdit.hpp"

namespace opendit::models::stdit {

namespace {

std::string why_not_stdit(const StateDict& sd) {
  auto it = sd.find("x_embedder.proj.weight");
  if (it == sd.end()) return "not STDiT weights (no 'x_embedder.proj.weight')";
  if (it->second.dim() != 5)
    return cat("not STDiT weights (x_embedder.proj.weight is ", it->second.dim(), "-D; STDiT's is a Conv3d)");
  if (!sd.count("blocks.0.attn_temp.qkv.weight")) return "not STDiT weights (no 'blocks.0.attn_temp.qkv.weight')";
  return "";
}

// The deck's [model] keys that a recorded STDiT contradicts. A size key of 0 means "from the preset".
std::vector<Contradiction> contradictions(const config::Deck& deck, const STDiTConfig& rec) {
  std::vector<Contradiction> out;
  auto given = [&](const std::string& key) { return deck.origin(key) != "default"; };
  // given: the deck's value as text; same: whether it is the recorded one; recorded: "name value" for the message.
  auto compare = [&](const std::string& key, const std::string& g, bool same, const std::string& recorded) {
    if (given(key) && !same) out.push_back({key, g, recorded});
  };
  auto compare_int = [&](const char* name, int recorded, bool zero_is_unset) {
    const std::string key = cat("model.", name);
    const int64_t v = deck.get_int(key);
    if (zero_is_unset && v == 0) return;
    compare(key, std::to_string(v), v == recorded, cat(name, " ", recorded));
  };
  const std::string& preset_name = deck.get_string("model.preset");
  if (given("model.preset") && preset_name != "custom") {
    const STDiTConfig p = preset(preset_name == "auto" ? "STDiT-XL/2" : preset_name);
    std::vector<std::string> says;
    if (p.depth != rec.depth && deck.get_int("model.depth") == 0) says.push_back(cat("depth ", rec.depth));
    if (p.hidden_size != rec.hidden_size && deck.get_int("model.hidden_size") == 0)
      says.push_back(cat("hidden_size ", rec.hidden_size));
    if (p.num_heads != rec.num_heads && deck.get_int("model.num_heads") == 0)
      says.push_back(cat("num_heads ", rec.num_heads));
    if (!says.empty()) out.push_back({"model.preset", "\"" + preset_name + "\"", join(says, ", ")});
  }
  compare_int("depth", rec.depth, true);
  compare_int("hidden_size", rec.hidden_size, true);
  compare_int("num_heads", rec.num_heads, true);
  compare_int("patch_size", rec.patch_h, true);
  compare_int("temporal_patch", rec.patch_t, false);
  compare_int("in_channels", rec.in_channels, false);
  compare_int("input_size", rec.height, false);
  compare_int("num_frames", rec.frames, false);
  compare_int("caption_channels", rec.caption_channels, false);
  compare_int("text_length", rec.text_length, false);
  if (deck.get_int("model.input_width") > 0) compare_int("input_width", rec.width, false);
  const bool sigma = deck.get_bool("model.learn_sigma");
  compare("model.learn_sigma", sigma ? "true" : "false", sigma == rec.learn_sigma,
          rec.learn_sigma ? "learn_sigma true" : "learn_sigma false");
  const double ratio = deck.get_float("model.mlp_ratio");
  compare("model.mlp_ratio", shortest(ratio), ratio == rec.mlp_ratio, cat("mlp_ratio ", shortest(rec.mlp_ratio)));
  return out;
}

}  // namespace

ModelType model_type() {
  ModelType t;
  t.name = "stdit";
  t.summary = "text-to-video STDiT of Open-Sora v1.0 (spatial, temporal and caption attention), presets "
              "STDiT-{S,B,XL}/2";
  t.options = deck_options();
  t.from_deck = [](const config::Deck& deck, std::optional<uint64_t> seed) -> std::unique_ptr<Model> {
    return std::make_unique<STDiT>(config_from(deck), seed);
  };
  t.from_config_json = [](const std::string& json, std::optional<uint64_t> seed) -> std::unique_ptr<Model> {
    return std::make_unique<STDiT>(config_from_json(json), seed);
  };
  t.not_mine = why_not_stdit;
  t.from_weights = [](const StateDict& sd, const std::string&, const std::string& origin) -> std::unique_ptr<Model> {
    STDiTConfig c = infer_config(sd);
    if (c.num_heads == 0 || c.frames == 0 || c.height == 0)
      throw Error(cat(origin, ": STDiT weights do not tell the ",
                      c.num_heads == 0 ? "number of heads" : "latent size the model is for",
                      "; pass --config DECK (model.type = \"stdit\", model.input_size, model.num_frames, ...)"));
    c.space_scale = c.height / 64.0;
    return std::make_unique<STDiT>(c, uint64_t{0});
  };
  t.contradictions = [](const config::Deck& deck, const std::string& json) {
    return contradictions(deck, config_from_json(json));
  };
  return t;
}

}  // namespace opendit::models::stdit
