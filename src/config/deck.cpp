#include "config/deck.hpp"

#include <cmath>
#include <nlohmann/json.hpp>
#include <toml++/toml.h>

#include "core/error.hpp"
#include "core/strings.hpp"

namespace opendit::config {

namespace {

std::string unknown_key_message(const Schema& schema, const std::string& key, const std::string& where) {
  return cat(where, ": unknown key '", key, "'; did you mean '", closest_match(key, schema.keys()),
             "'? (docs/CONFIG.md lists every key)");
}

// What a TOML node holds, for "expected X, found Y" messages.
std::string describe(const toml::node& n) {
  std::ostringstream os;
  os << n.type() << " ";
  if (n.is_value()) {
    n.visit([&](auto&& v) {
      if constexpr (toml::is_value<decltype(v)>) os << v;
    });
  }
  return os.str();
}

}  // namespace

Deck::Deck(const Schema& schema) : schema_(&schema) {
  for (const auto& o : schema.options) {
    values_[o.key] = o.default_value;
    origins_[o.key] = "default";
  }
}

void Deck::assign(const Option& opt, Value v, const std::string& where) {
  auto fail = [&](const std::string& found) {
    throw Error(cat(where, ": ", opt.key, " expects ", type_name(opt), ", found ", found));
  };
  if (opt.type == Type::Float)
    if (auto i = std::get_if<int64_t>(&v)) v = static_cast<double>(*i);  // 1 is a fine float
  switch (opt.type) {
    case Type::Bool:
      if (!std::holds_alternative<bool>(v)) fail(value_to_toml(v));
      break;
    case Type::Int: {
      auto i = std::get_if<int64_t>(&v);
      if (!i) fail(value_to_toml(v));
      if (*i < opt.min || *i > opt.max) fail(std::to_string(*i));
      break;
    }
    case Type::Float: {
      auto d = std::get_if<double>(&v);
      if (!d) fail(value_to_toml(v));
      if (!std::isfinite(*d) || *d < opt.min || *d > opt.max) fail(value_to_toml(v));
      break;
    }
    case Type::String:
      if (!std::holds_alternative<std::string>(v)) fail(value_to_toml(v));
      break;
    case Type::Choice: {
      auto s = std::get_if<std::string>(&v);
      if (!s) fail(value_to_toml(v));
      bool ok = false;
      for (const auto& c : opt.choices) ok |= (c == *s);
      if (!ok) fail(cat("\"", *s, "\" (closest: \"", closest_match(*s, opt.choices), "\")"));
      break;
    }
  }
  values_[opt.key] = std::move(v);
  origins_[opt.key] = where;
}

Deck Deck::from_toml(const std::string& text, const std::string& origin, const Schema& schema) {
  toml::table root;
  try {
    root = toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    throw Error(cat(origin, ":", e.source().begin.line, ":", e.source().begin.column,
                    ": TOML syntax error: ", e.description()));
  }
  Deck deck(schema);
  auto where = [&](const toml::node& n) { return cat(origin, ":", n.source().begin.line); };
  for (const auto& [sec_key, sec_node] : root) {
    std::string sec(sec_key.str());
    const toml::table* tbl = sec_node.as_table();
    if (!tbl) {
      // A top-level value: every key lives in a section.
      throw Error(unknown_key_message(schema, sec, where(sec_node)));
    }
    if (!schema.has_section(sec)) {
      std::string first = tbl->empty() ? sec : sec + "." + std::string(tbl->begin()->first.str());
      throw Error(unknown_key_message(schema, first, where(sec_node)));
    }
    for (const auto& [k, node] : *tbl) {
      std::string key = sec + "." + std::string(k.str());
      const Option* opt = schema.find(key);
      if (!opt) throw Error(unknown_key_message(schema, key, where(node)));
      Value v;
      if (auto b = node.value<bool>(); node.is_boolean()) v = *b;
      else if (node.is_integer()) v = *node.value<int64_t>();
      else if (node.is_floating_point()) v = *node.value<double>();
      else if (node.is_string()) v = *node.value<std::string>();
      else throw Error(cat(where(node), ": ", key, " expects ", type_name(*opt), ", found ", describe(node)));
      deck.assign(*opt, std::move(v), where(node));
    }
  }
  return deck;
}

void Deck::set(const std::string& assignment) {
  std::string where = cat("--set ", assignment);
  size_t eq = assignment.find('=');
  if (eq == std::string::npos) throw Error(cat(where, ": expected section.key=value"));
  std::string key = trim(assignment.substr(0, eq)), text = trim(assignment.substr(eq + 1));
  const Option* opt = schema_->find(key);
  if (!opt) throw Error(unknown_key_message(*schema_, key, where));
  Value v = text;  // strings as given; numbers and booleans parsed by the key's type
  if (opt->type == Type::Bool) {
    if (text == "true") v = true;
    else if (text == "false") v = false;
  } else if (opt->type == Type::Int || opt->type == Type::Float) {
    // TOML's own number grammar, so that --set and the file accept the same spellings.
    try {
      toml::table t = toml::parse("x = " + text);
      if (t["x"].is_integer()) v = *t["x"].value<int64_t>();
      else if (t["x"].is_floating_point()) v = *t["x"].value<double>();
    } catch (const toml::parse_error&) {
    }
  } else if (text.size() >= 2 && text.front() == '"' && text.back() == '"') {
    v = text.substr(1, text.size() - 2);
  }
  if (std::holds_alternative<std::string>(v) && opt->type != Type::String && opt->type != Type::Choice)
    throw Error(cat(where, ": ", key, " expects ", type_name(*opt), ", found '", text, "'"));
  assign(*opt, std::move(v), "--set");
}

const Value& Deck::get(const std::string& key) const {
  auto it = values_.find(key);
  if (it == values_.end()) throw std::logic_error("config key not in the schema: " + key);
  return it->second;
}

bool Deck::get_bool(const std::string& key) const { return std::get<bool>(get(key)); }
int64_t Deck::get_int(const std::string& key) const { return std::get<int64_t>(get(key)); }
double Deck::get_float(const std::string& key) const { return std::get<double>(get(key)); }
const std::string& Deck::get_string(const std::string& key) const { return std::get<std::string>(get(key)); }
const std::string& Deck::origin(const std::string& key) const { return origins_.at(key); }

std::string Deck::to_toml(bool with_origins) const {
  std::ostringstream os;
  for (const auto& sec : schema_->sections) {
    os << "[" << sec.name << "]\n";
    for (const auto& o : schema_->options) {
      if (o.key.rfind(sec.name + ".", 0) != 0) continue;
      os << o.key.substr(sec.name.size() + 1) << " = " << value_to_toml(get(o.key));
      if (with_origins) os << "  # " << origin(o.key);
      os << "\n";
    }
  }
  return os.str();
}

std::string Deck::to_json() const {
  nlohmann::ordered_json j;
  for (const auto& o : schema_->options) {
    auto parts = split(o.key, '.');
    std::visit([&](const auto& x) { j[parts[0]][parts[1]] = x; }, get(o.key));
  }
  return j.dump();
}

}  // namespace opendit::config
