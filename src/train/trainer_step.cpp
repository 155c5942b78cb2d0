// Trainer::step and its parts: the inputs of a step, its device work (eager, or replayed as a CUDA graph) and the
// host's reading of its one result. The rest of the trainer is in trainer.cpp.
#include "train/trainer.hpp"

#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <cmath>
#include <cstdio>
#include <optional>

#include "core/error.hpp"
#include "core/strings.hpp"

namespace opendit::train {

namespace {

constexpr int64_t kGraphWarmup = 2;  // eager steps before the capture: lazy set-up (cuBLAS, plans, caches) done

MicroBatch upload(const MicroBatch& h, const at::Device& device) {
  auto up = [&](const at::Tensor& t) {
    return !t.defined() || !device.is_cuda() ? t : t.pin_memory().to(device, /*non_blocking=*/true);
  };
  return {up(h.x0), up(h.logvar), up(h.eps), up(h.labels), up(h.text), up(h.text_mask), up(h.t), up(h.noise)};
}

}  // namespace

void Trainer::profile_begin(int64_t index) {
  // train.profile_step: rank 0 records this one step op by op (the device drained before and after).
  if (ctx_.mesh().rank() != 0 || index + 1 != s_.profile_step) return;
  if (ctx_.gpu()) at::detail::getCUDAHooks().deviceSynchronize(ctx_.device().index());
  profiler_ = std::make_unique<OpProfiler>();
  profiler_->start(ctx_.gpu());
}

void Trainer::profile_end(int64_t step_number) {
  if (!profiler_) return;
  profiler_->stop();
  const std::string table = profiler_->table(30);
  std::printf("\nprofile of step %lld (rank 0, %s%s):\n%s\n", (long long)step_number,
              ctx_.gpu() ? "GPU kernels" : "CPU ops", graph_ && graph_->captured() ? ", CUDA graph replay" : "",
              table.c_str());
  std::ofstream(s_.run_dir() + "/profile.txt") << table;
  profiler_->write_json(s_.run_dir() + "/profile.json");
  profiler_.reset();
}

std::vector<MicroBatch> Trainer::load_inputs(const StepRandom& rnd) {
  const parallel::Mesh& mesh = ctx_.mesh();
  const int64_t micro_global = s_.global_batch / s_.accumulation, local = micro_global / mesh.dp_size();
  std::vector<MicroBatch> out(static_cast<size_t>(s_.accumulation));
  for (int64_t m = 0; m < s_.accumulation; ++m) {
    io::LatentBatch batch = loader_->next();
    const int64_t first = m * micro_global + int64_t(mesh.coord().dp_rank) * local;  // this slice in the global batch
    MicroBatch& b = out[static_cast<size_t>(m)];
    b.x0 = batch.latents;
    if (batch.logvar.defined()) b.logvar = batch.logvar, b.eps = rnd.eps.narrow(0, first, local);
    models::Condition cond;
    if (cond_spec_.kind == models::ConditionKind::Labels) cond.labels = batch.labels;
    else cond.text = batch.text_emb, cond.text_mask = batch.text_mask;
    cond = model_->drop_condition(cond, rnd.drop.narrow(0, first, local));
    b.labels = cond.labels, b.text = cond.text, b.text_mask = cond.text_mask;
    b.t = rnd.t.narrow(0, first, local);
    b.noise = rnd.noise.narrow(0, first, local);
  }
  return out;
}

at::Tensor Trainer::device_step(const std::vector<MicroBatch>& in) {
  const parallel::Mesh& mesh = ctx_.mesh();
  at::Tensor loss_sum;  // on the device
  for (const MicroBatch& b : in) {
    timer_->switch_to(Phase::Forward);
    // A fresh draw from the stored posterior (DiT's latent_dist.sample() * 0.18215).
    const at::Tensor x0 = b.logvar.defined() ? io::posterior_sample(b.x0, b.logvar, b.eps) : b.x0;
    models::Condition cond;
    cond.labels = b.labels, cond.text = b.text, cond.text_mask = b.text_mask;
    diffusion::Denoiser net = [&](const at::Tensor& xt, const at::Tensor& tt) {
      return model_->forward(xt.to(compute_), tt.to(at::kFloat), cond).to(at::kFloat);  // loss terms in fp32
    };
    at::Tensor loss = diffusion_->training_losses(net, x0, b.t, b.noise).loss.mean() / double(s_.accumulation);
    timer_->switch_to(Phase::Backward);
    // Every rank of an sp group computed the same loss: each backpropagates 1/sp of it, and the group's gradients
    // are summed below (models/layers/seq_parallel.hpp).
    (mesh.sp_size() > 1 ? loss / double(mesh.sp_size()) : loss).backward();
    loss_sum = loss_sum.defined() ? loss_sum + loss.detach() : loss.detach();
  }
  timer_->switch_to(Phase::Comm);
  params_->gather_grads();  // most gradients were streamed into the flat buffer during backward
  if (mesh.sp_size() > 1) ctx_.sp().all_reduce(params_->grad(), parallel::ReduceOp::Sum);
  opt_->reduce_grads();
  at::Tensor stats = opt_->grad_stats(loss_sum);  // [norm², loss summed over dp]
  timer_->switch_to(Phase::Optimizer);
  opt_->update(stats);  // skipped on the device when the norm or the loss is not finite
  timer_->switch_to(Phase::Comm);
  opt_->gather_params();
  return stats;
}

at::Tensor Trainer::graph_step(const std::vector<MicroBatch>& host) {
  if (!graph_ || eager_steps_ < kGraphWarmup || !graph_->fits(host)) return {};
  const bool capturing = !graph_->captured();
  if (capturing) timer_->set_enabled(false);  // its device syncs would break the capture
  timer_->switch_to(Phase::Graph);
  at::Tensor stats = graph_->run(host);
  if (capturing && ctx_.mesh().rank() == 0) {
    if (stats.defined())
      std::printf("step %lld: captured as a CUDA graph; later steps replay it\n", (long long)step_ + 1);
    else
      std::fprintf(stderr, "warning: the training step could not be captured as a CUDA graph (%s); training goes "
                   "on without one (slower; train.cuda_graph = false silences this)\n", graph_->failure().c_str());
  }
  if (!stats.defined()) params_->restart_step();  // the capture ran the host's half of a step: start it over
  return stats;
}

// Queuing step k + 1 before reading step k's stats keeps the GPU busy while the host loads the next inputs (on the
// H200 of bench/RESULTS.md the host was quick enough that this gained nothing measurable; a slower host gains).
// Only where nothing needs the state between the two: graph replays on one GPU, neither step timed nor profiled,
// no checkpoint after step k.
bool Trainer::may_run_ahead(int64_t index) const {
  const int64_t n = index + 1, next = index + 2;  // the step numbers (from 1) of the queued step and of the next
  auto quiet = [&](int64_t m) { return m % s_.log_every != 0 && m != s_.profile_step; };
  return s_.run_ahead && graph_ && graph_->captured() && next <= s_.steps && quiet(n) && quiet(next) &&
         (options_.no_save || n % s_.checkpoint_every != 0);
}

bool Trainer::step() {
  InFlight current = in_flight_ ? std::move(*in_flight_) : launch(step_, /*behind=*/false);
  in_flight_.reset();
  if (may_run_ahead(current.index)) {
    in_flight_ = launch(current.index + 1, /*behind=*/true);
    ++queued_ahead_;
  }
  return finish(current);
}

std::optional<bool> Trainer::finish_queued() {
  if (!in_flight_) return std::nullopt;
  InFlight current = std::move(*in_flight_);
  in_flight_.reset();
  return finish(current);
}

Trainer::InFlight Trainer::launch(int64_t index, bool behind) {
  const bool gpu = ctx_.gpu();
  opt_->set_lr(s_.lr_at(index));
  // Phase timing synchronizes the device at every switch: only on log steps, so that other steps run unhindered.
  timer_->set_enabled((index + 1) % s_.log_every == 0);
  profile_begin(index);
  std::optional<StepGraph::StreamScope> on_graph_stream;
  if (graph_) on_graph_stream.emplace(*graph_);
  // Each step's randomness (about 2 ms of CPU randn at batch 64) is drawn one step ahead on a worker thread, so
  // that the host keeps the GPU fed. Pinned, so that its copies to the GPU do not stall the host.
  auto draw = [this, gpu](int64_t st) {
    StepRandom r = draw_step(s_.seed, st, s_.global_batch, model_->sample_shape(), diffusion_->num_timesteps(),
                             cond_spec_.dropout, dataset_->has_posterior());
    if (gpu) r.noise = r.noise.pin_memory();
    if (gpu && r.eps.defined()) r.eps = r.eps.pin_memory();
    return r;
  };
  timer_->switch_to(Phase::Data);
  StepRandom rnd = next_random_.valid() ? next_random_.get() : draw(index);
  if (index + 1 < s_.steps) next_random_ = std::async(std::launch::async, draw, index + 1);
  const std::vector<MicroBatch> inputs = load_inputs(rnd);
  opt_->stage_update(behind);  // this update's lr, bias corrections and EMA decay, to the device
  at::Tensor stats = graph_step(inputs);
  if (!stats.defined()) {
    if (graph_ && graph_->failure().empty())
      ++eager_steps_;  // a warm-up step (or one whose inputs do not fit the graph)
    else if (graph_)   // the capture failed: eager from now on, on the default stream
      on_graph_stream.reset(), graph_.reset();
    std::vector<MicroBatch> dev;
    for (const MicroBatch& b : inputs) dev.push_back(upload(b, ctx_.device()));
    stats = device_step(dev);
  }
  InFlight f;
  f.index = index;
  if (!stats.is_cuda()) {
    f.stats = stats.to(at::kCPU);
    return f;
  }
  // The stats leave the device in queue order, into a pinned buffer of this step's parity (a graph's output is
  // overwritten by its next replay, and the step queued behind this one writes the other buffer).
  at::Tensor& host = stats_host_[size_t(index % 2)];
  if (!host.defined()) host = at::empty(stats.sizes(), at::TensorOptions(stats.scalar_type()).pinned_memory(true));
  host.copy_(stats, /*non_blocking=*/true);
  f.stats = host;
  f.ready.emplace(stats.device().type());
  f.ready->record(c10::impl::getDeviceGuardImpl(stats.device().type())->getStream(stats.device()));
  return f;
}

bool Trainer::finish(InFlight& f) {
  const parallel::Mesh& mesh = ctx_.mesh();
  const int dp = mesh.dp_size();
  if (f.index != step_) throw std::logic_error(cat("Trainer::finish: step ", f.index + 1, " after ", step_));
  // The step's one wait for the device: the gradient norm and the loss, after the whole step is queued.
  if (f.ready) f.ready->synchronize();
  const double norm = std::sqrt(f.stats.data_ptr<double>()[0]), loss_avg = f.stats.data_ptr<double>()[1] / dp;
  ++step_;
  const bool applied = std::isfinite(norm) && std::isfinite(loss_avg);  // as the device decided (update(stats))
  opt_->commit_update(applied);
  if (!applied) {
    ++skipped_total_;
    profiler_.reset();
    if (mesh.rank() == 0)
      std::fprintf(stderr, "\nwarning: step %lld: non-finite loss (%g) or gradient norm (%g): step skipped\n",
                   (long long)step_, loss_avg, norm);
    // The loss and the norm are reduced over the group: every rank decides alike.
    if (++skipped_in_a_row_ >= s_.max_nonfinite)
      throw CollectiveError(cat(skipped_in_a_row_, " consecutive steps had a non-finite loss or gradient (last at step ",
                                step_, "): lower train.lr, enable train.grad_clip, or check the data"));
    return false;
  }
  skipped_in_a_row_ = 0;
  timer_->switch_to(Phase::Other);
  profile_end(step_);
  window_loss_ += loss_avg;
  ++window_steps_;
  last_norm_ = norm;
  return true;
}

}  // namespace opendit::train
