// adamw_ema_step against torch.optim.AdamW + clip_grad_norm_ + DiT's update_ema (tests/ref/make_adamw_ref.py),
// on the flat layout: several steps, clipped and unclipped, with and without (masked) weight decay.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>

#ifdef OPENDIT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "core/cuda_graph.hpp"
#include "support/ref_data.hpp"
#include "train/adamw_ema.hpp"
#include "train/flat_params.hpp"

using namespace opendit;
using namespace opendit::train;
using opendit::test::max_rel_diff;
using opendit::test::RefData;

namespace {

// Every parameter of the reference, as float32 tensors, for one prefix ("dit.step3.param").
NamedTensors named(const RefData& ref, const std::string& prefix) {
  NamedTensors out;
  for (const auto& [name, shape] : ref.meta().at("params").items()) out[name] = ref.get(prefix + "." + name).to(at::kFloat);
  return out;
}

FlatLayout layout_of(const RefData& ref) {
  std::vector<FlatLayout::Spec> specs;
  for (const auto& [name, shape] : ref.meta().at("params").items()) {
    auto s = shape.get<std::vector<int64_t>>();
    specs.push_back({name, s, s.size() > 1});  // weight decay on matrices only, as the reference's param groups
  }
  return FlatLayout(specs, 16);
}

}  // namespace

class AdamWEmaVsTorch : public ::testing::TestWithParam<std::string> {};

TEST_P(AdamWEmaVsTorch, MatchesEveryStep) {
  const std::string c = GetParam();
  RefData ref("adamw");
  const auto& m = ref.meta().at("cases").at(c);
  AdamWConfig cfg;
  cfg.lr = m.at("lr"), cfg.beta1 = m.at("betas")[0], cfg.beta2 = m.at("betas")[1], cfg.eps = m.at("eps");
  cfg.weight_decay = m.at("weight_decay");
  const double ema_decay = m.at("ema_decay"), max_norm = m.at("max_norm");

  FlatLayout layout = layout_of(ref);
  const FlatRange all{0, layout.padded_numel(1)};
  auto flat = [&](const std::string& prefix) { return flatten_range(layout, all, named(ref, prefix)); };
  at::Tensor mask = at::zeros({all.size()}, at::kBool);
  for (const FlatEntry& e : layout.entries()) mask.narrow(0, e.offset, e.numel).fill_(e.decay);

  AdamWShard s;
  s.param = flat(c + ".init");
  s.exp_avg = at::zeros_like(s.param);
  s.exp_avg_sq = at::zeros_like(s.param);
  s.ema = s.param.clone();
  s.decay_mask = mask;
  s.working = at::zeros({all.size()}, at::kBFloat16);
  double worst = 0;
  for (int k = 1; k <= ref.meta().at("steps").get<int>(); ++k) {
    const std::string at_k = c + ".step" + std::to_string(k);
    SCOPED_TRACE(at_k);
    s.grad = flat(at_k + ".grad");
    // The norm over the flat buffer (gaps are zeros) is clip_grad_norm_'s.
    const double norm = std::sqrt(s.grad.to(at::kDouble).square().sum().item<double>());
    const double ref_norm = ref.vec(at_k + ".norm")[0], ref_coef = ref.vec(at_k + ".coef")[0];
    EXPECT_NEAR(norm, ref_norm, 1e-6 * ref_norm);
    EXPECT_NEAR(clip_scale_for(norm, max_norm), ref_coef, 1e-6 * ref_coef);
    // torch's own coefficient, so that the step itself is compared.
    adamw_ema_step(s, cfg, k, ref_coef, ema_decay);
    for (const auto& [what, got] : {std::pair<std::string, at::Tensor>{"param", s.param}, {"exp_avg", s.exp_avg},
                                    {"exp_avg_sq", s.exp_avg_sq}, {"ema", s.ema}}) {
      const double err = max_rel_diff(got, flat(at_k + "." + what));
      worst = std::max(worst, err);
      EXPECT_LE(err, 1e-6) << what;
    }
    EXPECT_TRUE(at::equal(s.working, s.param.to(at::kBFloat16)));
    // Gaps and padding stay zero.
    at::Tensor outside = at::ones({all.size()}, at::kBool);
    for (const FlatEntry& e : layout.entries()) outside.narrow(0, e.offset, e.numel).fill_(false);
    EXPECT_EQ(s.param.masked_select(outside).abs().max().item<float>(), 0.0f);
  }
  std::printf("[ adamw %s ] max relative error vs torch over all steps: %.3g\n", c.c_str(), worst);
}

INSTANTIATE_TEST_SUITE_P(Cases, AdamWEmaVsTorch, ::testing::Values("dit", "decay"));

TEST(AdamWEma, PiecesOfAShardUpdateLikeTheWhole) {
  // Elementwise: any split (shards of any rank count, the internal chunks) gives the same bits.
  const int64_t n = (int64_t(1) << 20) + 12345;  // more than one internal chunk
  at::manual_seed(5);
  auto make = [&] {
    AdamWShard s;
    s.param = at::randn({n});
    s.grad = at::randn({n});
    s.exp_avg = at::randn({n}) * 0.1;
    s.exp_avg_sq = at::rand({n}) * 0.01;
    s.ema = at::randn({n});
    s.decay_mask = at::rand({n}) > 0.5;
    return s;
  };
  AdamWShard whole = make(), parts = whole;
  for (at::Tensor* t : {&parts.param, &parts.grad, &parts.exp_avg, &parts.exp_avg_sq, &parts.ema}) *t = t->clone();
  AdamWConfig cfg;
  cfg.weight_decay = 0.05, cfg.lr = 1e-3;
  adamw_ema_step(whole, cfg, 7, 0.3, 0.999);
  for (auto [b, e] : {std::pair<int64_t, int64_t>{0, 1000}, {1000, 777777}, {777777, n}}) {
    AdamWShard p{parts.param.narrow(0, b, e - b),      parts.grad.narrow(0, b, e - b),
                 parts.exp_avg.narrow(0, b, e - b),    parts.exp_avg_sq.narrow(0, b, e - b),
                 parts.ema.narrow(0, b, e - b),        parts.decay_mask.narrow(0, b, e - b), {}};
    adamw_ema_step(p, cfg, 7, 0.3, 0.999);
  }
  EXPECT_TRUE(at::equal(whole.param, parts.param));
  EXPECT_TRUE(at::equal(whole.exp_avg_sq, parts.exp_avg_sq));
  EXPECT_TRUE(at::equal(whole.ema, parts.ema));
}

TEST(AdamWEma, RejectsMismatchedTensors) {
  AdamWShard s{at::zeros({4}), at::zeros({4}), at::zeros({4}), at::zeros({4}), {}, {}, {}};
  AdamWConfig cfg;
  EXPECT_NO_THROW(adamw_ema_step(s, cfg, 1, 1.0, 0.9999));
  EXPECT_THROW(adamw_ema_step(s, cfg, 0, 1.0, 0.9999), std::invalid_argument);
  AdamWShard bad = s;
  bad.grad = at::zeros({5});
  EXPECT_THROW(adamw_ema_step(bad, cfg, 1, 1.0, 0.9999), std::invalid_argument);
  bad = s;
  bad.exp_avg = at::zeros({4}, at::kDouble);
  EXPECT_THROW(adamw_ema_step(bad, cfg, 1, 1.0, 0.9999), std::invalid_argument);
  bad = s;
  bad.decay_mask = at::zeros({4});
  EXPECT_THROW(adamw_ema_step(bad, cfg, 1, 1.0, 0.9999), std::invalid_argument);
  EXPECT_DOUBLE_EQ(clip_scale_for(10.0, 0.0), 1.0);
  EXPECT_DOUBLE_EQ(clip_scale_for(0.5, 1.0), 1.0);
}

namespace {

AdamWShard random_shard(int64_t n, const at::Device& device, uint64_t seed) {
  at::manual_seed(seed);
  const auto o = at::TensorOptions(at::kFloat).device(device);
  AdamWShard s;
  s.param = at::randn({n}, o), s.grad = at::randn({n}, o), s.exp_avg = at::randn({n}, o) * 0.1;
  s.exp_avg_sq = at::rand({n}, o) * 0.01, s.ema = at::randn({n}, o), s.decay_mask = at::rand({n}, o) > 0.5;
  s.working = s.param.to(at::kBFloat16);
  return s;
}

AdamWShard clone(const AdamWShard& s) {
  return {s.param.clone(), s.grad, s.exp_avg.clone(), s.exp_avg_sq.clone(), s.ema.clone(), s.decay_mask,
          s.working.clone()};
}

bool same(const AdamWShard& a, const AdamWShard& b) {
  return at::equal(a.param, b.param) && at::equal(a.exp_avg, b.exp_avg) && at::equal(a.exp_avg_sq, b.exp_avg_sq) &&
         at::equal(a.ema, b.ema) && at::equal(a.working, b.working);
}

// The device scalars of update `step`: {lr, step_size, bc2_sqrt, ema_decay, clip, skip}.
at::Tensor device_scalars(const AdamWConfig& cfg, int64_t step, double clip, double ema_decay, bool skip,
                          const at::Device& device) {
  const std::array<double, 4> v = adamw_step_scalars(cfg, step, ema_decay);
  return at::tensor({v[0], v[1], v[2], v[3], clip, skip ? 1.0 : 0.0}, at::kDouble).to(device);
}

}  // namespace

// The scalars read from a device tensor (what a CUDA graph replays) give the same bits as the host's, on the CPU and,
// with a GPU, in the kernel; skip leaves everything as it was.
TEST(AdamWEma, DeviceScalarsUpdateLikeHostScalars) {
  std::vector<at::Device> devices = {at::kCPU};
  if (at::hasCUDA()) devices.emplace_back(at::kCUDA, 0);
  AdamWConfig cfg;
  cfg.weight_decay = 0.05, cfg.lr = 3e-4;
  for (const at::Device& device : devices) {
    SCOPED_TRACE(device.str());
    const int64_t n = 4099;  // an odd length: the kernel's unaligned tail too
    AdamWShard host = random_shard(n, device, 3), dev = clone(host), skipped = clone(host);
    for (int64_t step = 1; step <= 3; ++step) {
      adamw_ema_step(host, cfg, step, 0.7, 0.99);
      adamw_ema_step(dev, cfg, device_scalars(cfg, step, 0.7, 0.99, false, device));
      ASSERT_TRUE(same(host, dev)) << "step " << step;
    }
    const AdamWShard before = clone(skipped);
    adamw_ema_step(skipped, cfg, device_scalars(cfg, 1, 0.7, 0.99, true, device));
    EXPECT_TRUE(same(skipped, before));
    EXPECT_THROW(adamw_ema_step(dev, cfg, at::zeros({5}, at::TensorOptions(at::kDouble).device(device))),
                 std::invalid_argument);
    EXPECT_THROW(adamw_ema_step(dev, cfg, at::zeros({6}, at::TensorOptions(at::kFloat).device(device))),
                 std::invalid_argument);
  }
}

#ifdef OPENDIT_WITH_CUDA
// One captured update replayed with new scalars staged before each replay equals the eager updates.
TEST(AdamWEma, GraphReplaysWithStagedScalars) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no GPU";
  const at::Device gpu(at::kCUDA, 0);
  AdamWConfig cfg;
  cfg.weight_decay = 0.05, cfg.lr = 3e-4;
  AdamWShard eager = random_shard(1 << 16, gpu, 4), graphed = clone(eager);
  at::Tensor scalars = device_scalars(cfg, 1, 1.0, 0.9, false, gpu);
  const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(false, 0);
  c10::cuda::CUDAStreamGuard on_side(side);
  CapturedGraph graph;
  ASSERT_EQ(graph.capture([&] { adamw_ema_step(graphed, cfg, scalars); }), "");
  for (int64_t step = 1; step <= 4; ++step) {
    const double clip = step == 2 ? 0.25 : 1.0, decay = step == 3 ? 1.0 : 0.9;
    adamw_ema_step(eager, cfg, step, clip, decay);
    scalars.copy_(device_scalars(cfg, step, clip, decay, false, at::kCPU));
    graph.replay();
    side.synchronize();
    ASSERT_TRUE(same(eager, graphed)) << "step " << step;
  }
}
#endif
