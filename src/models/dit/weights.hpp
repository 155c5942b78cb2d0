// DiT weights in the two published layouts: the official facebookresearch/DiT names (opendit's own files use them)
// and diffusers' DiTTransformer2DModel, read and written through a key mapping (the inverse of diffusers' own
// conversion). Files themselves are io/'s business (io/weights.hpp).
#pragma once
#include <string>

#include "models/model.hpp"

namespace opendit::models::dit {

enum class WeightLayout { Official, Diffusers };

// "" when a state dict holds DiT weights in either layout, else why not; which layout (throws opendit::Error naming
// `origin` if neither).
std::string why_not_dit(const StateDict& sd);
WeightLayout detect_layout(const StateDict& sd, const std::string& origin);

// diffusers keeps a copy of the timestep/label embedder in every block; they must all be equal (as conversion from
// official weights makes them), else the file is not a DiT and this throws.
StateDict diffusers_to_official(const StateDict& sd, const std::string& origin);
StateDict official_to_diffusers(const StateDict& sd);

// Either layout -> official names.
StateDict to_official(const StateDict& sd, const std::string& origin);

}  // namespace opendit::models::dit
