// The advice of a run that ran out of memory names only the settings that would change something for that run.
#include <gtest/gtest.h>

#include "train/memory_advice.hpp"

using namespace opendit::train;

namespace {

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

RunMemory run(int64_t batch, int64_t dp, int64_t accumulation, int recompute) {
  RunMemory m;
  m.global_batch = batch, m.dp_size = dp, m.accumulation = accumulation, m.depth = 28, m.recompute = recompute;
  return m;
}

}  // namespace

TEST(MemoryAdvice, StepWithoutRecomputeNamesItAndTheNextAccumulation) {
  const std::string s = out_of_memory_advice(true, 7, "CUDA out of memory.", run(48, 2, 2, 0));
  EXPECT_EQ(s.rfind("out of memory in training step 7: CUDA out of memory.", 0), 0u) << s;
  EXPECT_TRUE(has(s, "activations of 12 samples on this rank")) << s;
  EXPECT_TRUE(has(s, "none of the 28 blocks recomputed")) << s;
  EXPECT_TRUE(has(s, "train.activation_checkpointing = true")) << s;
  // 24 samples a rank: accumulation 3 is the next that divides them (8 a pass).
  EXPECT_TRUE(has(s, "train.accumulation = 3 (8 samples a pass instead of 12")) << s;
}

TEST(MemoryAdvice, PartlyRecomputedSuggestsMoreBlocks) {
  const std::string s = out_of_memory_advice(true, 1, "x", run(2, 1, 1, 21));
  EXPECT_TRUE(has(s, "21 of the 28 blocks recomputed")) << s;
  EXPECT_TRUE(has(s, "train.checkpoint_blocks = 22 to 28")) << s;
  EXPECT_TRUE(has(s, "train.accumulation = 2 (1 sample")) << s;
}

TEST(MemoryAdvice, NothingLeftToSplitOrRecompute) {
  const std::string s = out_of_memory_advice(true, 1, "x", run(4, 4, 1, -1));
  EXPECT_TRUE(has(s, "all 28 blocks recomputed")) << s;
  EXPECT_FALSE(has(s, "checkpoint")) << s;
  EXPECT_FALSE(has(s, "train.accumulation =")) << s;  // one sample a rank
  EXPECT_TRUE(has(s, "parallel.sp_size (now 1)")) << s;
}

TEST(MemoryAdvice, SetUpFailureNamesTheOptimizerState) {
  RunMemory m = run(8, 1, 1, 0);
  m.sharded = false;
  const std::string ddp = out_of_memory_advice(false, 1, "x", m);
  EXPECT_EQ(ddp.rfind("out of memory while the model, its optimizer state and EMA were set up", 0), 0u) << ddp;
  EXPECT_TRUE(has(ddp, "parallel.strategy = zero2")) << ddp;
  EXPECT_FALSE(has(ddp, "activation_checkpointing")) << ddp;
  m.sharded = true;
  EXPECT_FALSE(has(out_of_memory_advice(false, 1, "x", m), "parallel.strategy")) << ddp;
}
