// `opendit bench sp`: the cost model of sequence parallelism on one GPU. For each group size N and mode it times one
// rank's share of a training step (forward, loss, backward, recompute as configured) with a loopback group of N
// (parallel/loopback_communicator.hpp: the shapes and the work of a real rank, the collectives a local copy), counts
// the bytes each collective hands in, and predicts the step on N GPUs for a given link bandwidth:
//   step(N) = compute(N) + sum over collectives of the bytes that leave a rank / bandwidth  (no overlap: upper bound)
// plus the all-reduce of the gradients over the sp group that training adds. Real multi-GPU runs: bench/RESULTS.md.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/detail/CUDAHooksInterface.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>

#include "cli/app.hpp"
#include "core/devices.hpp"
#include "core/error.hpp"
#include "core/strings.hpp"
#include "models/layers/attention.hpp"
#include "models/registry.hpp"
#include "parallel/counting_communicator.hpp"
#include "parallel/loopback_communicator.hpp"

namespace opendit::cli {

namespace {

struct SpBenchArgs {
  DeckArgs deck;
  std::string sizes = "2,4,8", modes = "ulysses,fastseq,dsp", dtype = "bf16", device = "auto";
  int batch = 1, iters = 3, warmup = 1, recompute = -1;
  double bandwidth = 300;  // GB/s that leave one GPU (NVLink 4: 450 GB/s per direction in theory)
};

// Seconds the bytes of one step's collectives take to leave a rank (ring algorithms) at `gbps`.
double comm_seconds(const parallel::CollectiveCounts& c, int n, double gbps) {
  using parallel::Collective;
  auto bytes = [&](Collective k) { return double(c[size_t(k)].bytes); };
  const double share = double(n - 1) / n;
  const double out = bytes(Collective::AllToAll) * share + bytes(Collective::AllGather) * (n - 1) +
                     bytes(Collective::ReduceScatter) * share + bytes(Collective::AllReduce) * 2 * share;
  return out / (gbps * 1e9);
}

void run_sp_bench(const SpBenchArgs& a, MpiRuntime& mpi) {
  require_one_process(mpi, "bench sp");
  if (a.batch < 1 || a.iters < 1 || a.warmup < 0 || !(a.bandwidth > 0))
    throw Error("--batch and --iters must be >= 1, --warmup >= 0, --bandwidth > 0");
  const config::Deck deck = a.deck.load(mpi.world());
  const bool gpu = pick_gpu(a.device);
  const at::Device device = gpu ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  const at::ScalarType dtype = a.dtype == "bf16" ? at::kBFloat16 : at::kFloat;
  std::vector<int> sizes;
  for (const std::string& s : split(a.sizes, ',')) sizes.push_back(std::stoi(s));
  std::vector<models::layers::SpMode> modes;
  std::unique_ptr<models::Model> model = models::make_model(deck, uint64_t{0});
  for (const std::string& m : split(a.modes, ',')) {
    const models::layers::SpMode mode = models::layers::parse_sp_mode(m);
    if (model->sp_mode_problem(mode).empty()) modes.push_back(mode);
  }
  for (const models::Param& p : model->parameters())  // no zero-initialised path that a kernel could skip
    if (p.trainable) p.tensor->normal_(0, 0.02);
  model->to(at::TensorOptions().device(device).dtype(dtype));
  model->set_requires_grad(true);
  model->set_recompute_blocks(a.recompute);
  if (gpu) models::layers::set_attention_backend(deck.get_string("model.attention"));
  int64_t trainable = 0;
  for (const models::Param& p : model->parameters())
    if (p.trainable) trainable += p.tensor->numel();

  std::vector<int64_t> shape = {a.batch};
  for (int64_t d : model->sample_shape()) shape.push_back(d);
  const auto opts = at::TensorOptions().device(device);
  const at::Tensor x = at::randn(shape, opts.dtype(dtype));
  const at::Tensor t = at::randint(0, 1000, {a.batch}, opts.dtype(at::kFloat));
  at::Generator gen = at::detail::createCPUGenerator(0);
  const models::Condition y = models::random_condition(model->condition_spec(), a.batch, gen).to(device);
  auto sync = [&] {
    if (gpu) at::detail::getCUDAHooks().deviceSynchronize(0);
  };
  // One rank's training step: median seconds, and the collectives per step.
  auto measure = [&](parallel::CountingCommunicator* comm) {
    auto step = [&] {
      for (const models::Param& p : model->parameters())
        if (p.trainable) p.tensor->mutable_grad() = at::Tensor();
      model->forward(x, t, y).to(at::kFloat).square().mean().backward();
    };
    for (int i = 0; i < a.warmup; ++i) step();
    sync();
    if (comm) comm->reset();
    std::vector<double> s;
    for (int i = 0; i < a.iters; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      step();
      sync();
      s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(s.begin(), s.end());
    parallel::CollectiveCounts per{};
    if (comm)
      for (size_t k = 0; k < per.size(); ++k)
        per[k] = {comm->counts()[k].calls / a.iters, comm->counts()[k].bytes / a.iters};
    return std::make_pair(s[s.size() / 2], per);
  };

  std::printf("%s\n%s on %s, batch %d per sp group, recompute %s, link %.0f GB/s per GPU\n", model->describe().c_str(),
              a.dtype.c_str(), gpu ? visible_gpus()[0].name.c_str() : "CPU", a.batch,
              a.recompute < 0 ? "all blocks" : std::to_string(a.recompute).c_str(), a.bandwidth);
  const double one = measure(nullptr).first;
  std::printf("BENCH sp N=1 compute_ms=%.1f samples_per_s=%.3f\n", one * 1e3, a.batch / one);
  const double grad_bytes = 4.0 * trainable;  // float32 gradients summed over the sp group
  for (int n : sizes) {
    std::map<std::string, double> predicted;
    for (models::layers::SpMode mode : modes) {
      auto comm = std::make_unique<parallel::CountingCommunicator>(
          std::make_unique<parallel::LoopbackCommunicator>(n, device));
      models::layers::SeqParallel sp;
      sp.comm = comm.get(), sp.mode = mode, sp.chunks = static_cast<int>(deck.get_int("parallel.fastseq_chunks"));
      model->set_sequence_parallel(sp);
      const auto [compute, per] = measure(comm.get());
      const double comm_s = comm_seconds(per, n, a.bandwidth);
      const double grads_s = grad_bytes * 2 * (n - 1) / n / (a.bandwidth * 1e9);
      const double step = compute + comm_s + grads_s;
      predicted[models::layers::sp_mode_name(mode)] = step;
      std::printf("BENCH sp N=%d mode=%s compute_ms=%.1f collectives=\"%s\" comm_ms=%.1f grad_allreduce_ms=%.1f "
                  "step_ms=%.1f samples_per_s=%.3f speedup=%.2f\n",
                  n, models::layers::sp_mode_name(mode), compute * 1e3, parallel::describe_counts(per).c_str(),
                  comm_s * 1e3, grads_s * 1e3, step * 1e3, a.batch / step, one / step);
    }
    model->set_sequence_parallel({});
    if (predicted.empty()) continue;
    const auto best = std::min_element(predicted.begin(), predicted.end(),
                                       [](const auto& l, const auto& r) { return l.second < r.second; });
    std::printf("PICK N=%d: %s (predicted %.1f ms per step on %d GPUs)\n", n, best->first.c_str(), best->second * 1e3,
                n);
  }
}

}  // namespace

void add_bench_sp(CLI::App& bench, MpiRuntime& mpi) {
  auto a = std::make_shared<SpBenchArgs>();
  auto* cmd = bench.add_subcommand("sp", "Sequence-parallel cost model: one rank's share of a training step timed "
                                         "with a loopback group of N, its collectives' bytes, and the step predicted "
                                         "on N GPUs for a link bandwidth, per mode");
  a->deck.add_to(*cmd);
  cmd->add_option("--sizes", a->sizes, "Group sizes N, comma-separated")->default_val("2,4,8");
  cmd->add_option("--modes", a->modes, "Modes to compare (those the model takes)")->default_val("ulysses,fastseq,dsp");
  cmd->add_option("--bandwidth", a->bandwidth, "GB/s that leave one GPU (the link)")->default_val(300);
  cmd->add_option("--batch", a->batch, "Samples per sp group")->default_val(1);
  cmd->add_option("--iters", a->iters, "Timed steps (the median is reported)")->default_val(3);
  cmd->add_option("--warmup", a->warmup, "Untimed steps first")->default_val(1);
  cmd->add_option("--recompute", a->recompute, "Blocks recomputed in backward (-1: all)")->default_val(-1);
  cmd->add_option("--dtype", a->dtype, "fp32 or bf16")->check(CLI::IsMember({"fp32", "bf16"}))->default_str("bf16");
  cmd->add_option("--device", a->device, "auto, cpu or cuda")->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->default_str("auto");
  cmd->callback([a, &mpi] { run_sp_bench(*a, mpi); });
}

}  // namespace opendit::cli
