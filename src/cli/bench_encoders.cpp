// `opendit bench vae` and `opendit bench t5`: the encoders with random weights in their published sizes (the SD VAE,
// T5 v1.1 XXL) on random inputs; the peers are bench/peer_vae.py (diffusers) and bench/peer_t5.py (transformers),
// run by bench/encoders.sh in the same call.
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <ATen/detail/CUDAHooksInterface.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <vector>

#include "cli/app.hpp"
#include "core/devices.hpp"
#include "core/error.hpp"
#include "encode/encoders.hpp"
#include "models/t5/config.hpp"
#include "models/vae/pipeline.hpp"

namespace opendit::cli {

namespace {

struct EncoderBenchArgs {
  std::string mode = "encode", dtype = "bf16", device = "auto", preset = "xxl";
  int64_t size = 256, batch = 8, frames = 0, micro_batch = 4, tokens = 120, tile = 0;
  int iters = 10, warmup = 2;
  bool compare_fp32 = false;
};

struct Timing {
  double median_ms = 0, min_ms = 0, peak_gib = 0;
};

// Median and minimum of `iters` timed calls after `warmup` untimed ones; the GPU's peak memory over all of them.
Timing time_it(const EncoderBenchArgs& a, bool gpu, const std::function<void()>& step) {
  if (a.iters < 1 || a.warmup < 0) throw Error("--iters must be >= 1 and --warmup >= 0");
  auto sync = [&] {
    if (gpu) at::detail::getCUDAHooks().deviceSynchronize(0);
  };
  if (gpu) reset_peak_memory(0);
  for (int i = 0; i < a.warmup; ++i) step();
  sync();
  std::vector<double> ms;
  for (int i = 0; i < a.iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    step();
    sync();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms.front(), gpu ? peak_memory_gib(0) : 0.0};
}

void run_vae_bench(const EncoderBenchArgs& a, MpiRuntime& mpi) {
  require_one_process(mpi, "bench");
  if (a.mode != "encode" && a.mode != "decode") throw Error(cat("--mode ", a.mode, ": expected encode or decode"));
  if (a.size < 8 || a.size % 8 || a.batch < 1 || a.frames < 0 || a.micro_batch < 0)
    throw Error("--size must be a positive multiple of 8, --batch >= 1, --frames and --micro-batch >= 0");
  const bool gpu = pick_gpu(a.device);
  const at::Device device = gpu ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  const at::ScalarType dtype = encode::parse_dtype(a.dtype, "--dtype");
  if (gpu) at::globalContext().setBenchmarkCuDNN(true);  // convolution algorithms picked per shape, once
  models::vae::AutoencoderKL vae(models::vae::sd_vae_config());
  vae.weights().init_random(0, at::TensorOptions(dtype).device(device));
  vae.prepare();
  const int64_t n = a.frames > 0 ? a.frames : a.batch, lat = a.size / 8;
  const int64_t micro = a.micro_batch > 0 && a.frames > 0 ? a.micro_batch : n;
  at::NoGradGuard no_grad;
  const auto opts = at::TensorOptions(at::kFloat).device(device);
  at::Generator gen = at::globalContext().defaultGenerator(device);
  std::function<void()> step;
  at::Tensor x, z;
  if (a.mode == "encode") {
    x = at::rand({n, 3, a.size, a.size}, opts) * 2 - 1;
    step = [&] { models::vae::scaled_latents(vae, models::vae::encode(vae, x, {micro}), gen); };
  } else {
    z = at::randn({n, 4, lat, lat}, opts) * 0.18215;
    models::vae::DecodeOptions d;
    d.micro_batch = micro, d.tile = a.tile;
    step = [&, d] { models::vae::decode(vae, z, d); };
  }
  const Timing t = time_it(a, gpu, step);
  const double flops = (a.mode == "encode" ? vae.encode_flops(a.size, a.size) : vae.decode_flops(a.size, a.size)) * n;
  std::printf("%s\n", vae.config().describe().c_str());
  std::printf(
      "BENCH vae mode=%s device=%s threads=%d dtype=%s size=%lld %s median_ms=%.3f min_ms=%.3f "
      "%s=%.2f tflops=%.1f peak_gib=%.2f\n",
      a.mode.c_str(), gpu ? "cuda" : "cpu", at::get_num_threads(), a.dtype.c_str(), (long long)a.size,
      a.frames > 0 ? cat("batch=1 frames=", n, " micro_batch=", micro).c_str() : cat("batch=", n).c_str(), t.median_ms,
      t.min_ms, a.frames > 0 ? "frames_per_s" : "img_per_s", n / (t.median_ms * 1e-3),
      flops / (t.median_ms * 1e-3) / 1e12, t.peak_gib);
}

models::t5::T5Config t5_preset(const std::string& name) {
  models::t5::T5Config c = models::t5::t5_xxl_config();
  if (name == "xxl") return c;
  if (name == "small") {
    c.d_model = 512, c.d_ff = 1024, c.num_layers = 8, c.num_heads = 6, c.d_kv = 64;
  } else if (name == "tiny") {
    c.vocab_size = 320, c.d_model = 64, c.d_ff = 96, c.num_layers = 3, c.num_heads = 4, c.d_kv = 16;
  } else {
    throw Error(cat("--preset ", name, ": expected xxl, small or tiny"));
  }
  return c;
}

void run_t5_bench(const EncoderBenchArgs& a, MpiRuntime& mpi) {
  require_one_process(mpi, "bench");
  if (a.batch < 1 || a.tokens < 1) throw Error("--batch and --tokens must be >= 1");
  const bool gpu = pick_gpu(a.device);
  const at::Device device = gpu ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  const at::ScalarType dtype = encode::parse_dtype(a.dtype, "--dtype");
  const models::t5::T5Config cfg = t5_preset(a.preset);
  models::t5::T5Encoder t5(cfg);
  t5.init_random(0, at::TensorOptions(dtype).device(device));
  // Prompts of realistic lengths: each valid for a seeded length in [10, tokens] (EOS last), padding after.
  at::Generator cpu = at::detail::getDefaultCPUGenerator().clone();
  cpu.set_current_seed(1);
  const at::Tensor lengths = at::randint(std::min<int64_t>(10, a.tokens), a.tokens + 1, {a.batch}, cpu, at::kLong);
  const at::Tensor mask = (at::arange(a.tokens).unsqueeze(0) < lengths.unsqueeze(1)).to(at::kLong);
  const at::Tensor ids = (at::randint(2, cfg.vocab_size, {a.batch, a.tokens}, cpu, at::kLong) * mask).to(device);
  const at::Tensor mask_d = mask.to(device);
  at::NoGradGuard no_grad;
  if (a.compare_fp32) {
    // bf16 against float32 on the same weights and prompts, over the valid tokens: how the default was chosen.
    models::t5::T5Encoder f32(cfg);
    f32.init_random(0, at::TensorOptions(at::kFloat).device(device));
    const bool tf32 = at::globalContext().allowTF32CuBLAS();
    at::globalContext().setAllowTF32CuBLAS(false);
    const at::Tensor ref = f32.forward(ids, mask_d), got = t5.forward(ids, mask_d);
    at::globalContext().setAllowTF32CuBLAS(tf32);
    const at::Tensor valid = mask_d.to(at::kBool);
    const at::Tensor d = (got - ref).index({valid}), r = ref.index({valid});
    const at::Tensor tok_rel = d.norm(2, {-1}) / r.norm(2, {-1});
    std::printf("T5ERR %s_vs_fp32 max_abs=%.4g max_rel=%.4g mean_abs=%.4g ref_max_abs=%.4g\n", a.dtype.c_str(),
                d.abs().max().item<double>(), tok_rel.max().item<double>(), d.abs().mean().item<double>(),
                r.abs().max().item<double>());
    return;
  }
  const Timing t = time_it(a, gpu, [&] { t5.forward(ids, mask_d); });
  std::printf("%s\n", cfg.describe().c_str());
  std::printf(
      "BENCH t5 preset=%s device=%s threads=%d dtype=%s batch=%lld tokens=%lld median_ms=%.3f min_ms=%.3f "
      "prompts_per_s=%.1f tflops=%.1f peak_gib=%.2f params=%lld\n",
      a.preset.c_str(), gpu ? "cuda" : "cpu", at::get_num_threads(), a.dtype.c_str(), (long long)a.batch,
      (long long)a.tokens, t.median_ms, t.min_ms, a.batch / (t.median_ms * 1e-3),
      cfg.flops(a.tokens) * a.batch / (t.median_ms * 1e-3) / 1e12, t.peak_gib, (long long)cfg.num_parameters());
}

}  // namespace

void add_bench_encoders(CLI::App& bench, MpiRuntime& mpi) {
  auto a = std::make_shared<EncoderBenchArgs>();
  auto* vae = bench.add_subcommand("vae", "Time the SD VAE (random weights): encode images or decode latents");
  vae->add_option("--mode", a->mode, "encode or decode")->default_val("encode");
  vae->add_option("--size", a->size, "Image side in pixels")->default_val(256);
  vae->add_option("--batch", a->batch, "Images per call")->default_val(8);
  vae->add_option("--frames", a->frames, "Frames of one video instead of a batch of images (0: images)")
      ->default_val(0);
  vae->add_option("--micro-batch", a->micro_batch, "Frames per VAE pass with --frames (0: all)")->default_val(4);
  vae->add_option("--tile", a->tile, "Decode in tiles of TILE latents (0: whole frames)")->default_val(0);
  for (CLI::App* c : {vae}) {
    c->add_option("--dtype", a->dtype, "bf16 or fp32")->default_val("bf16");
    c->add_option("--device", a->device, "auto, cpu or cuda")->default_val("auto");
    c->add_option("--iters", a->iters, "Timed calls")->default_val(10);
    c->add_option("--warmup", a->warmup, "Untimed calls first")->default_val(2);
  }
  vae->callback([a, &mpi] { run_vae_bench(*a, mpi); });
  auto* t5 = bench.add_subcommand("t5", "Time the T5 encoder (random weights, T5 v1.1 XXL by default)");
  t5->add_option("--preset", a->preset, "xxl, small or tiny")->default_val("xxl");
  t5->add_option("--batch", a->batch, "Prompts per call")->default_val(8);
  t5->add_option("--tokens", a->tokens, "Tokens per prompt (padded length)")->default_val(120);
  t5->add_flag("--compare-fp32", a->compare_fp32, "Print the error of --dtype against float32 instead of timing");
  t5->add_option("--dtype", a->dtype, "bf16 or fp32")->default_val("bf16");
  t5->add_option("--device", a->device, "auto, cpu or cuda")->default_val("auto");
  t5->add_option("--iters", a->iters, "Timed calls")->default_val(10);
  t5->add_option("--warmup", a->warmup, "Untimed calls first")->default_val(2);
  t5->callback([a, &mpi] { run_t5_bench(*a, mpi); });
}

}  // namespace opendit::cli
