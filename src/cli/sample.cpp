// `opendit sample`: class-conditional samples from DiT weights with DDPM or DDIM and classifier-free guidance.
#include <ATen/CPUGeneratorImpl.h>

#include <cstdio>
#include <optional>

#include "cli/app.hpp"
#include "core/devices.hpp"
#include "core/error.hpp"
#include "core/progress.hpp"
#include "core/strings.hpp"
#include "diffusion/cuda_graph_denoiser.hpp"
#include "diffusion/gaussian_diffusion.hpp"
#include "models/attention.hpp"
#include "diffusion/guidance.hpp"
#include "io/image.hpp"
#include "io/safetensors.hpp"
#include "models/dit.hpp"
#include "models/dit_weights.hpp"

namespace opendit::cli {

namespace {

struct SampleArgs {
  DeckArgs deck;
  std::string checkpoint, out, classes, steps, init_noise;
  int per_class = 1, batch = 0;
  bool no_graph = false;
  std::optional<double> cfg, eta;
  std::optional<int64_t> seed;
};

std::vector<int64_t> parse_classes(const std::string& text, int num_classes) {
  std::vector<int64_t> ids;
  if (text.empty()) {
    if (num_classes > 16)
      throw Error(cat("--classes is required for a model of ", num_classes, " classes (e.g. --classes 207,360,387)"));
    for (int c = 0; c < num_classes; ++c) ids.push_back(c);
    return ids;
  }
  for (const auto& part : split(text, ',')) {
    std::string p = trim(part);
    char* end = nullptr;
    long long v = std::strtoll(p.c_str(), &end, 10);
    if (p.empty() || *end != '\0') throw Error(cat("--classes ", text, ": '", p, "' is not a class id"));
    if (v < 0 || v >= num_classes)
      throw Error(cat("--classes ", text, ": class ", v, " is outside [0, ", num_classes - 1, "] of this model"));
    ids.push_back(v);
  }
  return ids;
}

void run_sample(const SampleArgs& a, MpiRuntime& mpi) {
  if (mpi.size() > 1) throw Error("sample runs as one process: run it without mpirun");
  config::Deck deck = a.deck.load();
  models::DiTConfig cfg = models::dit_config_from(deck);
  const std::string steps = a.steps.empty() ? deck.get_string("sample.steps") : a.steps;
  const double scale = a.cfg.value_or(deck.get_float("sample.cfg_scale"));
  const double eta = a.eta.value_or(deck.get_float("sample.eta"));
  const int64_t seed = a.seed.value_or(deck.get_int("sample.seed"));
  const bool pixel = deck.get_string("model.space") == "pixel";
  const bool graph_wanted = !a.no_graph && deck.get_bool("sample.cuda_graph");
  // Everything a user can get wrong is checked before any work starts.
  if (scale < 0) throw Error(cat("--cfg ", scale, ": the guidance scale must be >= 0"));
  if (eta < 0 || eta > 1) throw Error(cat("--eta ", eta, ": expected a value in [0, 1]"));
  if (a.per_class < 1) throw Error(cat("--per-class ", a.per_class, ": expected >= 1"));
  std::vector<int64_t> classes = parse_classes(a.classes, cfg.num_classes);
  const bool is_png = a.out.size() > 4 && a.out.substr(a.out.size() - 4) == ".png";
  if (!pixel && is_png)
    throw Error(cat("--out ", a.out, ": a latent model's samples are latents; write them to a .safetensors file "
                                     "(decoding to images needs the VAE, which opendit does not have yet)"));
  const bool is_st = a.out.size() > 12 && a.out.substr(a.out.size() - 12) == ".safetensors";
  if (!is_png && !is_st)
    throw Error(cat("--out ", a.out, ": expected NAME.safetensors (the samples)", pixel ? " or NAME.png (a grid)" : ""));
  if (pixel && cfg.in_channels != 1 && cfg.in_channels != 3)
    throw Error(cat("a PNG needs 1 or 3 channels; the model has ", cfg.in_channels));
  diffusion::GaussianDiffusion diff = diffusion::make_diffusion(
      steps, deck.get_string("diffusion.schedule"), static_cast<int>(deck.get_int("diffusion.num_steps")),
      cfg.learn_sigma);
  const bool ddim = steps.rfind("ddim", 0) == 0;

  // Labels: a row of per_class samples for each class.
  std::vector<int64_t> labels;
  for (int64_t c : classes)
    for (int k = 0; k < a.per_class; ++k) labels.push_back(c);
  const int64_t N = static_cast<int64_t>(labels.size());

  at::Tensor noise;
  if (!a.init_noise.empty()) {
    auto file = io::load_safetensors(a.init_noise);
    auto it = file.tensors.find("noise");
    if (it == file.tensors.end()) throw Error(cat(a.init_noise, ": no tensor named 'noise'"));
    std::vector<int64_t> want = {N, cfg.in_channels, cfg.input_size, cfg.input_size};
    if (it->second.sizes() != at::IntArrayRef(want))
      throw Error(cat(a.init_noise, ": noise has shape ", it->second.sizes(), ", expected ", at::IntArrayRef(want),
                      " (", N, " samples)"));
    noise = it->second.to(at::kFloat);
  }
  at::Generator gen = at::detail::createCPUGenerator(static_cast<uint64_t>(seed));
  if (!noise.defined()) noise = at::randn({N, cfg.in_channels, cfg.input_size, cfg.input_size}, gen);

  const bool gpu = gpu_count() > 0;
  const at::Device device = gpu ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  models::DiT model(cfg, 0);
  model.load_state_dict(models::load_dit_weights(a.checkpoint), a.checkpoint);
  const bool bf16 = deck.get_string("sample.precision") == "bf16";
  const at::ScalarType dtype = bf16 ? at::kBFloat16 : at::kFloat;
  model.to(at::TensorOptions().device(device).dtype(dtype));
  if (gpu) models::set_attention_backend(deck.get_string("model.attention"));
  const bool graph = gpu && graph_wanted;
  std::fprintf(stderr, "sampling %lld images (%zu classes x %d) with %s, %s %s, cfg %.2f, %s, on %s\n  %s\n",
               (long long)N, classes.size(), a.per_class, a.checkpoint.c_str(), ddim ? "DDIM" : "DDPM", steps.c_str(),
               scale, bf16 ? "bf16" : "fp32", gpu ? (graph ? "GPU (CUDA graph)" : "GPU") : "CPU",
               cfg.describe().c_str());

  at::NoGradGuard no_grad;
  diffusion::ConditionalDenoiser net = [&](const at::Tensor& x, const at::Tensor& t, const at::Tensor& y) {
    return model.forward(x.to(dtype), t.to(at::kFloat), y).to(at::kFloat);  // the sampler's arithmetic in fp32
  };
  const int64_t batch = a.batch > 0 ? a.batch : N;
  const int64_t batches = (N + batch - 1) / batch;
  Progress progress("sample", diff.num_timesteps() * batches);
  std::vector<at::Tensor> outs;
  for (int64_t b = 0; b < batches; ++b) {
    int64_t lo = b * batch, n = std::min(batch, N - lo);
    at::Tensor y = at::tensor(std::vector<int64_t>(labels.begin() + lo, labels.begin() + lo + n)).to(device);
    at::Tensor x = noise.narrow(0, lo, n).to(device);
    diffusion::Denoiser denoise;
    if (scale == 1.0) {
      denoise = [&, y](const at::Tensor& xt, const at::Tensor& t) { return net(xt, t, y); };
    } else {
      diffusion::GuidanceOptions opt;
      opt.scale = scale;
      opt.null_label = cfg.num_classes;
      opt.guide_first_channels_only3 = deck.get_string("sample.cfg_channels") == "first3";
      denoise = diffusion::classifier_free_guidance(net, y, opt);
    }
    // One graph per batch (the labels differ); a failed capture warns and samples eagerly.
    if (graph) denoise = diffusion::CudaGraphDenoiser(denoise);
    auto report = [&, b](int step, int total) { progress.update(b * total + step); };
    outs.push_back((ddim ? diff.ddim_sample_loop(denoise, x, eta, gen, report)
                         : diff.p_sample_loop(denoise, x, gen, report))
                       .to(at::kCPU));
  }
  progress.finish();
  at::Tensor samples = at::cat(outs, 0);  // [N, C, H, W]
  if (!at::isfinite(samples).all().item<bool>())
    throw Error("the samples contain NaN or Inf: the weights or the sampling settings are broken");
  if (is_png) {
    io::write_png(a.out, io::image_grid(samples.clamp(-1, 1), a.per_class));
  } else {
    io::save_safetensors(a.out, {{"samples", samples}, {"labels", at::tensor(labels)}},
                         {{"format", "opendit.samples"}, {"version", "1"}, {"steps", steps},
                          {"cfg_scale", std::to_string(scale)}, {"seed", std::to_string(seed)}});
  }
  std::printf("wrote %s (%lld samples)\n", a.out.c_str(), (long long)N);
}

}  // namespace

void add_sample(CLI::App& app, MpiRuntime& mpi) {
  auto a = std::make_shared<SampleArgs>();
  auto* cmd = app.add_subcommand("sample", "Sample class-conditional images (pixel models: a PNG grid, a row per "
                                           "class) or latents (latent models: .safetensors) from DiT weights");
  a->deck.add_to(*cmd);
  cmd->add_option("--checkpoint", a->checkpoint, "DiT weights (opendit or diffusers safetensors)")->required();
  cmd->add_option("--out", a->out, "Output: NAME.safetensors ('samples' [N, C, H, W], 'labels'), or NAME.png (a grid, "
                                   "pixel models)")->required();
  cmd->add_option("--classes", a->classes, "Class ids, comma-separated (default: every class of a model of <= 16)");
  cmd->add_option("--per-class", a->per_class, "Samples per class")->default_val(1);
  cmd->add_option("--steps", a->steps, "250 (DDPM, respaced), ddim50 (DDIM), ... (default: sample.steps)");
  cmd->add_option("--cfg", a->cfg, "Guidance scale (default: sample.cfg_scale; 1 = none)");
  cmd->add_option("--eta", a->eta, "DDIM eta (default: sample.eta)");
  cmd->add_option("--seed", a->seed, "Noise seed (default: sample.seed)");
  cmd->add_option("--init-noise", a->init_noise, "Start from this noise: .safetensors with 'noise' [N, C, H, W]");
  cmd->add_option("--batch", a->batch, "Samples per forward batch (default: all)");
  cmd->add_flag("--no-graph", a->no_graph, "On a GPU, run each step eagerly instead of replaying a CUDA graph "
                                          "(default: sample.cuda_graph)");
  cmd->callback([a, &mpi] { run_sample(*a, mpi); });
}

}  // namespace opendit::cli
