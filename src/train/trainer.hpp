// `opendit train`: a model of the registry (models/registry.hpp) on an opendit.latents dataset with IDDPM's loss,
// over the mesh's data-parallel groups.
//
// One optimizer step consumes data.global_batch samples: train.accumulation micro-steps, in each of which every dp
// rank reads its contiguous slice of the loader's batch. Timesteps, noise and condition dropout are drawn for the
// whole global batch from a generator seeded by (run.seed, step), and each rank takes its samples' rows: the run is
// the same on any number of ranks (up to reduction order), and ranks of one sp group see the same sample, t and
// noise. The model sees only the Model interface; the dataset gives latents and their conditions (labels now,
// caption embeddings next).
//
//   Trainer trainer(deck, ctx, options);   // validates, builds, prints the plan
//   trainer.resume("auto");
//   while (trainer.steps_done() < trainer.settings().steps)
//     if (trainer.step()) trainer.log();   // false: a skipped (non-finite) step
//   trainer.export_weights();
// run() is that loop with checkpoints, the progress line and the closing phase table.
#pragma once
#include <array>
#include <atomic>
#include <chrono>
#include <fstream>
#include <future>
#include <memory>
#include <optional>
#include <string>

#include <c10/core/Event.h>

#include "config/deck.hpp"
#include "core/op_profiler.hpp"
#include "diffusion/gaussian_diffusion.hpp"
#include "io/checkpoint.hpp"
#include "io/data_loader.hpp"
#include "models/model.hpp"
#include "parallel/context.hpp"
#include "train/dp_optimizer.hpp"
#include "train/flat_params.hpp"
#include "train/phase_timer.hpp"
#include "train/run_folder.hpp"
#include "train/settings.hpp"
#include "train/step_graph.hpp"

namespace opendit::train {

struct TrainOptions {
  bool dry_run = false;  // validate deck, data and mesh, print the plan, do not train
  std::string resume;    // "": start fresh; "auto": the newest complete checkpoint of the run, if any; else a path
  bool no_save = false;  // benchmarks and experiments: write no checkpoint and no final weights
  bool overwrite = false;          // a fresh start may delete the run in the run folder (train/run_folder.hpp)
  bool allow_deck_change = false;  // resume although keys that define the run changed (train/deck_changes.hpp)
};

// The randomness of one optimizer step for the whole global batch: t [B] int64, drop [B] bool, noise [B, ...].
struct StepRandom {
  at::Tensor t, drop, noise;
  at::Tensor eps;  // the draw from a stored VAE posterior (opendit.latents v2); undefined without one
};
StepRandom draw_step(uint64_t seed, int64_t step, int64_t global_batch, const std::vector<int64_t>& sample_shape,
                     int64_t num_timesteps, double dropout, bool posterior = false);

class Trainer {
 public:
  // Collective over the world. Validates the deck, the dataset against the model and the mesh (a failure on any
  // rank stops every rank alike, with one message), prints the plan on rank 0 and, unless options.dry_run, builds
  // the model, the flat parameters, the optimizer and the data loader.
  Trainer(const config::Deck& deck, const parallel::ParallelContext& ctx, const TrainOptions& options);
  ~Trainer();

  const TrainSettings& settings() const { return s_; }
  const models::Model& model() const { return *model_; }
  bool dry_run() const { return options_.dry_run; }
  int64_t steps_done() const { return step_; }

  // Collective. "auto": the newest complete checkpoint of the run folder that can be read (a damaged one is named
  // and the one before it tried; none: a fresh start); otherwise a checkpoint file of any world size. The deck
  // is compared with the checkpoint's (train/deck_changes.hpp). Returns whether a checkpoint was read. Needs the
  // run folder: called by run().
  bool resume(const std::string& how);
  // Collective: one optimizer step. Returns false when it was skipped (a non-finite loss or gradient norm);
  // train.max_nonfinite_steps of those in a row end the run (opendit::CollectiveError). On one GPU replaying the
  // step's graph it may leave the next step queued on the device (may_run_ahead): finish_queued() reads that one
  // (nullopt when none is queued; else what step() would have returned) before anything that needs a quiet state.
  bool step();
  std::optional<bool> finish_queued();
  // Rank 0: the log line and the metrics record, on log steps (every train.log_every-th and the last), over the
  // steps since the last log line (rates count from the start of run() or the last resume).
  void log();
  // Collective: a checkpoint of the state after steps_done(). With train.async_checkpoint the state is copied to
  // host memory and written by a background thread; the next save() or finish_save() waits for it.
  void save();
  void finish_save();  // collective: waits for the background write (its error, every rank's, is thrown here)
                       // (with sp > 1 over the world: only sp rank 0's dp group writes)
  void export_weights();  // collective: model.safetensors and ema.safetensors in the run folder
  // The whole run: steps with logs, checkpoints and the progress line, the exported weights, the phase table.
  // Returns 0, or kExitStopped (core/stop_request.hpp) when SIGTERM, SIGINT or SIGUSR1 stopped it: the ranks agree
  // on the step boundary after the signal, save a checkpoint there and return.
  int run();

 private:
  void build();
  // An allocator's error as one rank error that says what the run holds and which settings would make it fit
  // (train/memory_advice.hpp); any other error is rethrown as it is. in_step: a training step, else build().
  [[noreturn]] void rethrow_with_memory_advice(const c10::Error& e, bool in_step) const;
  void open_run_folder();  // collective: the lock and the rules of train/run_folder.hpp
  bool resumes_own_run() const;  // --resume auto, or a checkpoint of this run's folder (not fine-tuning)
  void dry_run_checks();   // collective: what run() would refuse, without writing
  // Collective: the checkpoint's meta, read by every rank (nullopt and a warning when `fallback` and it is damaged).
  std::optional<io::CheckpointMeta> read_meta(const std::string& path, bool fallback);
  void check_deck(const io::CheckpointMeta& meta, const std::string& path, bool own);
  int64_t checkpoint_bytes() const;  // about the size of one checkpoint file
  void check_space(bool at_start);   // collective: room for one more checkpoint, else a clear error
  io::ShardedState snapshot();  // this rank's state in host buffers of its own (reused from one save to the next)
  void prepare_snapshot();      // allocates those buffers up front (pinned on GPU: seconds for a large model)
  void print_traffic() const;
  void agree_on_write(const std::string& error);  // collective over the world: a writer's error stops every rank  // rank 0: the collectives of the dp and sp groups per step
  void profile_begin(int64_t index);  // index: the step's number from 0
  void profile_end(int64_t step_number);
  // A step in three parts (train/trainer_step.cpp): this rank's micro-batches on the host (pinned on GPU); the
  // device work (forward, backward, gradient reduction, the update; capturable as a CUDA graph), which returns the
  // step's stats (DataParallelOptimizer::grad_stats); the host's reading of those stats.
  std::vector<MicroBatch> load_inputs(const StepRandom& rnd);
  at::Tensor device_step(const std::vector<MicroBatch>& in);
  at::Tensor graph_step(const std::vector<MicroBatch>& host);  // undefined: run this step eagerly
  // A step queued on the device whose stats the host has not read: index (from 0), the stats [norm², loss] on the
  // host once `ready` (on GPU: a pinned buffer filled in queue order) has completed.
  struct InFlight {
    int64_t index = 0;
    at::Tensor stats;
    std::optional<c10::Event> ready;
  };
  // Queues step `index` (behind: the step before it is still queued, see DataParallelOptimizer::stage_update).
  InFlight launch(int64_t index, bool behind);
  bool finish(InFlight& f);  // reads its stats; step_ advances; false when the step was skipped
  bool may_run_ahead(int64_t index) const;  // may step index + 1 be queued before step index is read?

  config::Deck deck_;
  const parallel::ParallelContext& ctx_;
  TrainOptions options_;
  TrainSettings s_;
  std::unique_ptr<models::Model> model_;  // described (meta) until build()
  models::ConditionSpec cond_spec_;
  models::layers::SpMode sp_mode_ = models::layers::SpMode::Ulysses;  // with sp_size > 1
  std::shared_ptr<io::LatentDataset> dataset_;
  int64_t data_samples_ = 0;  // in the buckets of the model's shape
  std::unique_ptr<io::DataLoader> loader_;
  std::unique_ptr<diffusion::GaussianDiffusion> diffusion_;
  std::unique_ptr<FlatParams> params_;
  std::unique_ptr<DataParallelOptimizer> opt_;
  std::map<std::string, at::Tensor*> frozen_;  // frozen tensors (checkpointed and exported beside the flat ones)
  at::ScalarType compute_ = at::kBFloat16;
  std::string gpu_name_;
  double peak_tflops_ = 0;

  int64_t step_ = 0, skipped_in_a_row_ = 0, skipped_total_ = 0;
  double last_loss_ = 0, last_norm_ = 0;
  double window_loss_ = 0;
  int64_t window_steps_ = 0, resumed_at_ = 0;
  std::chrono::steady_clock::time_point window_start_, run_start_;
  std::future<StepRandom> next_random_;
  std::unique_ptr<PhaseTimer> timer_;
  std::unique_ptr<StepGraph> graph_;  // train.cuda_graph on one GPU; dropped if its capture fails
  int64_t eager_steps_ = 0;           // run by this process: the graph is captured after kGraphWarmup of them
  std::array<parallel::CollectiveCounts, 2> traffic_{};  // dp, sp: the training loop's, for the closing table
  std::unique_ptr<OpProfiler> profiler_;
  std::optional<InFlight> in_flight_;     // the step queued ahead (step_ its index)
  int64_t queued_ahead_ = 0;              // steps queued before the previous one's stats were read
  std::array<at::Tensor, 2> stats_host_;  // pinned, by step parity
  std::ofstream metrics_;
  std::unique_ptr<RunFolder> folder_;
  std::unique_ptr<parallel::ProcessGroup> writer_group_;  // the dp group on a communicator of the writer thread's
  at::Tensor host_state_;                                  // snapshot buffer [4 x shard] (pinned on GPU)
  std::future<void> writing_;                              // the background write in flight
  std::atomic<bool> writer_failed_{false};                 // its agreed error is waiting in writing_
};

// `opendit train`: the device of this rank, the parallel context, a Trainer and its run(). Collective.
int train(const config::Deck& deck, const parallel::Mesh& mesh, const TrainOptions& options);

}  // namespace opendit::train
