// DiT weights on disk. opendit's weight file is safetensors with the official facebookresearch/DiT key names and
// metadata {"format": "opendit.dit", "version": "1", "config": <DiTConfig as JSON>}. diffusers'
// DiTTransformer2DModel files are read and written through a key mapping (the inverse of diffusers' own conversion).
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <string>

#include "models/dit_config.hpp"

namespace opendit::models {

using StateDict = std::map<std::string, at::Tensor>;

enum class WeightLayout { Official, Diffusers };

// Which naming a state dict uses (throws opendit::Error if neither).
WeightLayout detect_layout(const StateDict& sd, const std::string& origin);

// diffusers keeps a copy of the timestep/label embedder in every block; they must all be equal (as conversion from
// official weights makes them), else the file is not a DiT and this throws.
StateDict diffusers_to_official(const StateDict& sd, const std::string& origin);
StateDict official_to_diffusers(const StateDict& sd);

// Reads weights in either layout from a safetensors file, or a diffusers model folder (its
// diffusion_pytorch_model.safetensors); returns official names.
StateDict load_dit_weights(const std::string& path);

// Writes official names + opendit metadata, or the diffusers layout.
void save_dit_weights(const std::string& path, const StateDict& official, const DiTConfig& cfg,
                      WeightLayout layout = WeightLayout::Official);

std::string config_to_json(const DiTConfig& cfg);
DiTConfig dit_config_from_json(const std::string& json);  // the inverse (throws opendit::Error on bad JSON)

}  // namespace opendit::models
