// The schema of input decks: every key's type, default, allowed range and meaning. Decks (inputs/*.toml), --set
// overrides, validation and docs/CONFIG.md all come from it. The full schema of opendit's decks is
// models::deck_schema(): the base keys here plus the keys each model type declares (models/registry.hpp).
#pragma once
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

namespace opendit::config {

using Value = std::variant<bool, int64_t, double, std::string>;

enum class Type { Bool, Int, Float, String, Choice };

struct Option {
  std::string key;                   // "section.name"
  Type type;
  Value default_value;
  std::string doc;
  double min = -1e300, max = 1e300;  // Int and Float: inclusive range
  std::vector<std::string> choices;  // Choice: the allowed strings
};

struct Section {
  std::string name;
  std::string doc;
};

struct Schema {
  std::vector<Section> sections;
  std::vector<Option> options;  // each key's section must be listed in `sections`
  const Option* find(const std::string& key) const;  // nullptr when unknown
  bool has_section(const std::string& name) const;
  std::vector<std::string> keys() const;
};

// The keys every deck has, whatever the model (src/config/schema.cpp): [diffusion], [sample], [train], [data],
// [run], [parallel] and the generic [model] keys (space, attention).
const Schema& base_schema();

std::string type_name(const Option& opt);           // "integer >= 1", "one of ddp, zero1, zero2", ...
std::string value_to_toml(const Value& v);          // TOML literal: 2, 0.5, true, "text"

// docs/CONFIG.md, generated from the table (a test keeps the committed file in sync).
std::string schema_markdown(const Schema& schema);

}  // namespace opendit::config
