// CapturedGraph (core/cuda_graph.hpp) on a GPU (skipped without one): a capture replays what eager calls compute,
// a failed capture leaves the stream usable, and other threads may use CUDA while a capture is open (the data
// loader's worker pins batches during the trainer's capture).
#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "core/cuda_graph.hpp"

#ifdef OPENDIT_WITH_CUDA
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

using opendit::CapturedGraph;

namespace {
#define REQUIRE_GPU() \
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a GPU"
const auto kGpu = at::TensorOptions().device(at::kCUDA);
}  // namespace

TEST(CapturedGraph, ReplaysWhatEagerCallsCompute) {
  REQUIRE_GPU();
  const c10::cuda::CUDAStreamGuard on_side(c10::cuda::getStreamFromPool(false, 0));
  at::Tensor x = at::randn({64, 64}, kGpu), y;
  at::Tensor warm = at::matmul(x, x);  // cuBLAS's handle and workspace are set up eagerly, as the trainer's warm-up does
  CapturedGraph g;
  ASSERT_EQ(g.capture([&] { y = at::matmul(x, x).relu_() + 1; }), "");
  x.normal_();
  g.replay();
  EXPECT_TRUE(at::equal(y, at::matmul(x, x).relu_() + 1));
}

TEST(CapturedGraph, AFailedCaptureSaysWhyAndLeavesTheStreamUsable) {
  REQUIRE_GPU();
  const c10::cuda::CUDAStreamGuard on_side(c10::cuda::getStreamFromPool(false, 0));
  at::Tensor x = at::randn({8}, kGpu);
  CapturedGraph g;
  const std::string why = g.capture([&] { (void)x.sum().item<float>(); });  // a host read: not capturable
  EXPECT_NE(why, "");
  EXPECT_FALSE(g.captured());
  EXPECT_FLOAT_EQ((x * 2).sum().item<float>(), 2 * x.sum().item<float>());
  // The default generator left capture mode with the capture: eager random ops work, and a new capture does too.
  EXPECT_NO_THROW(x.normal_());
  at::Tensor r;
  ASSERT_EQ(g.capture([&] { r = at::randn({8}, kGpu); }), "");
  g.replay();
  EXPECT_EQ(r.numel(), 8);
  EXPECT_NO_THROW((void)at::randn({8}, kGpu));
}

// While this thread captures, another keeps allocating fresh pinned host memory (cudaHostAlloc, as the data
// loader's worker does when it pins the batches it reads): a call that a global-mode capture refuses to every
// thread. Captures are thread-local, so neither side fails. (Whether the two overlap depends on timing, so a
// regression may pass unnoticed; a correct build never fails.)
TEST(CapturedGraph, OtherThreadsMayUseCudaDuringACapture) {
  REQUIRE_GPU();
  std::atomic<bool> stop{false};
  std::atomic<int64_t> pinned{0};
  std::string worker_error;
  std::thread worker([&] {
    try {
      const auto opts = at::TensorOptions().dtype(at::kFloat).pinned_memory(true);
      std::vector<at::Tensor> live;  // held, so that every allocation needs a new page-locked block
      while (!stop.load() && live.size() < 2048) {
        live.push_back(at::empty({16 * 1024}, opts).fill_(1));
        ++pinned;
      }
    } catch (const std::exception& e) {
      worker_error = e.what();
    }
  });
  struct Join {  // stops and joins the worker however the test leaves (a failed ASSERT returns early)
    std::atomic<bool>& stop;
    std::thread& t;
    ~Join() {
      stop = true;
      if (t.joinable()) t.join();
    }
  } join{stop, worker};
  const c10::cuda::CUDAStreamGuard on_side(c10::cuda::getStreamFromPool(false, 0));
  at::Tensor x = at::randn({256, 256}, kGpu), y = at::matmul(x, x);
  for (int i = 0; i < 50 && pinned.load() < 2048; ++i) {
    CapturedGraph g;
    ASSERT_EQ(g.capture([&] {
      y = x;
      for (int k = 0; k < 20; ++k) y = at::matmul(y, x).tanh_();
    }), "") << "capture " << i;
    g.replay();
  }
  stop = true;
  worker.join();
  EXPECT_EQ(worker_error, "");
  EXPECT_GT(pinned.load(), 0);
}

#else
TEST(CapturedGraph, SaysWhyWithoutCuda) {
  opendit::CapturedGraph g;
  EXPECT_EQ(g.capture([] {}), "built without CUDA");
  EXPECT_FALSE(g.captured());
}
#endif
