// `opendit sample --prompt TEXT... | --prompts FILE`: text-to-video as Open-Sora v1.0's inference does it. The prompts
// go through the tokenizer and T5 (cleaned, cut to the model's caption tokens), the model samples latents with
// IDDPM (100 respaced steps, guidance 7.0 against the null caption, unless the deck or the command line says
// otherwise), and the VAE decodes them frame by frame to an MP4 and a PNG strip per video.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "cli/sample.hpp"
#include "core/error.hpp"
#include "core/progress.hpp"
#include "core/strings.hpp"
#include "encode/encoders.hpp"
#include "encode/text.hpp"
#include "io/files.hpp"
#include "io/image.hpp"
#include "io/safetensors.hpp"
#include "io/video_read.hpp"
#include "io/video_write.hpp"
#include "io/weights.hpp"
#include "models/registry.hpp"
#include "models/vae/pipeline.hpp"
#include "sample/sampler.hpp"
#include "sample/writers.hpp"

namespace opendit::cli {

namespace fs = std::filesystem;

namespace {

// --prompt values, then the lines of --prompts (blank lines and surrounding spaces dropped).
std::vector<std::string> read_prompts(const SampleArgs& a) {
  std::vector<std::string> prompts;
  for (const std::string& p : a.prompts) {
    if (trim(p).empty()) throw Error("--prompt: an empty prompt");
    prompts.push_back(trim(p));
  }
  if (!a.prompts_file.empty()) {
    std::ifstream in(a.prompts_file);
    if (!in) throw Error(cat("--prompts ", a.prompts_file, ": cannot read the file"));
    int64_t before = int64_t(prompts.size());
    for (std::string line; std::getline(in, line);)
      if (!trim(line).empty()) prompts.push_back(trim(line));
    if (int64_t(prompts.size()) == before) throw Error(cat("--prompts ", a.prompts_file, ": no prompt in the file"));
  }
  if (prompts.empty()) throw Error("a text-to-video model samples from prompts: give --prompt TEXT or --prompts FILE");
  return prompts;
}

enum class Out { Latents, Mp4, Folder };

// Where the videos go, checked before any work. Pixel-space models (model.space = "pixel") write their samples as
// the videos, without a VAE.
Out check_out(const SampleArgs& a, int64_t videos, bool pixel) {
  if (pixel && !a.vae.empty()) throw Error("--vae: this model samples pixels already; there is nothing to decode");
  if (ends_with(a.out, ".safetensors")) {
    if (!a.vae.empty()) throw Error(cat("--out ", a.out, ": with --vae the videos are decoded; give a folder or "
                                                          "NAME.mp4 (without --vae the latents go to .safetensors)"));
    io::check_can_write(a.out, "--out");
    return Out::Latents;
  }
  if (a.vae.empty() && !pixel)
    throw Error(cat("--out ", a.out, ": decoding videos needs --vae DIR (or write the latents to NAME.safetensors)"));
  if (!io::png_supported()) throw Error("this opendit was built without libpng: it writes a PNG strip per video");
  if (ends_with(a.out, ".mp4")) {
    if (videos != 1)
      throw Error(cat("--out ", a.out, ": one MP4 holds one video and ", videos, " are asked for; give a folder"));
    if (!io::video_supported()) throw Error(cat("--out ", a.out, ": ", io::ffmpeg_version()));
    io::check_can_write(a.out, "--out");
    io::check_can_write(a.out.substr(0, a.out.size() - 4) + ".png", "--out's strip");  // NAME.png beside it
    return Out::Mp4;
  }
  if (ends_with(a.out, ".png")) throw Error(cat("--out ", a.out, ": videos go to a folder or NAME.mp4"));
  if (fs::exists(a.out) && !fs::is_directory(a.out)) throw Error(cat("--out ", a.out, ": a file, not a folder"));
  if (fs::exists(a.out) && !fs::is_empty(a.out) && !a.overwrite)
    throw Error(cat("--out ", a.out, ": the folder is not empty (give --overwrite to replace its files)"));
  return Out::Folder;
}

}  // namespace

void run_sample_text(const SampleArgs& a, const config::Deck& deck, const std::string& recorded,
                     const SampleRanks& ranks) {
  // Everything before the sampling runs on every rank alike: a mistake is one message from every rank.
  std::unique_ptr<models::Model> model;
  std::unique_ptr<sample::Sampler> sampler;
  sample::SamplePlan plan;
  std::vector<std::string> prompts;
  int64_t P = 0, N = 0;
  Out out{};
  at::ScalarType vae_dtype = at::kFloat;
  std::vector<int64_t> shape;
  models::Condition cond, null;
  at::Generator gen;
  at::Tensor noise;
  const at::Device device = ranks.device();
  const bool gpu = device.is_cuda();
  ranks.world().agree([&] {
    model = sample_model(a, deck, recorded, std::nullopt);
    const models::ConditionSpec spec = model->condition_spec();
    // Open-Sora v1.0's inference settings where neither the deck nor the command line gives one.
    sample::SampleOptions options = a.options;
    if (!options.steps && deck.origin("sample.steps") == "default") options.steps = "100";
    if (!options.cfg && deck.origin("sample.cfg_scale") == "default") options.cfg = 7.0;
    // Videos per sampling loop: a 16x512^2 video is 16,384 tokens a frame stack, so all of a prompts file at once
    // would not fit a GPU; Open-Sora samples 1-2 at a time.
    if (options.batch == 0) options.batch = 2;
    plan = sample::make_plan(deck, options);
    ranks.check(*model, plan);
    if (!a.classes.empty()) throw Error(cat("--classes: a ", model->type(), " model takes prompts (--prompt)"));
    if (!a.init_noise.empty()) throw Error("--init-noise: not taken by text-to-video sampling (use --seed)");
    if (a.per_prompt < 1) throw Error(cat("--per-prompt ", a.per_prompt, ": expected >= 1"));
    if (!(a.fps > 0)) throw Error(cat("--fps ", a.fps, ": must be > 0"));
    if (a.text_encoder.empty()) throw Error("--text-encoder DIR: a text-to-video model needs T5 for its prompts");
    if (a.negative_prompt && !spec.null_is_text)
      throw Error(cat("--negative-prompt: a ", model->type(), " model guides against its own null caption"));
    prompts = read_prompts(a);
    P = int64_t(prompts.size()), N = P * a.per_prompt;
    out = check_out(a, N, plan.pixel);
    // The encoders' files, headers only: a wrong folder or a width the model does not take fails now.
    const at::ScalarType text_dtype = encode::parse_dtype(a.text_dtype, "--text-dtype");
    vae_dtype = encode::parse_dtype(a.vae_dtype, "--vae-dtype");
    {
      const encode::LoadedT5 t5 = encode::load_t5(a.text_encoder, at::TensorOptions(text_dtype).device(at::kMeta));
      if (t5.model->config().d_model != spec.text_dim)
        throw Error(cat("--text-encoder ", a.text_encoder, ": T5 of width ", t5.model->config().d_model,
                        "; the model takes captions of ", spec.text_dim, " channels"));
    }
    shape = model->sample_shape();
    if (!a.vae.empty()) {
      const encode::LoadedVae v = encode::load_vae(a.vae, at::TensorOptions(vae_dtype).device(at::kMeta));
      if (v.model->config().latent_channels != shape.front())
        throw Error(cat("--vae ", a.vae, ": its latents have ", v.model->config().latent_channels,
                        " channels; the model samples ", shape.front()));
    }

    // Prompts (and a negative prompt, last, for models that guide against one) -> caption embeddings [P, L, C] and
    // masks; T5 is freed before the model is loaded.
    at::Tensor text, mask;
    std::vector<std::string> texts = prompts;
    if (spec.null_is_text) texts.push_back(a.negative_prompt.value_or(""));
    {
      const encode::LoadedT5 t5 = encode::load_t5(a.text_encoder, at::TensorOptions(text_dtype).device(device));
      at::NoGradGuard no_grad;
      const encode::CaptionEmbeddings e =
          encode::embed_captions(*t5.model, *t5.tokenizer, texts, spec.text_length, /*clean=*/true);
      for (int64_t i = 0; i < P; ++i)
        if (e.truncated[size_t(i)] && ranks.root())
          std::fprintf(stderr, "warning: prompt %lld is longer than the model's %lld caption tokens: cut to %lld "
                       "(\"%.60s...\")\n", (long long)i + 1, (long long)spec.text_length, (long long)spec.text_length,
                       prompts[size_t(i)].c_str());
      std::tie(text, mask) = encode::pad_embeddings(e, spec.text_length);
    }
    const at::Tensor rows = at::arange(P, at::kLong).repeat_interleave(a.per_prompt);  // video -> prompt
    cond.text = text.index_select(0, rows);
    cond.text_mask = mask.index_select(0, rows);
    model->check_condition(cond);
    // null stays empty for models with a null caption of their own
    if (spec.null_is_text) {
      const at::Tensor neg = at::full({N}, P, at::kLong);
      null.text = text.index_select(0, neg);
      null.text_mask = mask.index_select(0, neg);
    }

    std::vector<int64_t> noise_shape = {N};
    noise_shape.insert(noise_shape.end(), shape.begin(), shape.end());
    gen = at::detail::createCPUGenerator(static_cast<uint64_t>(plan.seed));
    noise = at::randn(noise_shape, gen);
    model = sample_model(a, deck, recorded, uint64_t{0});
    const io::WeightsFile weights = io::read_weights(a.checkpoint);
    model->load_state_dict(model->import_weights(weights.tensors, weights.path), a.checkpoint);
    sampler = std::make_unique<sample::Sampler>(*model, plan, device);
  });
  ranks.apply(*model, *sampler);
  if (ranks.root())
    std::fprintf(stderr, "sampling %lld videos (%lld prompts x %d) with %s, %s %s, cfg %s%s, %s, on %s%s\n  %s\n",
                 (long long)N, (long long)P, a.per_prompt, a.checkpoint.c_str(), plan.sampler_name(),
                 plan.steps.c_str(), shortest(plan.cfg_scale).c_str(), plan.guide_first3 ? " (channels 0..2)" : "",
                 plan.dtype_name(), gpu ? (sampler->graph_wanted() ? "GPU (CUDA graph)" : "GPU") : "CPU",
                 ranks.describe(*model).c_str(), model->describe().c_str());
  Progress progress("sample", sampler->total_steps(N), ranks.root());
  at::Tensor latents = sampler->run(noise, cond, gen, [&](int done, int) { progress.update(done); }, null);
  progress.finish();
  if (!ranks.root()) return;  // every rank has the same videos: rank 0 writes them
  if (const std::vector<int64_t> bad = nonfinite_rows(latents); !bad.empty()) {
    const int64_t v = bad.front();
    throw Error(cat("video ", v, " (prompt ", v / a.per_prompt + 1, ": \"", prompts[size_t(v / a.per_prompt)],
                    "\") came out NaN or Inf (", bad.size(), " of ", N, " videos did); nothing written. The weights "
                    "or the sampling settings (", plan.sampler_name(), " ", plan.steps, ", cfg ",
                    shortest(plan.cfg_scale), ", ", plan.dtype_name(), ") break there"));
  }
  const std::map<std::string, std::string> meta = {
      {"steps", plan.steps}, {"cfg_scale", shortest(plan.cfg_scale)}, {"seed", std::to_string(plan.seed)},
      {"prompts", join(prompts, "\n")}, {"per_prompt", std::to_string(a.per_prompt)}};
  if (out == Out::Latents) {
    sample::write_samples(a.out, sample::OutputKind::Safetensors, latents, cond, 1, meta);
    std::printf("wrote %s (%lld videos as latents %s)\n", a.out.c_str(), (long long)N,
                shape_str(latents.sizes()).c_str());
    return;
  }
  // Open-Sora's decode: latents / scaling factor through the image VAE, frame by frame (pixel models: the samples).
  std::optional<encode::LoadedVae> vae;
  if (!plan.pixel) vae = encode::load_vae(a.vae, at::TensorOptions(vae_dtype).device(device));
  if (out == Out::Folder) io::make_dirs(a.out, "--out");
  std::string listing;
  Progress decoding("decode", N);
  for (int64_t i = 0; i < N; ++i) {
    at::NoGradGuard no_grad;
    const at::Tensor video = vae ? models::vae::decode(*vae->model, latents.narrow(0, i, 1).to(device))[0].to(at::kCPU)
                                 : latents[i];                                              // [C, T, H, W]
    const std::string stem = out == Out::Mp4 ? a.out.substr(0, a.out.size() - 4) : cat(a.out, "/", io::numbered(i));
    if (io::video_supported()) io::write_mp4(stem + ".mp4", io::video_to_uint8(video), a.fps);
    io::write_png(stem + ".png", io::sample_picture(video.clamp(-1, 1)));
    listing += cat(io::numbered(i), "\t", prompts[size_t(i / a.per_prompt)], "\n");
    decoding.update(i + 1);
  }
  decoding.finish();
  if (out == Out::Folder) io::write_text_file(a.out + "/prompts.txt", listing);
  std::printf("wrote %s (%lld videos%s)\n", a.out.c_str(), (long long)N,
              io::video_supported() ? ": MP4 and a PNG strip each" : ": PNG strips; this build has no FFmpeg for MP4");
}

}  // namespace opendit::cli
