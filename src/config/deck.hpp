// An input deck resolved against the schema: defaults, then the TOML file, then --set overrides.
// Every value is validated when it enters; errors are opendit::Error naming the file and line (every rank parses
// the same text, so callers treat them as collective: cli/app.cpp).
#pragma once
#include <map>
#include <string>

#include "config/schema.hpp"

namespace opendit::config {

class Deck {
 public:
  explicit Deck(const Schema& schema);  // all defaults

  // Parses TOML text; `origin` names it in errors (the file path).
  static Deck from_toml(const std::string& text, const std::string& origin, const Schema& schema);

  // Applies "section.key=value" (the --set syntax); the value is read as the key's type.
  void set(const std::string& assignment);

  bool get_bool(const std::string& key) const;
  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;
  const std::string& get_string(const std::string& key) const;  // String and Choice keys

  // Where a value came from: "default", "FILE:LINE" or "--set".
  const std::string& origin(const std::string& key) const;

  // The resolved deck as TOML (every key, in schema order) and as JSON (for checkpoints and metrics).
  std::string to_toml(bool with_origins = false) const;
  std::string to_json() const;
  const Schema& schema() const { return *schema_; }

 private:
  void assign(const Option& opt, Value v, const std::string& where);
  const Value& get(const std::string& key) const;
  const Schema* schema_;
  std::map<std::string, Value> values_;
  std::map<std::string, std::string> origins_;
};

}  // namespace opendit::config
