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

// Tensors of any device and layout, written contiguous on the CPU (atomically: io/safetensors.hpp).
void write_weights(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
                   const std::map<std::string, std::string>& metadata);

}  // namespace opendit::io
