// `opendit train`: DiT on an opendit.latents dataset with IDDPM's loss, over the mesh's data-parallel groups.
//
// One optimizer step consumes data.global_batch samples: train.accumulation micro-steps, in each of which every dp
// rank reads its contiguous slice of the loader's batch. Timesteps, noise and label dropout are drawn for the whole
// global batch from a generator seeded by (run.seed, step), and each rank takes its samples' rows: the run is the
// same on any number of ranks (up to reduction order), and ranks of one sp group see the same sample, t and noise.
#pragma once
#include <string>

#include "config/deck.hpp"
#include "parallel/mesh.hpp"

namespace opendit::train {

struct TrainOptions {
  bool dry_run = false;  // validate deck, data and mesh, print the plan, do not train
  std::string resume;    // "": start fresh; "auto": the newest complete checkpoint of the run, if any; else a path
  bool no_save = false;  // benchmarks and experiments: write no checkpoint and no final weights
};

// Collective over the mesh's world. Returns the process exit code.
int train(const config::Deck& deck, const Mesh& mesh, const TrainOptions& options);

}  // namespace opendit::train
