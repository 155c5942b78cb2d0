// The model registry: every model type opendit knows, by the name decks give in model.type. A new model is a new
// folder under src/models/ plus one line in registry.cpp. The trainer, the sampler, the benchmarks and convert go
// through this registry and the Model interface only.
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config/deck.hpp"
#include "models/model.hpp"

namespace opendit::models {

// A deck key that says otherwise than the model that weights record.
struct Contradiction {
  std::string key;       // "model.depth"
  std::string given;     // the deck's value, "12"
  std::string recorded;  // what the weights record, "depth 2"
};

struct ModelType {
  std::string name;     // model.type
  std::string summary;  // one line for `opendit info` and docs/CONFIG.md
  // The [model] keys it reads (beside model.type, model.space and model.attention, which every model has). Two
  // types may declare one key; its type and default must then agree (choices are merged).
  std::vector<config::Option> options;
  // A model with fresh weights (the official initialisation, seeded), from a deck or from the config JSON a
  // checkpoint recorded. Without a seed: a description only, its tensors on the meta device (no memory), for plans
  // and dry runs. Invalid settings throw opendit::CollectiveError (every rank reads the same deck).
  std::function<std::unique_ptr<Model>(const config::Deck& deck, std::optional<uint64_t> seed)> from_deck;
  std::function<std::unique_ptr<Model>(const std::string& config_json, std::optional<uint64_t> seed)>
      from_config_json;
  // Whether a state dict (any layout the type reads) holds this type's weights: "" when it does, else why not.
  std::function<std::string(const StateDict& sd)> not_mine;
  // The model that fits weights alone (convert without a deck): from the tensors and a diffusers config.json beside
  // them ("" if none). Throws opendit::Error naming `origin` and what the weights do not tell.
  std::function<std::unique_ptr<Model>(const StateDict& sd, const std::string& config_json, const std::string& origin)>
      from_weights;
  // The keys of `options` the deck gives (not defaults) that contradict a recorded config JSON (model_from_record).
  std::function<std::vector<Contradiction>(const config::Deck& deck, const std::string& config_json)> contradictions;
};

// Every registered type, in registration order.
const std::vector<ModelType>& model_types();
// The type of that name; throws opendit::CollectiveError listing the known ones.
const ModelType& model_type(const std::string& name);

// The deck's model (model.type), freshly initialised from `seed` (without: described only, on the meta device).
std::unique_ptr<Model> make_model(const config::Deck& deck, std::optional<uint64_t> seed);
// The model a checkpoint's config JSON describes: its "type" member (absent: "dit", the format before the registry).
std::unique_ptr<Model> model_from_config_json(const std::string& json, std::optional<uint64_t> seed);
// The model that weights record (`recorded`: Model::config_json from an opendit weight file's metadata or a
// checkpoint), so that the deck need not describe it. A model key the deck gives (a file or --set, not a default)
// that contradicts the record is an opendit::Error naming both and `origin` (the weights).
std::unique_ptr<Model> model_from_record(const config::Deck& deck, const std::string& recorded,
                                         const std::string& origin, std::optional<uint64_t> seed);
// The type whose weights these are (throws opendit::Error naming `origin` and each type's reason when none is).
const ModelType& model_type_of(const StateDict& sd, const std::string& origin);

// The schema of opendit's decks: the base keys (config/schema.hpp), model.type and every model type's keys.
const config::Schema& deck_schema();

}  // namespace opendit::models
