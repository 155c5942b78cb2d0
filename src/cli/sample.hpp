// `opendit sample`'s arguments, shared by its two paths: class-conditional images (sample.cpp) and text-to-video
// (sample_text.cpp: --prompt / --prompts).
#pragma once
#include <ATen/ATen.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli/app.hpp"
#include "models/model.hpp"
#include "sample/plan.hpp"

namespace opendit::cli {

struct SampleArgs {
  DeckArgs deck;
  std::string checkpoint, out, classes, init_noise, vae, vae_dtype = "fp32";
  int per_class = 1;
  // Text-to-video.
  std::vector<std::string> prompts;
  std::string prompts_file, text_encoder, text_dtype = "fp32";
  std::optional<std::string> negative_prompt;  // Latte: guidance's unconditional branch (default "")
  int per_prompt = 1;
  double fps = 8;
  bool overwrite = false;
  sample::SampleOptions options;
};

// The model to sample: the one the weights record (`recorded`, their metadata's config; checked against the deck's
// model keys), else the deck's. Without a seed a description only (no memory).
std::unique_ptr<models::Model> sample_model(const SampleArgs& a, const config::Deck& deck, const std::string& recorded,
                                            std::optional<uint64_t> seed);

// Rows of samples [N, ...] that hold a NaN or Inf.
std::vector<int64_t> nonfinite_rows(const at::Tensor& samples);

// The text-to-video path: `recorded` is the model config the weights record ("" when they record none).
void run_sample_text(const SampleArgs& a, const config::Deck& deck, const std::string& recorded);

}  // namespace opendit::cli
