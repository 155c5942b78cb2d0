#include "train/trainer.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <future>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/devices.hpp"
#include "core/error.hpp"
#include "core/op_profiler.hpp"
#include "core/progress.hpp"
#include "diffusion/gaussian_diffusion.hpp"
#include "io/checkpoint.hpp"
#include "io/data_loader.hpp"
#include "io/files.hpp"
#include "models/attention.hpp"
#include "models/dit.hpp"
#include "models/dit_weights.hpp"
#include "parallel/communicator.hpp"
#include "train/flat_params.hpp"
#include "train/grad_sync.hpp"
#include "train/phase_timer.hpp"
#include "train/settings.hpp"

namespace opendit::train {

namespace {

// A well-mixed 64-bit seed for step `step` of a run seeded `seed` (splitmix64).
uint64_t step_seed(uint64_t seed, int64_t step) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(step + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The randomness of one optimizer step for the whole global batch: t [B] int64, drop [B] bool, noise [B, ...].
struct StepRandom {
  at::Tensor t, drop, noise;
};
StepRandom draw_step(uint64_t seed, int64_t step, int64_t B, const std::vector<int64_t>& sample_shape,
                     int64_t num_timesteps, double dropout) {
  at::Generator gen = at::detail::createCPUGenerator(step_seed(seed, step));
  StepRandom r;
  r.t = at::randint(0, num_timesteps, {B}, gen, at::kLong);
  r.drop = at::rand({B}, gen) < dropout;
  std::vector<int64_t> shape = {B};
  shape.insert(shape.end(), sample_shape.begin(), sample_shape.end());
  r.noise = at::randn(shape, gen);
  return r;
}

double all_reduce_sum(double x, MPI_Comm comm) {
  double s = 0;
  MPI_Allreduce(&x, &s, 1, MPI_DOUBLE, MPI_SUM, comm);
  return s;
}

std::string fmt(const char* f, double x) {
  char b[64];
  std::snprintf(b, sizeof b, f, x);
  return b;
}

}  // namespace

int train(const config::Deck& deck, const Mesh& mesh, const TrainOptions& options) {
  const bool root = mesh.rank() == 0;
  const int dp = mesh.dp_size(), dp_rank = mesh.coord().dp_rank;
  TrainSettings s = train_settings_from(deck, dp);
  if (mesh.sp_size() > 1)
    throw Error("parallel.sp_size > 1: sequence parallelism is not implemented for training yet; use sp_size = 1");
  models::DiTConfig cfg = models::dit_config_from(deck);

  // Device: one GPU per rank on a node (local rank modulo the GPUs), or the CPU.
  const int gpus = gpu_count();
  if (s.device == "cuda" && gpus == 0) throw Error("parallel.device = \"cuda\" but no GPU is visible");
  const bool gpu = s.device == "cuda" || (s.device == "auto" && gpus > 0);
  // NCCL needs a GPU of its own per rank. Every rank of a node sees the same count, so all fail alike.
  if (gpu && mesh.local_size() > gpus)
    throw Error(cat(mesh.local_size(), " ranks share a node with ", gpus, " GPU(s): each rank needs its own GPU; run ",
                    "at most ", gpus, " ranks per node, or set parallel.device = \"cpu\""));
  const at::Device device = gpu ? at::Device(at::kCUDA, mesh.local_rank() % gpus) : at::Device(at::kCPU);
  const std::string gpu_name = gpu ? visible_gpus()[device.index()].name : "";

  // Data: every rank opens the file and checks it against the model before anything is allocated.
  auto dataset = std::make_shared<io::LatentDataset>(s.data_path);
  const std::vector<int64_t> want = {cfg.in_channels, cfg.input_size, cfg.input_size};
  if (dataset->sample_shape() != want)
    throw Error(cat(s.data_path, ": samples are ", at::IntArrayRef(dataset->sample_shape()), " but the model takes ",
                    at::IntArrayRef(want), " (model.in_channels, model.input_size)"));
  if (!dataset->has_labels()) throw Error(cat(s.data_path, ": no /labels: class-conditional DiT needs labels"));
  if (dataset->num_classes() > cfg.num_classes)
    throw Error(cat(s.data_path, ": ", dataset->num_classes(), " classes but model.num_classes = ", cfg.num_classes));
  const int64_t micro_global = s.global_batch / s.accumulation, local = micro_global / dp;
  io::DataLoaderOptions lopt;
  lopt.prefetch = s.prefetch;
  lopt.pin_memory = gpu;
  io::DataLoader loader(dataset, micro_global, dp_rank, dp, s.seed, lopt);

  diffusion::GaussianDiffusion diff = diffusion::make_diffusion(
      "", deck.get_string("diffusion.schedule"), static_cast<int>(deck.get_int("diffusion.num_steps")),
      cfg.learn_sigma);

  if (root) {
    const double epochs = double(s.steps) * s.accumulation / loader.batches_per_epoch();
    std::printf("resolved deck:\n%s\n", deck.to_toml().c_str());
    std::printf("%-22s %s\n%-22s %s\n%-22s %lld samples of %s (%s)\n%-22s %lld = %d dp x %lld accumulation x %lld\n"
                "%-22s %lld (%.2f epochs)\n%-22s %s, %s, lr %g (%s, warmup %lld), grad clip %g, EMA %g\n"
                "%-22s %s\n%-22s %s\n\n",
                "model", cfg.describe().c_str(), "parameters", (std::to_string(cfg.num_parameters()) + " (" +
                fmt("%.1f", cfg.num_parameters() / 1e6) + " M)").c_str(), "data", (long long)dataset->size(),
                s.data_path.c_str(), "float32 after read", "global batch", (long long)s.global_batch, dp,
                (long long)s.accumulation, (long long)local, "steps", (long long)s.steps, epochs, "optimizer",
                s.bf16 ? "bf16 compute / fp32 master" : "fp32", dp_strategy_name(s.dp.strategy), s.dp.adamw.lr,
                s.lr_schedule.c_str(), (long long)s.warmup_steps, s.dp.max_grad_norm, s.dp.ema_decay, "mesh",
                mesh.describe().c_str(), "device",
                gpu ? (std::to_string(dp) + " x " + gpu_name).c_str() : "CPU");
  }
  if (options.dry_run) {
    if (root) std::printf("dry run: deck, data and mesh are valid; nothing trained\n");
    return 0;
  }

  // Model and optimizer: the same seed gives the same initial weights on every rank.
  models::DiT model(cfg, s.seed);
  if (s.checkpoint_blocks > cfg.depth)
    throw Error(cat("train.checkpoint_blocks = ", s.checkpoint_blocks, " exceeds the model's ", cfg.depth, " blocks"));
  model.set_checkpoint_blocks(s.activation_checkpointing ? -1 : static_cast<int>(s.checkpoint_blocks));
  if (gpu) models::set_attention_backend(deck.get_string("model.attention"));
  model.to(at::TensorOptions().device(device));
  model.set_requires_grad(true);
  FlatParams::Slots trainable;
  at::Tensor* pos_embed = nullptr;
  for (const auto& slot : model.named_parameters())
    (slot.first == "pos_embed" ? (void)(pos_embed = slot.second) : trainable.push_back(slot));
  FlatParams params(trainable, dp, dp_rank);
  const at::ScalarType compute = s.bf16 ? at::kBFloat16 : at::kFloat;
  if (s.bf16) {
    params.use_working_copy(at::kBFloat16);
    *pos_embed = pos_embed->to(at::kBFloat16);
  }
  params.stream_grads();  // after the working copy: hooks live on the tensors the model computes with
  auto comm = make_communicator(mesh.dp_comm(), device);
  DataParallelOptimizer opt(params, *comm, s.dp);

  io::make_dirs(s.run_dir(), "run folder");
  const std::string ckpt_dir = s.run_dir() + "/checkpoints";
  auto state_of = [&] {  // this rank's sharded state, as CPU float32 tensors over the optimizer's range
    io::ShardedState st;
    st.range = opt.state_range();
    st.groups["model"] = params.data().narrow(0, st.range.begin, st.range.size()).to(at::kCPU);
    st.groups["ema"] = opt.ema().to(at::kCPU);
    st.groups["optim/exp_avg"] = opt.exp_avg().to(at::kCPU);
    st.groups["optim/exp_avg_sq"] = opt.exp_avg_sq().to(at::kCPU);
    return st;
  };
  int64_t start_step = 0, skipped_in_a_row = 0;
  if (!options.resume.empty()) {
    std::string path = options.resume;
    if (path == "auto") {
      // Rank 0 looks, everyone follows: all ranks resume from the same file.
      std::string found = root ? io::latest_checkpoint(ckpt_dir).value_or("") : "";
      int len = static_cast<int>(found.size());
      MPI_Bcast(&len, 1, MPI_INT, 0, mesh.world_comm());
      found.resize(len);
      MPI_Bcast(found.data(), len, MPI_CHAR, 0, mesh.world_comm());
      path = found;
      if (root && path.empty()) std::printf("resume auto: no complete checkpoint in %s: starting at step 0\n", ckpt_dir.c_str());
    }
    if (!path.empty()) {
      io::ShardedState st;
      st.range = opt.state_range();
      io::CheckpointMeta meta = io::load_checkpoint(path, params.layout(), st, mesh.dp_comm());
      if (meta.model_json != models::config_to_json(cfg))
        throw Error(cat(path, ": written for the model ", meta.model_json, ", the deck describes ",
                        models::config_to_json(cfg)));
      at::NoGradGuard no_grad;
      params.data().narrow(0, st.range.begin, st.range.size()).copy_(st.groups.at("model"));
      opt.ema().copy_(st.groups.at("ema"));
      opt.exp_avg().copy_(st.groups.at("optim/exp_avg"));
      opt.exp_avg_sq().copy_(st.groups.at("optim/exp_avg_sq"));
      if (params.working().defined())
        params.working().narrow(0, st.range.begin, st.range.size()).copy_(st.groups.at("model"));
      opt.gather_params();
      opt.set_step_count(meta.optimizer_step);
      loader.restore({meta.loader_epoch, meta.loader_cursor});
      start_step = meta.step;
      skipped_in_a_row = meta.skipped_in_a_row;
      if (root)
        std::printf("resumed from %s: step %lld (written by %d ranks, %s)\n", path.c_str(), (long long)start_step,
                    meta.world_size, meta.strategy.c_str());
    }
  }
  auto save = [&](int64_t steps_done) {
    io::CheckpointMeta meta;
    meta.step = steps_done;
    meta.optimizer_step = opt.step_count();
    const auto ls = loader.state();
    meta.loader_epoch = ls.epoch, meta.loader_cursor = ls.cursor;
    meta.skipped_in_a_row = skipped_in_a_row;
    meta.world_size = mesh.world_size(), meta.dp_size = dp, meta.sp_size = mesh.sp_size();
    meta.strategy = dp_strategy_name(s.dp.strategy);
    meta.deck_json = deck.to_json();
    meta.model_json = models::config_to_json(cfg);
    meta.seed = s.seed;
    std::string path = io::save_checkpoint(ckpt_dir, params.layout(), state_of(),
                                           {{"pos_embed", pos_embed->to(at::kCPU, at::kFloat)}}, meta,
                                           mesh.dp_comm(), static_cast<int>(s.keep_checkpoints));
    if (root) std::fprintf(stderr, "checkpoint: %s\n", path.c_str());
  };
  std::ofstream metrics;
  if (root) metrics.open(s.run_dir() + "/metrics.jsonl", std::ios::app);

  auto sync = [&] {
    if (gpu) at::detail::getCUDAHooks().deviceSynchronize(device.index());
  };
  PhaseTimer timer(sync);
  timer.set_enabled(false);  // phases are timed (device-synchronized) on log steps only
  if (gpu) reset_peak_memory(device.index());
  Progress progress("train", s.steps, root);
  const double peak_tflops = dense_bf16_peak_tflops(gpu_name);
  double window_loss = 0;
  int64_t window_steps = 0, skipped_total = 0;
  auto window_start = std::chrono::steady_clock::now();
  const auto run_start = window_start;

  // Each step's randomness (about 2 ms of CPU randn at batch 64) is drawn one step ahead on a worker thread, so
  // that the host keeps the GPU fed. Pinned, so that its copies to the GPU do not stall the host.
  auto draw = [&](int64_t st) {
    StepRandom r = draw_step(s.seed, st, s.global_batch, dataset->sample_shape(), diff.num_timesteps(),
                             cfg.class_dropout_prob);
    if (gpu) r.noise = r.noise.pin_memory();
    return r;
  };
  std::future<StepRandom> next_random;
  if (start_step < s.steps) next_random = std::async(std::launch::async, draw, start_step);

  progress.update(start_step);
  for (int64_t step = start_step; step < s.steps; ++step) {
    opt.set_lr(s.lr_at(step));
    // Phase timing synchronizes the device at every switch: only on log steps, so that other steps run unhindered.
    timer.set_enabled((step + 1) % s.log_every == 0);
    // train.profile_step: rank 0 records this one step op by op (the device drained before and after).
    std::unique_ptr<OpProfiler> profiler;
    if (root && step + 1 == s.profile_step) {
      sync();
      profiler = std::make_unique<OpProfiler>();
      profiler->start(gpu);
    }
    StepRandom rnd = next_random.get();
    if (step + 1 < s.steps) next_random = std::async(std::launch::async, draw, step + 1);
    auto upload = [&](const at::Tensor& t) { return gpu ? t.pin_memory().to(device, /*non_blocking=*/true) : t; };
    at::Tensor loss_sum;  // on the device: read once per step
    for (int64_t m = 0; m < s.accumulation; ++m) {
      timer.switch_to(Phase::Data);
      io::LatentBatch batch = loader.next();
      const int64_t first = m * micro_global + int64_t(dp_rank) * local;  // this slice's place in the global batch
      at::Tensor x0 = batch.latents.to(device, /*non_blocking=*/true);
      at::Tensor y = upload(at::where(rnd.drop.narrow(0, first, local), cfg.num_classes, batch.labels));
      at::Tensor t = upload(rnd.t.narrow(0, first, local));
      at::Tensor noise = upload(rnd.noise.narrow(0, first, local));
      timer.switch_to(Phase::Forward);
      diffusion::Denoiser net = [&](const at::Tensor& xt, const at::Tensor& tt) {
        return model.forward(xt.to(compute), tt.to(at::kFloat), y).to(at::kFloat);  // loss terms in fp32
      };
      at::Tensor loss = diff.training_losses(net, x0, t, noise).loss.mean() / double(s.accumulation);
      timer.switch_to(Phase::Backward);
      loss.backward();
      loss_sum = m == 0 ? loss.detach() : loss_sum + loss.detach();
    }
    const double step_loss = loss_sum.item<double>();
    timer.switch_to(Phase::Comm);
    params.gather_grads();  // most gradients were streamed into the flat buffer during backward
    opt.reduce_grads();
    const double norm = opt.global_grad_norm();
    const double loss_avg = all_reduce_sum(step_loss, mesh.dp_comm()) / dp;
    if (!std::isfinite(norm) || !std::isfinite(loss_avg)) {
      ++skipped_total;
      if (root) std::fprintf(stderr, "\nwarning: step %lld: non-finite loss (%g) or gradient norm (%g): step skipped\n",
                             (long long)step + 1, loss_avg, norm);
      if (++skipped_in_a_row >= s.max_nonfinite)
        throw Error(cat(skipped_in_a_row, " consecutive steps had a non-finite loss or gradient (last at step ",
                        step + 1, "): lower train.lr, enable train.grad_clip, or check the data"));
      continue;
    }
    skipped_in_a_row = 0;
    timer.switch_to(Phase::Optimizer);
    opt.set_ema_decay((opt.step_count() + 1) % s.ema_every == 0 ? s.dp.ema_decay : 1.0);
    opt.update(clip_scale_for(norm, s.dp.max_grad_norm));
    timer.switch_to(Phase::Comm);
    opt.gather_params();
    timer.switch_to(Phase::Other);
    if (profiler) {
      profiler->stop();
      const std::string table = profiler->table(30);
      std::printf("\nprofile of step %lld (rank 0, %s):\n%s\n", (long long)step + 1, gpu ? "GPU kernels" : "CPU ops",
                  table.c_str());
      std::ofstream(s.run_dir() + "/profile.txt") << table;
      profiler->write_json(s.run_dir() + "/profile.json");
      profiler.reset();
    }
    window_loss += loss_avg;
    ++window_steps;

    if ((step + 1) % s.log_every == 0 || step + 1 == s.steps) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - window_start).count();
      const double img_s = window_steps * s.global_batch / secs;
      const double mfu = peak_tflops > 0 ? 3 * cfg.forward_flops() * img_s / dp / (peak_tflops * 1e12) : 0;
      const double mem = gpu ? peak_memory_gib(device.index()) : 0;
      const double done = std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
      const int64_t steps_here = step + 1 - start_step;
      const auto state = loader.state();
      if (root) {
        std::string line = cat("step ", step + 1, "/", s.steps, "  epoch ", state.epoch, "  loss ",
                               fmt("%.4f", window_loss / window_steps), "  grad ", fmt("%.3f", norm), "  lr ",
                               fmt("%.3g", s.lr_at(step)), "  ", fmt("%.1f", img_s), " img/s");
        if (gpu) line += cat("  MFU ", fmt("%.1f", 100 * mfu), "%  mem ", fmt("%.1f", mem), " GiB");
        line += cat("  ETA ", format_duration(done / steps_here * (s.steps - step - 1)));
        std::fprintf(stderr, "%s\n", line.c_str());
        nlohmann::ordered_json j = {{"step", step + 1}, {"epoch", state.epoch}, {"loss", window_loss / window_steps},
                                    {"grad_norm", norm}, {"lr", s.lr_at(step)}, {"img_per_s", img_s},
                                    {"mfu", mfu}, {"peak_mem_gib", mem}, {"skipped", skipped_total},
                                    {"seconds", done}};
        metrics << j.dump() << "\n" << std::flush;
      }
      window_loss = 0, window_steps = 0;
      window_start = std::chrono::steady_clock::now();
    }
    if (!options.no_save && ((step + 1) % s.checkpoint_every == 0 || step + 1 == s.steps)) {
      timer.switch_to(Phase::Checkpoint);
      save(step + 1);
      timer.switch_to(Phase::Other);
    }
    progress.update(step + 1);
  }
  progress.finish();

  // The trained weights for `opendit sample` and `opendit convert`: master weights and EMA, fp32, official names.
  timer.switch_to(Phase::Checkpoint);
  if (options.no_save) {
    if (root) std::printf("--no-save: no checkpoint and no weights written\n");
  } else {
    at::Tensor master = opt.gather_full_master().to(at::kCPU), ema = opt.gather_full_ema().to(at::kCPU);
    if (root) {
      auto with_pos = [&](const at::Tensor& flat) {
        auto sd = unflatten(params.layout(), flat);
        sd["pos_embed"] = pos_embed->to(at::kCPU, at::kFloat);
        return sd;
      };
      models::save_dit_weights(s.run_dir() + "/model.safetensors", with_pos(master), cfg);
      models::save_dit_weights(s.run_dir() + "/ema.safetensors", with_pos(ema), cfg);
      std::printf("wrote %s/ema.safetensors and model.safetensors\n", s.run_dir().c_str());
    }
  }
  std::string table = timer.report(mesh.world_comm());
  if (root)
    std::printf("\ntime per phase over %d ranks (%lld timed steps: every train.log_every-th, device-synchronized; "
                "checkpoints: all):\n%s",
                mesh.world_size(), (long long)timer.timed_steps(), table.c_str());
  return 0;
}

}  // namespace opendit::train
