#include "config/schema.hpp"

#include <cmath>
#include <iomanip>
#include <sstream>

#include "core/strings.hpp"

namespace opendit::config {

const Schema& schema() {
  static const Schema s = [] {
    Schema s;
    s.sections = {
        {"parallel", "How the MPI ranks are split into sequence-parallel and data-parallel groups."},
    };
    s.options = {
        {"parallel.sp_size", Type::Int, int64_t{1},
         "Ranks per sequence-parallel group (contiguous ranks). The data-parallel size is world / sp_size, which "
         "must divide.",
         1, 1 << 20, {}},
    };
    return s;
  }();
  return s;
}

const Option* Schema::find(const std::string& key) const {
  for (const auto& o : options)
    if (o.key == key) return &o;
  return nullptr;
}

bool Schema::has_section(const std::string& name) const {
  for (const auto& s : sections)
    if (s.name == name) return true;
  return false;
}

std::vector<std::string> Schema::keys() const {
  std::vector<std::string> k;
  for (const auto& o : options) k.push_back(o.key);
  return k;
}

static std::string number(double x) {
  if (x == std::floor(x) && std::fabs(x) < 1e15) return std::to_string(static_cast<int64_t>(x));
  std::ostringstream os;
  os << std::setprecision(17) << x;
  return os.str();
}

std::string type_name(const Option& opt) {
  auto range = [&](const char* what) {
    std::string s = what;
    bool lo = opt.min > -1e299, hi = opt.max < 1e299;
    if (lo && hi) s += " in [" + number(opt.min) + ", " + number(opt.max) + "]";
    else if (lo) s += " >= " + number(opt.min);
    else if (hi) s += " <= " + number(opt.max);
    return s;
  };
  switch (opt.type) {
    case Type::Bool: return "boolean";
    case Type::Int: return range("integer");
    case Type::Float: return range("number");
    case Type::String: return "string";
    case Type::Choice: return "one of " + join(opt.choices, ", ");
  }
  return "?";
}

std::string value_to_toml(const Value& v) {
  if (auto b = std::get_if<bool>(&v)) return *b ? "true" : "false";
  if (auto i = std::get_if<int64_t>(&v)) return std::to_string(*i);
  if (auto d = std::get_if<double>(&v)) {
    std::ostringstream os;
    os << std::setprecision(17) << *d;
    std::string s = os.str();
    if (s.find_first_of(".eEn") == std::string::npos) s += ".0";  // keep it a TOML float
    return s;
  }
  std::string out = "\"";
  for (char c : std::get<std::string>(v)) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string schema_markdown(const Schema& schema) {
  std::ostringstream md;
  md << "# Input deck reference\n\n"
     << "Generated from the schema in `src/config/schema.cpp` (`opendit info --config-doc > docs/CONFIG.md`);\n"
     << "a test fails when this file and the schema disagree.\n\n"
     << "A deck is a TOML file (`--config FILE`); `--set section.key=value` overrides one key and may be repeated.\n"
     << "Every key is optional and takes the default below. An unknown key, a wrong type or a value out of range is\n"
     << "an error that names the file and line.\n";
  for (const auto& sec : schema.sections) {
    md << "\n## [" << sec.name << "]\n\n" << sec.doc << "\n\n"
       << "| key | type | default | meaning |\n|---|---|---|---|\n";
    for (const auto& o : schema.options) {
      if (o.key.rfind(sec.name + ".", 0) != 0) continue;
      md << "| `" << o.key.substr(sec.name.size() + 1) << "` | " << type_name(o) << " | `"
         << value_to_toml(o.default_value) << "` | " << o.doc << " |\n";
    }
  }
  return md.str();
}

}  // namespace opendit::config
