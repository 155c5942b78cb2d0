#include "io/weights.hpp"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.hpp"
#include "io/safetensors.hpp"

namespace opendit::io {

namespace fs = std::filesystem;

std::string weights_file_path(const std::string& path) {
  if (!fs::is_directory(path)) return path;
  for (const char* name : {"diffusion_pytorch_model.safetensors", "transformer/diffusion_pytorch_model.safetensors"})
    if (fs::exists(fs::path(path) / name)) return (fs::path(path) / name).string();
  throw Error(cat(path, ": a folder without diffusion_pytorch_model.safetensors"));
}

std::map<std::string, std::string> read_weights_metadata(const std::string& path) {
  return read_safetensors_header(weights_file_path(path)).metadata;
}

std::string recorded_model(const std::map<std::string, std::string>& metadata) {
  const auto format = metadata.find("format"), config = metadata.find("config");
  if (format == metadata.end() || format->second.rfind("opendit.", 0) != 0 || config == metadata.end()) return "";
  return config->second;
}

WeightsFile read_weights(const std::string& path) {
  WeightsFile w;
  w.path = weights_file_path(path);
  SafetensorsFile file = load_safetensors(w.path);
  w.tensors = std::move(file.tensors);
  w.metadata = std::move(file.metadata);
  // diffusers keeps the hyper-parameters that weights cannot tell (input size, heads) in config.json: the first
  // that holds a JSON object.
  const fs::path dir = fs::is_directory(path) ? fs::path(path) : fs::path(path).parent_path();
  for (const fs::path& p : {dir / "config.json", dir / "transformer" / "config.json"}) {
    std::ifstream f(p);
    if (!f) continue;
    std::ostringstream text;
    text << f.rdbuf();
    const nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, false);
    if (j.is_discarded() || !j.is_object()) continue;
    w.config_json = text.str();
    break;
  }
  return w;
}

void write_weights(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
                   const std::map<std::string, std::string>& metadata) {
  std::map<std::string, at::Tensor> cpu;
  for (const auto& [name, t] : tensors) cpu[name] = t.detach().to(at::kCPU).contiguous();
  save_safetensors(path, cpu, metadata);
}

}  // namespace opendit::io
