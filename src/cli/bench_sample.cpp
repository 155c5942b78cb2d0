// `opendit bench sample`: time a whole sampling loop (DDPM or DDIM, classifier-free guidance) of the deck's model
// with random weights; on a GPU with each step's network call replayed as a CUDA graph, or eagerly.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <ATen/detail/CUDAHooksInterface.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <vector>

#ifdef OPENDIT_WITH_CUDA
#include <c10/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "cli/app.hpp"
#include "core/error.hpp"
#include "core/op_profiler.hpp"
#include "models/registry.hpp"
#include "sample/plan.hpp"
#include "sample/sampler.hpp"

namespace opendit::cli {

namespace {

struct SampleBenchArgs {
  DeckArgs deck;
  int images = 8;
  int profile = 0;  // steps recorded op by op after the warm-up (0: none)
  double cfg = 4.0;
  std::string steps = "250", dtype = "bf16", graph = "on", device = "auto";
};

// Marks the end of each step on the device's timeline: CUDA events on a GPU (no host sync inside the loop),
// the host clock on the CPU (where work is synchronous anyway). ms() is valid after the loop has finished.
class StepClock {
 public:
  explicit StepClock(bool gpu) : gpu_(gpu) {}
  void mark() {
#ifdef OPENDIT_WITH_CUDA
    if (gpu_) {
      events_.push_back(std::make_unique<c10::cuda::CUDAEvent>(cudaEventDefault));  // timing enabled
      events_.back()->record(c10::cuda::getCurrentCUDAStream());
      return;
    }
#endif
    host_.push_back(std::chrono::steady_clock::now());
  }
  // Milliseconds between mark k and mark k + 1 (the loop must have been synchronised).
  std::vector<double> intervals_ms() const {
    std::vector<double> ms;
#ifdef OPENDIT_WITH_CUDA
    for (size_t k = 0; k + 1 < events_.size(); ++k) ms.push_back(events_[k]->elapsed_time(*events_[k + 1]));
#endif
    for (size_t k = 0; k + 1 < host_.size(); ++k)
      ms.push_back(std::chrono::duration<double, std::milli>(host_[k + 1] - host_[k]).count());
    return ms;
  }

 private:
  bool gpu_;
#ifdef OPENDIT_WITH_CUDA
  std::vector<std::unique_ptr<c10::cuda::CUDAEvent>> events_;
#endif
  std::vector<std::chrono::steady_clock::time_point> host_;
};

void run_sample_bench(const SampleBenchArgs& a, MpiRuntime& mpi) {
  require_one_process(mpi, "bench");
  if (a.images < 1) throw Error(cat("--images ", a.images, ": expected >= 1"));
  if (!(a.cfg >= 0)) throw Error(cat("--cfg ", a.cfg, ": the guidance scale must be >= 0"));
  const config::Deck deck = a.deck.load(mpi.world());
  sample::SampleOptions o;
  o.steps = a.steps, o.cfg = a.cfg, o.precision = a.dtype, o.no_graph = a.graph == "off";
  o.eta = 0.0;
  sample::SamplePlan plan = sample::make_plan(deck, o);
  // The bench times what its own options say, whatever the deck's sampling defaults.
  plan.cuda_graph = a.graph == "on";
  plan.guide_first3 = false;
  const bool gpu = pick_gpu(a.device);
  const at::Device device = gpu ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);

  std::unique_ptr<models::Model> model = models::make_model(deck, uint64_t{0});
  // Non-zero adaLN weights (as in bench forward), so that no path is skipped by a zero.
  for (const models::Param& p : model->parameters())
    if (p.name.find("adaLN") != std::string::npos || (p.trainable && p.tensor->abs().max().item<double>() == 0 &&
                                                       p.tensor->dim() == 2))
      p.tensor->normal_(0, 0.02);
  sample::Sampler sampler(*model, plan, device);
  if (!gpu && a.graph == "on") std::fprintf(stderr, "bench sample: on the CPU there is no CUDA graph: graph=off\n");

  // The diffusion runs in float32; the network in --dtype.
  at::Generator gen = at::detail::createCPUGenerator(0);
  std::vector<int64_t> shape = {a.images};
  for (int64_t d : model->sample_shape()) shape.push_back(d);
  const at::Tensor noise = at::randn(shape, gen).to(device);  // [N, C, H, W]
  const models::ConditionSpec spec = model->condition_spec();
  const models::Condition cond = models::random_condition(spec, a.images, gen).to(device);
  // Models that guide against a negative prompt (Latte) get a random one.
  const models::Condition null =
      spec.null_is_text ? models::random_condition(spec, a.images, gen).to(device) : models::Condition{};

  const int64_t forwards = a.cfg != 1.0 ? 2 * a.images : a.images;
  std::printf("%s\n", model->describe().c_str());
  std::printf("sampling %d images, %s %s (%lld steps), cfg %g (network batch %lld), %s on %s\n", a.images,
              plan.sampler_name(), a.steps.c_str(), (long long)sampler.diffusion().num_timesteps(), a.cfg,
              (long long)forwards, a.dtype.c_str(), gpu ? "cuda" : "cpu");
  std::fflush(stdout);

  auto sync = [&] {
    if (gpu) at::detail::getCUDAHooks().deviceSynchronize(0);
  };
  sync();
  StepClock clock(gpu);
  // --profile N: steps 3 .. N + 2 (the graph captured and replaying) recorded op by op.
  OpProfiler profiler;
  const int profile_first = 3, profile_last = profile_first + a.profile - 1;
  const auto t0 = std::chrono::steady_clock::now();
  clock.mark();
  at::Tensor x = sampler.run(noise, cond, gen, [&](int done, int) {
    clock.mark();
    if (a.profile > 0 && done == profile_first - 1) profiler.start(gpu);
    if (profiler.running() && done == profile_last) profiler.stop();
  }, null);
  if (profiler.running()) profiler.stop();  // the loop was shorter than asked
  sync();
  const double total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!at::isfinite(x).all().item<bool>()) throw Error("bench sample: the samples contain NaN or Inf");

  // The first step also warms up and captures the graph: it is reported apart, the median is over the others.
  std::vector<double> ms = clock.intervals_ms();
  const double first_ms = ms.front();
  std::vector<double> timed(ms.begin() + 1, ms.end());
  std::sort(timed.begin(), timed.end());
  const double median = timed[timed.size() / 2];
  const std::string graph = sampler.graph_state();
  std::printf("BENCH sample preset=%s dtype=%s images=%d cfg=%g graph=%s steps=%s loop_steps=%lld device=%s "
              "threads=%d ms_per_step=%.3f min_ms=%.3f first_step_ms=%.1f total_s=%.3f img_per_s=%.3f\n",
              deck.get_string("model.preset").c_str(), a.dtype.c_str(), a.images, a.cfg, graph.c_str(),
              a.steps.c_str(), (long long)sampler.diffusion().num_timesteps(), gpu ? "cuda" : "cpu",
              at::get_num_threads(), median, timed.front(), first_ms, total_s, a.images / total_s);
  if (a.profile > 0 && int(ms.size()) < profile_first) {
    std::printf("\nno profile: the loop ran %d steps, fewer than the %d before the first recorded one\n",
                int(ms.size()), profile_first);
  } else if (a.profile > 0) {
    const int recorded = std::min(profile_last, int(ms.size())) - profile_first + 1;
    std::printf("\nprofile of steps %d..%d (%d steps summed; the profiler's own sync slows those steps):\n%s\n",
                profile_first, profile_first + recorded - 1, recorded, profiler.table(30).c_str());
  }
}

}  // namespace

void add_bench_sample(CLI::App& bench, MpiRuntime& mpi) {
  auto a = std::make_shared<SampleBenchArgs>();
  auto* cmd = bench.add_subcommand("sample", "Time a whole sampling loop (with classifier-free guidance) of the "
                                             "deck's model with random weights");
  a->deck.add_to(*cmd);
  cmd->add_option("--images", a->images, "Images sampled together (the network batch is twice this with --cfg != 1)")
      ->default_val(8);
  cmd->add_option("--steps", a->steps, "250 (DDPM, respaced), 1000 (DDPM, every step), ddim50 (DDIM), ...")
      ->default_val("250");
  cmd->add_option("--cfg", a->cfg, "Guidance scale (1 = none: one forward per image)")->default_val(4.0);
  cmd->add_option("--dtype", a->dtype, "Network dtype (the diffusion runs in fp32)")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->default_str("bf16");
  cmd->add_option("--graph", a->graph, "On a GPU: replay each step's network call as a CUDA graph (on) or not")
      ->check(CLI::IsMember({"on", "off"}))
      ->default_str("on");
  cmd->add_option("--profile", a->profile, "Record this many steps (from step 3, the graph replaying) op by op and "
                                           "print where their time went")
      ->check(CLI::Range(0, 100000))
      ->default_val(0);
  cmd->add_option("--device", a->device, "auto (GPU if visible), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->default_str("auto");
  cmd->callback([a, &mpi] { run_sample_bench(*a, mpi); });
}

}  // namespace opendit::cli
