// DiT's entry in the model registry (models/registry.cpp).
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "models/dit/dit.hpp"
#include "models/dit/weights.hpp"
#include "models/registry.hpp"

namespace opendit::models::dit {

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
  return t;
}

}  // namespace opendit::models::dit
