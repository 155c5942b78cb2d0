// The sampling fast path: the loops' per-step noise equals one at::randn per step from the same generator (also
// when a CPU generator feeds a GPU loop through pinned chunks), and CudaGraphDenoiser, whose graph replays give the
// samples of the eager network (GPU tests; they skip without a GPU), including after shape changes and after a
// capture that fails.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <memory>

#include "core/error.hpp"
#include "diffusion/gaussian_diffusion.hpp"
#include "models/dit/dit.hpp"
#include "sample/cuda_graph_denoiser.hpp"
#include "sample/guidance.hpp"

using namespace opendit;
using namespace opendit::diffusion;
using namespace opendit::sample;

namespace {

bool have_gpu() { return at::hasCUDA(); }

at::Generator seeded(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.cpu().to(at::kDouble) - b.cpu().to(at::kDouble)).abs().max().item<double>();
}

// A small network with the shapes of a learned-sigma DiT output (eps and v channels), cheap on any device.
at::Tensor toy_net(const at::Tensor& x, const at::Tensor& t) {
  const at::Tensor tt = (t.to(x.scalar_type()) / 1000).view({-1, 1, 1, 1});
  return at::cat({0.9 * x + 0.1 * at::tanh(x + tt), at::tanh(0.3 * x - 0.5 * tt)}, 1);
}

// The loop of p_sample_loop written out with one at::randn per step on the generator's device.
at::Tensor manual_ddpm(const GaussianDiffusion& d, const Denoiser& net, const at::Tensor& noise, at::Generator gen) {
  at::Tensor x = noise;
  for (int64_t i = d.num_timesteps() - 1; i >= 0; --i) {
    const at::Tensor t = at::full({x.size(0)}, i, x.options().dtype(at::kLong));
    const at::Tensor z = i > 0 ? at::randn(x.sizes(), gen, x.options().device(at::kCPU)).to(x.device())
                               : at::zeros_like(x);
    x = d.p_sample(net, x, t, z).sample;
  }
  return x;
}

// A tiny DiT with every weight non-zero (adaLN-Zero would make the output zero), in float32 on `device`.
std::unique_ptr<models::dit::DiT> tiny_dit(at::Device device) {
  models::dit::DiTConfig cfg;
  cfg.depth = 2, cfg.hidden_size = 64, cfg.num_heads = 4, cfg.patch_size = 2;
  cfg.in_channels = 4, cfg.input_size = 8, cfg.num_classes = 10;
  auto model = std::make_unique<models::dit::DiT>(cfg, uint64_t{3});
  at::Generator gen = seeded(5);
  for (const models::Param& p : model->parameters())
    if (p.trainable) p.tensor->copy_(0.05 * at::randn(p.tensor->sizes(), gen));
  model->to(at::TensorOptions().device(device).dtype(at::kFloat));
  return model;
}

}  // namespace

TEST(SamplingLoop, NoiseIsOneRandnPerStepFromTheGenerator) {
  // 40 steps: more than one pinned chunk (16 steps) on a GPU.
  const GaussianDiffusion d = make_diffusion("40", "linear", 1000, true);
  std::vector<at::Device> devices{at::kCPU};
  if (have_gpu()) devices.push_back(at::Device(at::kCUDA, 0));
  for (const at::Device device : devices) {
    const at::Tensor noise = at::randn({3, 2, 4, 4}, seeded(1)).to(device);
    at::Generator g1 = seeded(9), g2 = seeded(9);
    const at::Tensor got = d.p_sample_loop(toy_net, noise, g1);
    const at::Tensor want = manual_ddpm(d, toy_net, noise, g2);
    EXPECT_EQ(max_abs_diff(got, want), 0.0) << device;
    // Both drew exactly 39 times: the generators are in the same state.
    EXPECT_TRUE(at::randn({5}, g1).equal(at::randn({5}, g2))) << device;
  }
}

TEST(CudaGraphDenoiser, CpuInputsRunTheNetworkEagerly) {
  int calls = 0;
  const CudaGraphDenoiser graphed([&](const at::Tensor& x, const at::Tensor& t) {
    ++calls;
    return toy_net(x, t);
  });
  const at::Tensor x = at::randn({2, 2, 4, 4}), t = at::full({2}, 500, at::kLong);
  EXPECT_TRUE(graphed(x, t).equal(toy_net(x, t)));
  EXPECT_TRUE(graphed(x, t).equal(toy_net(x, t)));
  EXPECT_EQ(calls, 2);
  EXPECT_FALSE(graphed.graphed());
  EXPECT_FALSE(graphed.failed());
  EXPECT_EQ(graphed.captures(), 0);
  EXPECT_THROW(CudaGraphDenoiser{Denoiser{}}, Error);
}

TEST(CudaGraphDenoiser, GuidedDiTSamplesEqualEager) {
  if (!have_gpu()) GTEST_SKIP() << "needs a GPU";
  const at::Device cuda(at::kCUDA, 0);
  auto model = tiny_dit(cuda);
  at::NoGradGuard no_grad;
  const ConditionalDenoiser net = [&](const at::Tensor& x, const at::Tensor& t, const models::Condition& y) {
    return model->forward(x, t.to(at::kFloat), y);
  };
  GuidanceOptions opt;
  opt.scale = 4.0;
  models::Condition labels;
  labels.labels = at::tensor(std::vector<int64_t>{1, 3, 7}).to(cuda);
  const at::Tensor noise = at::randn({3, 4, 8, 8}, seeded(2)).to(cuda);
  const Denoiser eager = classifier_free_guidance(net, labels, model->null_condition(labels), opt);

  const GaussianDiffusion ddpm = make_diffusion("20", "linear", 1000, true);
  const CudaGraphDenoiser graphed(eager);
  const at::Tensor want = ddpm.p_sample_loop(eager, noise, seeded(4));
  const at::Tensor got = ddpm.p_sample_loop(graphed, noise, seeded(4));
  EXPECT_TRUE(graphed.graphed()) << graphed.failure();
  EXPECT_EQ(graphed.captures(), 1);
  const double e = max_abs_diff(got, want);
  std::printf("[DDPM 20, cfg 4, tiny DiT fp32] graphed vs eager: max abs difference %.3g\n", e);
  EXPECT_LE(e, 1e-6);

  const GaussianDiffusion ddim = make_diffusion("ddim10", "linear", 1000, true);
  const CudaGraphDenoiser graphed_ddim(eager);
  const double e2 = max_abs_diff(ddim.ddim_sample_loop(graphed_ddim, noise), ddim.ddim_sample_loop(eager, noise));
  std::printf("[DDIM 10, cfg 4, tiny DiT fp32] graphed vs eager: max abs difference %.3g\n", e2);
  EXPECT_LE(e2, 1e-6);
  EXPECT_TRUE(graphed_ddim.graphed());
}

TEST(CudaGraphDenoiser, ReplaysTakeNewInputsKeepOldResultsAndRecaptureOtherShapes) {
  if (!have_gpu()) GTEST_SKIP() << "needs a GPU";
  const at::Device cuda(at::kCUDA, 0);
  const CudaGraphDenoiser graphed(toy_net);
  const at::Tensor x1 = at::randn({2, 2, 4, 4}, cuda), x2 = at::randn({2, 2, 4, 4}, cuda);
  const at::Tensor t1 = at::full({2}, 100, at::TensorOptions(cuda).dtype(at::kLong)), t2 = t1 + 700;
  const at::Tensor r1 = graphed(x1, t1), keep = r1.clone();
  const at::Tensor r2 = graphed(x2, t2);
  EXPECT_EQ(graphed.captures(), 1);
  EXPECT_TRUE(r1.equal(keep)) << "a replay overwrote an earlier result";
  EXPECT_LE(max_abs_diff(r1, toy_net(x1, t1)), 1e-6);
  EXPECT_LE(max_abs_diff(r2, toy_net(x2, t2)), 1e-6);
  EXPECT_GT(max_abs_diff(r1, r2), 1e-3);

  const at::Tensor x3 = at::randn({3, 2, 4, 4}, cuda), t3 = at::full({3}, 5, t1.options());
  EXPECT_LE(max_abs_diff(graphed(x3, t3), toy_net(x3, t3)), 1e-6);
  EXPECT_EQ(graphed.captures(), 2);
  EXPECT_LE(max_abs_diff(graphed(x1, t1), toy_net(x1, t1)), 1e-6);
  EXPECT_EQ(graphed.captures(), 3);
  EXPECT_TRUE(graphed.graphed());
}

TEST(CudaGraphDenoiser, FailedCaptureFallsBackToEagerAndLeavesCudaUsable) {
  if (!have_gpu()) GTEST_SKIP() << "needs a GPU";
  const at::Device cuda(at::kCUDA, 0);
  // .item() waits for the stream: fine eagerly, illegal while the stream is being captured.
  const Denoiser syncing = [](const at::Tensor& x, const at::Tensor& t) {
    return toy_net(x, t) * (1 + 0 * t.max().item<double>());
  };
  const CudaGraphDenoiser graphed(syncing);
  const at::Tensor x = at::randn({2, 2, 4, 4}, cuda), t = at::full({2}, 300, at::TensorOptions(cuda).dtype(at::kLong));
  at::Tensor got;
  ASSERT_NO_THROW(got = graphed(x, t));
  EXPECT_TRUE(graphed.failed());
  EXPECT_FALSE(graphed.graphed());
  EXPECT_FALSE(graphed.failure().empty());
  std::printf("capture failure (expected): %s\n", graphed.failure().c_str());
  EXPECT_LE(max_abs_diff(got, toy_net(x, t)), 1e-6);
  EXPECT_LE(max_abs_diff(graphed(x, t), toy_net(x, t)), 1e-6);  // eager from now on

  // The stream and the allocator work as before: plain work, and a new capture that succeeds.
  EXPECT_NEAR((at::ones({1000}, cuda) * 2).sum().item<double>(), 2000.0, 0.0);
  const CudaGraphDenoiser good(toy_net);
  EXPECT_LE(max_abs_diff(good(x, t), toy_net(x, t)), 1e-6);
  EXPECT_TRUE(good.graphed()) << good.failure();
}
