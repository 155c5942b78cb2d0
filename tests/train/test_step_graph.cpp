// StepGraph (train/step_graph.hpp): the first run captures, later runs copy new inputs in and replay; inputs of
// other shapes do not fit; a capture that fails (a host read inside the step) leaves the step to run eagerly and
// CUDA usable. The trainer's own graph steps are checked end to end against eager steps in test_train.py.
#include <gtest/gtest.h>

#include <stdexcept>

#include "train/step_graph.hpp"

using namespace opendit::train;

namespace {

bool have_gpu() { return at::hasCUDA(); }

std::vector<MicroBatch> batch(double value, int64_t n = 4) {
  MicroBatch b;
  b.x0 = at::full({n, 3}, value);
  b.t = at::arange(n, at::kLong);
  return {b};
}

// A step's device work: stats [2] = {sum of x0 * 2, sum of t}.
at::Tensor toy_step(const std::vector<MicroBatch>& in) {
  return at::stack({(in[0].x0 * 2).sum().to(at::kDouble), in[0].t.sum().to(at::kDouble)});
}

}  // namespace

TEST(StepGraph, NeedsACudaDevice) {
  EXPECT_THROW(StepGraph(toy_step, at::Device(at::kCPU)), std::invalid_argument);
}

TEST(StepGraph, ReplaysTheCapturedStepOnNewInputs) {
  if (!have_gpu()) GTEST_SKIP() << "needs a GPU";
  int calls = 0;
  StepGraph counted([&](const std::vector<MicroBatch>& in) { ++calls; return toy_step(in); }, at::Device(at::kCUDA, 0));
  StepGraph::StreamScope scope(counted);
  EXPECT_TRUE(counted.fits(batch(1, 8)));  // nothing captured yet: anything fits
  for (double v : {1.0, 3.0, -2.0}) {
    const at::Tensor stats = counted.run(batch(v)).cpu();
    ASSERT_TRUE(counted.captured()) << counted.failure();
    EXPECT_EQ(stats[0].item<double>(), v * 2 * 12);
    EXPECT_EQ(stats[1].item<double>(), 6.0);
  }
  EXPECT_EQ(calls, 1);  // captured once, replayed three times
  EXPECT_TRUE(counted.fits(batch(5)));
  EXPECT_FALSE(counted.fits(batch(5, 8)));  // another shape: the trainer steps eagerly
  EXPECT_FALSE(counted.fits({}));
  EXPECT_THROW(counted.run(batch(5, 8)), std::logic_error);
}

TEST(StepGraph, FailedCaptureLeavesTheStepToEagerAndCudaUsable) {
  if (!have_gpu()) GTEST_SKIP() << "needs a GPU";
  StepGraph g([](const std::vector<MicroBatch>& in) {
                const double host = in[0].x0.sum().item<double>();  // a device read: not capturable
                return at::full({2}, host, in[0].x0.options().dtype(at::kDouble));
              },
              at::Device(at::kCUDA, 0));
  {
    StepGraph::StreamScope scope(g);
    EXPECT_FALSE(g.run(batch(1)).defined());
    EXPECT_FALSE(g.captured());
    EXPECT_FALSE(g.failure().empty());
    EXPECT_FALSE(g.run(batch(1)).defined());  // no second attempt
  }
  const at::Tensor x = at::ones({16}, at::Device(at::kCUDA, 0));
  EXPECT_EQ(x.sum().item<double>(), 16.0);
  StepGraph ok(toy_step, at::Device(at::kCUDA, 0));
  StepGraph::StreamScope scope(ok);
  EXPECT_EQ(ok.run(batch(1)).cpu()[0].item<double>(), 24.0);
}
