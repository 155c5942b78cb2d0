// `opendit sample`: samples of a model from its weights through the sampling layer (sample/): class-conditional
// images (a row of --per-class samples for each class) here, text-to-video in sample_text.cpp.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <cstdio>

#include "cli/sample.hpp"
#include "core/devices.hpp"
#include "core/error.hpp"
#include "core/out_of_memory.hpp"
#include "core/progress.hpp"
#include "core/strings.hpp"
#include "encode/encoders.hpp"
#include "io/safetensors.hpp"
#include "io/weights.hpp"
#include "models/registry.hpp"
#include "parallel/mesh.hpp"
#include "models/vae/pipeline.hpp"
#include "sample/plan.hpp"
#include "sample/sampler.hpp"
#include "sample/writers.hpp"

namespace opendit::cli {

std::vector<int64_t> nonfinite_rows(const at::Tensor& samples) {
  const at::Tensor bad = at::isfinite(samples).flatten(1).all(1).logical_not().nonzero().flatten();
  return std::vector<int64_t>(bad.data_ptr<int64_t>(), bad.data_ptr<int64_t>() + bad.numel());
}

std::unique_ptr<models::Model> sample_model(const SampleArgs& a, const config::Deck& deck, const std::string& recorded,
                                            std::optional<uint64_t> seed) {
  return recorded.empty() ? models::make_model(deck, seed)
                          : models::model_from_record(deck, recorded, a.checkpoint, seed);
}

SampleRanks sample_ranks(const SampleArgs& a, const config::Deck& deck, MpiRuntime& mpi) {
  SampleRanks r;
  r.cfg_parallel = a.cfg_parallel || deck.get_bool("sample.cfg_parallel");
  r.sp_mode = deck.get_string("parallel.sp_mode");
  const int sp = static_cast<int>(deck.get_int("parallel.sp_size")), ways = r.cfg_parallel ? 2 : 1;
  if (mpi.world().size() != sp * ways)
    throw CollectiveError(cat("opendit sample runs on parallel.sp_size (", sp, ")",
                              r.cfg_parallel ? " x 2 (CFG-parallel)" : "", " = ", sp * ways, " rank",
                              sp * ways > 1 ? "s" : "", "; this job has ",
                              mpi.world().size(), r.cfg_parallel || sp > 1 ? "" : " (set parallel.sp_size, or "
                              "sample.cfg_parallel, to use more ranks)"));
  r.mesh = std::make_unique<parallel::Mesh>(mpi.world(), sp);
  const at::Device device = parallel::rank_device(deck.get_string("parallel.device"), *r.mesh);
  r.ctx = std::make_unique<parallel::ParallelContext>(*r.mesh, device);
  return r;
}

void SampleRanks::check(const models::Model& model, const sample::SamplePlan& plan) const {
  if (mesh->sp_size() > 1) models::resolve_sp_mode(sp_mode, model);
  if (cfg_parallel && plan.cfg_scale == 1.0)
    throw Error("CFG-parallel sampling (--cfg-parallel, sample.cfg_parallel) with guidance off (cfg 1): there is no "
                "unconditional half to run");
}

void SampleRanks::apply(models::Model& model, sample::Sampler& sampler) const {
  if (mesh->sp_size() > 1) {
    models::layers::SeqParallel sp;
    sp.comm = &ctx->sp(), sp.mode = models::resolve_sp_mode(sp_mode, model);
    model.set_sequence_parallel(sp);
  }
  if (cfg_parallel) sampler.set_cfg_parallel(&ctx->dp());
}

std::string SampleRanks::describe(const models::Model& model) const {
  if (mesh->world_size() == 1) return "";
  std::string parts;
  if (mesh->sp_size() > 1)
    parts = cat("sp ", mesh->sp_size(), " ", models::layers::sp_mode_name(models::resolve_sp_mode(sp_mode, model)));
  if (cfg_parallel) parts += std::string(parts.empty() ? "" : " x ") + "cfg-parallel";
  return cat(" over ", mesh->world_size(), " ranks (", parts, ")");
}

namespace {

// "sample 5 (class 3, number 2 of 4 for that class; noise row 5 of seed 0)": which request a row of the output is.
std::string describe_row(int64_t row, const std::vector<int64_t>& labels, int per_class, const SampleArgs& a,
                         int64_t seed) {
  const std::string noise = a.init_noise.empty() ? cat("seed ", seed) : a.init_noise;
  return cat("sample ", row, " (class ", labels[size_t(row)], ", number ", row % per_class + 1, " of ", per_class,
             " for that class; noise row ", row, " of ", noise, ")");
}

// Class-conditional images. Everything a user can get wrong is checked (on every rank alike) before any work starts:
// the plan, the classes, the output.
void run_sample_classes(const SampleArgs& a, const config::Deck& deck, const std::string& recorded,
                        const SampleRanks& ranks) {
  std::unique_ptr<models::Model> model;
  std::unique_ptr<sample::Sampler> sampler;
  sample::SamplePlan plan;
  std::vector<int64_t> classes, labels;
  sample::OutputKind kind{};
  bool replaces = false;
  models::Condition cond;
  at::Tensor noise;
  at::Generator gen;
  const at::Device device = ranks.device();
  const bool gpu = device.is_cuda();
  ranks.world().agree([&] {
    model = sample_model(a, deck, recorded, std::nullopt);  // described: no memory yet
    const models::ConditionSpec spec = model->condition_spec();
    if (!a.prompts.empty() || !a.prompts_file.empty())
      throw Error(cat("--prompt/--prompts: a ", model->type(), " model is class-conditional; give --classes"));
    plan = sample::make_plan(deck, a.options);
    ranks.check(*model, plan);
    if (a.per_class < 1) throw Error(cat("--per-class ", a.per_class, ": expected >= 1"));
    classes = sample::parse_classes(a.classes, spec.num_classes);
    const std::vector<int64_t> shape = model->sample_shape();
    // A latent model's samples become pictures through the VAE (--vae), checked now (headers only) so that a wrong
    // folder or a latent width the VAE does not take fails before the sampling does.
    if (!a.vae.empty()) {
      if (plan.pixel) throw Error("--vae: this model samples pixels already; there is nothing to decode");
      const encode::LoadedVae v = encode::load_vae(
          a.vae, at::TensorOptions(encode::parse_dtype(a.vae_dtype, "--vae-dtype")).device(at::kMeta));
      if (v.model->config().latent_channels != shape.front())
        throw Error(cat("--vae ", a.vae, ": its latents have ", v.model->config().latent_channels,
                        " channels; the model samples ", shape.front()));
      if (!ends_with(a.out, ".png"))
        throw Error(cat("--out ", a.out, ": with --vae the samples are decoded to a PNG grid (NAME.png); without "
                        "--vae they are written as latents (NAME.safetensors)"));
    }
    const bool pictures = plan.pixel || !a.vae.empty();
    kind = sample::output_kind(a.out, pictures, a.vae.empty() ? shape.front() : 3);
    replaces =
        sample::check_output(a.out, kind, {io::weights_file_path(a.checkpoint), a.init_noise, a.deck.config_path});
    // Labels: a row of per_class samples for each class.
    for (int64_t c : classes)
      for (int k = 0; k < a.per_class; ++k) labels.push_back(c);
    const int64_t N = static_cast<int64_t>(labels.size());
    cond.labels = at::tensor(labels);
    std::vector<int64_t> noise_shape = {N};
    noise_shape.insert(noise_shape.end(), shape.begin(), shape.end());
    if (!a.init_noise.empty()) {
      auto file = io::load_safetensors(a.init_noise);
      auto it = file.tensors.find("noise");
      if (it == file.tensors.end()) throw Error(cat(a.init_noise, ": no tensor named 'noise'"));
      if (it->second.sizes() != at::IntArrayRef(noise_shape))
        throw Error(cat(a.init_noise, ": noise has shape ", it->second.sizes(), ", expected ",
                        at::IntArrayRef(noise_shape), " (", N, " samples)"));
      noise = it->second.to(at::kFloat);
      if (const auto bad = nonfinite_rows(noise); !bad.empty())
        throw Error(cat(a.init_noise, ": noise row ", bad.front(), " (for ", describe_row(bad.front(), labels,
                        a.per_class, a, plan.seed), ") holds NaN or Inf"));
    }
    gen = at::detail::createCPUGenerator(static_cast<uint64_t>(plan.seed));
    if (!noise.defined()) noise = at::randn(noise_shape, gen);
    model = sample_model(a, deck, recorded, uint64_t{0});
    const io::WeightsFile weights = io::read_weights(a.checkpoint);
    model->load_state_dict(model->import_weights(weights.tensors, weights.path), a.checkpoint);
    sampler = std::make_unique<sample::Sampler>(*model, plan, device);
  });
  ranks.apply(*model, *sampler);
  const int64_t N = static_cast<int64_t>(labels.size());
  if (ranks.root()) {
    std::fprintf(stderr, "sampling %lld images (%zu classes x %d) with %s, %s %s, cfg %s, %s, on %s%s\n  %s\n",
                 (long long)N, classes.size(), a.per_class, a.checkpoint.c_str(), plan.sampler_name(),
                 plan.steps.c_str(), shortest(plan.cfg_scale).c_str(), plan.dtype_name(),
                 gpu ? (sampler->graph_wanted() ? "GPU (CUDA graph)" : "GPU") : "CPU", ranks.describe(*model).c_str(),
                 model->describe().c_str());
    if (replaces) std::fprintf(stderr, "  replaces %s\n", a.out.c_str());
  }

  Progress progress("sample", sampler->total_steps(N), ranks.root());
  at::Tensor samples = sampler->run(noise, cond, gen, [&](int done, int) { progress.update(done); });  // [N, C, ...]
  progress.finish();
  if (!ranks.root()) return;  // every rank has the same samples: rank 0 writes them
  // A NaN or Inf is named by its row: which class, which of its samples, which noise (nothing is written).
  if (const auto bad = nonfinite_rows(samples); !bad.empty()) {
    std::vector<std::string> rows;
    for (size_t i = 0; i < bad.size() && i < 8; ++i) rows.push_back(std::to_string(bad[i]));
    if (bad.size() > 8) rows.push_back("...");
    throw Error(cat(describe_row(bad.front(), labels, a.per_class, a, plan.seed), " came out NaN or Inf",
                    bad.size() > 1 ? cat(" (", bad.size(), " of ", N, " samples did: ", join(rows, ", "), ")") : "",
                    "; nothing written. The weights, the noise or the sampling settings (", plan.sampler_name(), " ",
                    plan.steps, ", cfg ", shortest(plan.cfg_scale), ", ", plan.dtype_name(), ") break there"));
  }
  if (!a.vae.empty()) {
    // DiT's sample.py: images = vae.decode(samples / 0.18215) (the pipeline divides by the VAE's scaling factor).
    const encode::LoadedVae v =
        encode::load_vae(a.vae, at::TensorOptions(encode::parse_dtype(a.vae_dtype, "--vae-dtype")).device(device));
    at::NoGradGuard no_grad;
    samples = models::vae::decode(*v.model, samples.to(device)).to(at::kCPU);
    std::fprintf(stderr, "  decoded through %s\n", v.folder.c_str());
  }
  sample::write_samples(a.out, kind, samples, cond, a.per_class,
                        {{"steps", plan.steps}, {"cfg_scale", shortest(plan.cfg_scale)},
                         {"seed", std::to_string(plan.seed)}});
  std::printf("wrote %s (%lld samples)\n", a.out.c_str(), (long long)N);
}

void run_sample(const SampleArgs& a, MpiRuntime& mpi) {
  const config::Deck deck = a.deck.load(mpi.world());
  const SampleRanks ranks = sample_ranks(a, deck, mpi);
  std::string recorded;
  bool text = false;
  ranks.world().agree([&] {
    const std::map<std::string, std::string> metadata = io::read_weights_metadata(a.checkpoint);
    recorded = io::recorded_model(metadata);
    // Weights of another model type that record no config (a converter's output) and a deck that names no type:
    // say so, instead of building the default model and failing on its names.
    if (const auto format = metadata.find("format");
        recorded.empty() && format != metadata.end() && deck.origin("model.type") == "default" &&
        format->second.rfind("opendit.", 0) == 0 && format->second != "opendit." + deck.get_string("model.type")) {
      const std::string type = format->second.substr(8);
      throw Error(cat(a.checkpoint, ": ", type, " weights that record no model config: give the deck (model.type "
                      "= \"", type, "\" and its sizes), or record it once with opendit convert ", a.checkpoint,
                      " OUT.safetensors --set model.type=", type, " ..."));
    }
    text = sample_model(a, deck, recorded, std::nullopt)->condition_spec().kind == models::ConditionKind::Text;
  });
  try {
    if (text) return run_sample_text(a, deck, recorded, ranks);
    run_sample_classes(a, deck, recorded, ranks);
  } catch (const c10::Error& e) {
    if (!is_out_of_memory(e)) throw;
    const int64_t batch = a.options.batch > 0 ? a.options.batch : text ? 2 : 0;  // 0: all samples in one loop
    std::string advice = batch == 0   ? "\n  - sample fewer at once: --batch N (now all of them in one loop)"
                         : batch > 1 ? cat("\n  - sample fewer at once: --batch N below ", batch)
                                     : std::string();
    throw Error(cat("out of memory while sampling: ", out_of_memory_summary(e), advice,
                    "\n  - split the work over more ranks: parallel.sp_size splits each sample's tokens, "
                    "--cfg-parallel runs the two halves of guidance on two ranks"));
  }
}

}  // namespace

void add_sample(CLI::App& app, MpiRuntime& mpi) {
  auto a = std::make_shared<SampleArgs>();
  auto* cmd = app.add_subcommand("sample", "Sample from model weights: class-conditional images (pixel models: a PNG "
                                           "grid, a row per class; latent models: .safetensors, or a PNG grid with "
                                           "--vae), or videos from text prompts (--prompt, --prompts: STDiT)");
  a->deck.add_to(*cmd);
  cmd->add_option("--checkpoint", a->checkpoint, "Model weights (opendit or diffusers safetensors)")->required();
  cmd->add_option("--out", a->out, "Output: NAME.safetensors ('samples' [N, C, ...], 'labels'), or NAME.png (a grid: "
                                   "pixel models, or latent models with --vae); text-to-video with --vae: a folder "
                                   "(NNNNNN.mp4 and a NNNNNN.png strip per video) or NAME.mp4 (one video)")->required();
  cmd->add_option("--vae", a->vae, "Decode a latent model's samples to pictures through this VAE (a diffusers "
                                   "AutoencoderKL folder, or a pipeline folder with vae/)");
  cmd->add_option("--vae-dtype", a->vae_dtype, "VAE precision: fp32 or bf16")->default_val("fp32");
  cmd->add_option("--prompt", a->prompts, "Text-to-video models: a prompt (repeat for more)");
  cmd->add_option("--prompts", a->prompts_file, "Text-to-video models: a file of prompts, one per line");
  cmd->add_option("--text-encoder", a->text_encoder, "Text-to-video models: the T5 folder (transformers; or a "
                                                     "pipeline folder with text_encoder/ and tokenizer/)");
  cmd->add_option("--negative-prompt", a->negative_prompt, "Latte: the prompt guidance steers away from (default: "
                                                           "the empty prompt, as diffusers' LattePipeline)");
  cmd->add_option("--text-dtype", a->text_dtype, "T5 precision: fp32 (Open-Sora's) or bf16")->default_val("fp32");
  cmd->add_option("--per-prompt", a->per_prompt, "Text-to-video: videos per prompt")->default_val(1);
  cmd->add_option("--fps", a->fps, "Text-to-video: frames per second of the MP4 files")->default_val(8);
  cmd->add_flag("--overwrite", a->overwrite, "Text-to-video: write into a folder --out that holds files");
  cmd->add_option("--classes", a->classes, "Class ids, comma-separated (default: every class of a model of <= 16)");
  cmd->add_option("--per-class", a->per_class, "Samples per class")->default_val(1);
  cmd->add_option("--steps", a->options.steps, "250 (DDPM, respaced), ddim50 (DDIM), ... (default: sample.steps)");
  cmd->add_option("--cfg", a->options.cfg, "Guidance scale (default: sample.cfg_scale; 1 = none)");
  cmd->add_option("--eta", a->options.eta, "DDIM eta (default: sample.eta)");
  cmd->add_option("--seed", a->options.seed, "Noise seed (default: sample.seed)");
  cmd->add_option("--init-noise", a->init_noise, "Start from this noise: .safetensors with 'noise' [N, C, H, W]");
  cmd->add_option("--batch", a->options.batch, "Samples per sampling loop (default: all; text-to-video: 2)");
  cmd->add_flag("--cfg-parallel", a->cfg_parallel, "Guidance's two halves on two ranks (mpirun -np 2 x "
                                                   "parallel.sp_size; default: sample.cfg_parallel)");
  cmd->add_flag("--no-graph", a->options.no_graph, "On a GPU, run each step eagerly instead of replaying a CUDA graph "
                                                  "(default: sample.cuda_graph)");
  cmd->callback([a, &mpi] { run_sample(*a, mpi); });
}

}  // namespace opendit::cli
