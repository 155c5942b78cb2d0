#include "encode/manifest.hpp"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/strings.hpp"

namespace opendit::encode {

namespace fs = std::filesystem;

namespace {

bool ends_with_ci(const std::string& s, const std::string& tail) {
  if (s.size() < tail.size()) return false;
  for (size_t i = 0; i < tail.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(s[s.size() - tail.size() + i])) != tail[i]) return false;
  return true;
}

int64_t parse_label(const std::string& text, const std::string& where) {
  size_t used = 0;
  int64_t v = -1;
  try {
    v = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || v < 0)
    throw Error(cat(where, ": label \"", text, "\" is not a non-negative integer"));
  return v;
}

// Resolves a manifest path against the manifest's folder and checks it exists.
std::string resolve(const std::string& p, const fs::path& base, const std::string& where) {
  if (p.empty()) throw Error(cat(where, ": no path"));
  const fs::path full = fs::path(p).is_absolute() ? fs::path(p) : base / p;
  std::error_code ec;
  if (!fs::is_regular_file(full, ec))
    throw Error(cat(where, ": ", full.string(), " does not exist (or is not a file)"));
  return full.string();
}

// One CSV record (RFC 4180) starting at line `line`; false at the end of the input.
bool csv_record(std::istream& in, std::vector<std::string>& fields, int64_t& line, const std::string& origin) {
  fields.clear();
  std::string field, text;
  if (!std::getline(in, text)) return false;
  ++line;
  const int64_t first = line;
  bool quoted = false;
  for (size_t i = 0;; ++i) {
    if (i == text.size()) {
      if (quoted) {  // a line break inside quotes: the record goes on
        std::string more;
        if (!std::getline(in, more)) throw Error(cat(origin, ":", first, ": a quoted field is never closed"));
        ++line;
        field += '\n';
        text = more;
        i = static_cast<size_t>(-1);
        continue;
      }
      break;
    }
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') field += '"', ++i;
      else if (c == '"') quoted = false;
      else field += c;
    } else if (c == '"' && field.empty()) {
      quoted = true;
    } else if (c == ',') {
      fields.push_back(field), field.clear();
    } else if (c != '\r' || i + 1 != text.size()) {
      field += c;
    }
  }
  fields.push_back(field);
  return true;
}

InputList read_csv(const std::string& path, std::istream& in) {
  InputList list;
  list.origin = path;
  const fs::path base = fs::path(path).parent_path();
  std::vector<std::string> header, f;
  int64_t line = 0;
  if (!csv_record(in, header, line, path)) throw Error(cat(path, ": empty manifest (a header row is needed)"));
  int col_path = -1, col_caption = -1, col_label = -1;
  for (int i = 0; i < int(header.size()); ++i) {
    std::string h = header[size_t(i)];
    h.erase(std::remove_if(h.begin(), h.end(), [](unsigned char c) { return std::isspace(c); }), h.end());
    if (h == "path") col_path = i;
    if (h == "caption" || h == "text") col_caption = i;
    if (h == "label") col_label = i;
  }
  if (col_path < 0)
    throw Error(cat(path, ":1: the header has no \"path\" column (it names: ", join(header, ", "), ")"));
  if (col_caption < 0 && col_label < 0)
    throw Error(cat(path, ":1: the header has neither a \"caption\" nor a \"label\" column"));
  list.has_captions = col_caption >= 0;
  list.has_labels = col_label >= 0;
  for (;;) {
    const int64_t at = line + 1;
    if (!csv_record(in, f, line, path)) break;
    if (f.size() == 1 && f[0].empty()) continue;  // blank line
    const std::string where = cat(path, ":", at);
    if (f.size() != header.size())
      throw Error(cat(where, ": ", f.size(), " fields, the header has ", header.size()));
    InputItem item;
    item.line = at;
    item.path = resolve(f[size_t(col_path)], base, where);
    if (col_caption >= 0) item.caption = f[size_t(col_caption)];
    if (col_label >= 0) item.label = parse_label(f[size_t(col_label)], where);
    list.items.push_back(std::move(item));
  }
  return list;
}

InputList read_jsonl(const std::string& path, std::istream& in) {
  InputList list;
  list.origin = path;
  const fs::path base = fs::path(path).parent_path();
  std::string text;
  for (int64_t line = 1; std::getline(in, text); ++line) {
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = cat(path, ":", line);
    const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object()) throw Error(cat(where, ": not a JSON object"));
    InputItem item;
    item.line = line;
    if (!j.contains("path") || !j["path"].is_string()) throw Error(cat(where, ": no \"path\" string"));
    item.path = resolve(j["path"].get<std::string>(), base, where);
    const bool cap = j.contains("caption"), lab = j.contains("label");
    if (!cap && !lab) throw Error(cat(where, ": neither a \"caption\" nor a \"label\""));
    if (list.items.empty()) list.has_captions = cap, list.has_labels = lab;
    if (cap != list.has_captions || lab != list.has_labels)
      throw Error(cat(where, ": has ", cap ? "a" : "no", " caption and ", lab ? "a" : "no",
                      " label, unlike the lines before it"));
    if (cap) {
      if (!j["caption"].is_string()) throw Error(cat(where, ": \"caption\" is not a string"));
      item.caption = j["caption"].get<std::string>();
    }
    if (lab) {
      if (!j["label"].is_number_integer() || j["label"].get<int64_t>() < 0)
        throw Error(cat(where, ": \"label\" is not a non-negative integer"));
      item.label = j["label"].get<int64_t>();
    }
    list.items.push_back(std::move(item));
  }
  return list;
}

}  // namespace

InputList read_manifest(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(cat(path, ": the manifest cannot be read (no such file or no permission)"));
  InputList list;
  if (ends_with_ci(path, ".csv")) list = read_csv(path, in);
  else if (ends_with_ci(path, ".jsonl")) list = read_jsonl(path, in);
  else throw Error(cat(path, ": a manifest is NAME.csv or NAME.jsonl"));
  if (list.items.empty()) throw Error(cat(path, ": the manifest lists no files"));
  return list;
}

InputList scan_image_folder(const std::string& root) {
  std::error_code ec;
  if (!fs::is_directory(root, ec)) throw Error(cat(root, ": not a folder"));
  InputList list;
  list.origin = root;
  list.has_labels = true;
  std::vector<fs::path> classes;
  for (const auto& e : fs::directory_iterator(root, ec))
    if (e.is_directory()) classes.push_back(e.path());
  std::sort(classes.begin(), classes.end());
  if (classes.empty()) throw Error(cat(root, ": no class subfolders (an ImageNet-style folder has one per class)"));
  for (size_t k = 0; k < classes.size(); ++k) {
    list.class_names.push_back(classes[k].filename().string());
    std::vector<fs::path> files;
    const auto opts = fs::directory_options::follow_directory_symlink;
    for (const auto& e : fs::recursive_directory_iterator(classes[k], opts, ec))
      if (e.is_regular_file()) files.push_back(e.path());
    // Folders then names, as torchvision sorts os.walk's folders and each folder's files.
    std::sort(files.begin(), files.end(), [](const fs::path& a, const fs::path& b) {
      const std::string da = a.parent_path().string(), db = b.parent_path().string();
      return da != db ? da < db : a.filename().string() < b.filename().string();
    });
    for (const fs::path& f : files) {
      const std::string name = f.filename().string();
      if (ends_with_ci(name, ".jpg") || ends_with_ci(name, ".jpeg") || ends_with_ci(name, ".png"))
        list.items.push_back({f.string(), "", static_cast<int64_t>(k), 0});
      else
        ++list.skipped_files;
    }
  }
  if (list.items.empty()) throw Error(cat(root, ": no .jpg, .jpeg or .png files in its class subfolders"));
  return list;
}

}  // namespace opendit::encode
