// The run folder RUN = run.out_dir/run.name of `opendit train`, and the rules that keep the work in it safe
// (docs/LONG_JOBS.md):
//   - one run at a time: rank 0 holds an flock on RUN/run.lock (host, pid, start time inside) for the whole run; a
//     second `train` into RUN is refused naming the holder; a lock file left by a killed run is noted and taken over;
//   - a fresh start into a folder that holds a run (checkpoints, metrics.jsonl, final weights) is refused unless
//     --overwrite (which deletes opendit's files there) or --resume;
//   - checkpoints/*.tmp left by a killed run are removed at start;
//   - resuming from step k branches the run: what belongs to later steps (complete checkpoints, final weights,
//     their metric lines) moves to RUN/abandoned/<UTC time>-from-<k>/ instead of being deleted or picked later,
//     and metrics.jsonl keeps steps <= k, so every step is in it once.
//
//   RunFolder folder(dir, world, {resume, overwrite, dry_run});  // collective: lock and the fresh-start rule
//   ... resume from step k ...
//   folder.settle(k);                                           // collective: the branch
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "parallel/process_group.hpp"

namespace opendit::train {

struct RunRules {
  bool resume = false;     // --resume given (auto or a file)
  bool overwrite = false;  // --overwrite: a fresh start may delete the run that is there
  bool dry_run = false;    // check only: take no lock, write and delete nothing
};

// What RUN holds of a run (rank 0 looks).
struct RunContents {
  std::vector<int64_t> checkpoints;  // complete ones (with .done), ascending steps
  bool metrics = false, weights = false;
  std::vector<std::string> describe() const;  // "3 checkpoints (steps 100 to 300)", "metrics.jsonl", ...
  bool empty() const { return checkpoints.empty() && !metrics && !weights; }
};
RunContents run_contents(const std::string& dir);

class RunFolder {
 public:
  // Collective over `world`: every rank throws the same CollectiveError when the folder may not be used.
  RunFolder(std::string dir, const parallel::ProcessGroup& world, const RunRules& rules);
  ~RunFolder();  // rank 0 empties and releases the lock
  RunFolder(const RunFolder&) = delete;
  RunFolder& operator=(const RunFolder&) = delete;

  const std::string& dir() const { return dir_; }
  std::string checkpoint_dir() const { return dir_ + "/checkpoints"; }
  // Complete checkpoints of this run, newest first (rank 0 lists, every rank gets the list).
  std::vector<std::string> checkpoints_newest_first() const;
  // Collective: the run continues from step k (0: from scratch). Later checkpoints, final weights and metric lines
  // move to RUN/abandoned/<time>-from-<k>/; metrics.jsonl keeps the lines of steps <= k.
  void settle(int64_t k);

 private:
  std::string dir_;
  const parallel::ProcessGroup& world_;
  RunRules rules_;
  int lock_fd_ = -1;
};

}  // namespace opendit::train
