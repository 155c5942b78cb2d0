// The Trainer's checkpoints: a snapshot of this rank's shard in host memory, written in the foreground or by a
// background thread (train.async_checkpoint) on a communicator of its own, so that training goes on during the
// write. One write at a time: the next save, a stop and the end of the run wait for it.
#include <ATen/detail/CUDAHooksInterface.h>

#include <chrono>
#include <cstdio>

#include "core/error.hpp"
#include "core/progress.hpp"
#include "parallel/mpi_runtime.hpp"
#include "parallel/watchdog.hpp"
#include "train/trainer.hpp"

namespace opendit::train {

io::ShardedState Trainer::snapshot() {
  io::ShardedState st;
  st.range = opt_->state_range();
  const std::pair<const char*, at::Tensor> live[] = {
      {"model", params_->data().narrow(0, st.range.begin, st.range.size())},
      {"ema", opt_->ema()},
      {"optim/exp_avg", opt_->exp_avg()},
      {"optim/exp_avg_sq", opt_->exp_avg_sq()}};
  const int64_t n = st.range.size();
  if (!host_state_.defined() || host_state_.numel() != 4 * n)  // one allocation: pinning is slow, done once
    host_state_ = at::empty({4 * n}, at::TensorOptions().dtype(at::kFloat).pinned_memory(ctx_.gpu()));
  for (int g = 0; g < 4; ++g) {
    at::Tensor buf = host_state_.narrow(0, g * n, n);
    buf.copy_(live[g].second, /*non_blocking=*/ctx_.gpu());
    st.groups[live[g].first] = buf;
  }
  if (ctx_.gpu()) at::detail::getCUDAHooks().deviceSynchronize(ctx_.device().index());
  return st;
}

void Trainer::prepare_snapshot() {
  if (options_.no_save || !s_.async_checkpoint || !ctx_.gpu()) return;
  const int64_t n = opt_->state_range().size();
  host_state_ = at::empty({4 * n}, at::TensorOptions().dtype(at::kFloat).pinned_memory(true));
}

void Trainer::save() {
  const auto t_enter = std::chrono::steady_clock::now();
  finish_save();  // the previous write has landed (and pruned): the free space is what it is
  check_space(/*at_start=*/false);
  parallel::Watch watch("checkpoint of step", step_);
  io::CheckpointMeta meta;
  meta.step = step_;
  meta.optimizer_step = opt_->step_count();
  const auto ls = loader_->state();
  meta.loader_epoch = ls.epoch, meta.loader_cursor = ls.cursor;
  meta.skipped_in_a_row = skipped_in_a_row_;
  meta.world_size = ctx_.mesh().world_size(), meta.dp_size = ctx_.mesh().dp_size(),
  meta.sp_size = ctx_.mesh().sp_size();
  meta.strategy = dp_strategy_name(s_.dp.strategy);
  meta.deck_json = deck_.to_json();
  meta.model_json = model_->config_json();
  meta.seed = s_.seed;
  std::map<std::string, at::Tensor> frozen;  // never updated by training: no copy needed beyond the dtype
  for (const auto& [name, t] : frozen_) frozen[name] = t->to(at::kCPU, at::kFloat);
  const bool root = ctx_.mesh().rank() == 0;
  // With sequence parallelism the sp groups hold the same state: the dp group of sp rank 0 writes, the others go on.
  const bool writer = ctx_.mesh().coord().sp_rank == 0, agree_world = ctx_.mesh().sp_size() > 1;
  if (!writer) {
    if (!(s_.async_checkpoint && parallel::mpi_thread_multiple()) && agree_world) agree_on_write("");
    return;
  }
  if (s_.async_checkpoint && !writer_group_) {
    if (parallel::mpi_thread_multiple()) {
      writer_group_ = std::make_unique<parallel::ProcessGroup>(ctx_.mesh().dp().dup());
    } else if (root) {
      std::fprintf(stderr, "note: this MPI has no MPI_THREAD_MULTIPLE: checkpoints are written in the foreground\n");
    }
  }
  const bool background = s_.async_checkpoint && writer_group_;
  io::ShardedState st = snapshot();
  // What training waits for: in the background mode the copy to host memory (and the previous write, if it has
  // not landed yet); otherwise the whole write.
  const double paused = seconds_since(t_enter);
  auto write = [this, root, background, meta, frozen, paused, st = std::move(st),
                dir = folder_->checkpoint_dir(), keep = static_cast<int>(s_.keep_checkpoints)] {
    const auto t0 = std::chrono::steady_clock::now();
    parallel::Watch watch("checkpoint write of step", meta.step);
    std::string path;
    try {
      path = io::save_checkpoint(dir, params_->layout(), st, frozen, meta,
                                 background ? *writer_group_ : ctx_.mesh().dp(), keep);
    } catch (const CollectiveError&) {
      // Every rank's writer has it: the training loop sees the flag at its next step and throws it on every rank.
      if (background) writer_failed_ = true;
      throw;
    } catch (const c10::Error& e) {
      if (!background) throw;
      parallel::abort_job(e.what_without_backtrace());
    } catch (const std::exception& e) {
      // This rank's alone (a write failing inside parallel HDF5's collective transfers): the others wait in the
      // write for this one, and this rank's training thread would wait for them: end the job from here.
      if (!background) throw;
      parallel::abort_job(e.what());
    }
    if (!root) return;
    if (background)
      std::fprintf(stderr, "checkpoint: %s (training paused %.2f s; written in %.1f s in the background)\n",
                   path.c_str(), paused, seconds_since(t0));
    else
      std::fprintf(stderr, "checkpoint: %s (training paused %.2f s)\n", path.c_str(), paused + seconds_since(t0));
  };
  if (background) {
    writing_ = std::async(std::launch::async, std::move(write));
  } else if (agree_world) {
    std::string error;
    try {
      write();
    } catch (const std::exception& e) {
      error = e.what();
    }
    agree_on_write(error);
  } else {
    write();
  }
}

void Trainer::agree_on_write(const std::string& error) {
  ctx_.world().agree([&] {
    if (!error.empty()) throw Error(error);
  });
}

void Trainer::finish_save() {
  if (ctx_.mesh().sp_size() > 1) {  // only sp rank 0's dp group writes: its error reaches every rank
    std::string error;
    if (writing_.valid()) {
      parallel::Watch watch("waiting for the background checkpoint write");
      try {
        writing_.get();
      } catch (const std::exception& e) {
        error = e.what();
      }
    }
    agree_on_write(error);
    return;
  }
  if (!writing_.valid()) return;
  parallel::Watch watch("waiting for the background checkpoint write");
  writing_.get();  // rethrows the writer's error: the writers agree, so every rank throws alike
}

}  // namespace opendit::train
