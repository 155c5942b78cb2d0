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
#include "parallel/context.hpp"
#include "sample/plan.hpp"
#include "sample/sampler.hpp"

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
  bool cfg_parallel = false;  // --cfg-parallel (or sample.cfg_parallel)
  sample::SampleOptions options;
};

// The ranks of a sampling run: parallel.sp_size ranks share each sample (sequence parallelism), times 2 with
// CFG-parallel guidance. Every rank computes the same samples; rank 0 reports and writes them.
struct SampleRanks {
  std::unique_ptr<parallel::Mesh> mesh;
  std::unique_ptr<parallel::ParallelContext> ctx;
  bool cfg_parallel = false;
  std::string sp_mode;  // parallel.sp_mode as the deck gives it

  bool root() const { return mesh->rank() == 0; }
  at::Device device() const { return ctx->device(); }
  const parallel::ProcessGroup& world() const { return mesh->world(); }
  // Checks that `model` can run the deck's sp mode and that guidance is on for CFG-parallel (opendit::Error; run
  // inside world().agree()).
  void check(const models::Model& model, const sample::SamplePlan& plan) const;
  // Collective over the groups: sequence parallelism on the model and CFG-parallel on the sampler.
  void apply(models::Model& model, sample::Sampler& sampler) const;
  // "" on one rank, else e.g. " over 4 ranks (sp 2 dsp x cfg-parallel)".
  std::string describe(const models::Model& model) const;
};
// Collective: the mesh and this rank's device; one opendit::CollectiveError when the world is not sp_size (x 2).
SampleRanks sample_ranks(const SampleArgs& a, const config::Deck& deck, MpiRuntime& mpi);

// The model to sample: the one the weights record (`recorded`, their metadata's config; checked against the deck's
// model keys), else the deck's. Without a seed a description only (no memory).
std::unique_ptr<models::Model> sample_model(const SampleArgs& a, const config::Deck& deck, const std::string& recorded,
                                            std::optional<uint64_t> seed);

// Rows of samples [N, ...] that hold a NaN or Inf.
std::vector<int64_t> nonfinite_rows(const at::Tensor& samples);

// The text-to-video path: `recorded` is the model config the weights record ("" when they record none).
void run_sample_text(const SampleArgs& a, const config::Deck& deck, const std::string& recorded,
                     const SampleRanks& ranks);

}  // namespace opendit::cli
