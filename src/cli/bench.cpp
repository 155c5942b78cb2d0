// `opendit bench forward`: time the model's forward pass (the peer figure comes from bench/peer_diffusers_forward.py);
// `opendit bench kernels` is in bench_kernels.cpp.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/detail/CUDAHooksInterface.h>

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "cli/app.hpp"
#include "core/error.hpp"
#include "models/layers/attention.hpp"
#include "models/registry.hpp"

namespace opendit::cli {

namespace {

struct BenchArgs {
  DeckArgs deck;
  int batch = 8, iters = 20, warmup = 3;
  std::string dtype = "fp32", device = "auto";
};

void run_forward_bench(const BenchArgs& a, MpiRuntime& mpi) {
  require_one_process(mpi, "bench");
  if (a.batch < 1 || a.iters < 1 || a.warmup < 0) throw Error("--batch and --iters must be >= 1, --warmup >= 0");
  const config::Deck deck = a.deck.load(mpi.world());
  const bool gpu = pick_gpu(a.device);
  const at::ScalarType dtype = a.dtype == "bf16" ? at::kBFloat16 : at::kFloat;
  const at::Device device = gpu ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);

  std::unique_ptr<models::Model> model = models::make_model(deck, uint64_t{0});
  // Non-zero adaLN weights, so that no path is skipped by a zero (the timing must not depend on it, but be safe).
  for (const models::Param& p : model->parameters())
    if (p.name.find("adaLN") != std::string::npos) p.tensor->normal_(0, 0.02);
  model->to(at::TensorOptions().device(device).dtype(dtype));
  if (gpu) models::layers::set_attention_backend(deck.get_string("model.attention"));
  auto opts = at::TensorOptions().device(device);
  std::vector<int64_t> shape = {a.batch};
  for (int64_t d : model->sample_shape()) shape.push_back(d);
  at::Tensor x = at::randn(shape, opts.dtype(dtype));
  at::Tensor t = at::randint(0, 1000, {a.batch}, opts.dtype(at::kFloat));
  at::Generator gen = at::detail::createCPUGenerator(0);
  const models::Condition y = models::random_condition(model->condition_spec(), a.batch, gen).to(device);
  auto sync = [&] {
    if (gpu) at::detail::getCUDAHooks().deviceSynchronize(0);
  };
  at::NoGradGuard no_grad;
  for (int i = 0; i < a.warmup; ++i) model->forward(x, t, y);
  sync();
  std::vector<double> ms;
  for (int i = 0; i < a.iters; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    model->forward(x, t, y);
    sync();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  const double median = ms[ms.size() / 2];
  const double tflops = model->forward_flops(model->sample_shape()) * a.batch / (median * 1e-3) / 1e12;
  std::printf("%s\n", model->describe().c_str());
  std::printf("BENCH forward device=%s threads=%d dtype=%s batch=%d median_ms=%.3f min_ms=%.3f img_per_s=%.1f "
              "tflops=%.3f\n",
              gpu ? "cuda" : "cpu", at::get_num_threads(), a.dtype.c_str(), a.batch, median, ms.front(),
              a.batch / (median * 1e-3), tflops);
}

}  // namespace

void add_bench(CLI::App& app, MpiRuntime& mpi) {
  auto* cmd = app.add_subcommand("bench", "Benchmarks (results and peers: bench/RESULTS.md)");
  cmd->require_subcommand(1);
  auto a = std::make_shared<BenchArgs>();
  auto* fwd = cmd->add_subcommand("forward", "Time the forward pass of the deck's model on random inputs");
  a->deck.add_to(*fwd);
  fwd->add_option("--batch", a->batch, "Batch size")->default_val(8);
  fwd->add_option("--iters", a->iters, "Timed iterations (the median is reported)")->default_val(20);
  fwd->add_option("--warmup", a->warmup, "Untimed iterations first")->default_val(3);
  fwd->add_option("--dtype", a->dtype, "Parameter and activation dtype")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->default_str("fp32");
  fwd->add_option("--device", a->device, "auto (GPU if visible), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->default_str("auto");
  fwd->callback([a, &mpi] { run_forward_bench(*a, mpi); });
  add_bench_sample(*cmd, mpi);
  add_bench_kernels(*cmd, mpi);
  add_bench_encoders(*cmd, mpi);
  add_bench_sp(*cmd, mpi);
}

}  // namespace opendit::cli
