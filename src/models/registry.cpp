#include "models/registry.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "core/error.hpp"
#include "core/strings.hpp"
#include "models/dit/dit.hpp"
#include "models/latte/latte.hpp"
#include "models/stdit/stdit.hpp"

namespace opendit::models {

const std::vector<ModelType>& model_types() {
  static const std::vector<ModelType> types = {
      dit::model_type(),
      stdit::model_type(),
      latte::model_type(),
  };
  return types;
}

const ModelType& model_type(const std::string& name) {
  std::vector<std::string> names;
  for (const ModelType& t : model_types()) {
    if (t.name == name) return t;
    names.push_back(t.name);
  }
  throw CollectiveError(cat("model.type = \"", name, "\": no such model (known: ", join(names, ", "), ")"));
}

std::unique_ptr<Model> make_model(const config::Deck& deck, std::optional<uint64_t> seed) {
  return model_type(deck.get_string("model.type")).from_deck(deck, seed);
}

std::unique_ptr<Model> model_from_config_json(const std::string& json, std::optional<uint64_t> seed) {
  const nlohmann::json j = nlohmann::json::parse(json, nullptr, false);
  std::string type = "dit";
  if (j.is_object() && j.contains("type") && j["type"].is_string()) type = j["type"].get<std::string>();
  return model_type(type).from_config_json(json, seed);
}

std::unique_ptr<Model> model_from_record(const config::Deck& deck, const std::string& recorded,
                                         const std::string& origin, std::optional<uint64_t> seed) {
  std::unique_ptr<Model> model = model_from_config_json(recorded, seed);
  std::vector<std::string> bad;
  const std::string& type = deck.get_string("model.type");
  if (deck.origin("model.type") != "default" && type != model->type())
    bad.push_back(cat("model.type = \"", type, "\" (", deck.origin("model.type"), ") but they record a ", model->type(),
                      " model"));
  else
    for (const Contradiction& c : model_type(model->type()).contradictions(deck, recorded))
      bad.push_back(cat(c.key, " = ", c.given, " (", deck.origin(c.key), ") but they record ", c.recorded));
  if (!bad.empty())
    throw Error(cat(origin, ": the deck contradicts the model these weights record (", model->describe(), "): ",
                    join(bad, "; "), ". Leave these keys out (the weights' metadata describes the model) or give "
                    "other weights"));
  return model;
}

const ModelType& model_type_of(const StateDict& sd, const std::string& origin) {
  std::vector<std::string> reasons;
  for (const ModelType& t : model_types()) {
    const std::string why = t.not_mine(sd);
    if (why.empty()) return t;
    reasons.push_back(why);
  }
  throw Error(cat(origin, ": ", join(reasons, "; ")));
}

namespace {

// Adds `o` to `options`, or merges it with the option of the same key another type declared.
void add_option(std::vector<config::Option>& options, const config::Option& o, const std::string& type) {
  for (config::Option& have : options) {
    if (have.key != o.key) continue;
    if (have.type != o.type || have.default_value != o.default_value)
      throw std::logic_error(cat("model type ", type, " declares ", o.key, " differently from another type"));
    for (const std::string& c : o.choices)
      if (std::find(have.choices.begin(), have.choices.end(), c) == have.choices.end()) have.choices.push_back(c);
    return;
  }
  options.push_back(o);
}

}  // namespace

const config::Schema& deck_schema() {
  static const config::Schema schema = [] {
    const config::Schema& base = config::base_schema();
    config::Schema s;
    s.sections = base.sections;
    std::vector<std::string> names, docs;
    for (const ModelType& t : model_types()) names.push_back(t.name), docs.push_back("`" + t.name + "`: " + t.summary);
    s.options.push_back({"model.type", config::Type::Choice, names.front(),
                         "The model; its keys follow. " + join(docs, "; ") + ".", -1e300, 1e300, names});
    for (const ModelType& t : model_types())
      for (const config::Option& o : t.options) add_option(s.options, o, t.name);
    for (const config::Option& o : base.options) s.options.push_back(o);
    return s;
  }();
  return schema;
}

}  // namespace opendit::models
