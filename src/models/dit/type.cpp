// DiT's entry in the model registry (models/registry.cpp).
#include <nlohmann/json.hpp>

#include "config/deck.hpp"
#include "core/error.hpp"
#include "core/strings.hpp"
#include "models/dit/dit.hpp"
#include "models/dit/weights.hpp"
#include "models/registry.hpp"

namespace opendit::models::dit {

namespace {

// The deck's [model] keys against a recorded DiT (model_from_record). A size key of 0 means "from the preset", so
// an explicit preset is compared on the sizes that no explicit size key overrides. class_dropout_prob is not
// recorded (it only matters for training).
std::vector<Contradiction> contradictions(const config::Deck& deck, const DiTConfig& rec) {
  std::vector<Contradiction> out;
  auto given = [&](const std::string& key) { return deck.origin(key) != "default"; };
  const std::string& raw = deck.get_string("model.preset");
  const std::string preset_name = raw == "auto" ? "DiT-XL/2" : raw;
  const bool from_preset = given("model.preset") && preset_name != "custom";
  const DiTConfig p = from_preset ? preset(preset_name) : DiTConfig{};
  struct Size {
    const char* key;
    int DiTConfig::*field;
  };
  const Size sizes[] = {{"depth", &DiTConfig::depth}, {"hidden_size", &DiTConfig::hidden_size},
                        {"num_heads", &DiTConfig::num_heads}, {"patch_size", &DiTConfig::patch_size}};
  std::vector<std::string> preset_says;
  for (const Size& s : sizes) {
    const std::string key = cat("model.", s.key);
    const int64_t v = deck.get_int(key);
    if (given(key) && v > 0) {
      if (v != rec.*s.field) out.push_back({key, std::to_string(v), cat(s.key, " ", rec.*s.field)});
    } else if (from_preset && p.*s.field != rec.*s.field) {
      preset_says.push_back(cat(s.key, " ", rec.*s.field, " (the preset's is ", p.*s.field, ")"));
    }
  }
  if (!preset_says.empty()) out.push_back({"model.preset", "\"" + preset_name + "\"", join(preset_says, ", ")});
  auto compare = [&](const char* name, const std::string& given_text, const std::string& rec_text) {
    const std::string key = cat("model.", name);
    if (given(key) && given_text != rec_text) out.push_back({key, given_text, cat(name, " ", rec_text)});
  };
  compare("in_channels", std::to_string(deck.get_int("model.in_channels")), std::to_string(rec.in_channels));
  compare("input_size", std::to_string(deck.get_int("model.input_size")), std::to_string(rec.input_size));
  compare("num_classes", std::to_string(deck.get_int("model.num_classes")), std::to_string(rec.num_classes));
  compare("learn_sigma", deck.get_bool("model.learn_sigma") ? "true" : "false", rec.learn_sigma ? "true" : "false");
  compare("mlp_ratio", shortest(deck.get_float("model.mlp_ratio")), shortest(rec.mlp_ratio));
  return out;
}

}  // namespace

ModelType model_type() {
  ModelType t;
  t.name = "dit";
  t.summary = "class-conditional DiT (Peebles & Xie), presets DiT-{S,B,L,XL}/{2,4,8}";
  t.options = deck_options();
  t.from_deck = [](const config::Deck& deck, std::optional<uint64_t> seed) -> std::unique_ptr<Model> {
    return std::make_unique<DiT>(config_from(deck), seed);
  };
  t.from_config_json = [](const std::string& json, std::optional<uint64_t> seed) -> std::unique_ptr<Model> {
    return std::make_unique<DiT>(config_from_json(json), seed);
  };
  t.not_mine = why_not_dit;
  t.from_weights = [](const StateDict& sd, const std::string& config_json,
                      const std::string& origin) -> std::unique_ptr<Model> {
    const StateDict official = to_official(sd, origin);
    DiTConfig c = infer_config(official);
    if (!official.count("pos_embed")) c.input_size = 0;  // unknown from the weights alone
    // diffusers folders carry config.json beside the weights: the input size and heads that weights cannot tell.
    const nlohmann::json j = nlohmann::json::parse(config_json.empty() ? "{}" : config_json, nullptr, false);
    if (j.is_object()) {
      if (j.contains("sample_size") && j["sample_size"].is_number_integer()) c.input_size = j["sample_size"];
      if (j.contains("num_attention_heads") && j["num_attention_heads"].is_number_integer())
        c.num_heads = j["num_attention_heads"];
    }
    if (c.num_heads == 0 || c.input_size == 0)
      throw Error(cat(origin, ": the weights do not tell the ", c.num_heads == 0 ? "number of heads" : "input size",
                      "; pass --config DECK (or --set model.num_heads=H --set model.input_size=S)"));
    return std::make_unique<DiT>(c, uint64_t{0});
  };
  t.contradictions = [](const config::Deck& deck, const std::string& json) {
    return contradictions(deck, config_from_json(json));
  };
  return t;
}

}  // namespace opendit::models::dit
