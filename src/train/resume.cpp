// The Trainer's run-folder side: opening the folder, resuming (with the fallback past damaged checkpoints and the
// deck comparison), the free-space check before checkpoints, and what a dry run checks of all that.
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/error.hpp"
#include "core/strings.hpp"
#include "io/files.hpp"
#include "parallel/watchdog.hpp"
#include "train/deck_changes.hpp"
#include "train/trainer.hpp"

namespace opendit::train {

namespace {

// Whether `path` is a checkpoint of the run folder whose checkpoints are in `ckpt_dir` (the same folder, however
// it is spelt); false when either does not exist.
bool in_folder(const std::string& path, const std::string& ckpt_dir) {
  const auto slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  char a[PATH_MAX], b[PATH_MAX];
  return ::realpath(dir.c_str(), a) && ::realpath(ckpt_dir.c_str(), b) && std::strcmp(a, b) == 0;
}

}  // namespace

bool Trainer::resumes_own_run() const {
  return options_.resume == "auto" ||
         (!options_.resume.empty() && in_folder(options_.resume, s_.run_dir() + "/checkpoints"));
}

void Trainer::open_run_folder() {
  // A checkpoint of another run (fine-tuning) starts a new run here: the folder must not hold one (or --overwrite).
  folder_ = std::make_unique<RunFolder>(s_.run_dir(), ctx_.world(),
                                        RunRules{resumes_own_run(), options_.overwrite, options_.dry_run});
}

std::optional<io::CheckpointMeta> Trainer::read_meta(const std::string& path, bool fallback) {
  io::CheckpointMeta meta;
  try {
    ctx_.world().agree([&] { meta = io::read_checkpoint_meta(path); });
  } catch (const CollectiveError& e) {
    if (!fallback) throw;
    if (ctx_.mesh().rank() == 0) std::fprintf(stderr, "warning: cannot resume from it: %s\n", e.what());
    return std::nullopt;
  }
  return meta;
}

void Trainer::check_deck(const io::CheckpointMeta& meta, const std::string& path, bool own) {
  const DeckChanges changes = deck_changes(meta.deck_json, deck_);
  const bool root = ctx_.mesh().rank() == 0;
  // A checkpoint of another run (fine-tuning from it) may come with any deck: its changes are only listed.
  if (own && !changes.defining.empty() && !options_.allow_deck_change)
    throw CollectiveError(cat("resume: ", path,
                              " was written with another deck; these keys define the run and "
                              "changed: ",
                              join(changes.defining, "; "),
                              " (restore them, start a new run.name, or pass --allow-deck-change)"));
  if (!root) return;
  std::vector<std::string> all = changes.defining;
  all.insert(all.end(), changes.harmless.begin(), changes.harmless.end());
  if (!all.empty())
    std::fprintf(stderr, "note: the deck differs from %s's: %s\n", path.c_str(), join(all, "; ").c_str());
  for (const std::string& c : changes.harmless)
    if (c.rfind("train.steps ", 0) == 0 && s_.lr_schedule == "cosine")
      std::fprintf(stderr,
                   "note: train.steps changed under the cosine schedule: the learning rate follows the new "
                   "length from here on\n");
}

bool Trainer::resume(const std::string& how) {
  const bool root = ctx_.mesh().rank() == 0, fallback = how == "auto";
  const std::vector<std::string> candidates =
      fallback ? folder_->checkpoints_newest_first() : std::vector<std::string>{how};
  if (candidates.empty()) {
    if (root)
      std::printf("resume auto: no complete checkpoint in %s: starting at step 0\n", folder_->checkpoint_dir().c_str());
    return false;
  }
  for (std::size_t i = 0; i < candidates.size(); ++i) {
    const std::string& path = candidates[i];
    const std::optional<io::CheckpointMeta> head = read_meta(path, fallback);
    if (!head) continue;
    check_deck(*head, path, resumes_own_run());
    if (options_.dry_run) {
      if (root) std::printf("dry run: would resume from %s (step %lld)\n", path.c_str(), (long long)head->step);
      return true;
    }
    io::ShardedState st;
    st.range = opt_->state_range();
    io::CheckpointMeta meta;
    try {
      parallel::Watch watch("loading the checkpoint of step", head->step);
      meta = io::load_checkpoint(path, params_->layout(), st, ctx_.mesh().dp());
    } catch (const CollectiveError& e) {
      if (!fallback) throw;
      if (root) std::fprintf(stderr, "warning: cannot resume from it: %s\n", e.what());
      continue;
    }
    // Every rank reads the same meta and its own range: a mismatch is everyone's.
    ctx_.world().agree([&] {
      if (meta.model_json != model_->config_json())
        throw Error(
            cat(path, ": written for the model ", meta.model_json, ", the deck describes ", model_->config_json()));
      if (!st.groups.count("ema"))
        throw Error(cat(path,
                        ": holds no EMA (/ema); a training run resumes from a checkpoint written by train or "
                        "by convert --to checkpoint"));
      at::NoGradGuard no_grad;
      params_->data().narrow(0, st.range.begin, st.range.size()).copy_(st.groups.at("model"));
      opt_->ema().copy_(st.groups.at("ema"));
      opt_->exp_avg().copy_(st.groups.at("optim/exp_avg"));
      opt_->exp_avg_sq().copy_(st.groups.at("optim/exp_avg_sq"));
      if (params_->working().defined())
        params_->working().narrow(0, st.range.begin, st.range.size()).copy_(st.groups.at("model"));
      loader_->restore({meta.loader_epoch, meta.loader_cursor});
      // Frozen tensors that are not recomputed (STDiT's null caption) come from the checkpoint too: a fine-tune of
      // converted weights must keep theirs, not the fresh model's.
      std::vector<std::string> buffers;
      for (const models::Param& p : model_->parameters())
        if (!p.trainable && !p.recomputed) buffers.push_back(p.name);
      if (!buffers.empty())
        for (const auto& [name, t] : io::read_checkpoint_tensors(path, "model", buffers)) frozen_.at(name)->copy_(t);
    });
    opt_->gather_params();
    opt_->set_step_count(meta.optimizer_step);
    if (next_random_.valid()) {  // drawn for the step before the resume
      next_random_.wait();
      next_random_ = {};
    }
    step_ = resumed_at_ = meta.step;
    skipped_in_a_row_ = meta.skipped_in_a_row;
    if (root)
      std::printf("resumed from %s: step %lld (written by %d ranks, %s)\n", path.c_str(), (long long)step_,
                  meta.world_size, meta.strategy.c_str());
    return true;
  }
  throw CollectiveError(cat("resume auto: none of the checkpoints in ", folder_->checkpoint_dir(),
                            " could be read (see the warnings above); restore one, or start over with --overwrite"));
}

int64_t Trainer::checkpoint_bytes() const {
  // model, EMA and AdamW's two moments in float32, the frozen tensors twice (model and EMA), and HDF5's headers.
  return 4 * 4 * model_->num_parameters() + (int64_t(1) << 20);
}

void Trainer::check_space(bool at_start) {
  const std::string dir = folder_->checkpoint_dir();
  const long long need = checkpoint_bytes() + checkpoint_bytes() / 20;  // 5% to spare
  std::vector<int64_t> got{-1};
  if (ctx_.mesh().rank() == 0) got[0] = io::free_bytes(dir).value_or(-1);
  const long long free = ctx_.world().broadcast(got)[0];
  if (free < 0 || free >= need) return;
  const std::string space = cat(dir, " has ", io::format_bytes(double(free)), " free and a checkpoint takes about ",
                                io::format_bytes(double(need)));
  if (at_start)
    throw CollectiveError(
        cat("not enough free space for checkpoints: ", space, "; free some space or point run.out_dir elsewhere"));
  const std::string newest = ctx_.mesh().rank() == 0 ? io::latest_checkpoint(dir).value_or("") : "";
  throw CollectiveError(cat("not enough free space for the checkpoint of step ", step_, ": ", space, "; ",
                            newest.empty() ? std::string("no checkpoint of this run is complete")
                                           : "the newest complete checkpoint, " + newest + ", stands",
                            ": free some space, then --resume auto"));
}

void Trainer::dry_run_checks() {
  open_run_folder();
  if (!options_.no_save) check_space(/*at_start=*/true);
  if (!options_.resume.empty()) resume(options_.resume);
}

}  // namespace opendit::train
