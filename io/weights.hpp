// Weight files as they are published: a safetensors file, or a diffusers model folder (its
// diffusion_pytorch_model.safetensors and config.json, at the top or under transformer/). Models turn the tensors
// into their own names (models::Model::import_weights); this layer only reads and writes files.
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <string>

namespace opendit::io {

struct WeightsFile {
  std::string path;                              // the .safetensors read
  std::map<std::string, at::Tensor> tensors;     // CPU
  std::map<std::string, std::string> metadata;   // safetensors "__metadata__"
  std::string config_json;                       // config.json beside the weights (diffusers), "" when none
};

// A .safetensors file or a diffusers folder. Throws opendit::Error naming the path.
WeightsFile read_weights(const std::string& path);
// The .safetensors file read_weights reads: `path` itself, or a diffusers folder's weights file.
std::string weights_file_path(const std::string& path);
// The metadata alone (the header; no tensor is read): what a command checks before loading the weights.
std::map<std::string, std::string> read_weights_metadata(const std::string& path);

// The model configuration opendit's own weight files record (Model::weight_metadata: "format" = "opendit.*" and
// "config" = Model::config_json), "" for weights from elsewhere; with it a command needs no model.* deck keys.
std::string recorded_model(const std::map<std::string, std::string>& metadata);

// Tensors of any device and layout, written contiguous on the CPU (atomically: io/safetensors.hpp).
void write_weights(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
                   const std::map<std::string, std::string>& metadata);

}  // namespace opendit::io
