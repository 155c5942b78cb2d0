// What a sampling run will do, read from the deck's [sample] and [diffusion] keys and the command line's overrides,
// with everything a user can get wrong checked before any work starts.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "config/deck.hpp"

namespace opendit::sample {

// The command line's overrides of the deck (unset: the deck's value).
struct SampleOptions {
  std::optional<std::string> steps;
  std::optional<double> cfg, eta;
  std::optional<int64_t> seed;
  std::optional<std::string> precision;  // "fp32" | "bf16"
  bool no_graph = false;
  int64_t batch = 0;  // samples per loop; 0: all at once
};

struct SamplePlan {
  std::string steps = "250";  // "250" (DDPM, respaced), "ddim50" (DDIM), section counts "10,20,30"
  bool ddim = false;
  double cfg_scale = 4.0, eta = 0.0;
  bool guide_first3 = false;  // sample.cfg_channels = first3: the official DiT sampler's quirk
  int64_t seed = 0;  // as given (sample.seed, --seed); the generator takes its bits
  at::ScalarType dtype = at::kFloat;  // the network's; the diffusion's arithmetic stays float32
  bool cuda_graph = true;             // on a GPU: replay each step's network call as a CUDA graph
  int64_t batch = 0;
  std::string attention = "auto", schedule = "linear";
  int num_steps = 1000;  // of the trained (base) diffusion
  bool pixel = false;    // model.space = "pixel": samples are images in [-1, 1]

  const char* sampler_name() const { return ddim ? "DDIM" : "DDPM"; }
  const char* dtype_name() const { return dtype == at::kBFloat16 ? "bf16" : "fp32"; }
};

// Throws opendit::Error for an invalid override (a negative guidance scale, eta outside [0, 1], steps or a schedule
// that make no diffusion, ...), naming the option.
SamplePlan make_plan(const config::Deck& deck, const SampleOptions& options);

// "207,360,387" -> class ids, each in [0, num_classes); empty text: every class of a model of at most 16 classes.
std::vector<int64_t> parse_classes(const std::string& text, int64_t num_classes);

}  // namespace opendit::sample
