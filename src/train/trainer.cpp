#include "train/trainer.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/detail/CUDAHooksInterface.h>

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <set>

#include "core/devices.hpp"
#include "core/error.hpp"
#include "core/out_of_memory.hpp"
#include "core/progress.hpp"
#include "core/stop_request.hpp"
#include "core/strings.hpp"
#include "io/files.hpp"
#include "io/weights.hpp"
#include "models/layers/attention.hpp"
#include "models/registry.hpp"
#include "parallel/watchdog.hpp"
#include "train/memory_advice.hpp"

namespace opendit::train {

namespace {

// A well-mixed 64-bit seed for step `step` of a run seeded `seed` (splitmix64).
uint64_t step_seed(uint64_t seed, int64_t step) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(step + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::string fmt(const char* f, double x) {
  char b[64];
  std::snprintf(b, sizeof b, f, x);
  return b;
}

// The dataset must hold what the model takes: the sample shape and the kind of condition. Returns the buckets of the
// model's shape (a v2 file may hold others, e.g. images beside video clips).
std::vector<int64_t> check_dataset(const io::LatentDataset& data, const models::Model& model,
                                   const models::ConditionSpec& spec, bool verbose) {
  const std::vector<int64_t> want = model.sample_shape();
  if (data.size() == 0)
    throw Error(cat(data.path(), ": holds no samples", data.version() >= 2 ? " (its /failures lists the inputs that "
                                                                             "failed when it was encoded)" : ""));
  std::vector<int64_t> use;
  std::vector<std::string> other;
  for (std::size_t k = 0; k < data.buckets().size(); ++k) {
    const io::LatentBucket& b = data.buckets()[k];
    if (b.shape == want)
      use.push_back(int64_t(k));
    else
      other.push_back(cat(b.rows.size(), " of ", at::IntArrayRef(b.shape)));
  }
  if (use.empty())
    throw Error(cat(data.path(), ": samples are ", other.size() == 1 ? "" : "(by bucket) ", join(other, ", "),
                    " but the model takes ", at::IntArrayRef(want), " (its [model] keys: channels and input size)"));
  if (!other.empty() && verbose)
    std::printf("note: %s: skipping samples of other shapes than the model's %s: %s\n", data.path().c_str(),
                shape_str(want).c_str(), join(other, ", ").c_str());
  if (spec.kind == models::ConditionKind::Labels) {
    if (!data.has_labels()) throw Error(cat(data.path(), ": no /labels: a class-conditional model needs labels"));
    if (data.num_classes() > spec.num_classes)
      throw Error(cat(data.path(), ": ", data.num_classes(), " classes but model.num_classes = ", spec.num_classes));
  } else if (!data.has_text()) {
    throw Error(cat(data.path(), ": no captions (", data.version() >= 2 ? "/text/tokens" : "/text_emb",
                    "): a text-conditional model needs caption embeddings (opendit encode --text-encoder)"));
  } else if (data.text_dim() != spec.text_dim || data.text_length() > spec.text_length) {
    throw Error(cat(data.path(), ": captions of ", data.text_length(), " tokens x ", data.text_dim(),
                    " channels, but the model takes at most ", spec.text_length, " x ", spec.text_dim,
                    " (model.text_length, model.caption_channels)"));
  }
  return use;
}

// "inputs/x.toml + 2 --set": where the deck came from, for the plan.
std::string deck_origin(const config::Deck& deck) {
  std::set<std::string> files;
  int sets = 0;
  for (const config::Option& o : deck.schema().options) {
    const std::string& where = deck.origin(o.key);
    if (where == "--set")
      ++sets;
    else if (where != "default")
      files.insert(where.substr(0, where.rfind(':')));
  }
  std::string out = files.empty() ? "defaults" : join(std::vector<std::string>(files.begin(), files.end()), ", ");
  if (sets) out += cat(" + ", sets, " --set");
  return out;
}

}  // namespace

StepRandom draw_step(uint64_t seed, int64_t step, int64_t global_batch, const std::vector<int64_t>& sample_shape,
                     int64_t num_timesteps, double dropout, bool posterior) {
  at::Generator gen = at::detail::createCPUGenerator(step_seed(seed, step));
  StepRandom r;
  r.t = at::randint(0, num_timesteps, {global_batch}, gen, at::kLong);
  r.drop = at::rand({global_batch}, gen) < dropout;
  std::vector<int64_t> shape = {global_batch};
  shape.insert(shape.end(), sample_shape.begin(), sample_shape.end());
  r.noise = at::randn(shape, gen);
  if (posterior) r.eps = at::randn(shape, gen);  // after the noise: files without a posterior keep their stream
  return r;
}

Trainer::Trainer(const config::Deck& deck, const parallel::ParallelContext& ctx, const TrainOptions& options)
    : deck_(deck), ctx_(ctx), options_(options) {
  const parallel::Mesh& mesh = ctx.mesh();
  const int dp = mesh.dp_size();
  // Every rank reads the same deck: its errors are everyone's.
  ctx.world().agree([&] {
    s_ = train_settings_from(deck, dp);
    model_ = models::make_model(deck, std::nullopt);  // described, not built: the plan and a dry run need no memory
    cond_spec_ = model_->condition_spec();
    if (mesh.sp_size() > 1) sp_mode_ = models::resolve_sp_mode(deck.get_string("parallel.sp_mode"), *model_);
    if (s_.checkpoint_blocks > model_->depth())
      throw Error(cat("train.checkpoint_blocks = ", s_.checkpoint_blocks, " exceeds the model's ", model_->depth(),
                      " blocks"));
    diffusion_ = std::make_unique<diffusion::GaussianDiffusion>(
        diffusion::make_diffusion("", deck.get_string("diffusion.schedule"),
                                  static_cast<int>(deck.get_int("diffusion.num_steps")), model_->learn_sigma()));
  });
  // Every rank opens the data and checks it against the model before anything is allocated.
  ctx.world().agree([&] {
    dataset_ = std::make_shared<io::LatentDataset>(s_.data_path);
    io::DataLoaderOptions lopt;
    lopt.buckets = check_dataset(*dataset_, *model_, cond_spec_, mesh.rank() == 0);
    for (int64_t k : lopt.buckets) data_samples_ += int64_t(dataset_->buckets()[size_t(k)].rows.size());
    lopt.prefetch = s_.prefetch;
    lopt.pin_memory = ctx.gpu();
    loader_ = std::make_unique<io::DataLoader>(dataset_, s_.global_batch / s_.accumulation, mesh.coord().dp_rank,
                                               dp, s_.seed, lopt);
  });
  gpu_name_ = ctx.gpu() ? visible_gpus()[ctx.device().index()].name : "";
  peak_tflops_ = dense_bf16_peak_tflops(gpu_name_);
  compute_ = s_.bf16 ? at::kBFloat16 : at::kFloat;
  if (mesh.rank() == 0) {
    const int64_t local = s_.global_batch / s_.accumulation / dp, n = model_->num_parameters();
    const double epochs = double(s_.steps) * s_.accumulation / loader_->batches_per_epoch();
    // The whole resolved deck only in a dry run: in a run it goes to RUN/deck.toml, and an error stays near the top.
    if (options.dry_run)
      std::printf("resolved deck:\n%s\n", deck.to_toml().c_str());
    else
      std::printf("%-22s %s (resolved: %s/deck.toml)\n", "deck", deck_origin(deck).c_str(), s_.run_dir().c_str());
    const std::string used = data_samples_ == dataset_->size() ? std::to_string(data_samples_)
                                                                 : cat(data_samples_, " of ", dataset_->size());
    std::printf("%-22s %s\n%-22s %lld (%.1f M)\n%-22s %s samples of %s (%s)\n"
                "%-22s %lld = %d dp x %lld accumulation x %lld\n%-22s %lld (%.2f epochs)\n"
                "%-22s %s, %s, lr %g (%s, warmup %lld), grad clip %g, EMA %g\n%-22s %s\n%-22s %s\n",
                "model", model_->describe().c_str(), "parameters", (long long)n, n / 1e6, "data",
                used.c_str(), s_.data_path.c_str(), "float32 after read", "global batch",
                (long long)s_.global_batch, dp, (long long)s_.accumulation, (long long)local, "steps",
                (long long)s_.steps, epochs, "optimizer", s_.bf16 ? "bf16 compute / fp32 master" : "fp32",
                dp_strategy_name(s_.dp.strategy), s_.dp.adamw.lr, s_.lr_schedule.c_str(), (long long)s_.warmup_steps,
                s_.dp.max_grad_norm, s_.dp.ema_decay, "mesh", mesh.describe().c_str(), "device",
                ctx.gpu() ? (std::to_string(mesh.world_size()) + " x " + gpu_name_).c_str() : "CPU");
    if (mesh.sp_size() > 1)
      std::printf("%-22s %s over %d ranks per sample (gradients summed over them, then averaged over dp)\n",
                  "sequence parallel", models::layers::sp_mode_name(sp_mode_), mesh.sp_size());
    std::printf("\n");
  }
  if (options.dry_run) return;
  try {
    build();
  } catch (const c10::Error& e) {
    rethrow_with_memory_advice(e, /*in_step=*/false);
  }
}

void Trainer::rethrow_with_memory_advice(const c10::Error& e, bool in_step) const {
  if (!is_out_of_memory(e)) throw;
  RunMemory m;
  m.global_batch = s_.global_batch, m.dp_size = ctx_.mesh().dp_size(), m.accumulation = s_.accumulation;
  m.depth = model_ ? model_->depth() : 0;  // null: the set-up failed building the model itself
  m.recompute = s_.activation_checkpointing ? -1 : static_cast<int>(s_.checkpoint_blocks);
  m.sp_size = ctx_.mesh().sp_size();
  m.sharded = s_.dp.strategy != DpStrategy::Ddp;
  throw Error(out_of_memory_advice(in_step, step_ + 1, out_of_memory_summary(e), m));
}

Trainer::~Trainer() {
  if (next_random_.valid()) next_random_.wait();  // the worker reads members; it must end before they do
  if (writing_.valid()) writing_.wait();          // a run ending in an error: the writers of all ranks finish together
}

void Trainer::build() {
  const parallel::Mesh& mesh = ctx_.mesh();
  // The same seed gives the same initial weights on every rank.
  model_ = models::make_model(deck_, s_.seed);
  model_->set_recompute_blocks(s_.activation_checkpointing ? -1 : static_cast<int>(s_.checkpoint_blocks));
  if (ctx_.gpu()) models::layers::set_attention_backend(deck_.get_string("model.attention"));
  model_->to(at::TensorOptions().device(ctx_.device()));
  model_->set_requires_grad(true);
  if (mesh.sp_size() > 1) {
    models::layers::SeqParallel sp;
    sp.comm = &ctx_.sp(), sp.mode = sp_mode_, sp.chunks = static_cast<int>(deck_.get_int("parallel.fastseq_chunks"));
    model_->set_sequence_parallel(sp);
  }
  params_ = std::make_unique<FlatParams>(FlatParams::trainable(*model_, &frozen_), mesh.dp_size(),
                                         mesh.coord().dp_rank);
  if (s_.bf16) {
    params_->use_working_copy(at::kBFloat16);
    for (auto& [name, t] : frozen_) *t = t->to(at::kBFloat16);
  }
  params_->stream_grads();  // after the working copy: hooks live on the tensors the model computes with
  opt_ = std::make_unique<DataParallelOptimizer>(*params_, ctx_.dp(), s_.dp);
  opt_->set_ema_every(s_.ema_every);
  const at::Device device = ctx_.device();
  timer_ = std::make_unique<PhaseTimer>([device] {
    if (device.is_cuda()) at::detail::getCUDAHooks().deviceSynchronize(device.index());
  });
  timer_->set_enabled(false);  // phases are timed (device-synchronized) on log steps only
  // One GPU: each step a CUDA graph (train/step_graph.hpp). Collectives are not captured: more ranks step eagerly.
  if (s_.cuda_graph && ctx_.gpu() && mesh.world_size() == 1)
    graph_ = std::make_unique<StepGraph>([this](const std::vector<MicroBatch>& in) { return device_step(in); },
                                         ctx_.device());
  window_start_ = run_start_ = std::chrono::steady_clock::now();
}

void Trainer::log() {
  if ((step_ % s_.log_every != 0 && step_ != s_.steps) || window_steps_ == 0) return;
  const auto now = std::chrono::steady_clock::now();
  const double secs = std::chrono::duration<double>(now - window_start_).count();
  const double img_s = window_steps_ * s_.global_batch / secs;
  const int dp = ctx_.mesh().dp_size();
  const double flops = model_->forward_flops(model_->sample_shape());
  const double mfu = peak_tflops_ > 0 ? 3 * flops * img_s / dp / (peak_tflops_ * 1e12) : 0;
  const double mem = ctx_.gpu() ? peak_memory_gib(ctx_.device().index()) : 0;
  const double done = std::chrono::duration<double>(now - run_start_).count();
  const int64_t steps_here = step_ - resumed_at_;
  const auto state = loader_->state();
  const double lr = s_.lr_at(step_ - 1), loss = window_loss_ / window_steps_;
  if (ctx_.mesh().rank() == 0) {
    std::string line = cat("step ", step_, "/", s_.steps, "  epoch ", state.epoch, "  loss ", fmt("%.4f", loss),
                           "  grad ", fmt("%.3f", last_norm_), "  lr ", fmt("%.3g", lr), "  ", fmt("%.1f", img_s),
                           " img/s");
    if (ctx_.gpu()) line += cat("  MFU ", fmt("%.1f", 100 * mfu), "%  mem ", fmt("%.1f", mem), " GiB");
    line += cat("  ETA ", format_duration(done / steps_here * (s_.steps - step_)));
    std::fprintf(stderr, "%s\n", line.c_str());
    nlohmann::ordered_json j = {{"step", step_},       {"epoch", state.epoch},   {"loss", loss},
                                {"grad_norm", last_norm_}, {"lr", lr},           {"img_per_s", img_s},
                                {"mfu", mfu},          {"peak_mem_gib", mem},    {"skipped", skipped_total_},
                                {"seconds", done}};
    metrics_ << j.dump() << "\n" << std::flush;
  }
  window_loss_ = 0, window_steps_ = 0;
  window_start_ = std::chrono::steady_clock::now();
}

void Trainer::export_weights() {
  parallel::Watch watch("export of the final weights");
  // Master weights and EMA, fp32, official names, for `opendit sample` and `opendit convert`.
  at::Tensor master = opt_->gather_full_master().to(at::kCPU), ema = opt_->gather_full_ema().to(at::kCPU);
  if (ctx_.mesh().rank() != 0) return;
  auto with_frozen = [&](const at::Tensor& flat) {
    models::StateDict sd = unflatten(params_->layout(), flat);
    for (const auto& [name, t] : frozen_) sd[name] = t->to(at::kCPU, at::kFloat);
    return model_->export_weights(sd, "opendit");
  };
  io::write_weights(s_.run_dir() + "/model.safetensors", with_frozen(master), model_->weight_metadata());
  io::write_weights(s_.run_dir() + "/ema.safetensors", with_frozen(ema), model_->weight_metadata());
  std::printf("wrote %s/ema.safetensors and model.safetensors\n", s_.run_dir().c_str());
}

int Trainer::run() {
  const bool root = ctx_.mesh().rank() == 0;
  if (options_.dry_run) {
    dry_run_checks();
    if (root)
      std::printf(
          "dry run: deck, data and mesh are valid, and so are the run folder, --resume and the free space; "
          "nothing trained\n");
    return 0;
  }
  StopHandlers stop(root);  // SIGTERM, SIGINT, SIGUSR1: stop at the next step boundary with a checkpoint
  open_run_folder();
  if (!options_.resume.empty()) resume(options_.resume);
  folder_->settle(step_);  // what a killed or abandoned branch left after this step moves aside
  if (root) {
    std::ofstream(s_.run_dir() + "/deck.toml") << deck_.to_toml(/*with_origins=*/true);
    metrics_.open(s_.run_dir() + "/metrics.jsonl", std::ios::app);
  }
  if (!options_.no_save) check_space(/*at_start=*/true);
  prepare_snapshot();
  if (ctx_.gpu()) reset_peak_memory(ctx_.device().index());
  Progress progress("train", s_.steps, root);
  window_start_ = run_start_ = std::chrono::steady_clock::now();
  progress.update(step_);
  int64_t saved_at = -1;  // the step of this run's newest checkpoint
  int signal = 0;
  auto after_step = [&](bool stepped) {  // a finished step: its log line, its checkpoint, the progress line
    if (!stepped) return;
    log();
    if (!options_.no_save && (step_ % s_.checkpoint_every == 0 || step_ == s_.steps)) {
      timer_->switch_to(Phase::Checkpoint);
      save();  // in the background with train.async_checkpoint: only the copy to host memory stops training
      saved_at = step_;
      timer_->switch_to(Phase::Other);
    }
    progress.update(step_);
  };
  while (step_ < s_.steps) {
    // A signal may reach the ranks at different steps: they agree on the first step boundary where any has it.
    // The same reduction carries a failed background checkpoint write (bit 8), thrown here on every rank.
    const int64_t flags = ctx_.world().all_reduce(int64_t(stop.signal()) | (writer_failed_ ? 256 : 0),
                                                  parallel::ReduceOp::Max);
    if (flags & 256) finish_save();
    signal = static_cast<int>(flags & 255);
    if (signal) {
      if (auto stepped = finish_queued()) after_step(*stepped);  // a step queued ahead is done, not lost
      break;
    }
    bool stepped;
    {
      parallel::Watch watch("training step", step_ + 1);
      try {
        stepped = step();
      } catch (const c10::Error& e) {
        rethrow_with_memory_advice(e, /*in_step=*/true);
      }
    }
    after_step(stepped);
  }
  if (signal) {
    if (root)
      std::fprintf(stderr, "\nstopping at step %lld of %lld on %s\n", (long long)step_, (long long)s_.steps,
                   signal_name(signal));
    if (options_.no_save) {
      if (root) std::fprintf(stderr, "--no-save: no checkpoint written; the steps done are lost\n");
    } else if (saved_at != step_ && step_ > resumed_at_) {
      save();
    }
    finish_save();
    if (root)
      std::fprintf(stderr, "stopped at step %lld (exit status %d): continue with --resume auto\n", (long long)step_,
                   kExitStopped);
    return kExitStopped;
  }
  progress.finish();
  traffic_ = {ctx_.dp().counts(), ctx_.mesh().sp_size() > 1 ? ctx_.sp().counts() : parallel::CollectiveCounts{}};
  timer_->switch_to(Phase::Checkpoint);
  finish_save();
  if (options_.no_save) {
    if (root) std::printf("--no-save: no checkpoint and no weights written\n");
  } else {
    export_weights();
  }
  const std::string table = timer_->report(ctx_.world());
  if (root) {
    std::printf("\ntime per phase over %d ranks (%lld timed steps: every train.log_every-th, device-synchronized; "
                "checkpoints: all):\n%s",
                ctx_.mesh().world_size(), (long long)timer_->timed_steps(), table.c_str());
    if (queued_ahead_ > 0)
      std::printf("%lld steps were queued on the GPU while the step before them ran (the host read each step's "
                  "loss and gradient norm one step late)\n", (long long)queued_ahead_);
    print_traffic();
  }
  return 0;
}

void Trainer::print_traffic() const {
  const double steps = std::max<int64_t>(1, step_ - resumed_at_);
  std::printf("collectives per step (rank 0, bytes handed in):\n  %-4s %s\n", "dp",
              parallel::describe_counts(traffic_[0], steps).c_str());
  if (ctx_.mesh().sp_size() > 1)
    std::printf("  %-4s %s\n", "sp", parallel::describe_counts(traffic_[1], steps).c_str());
}

int train(const config::Deck& deck, const parallel::Mesh& mesh, const TrainOptions& options) {
  parallel::Watchdog::start(deck.get_float("parallel.watchdog_s"), mesh.rank());
  const at::Device device = parallel::rank_device(deck.get_string("parallel.device"), mesh);
  parallel::ParallelContext ctx(mesh, device);
  Trainer trainer(deck, ctx, options);
  return trainer.run();
}

}  // namespace opendit::train
