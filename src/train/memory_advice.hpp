// What a training run that ran out of memory holds, and which of its settings would make it fit: the message a rank
// prints instead of the allocator's alone.
#pragma once
#include <cstdint>
#include <string>

namespace opendit::train {

struct RunMemory {
  int64_t global_batch = 1, dp_size = 1, accumulation = 1;
  int depth = 0;        // the model's blocks
  int recompute = 0;    // blocks recomputed in backward: -1 all, else the first K
  int sp_size = 1;      // ranks that split each sample's tokens (parallel.sp_size)
  bool sharded = true;  // zero1/zero2: the optimizer state is split over the data-parallel ranks
};

// `in_step`: the failure came in a training step (activations), else while the model, its optimizer state and EMA
// were set up. `failure`: out_of_memory_summary() of the allocator's error. Several lines, the first says what failed.
std::string out_of_memory_advice(bool in_step, int64_t step, const std::string& failure, const RunMemory& m);

}  // namespace opendit::train
