// The data-parallel optimizer: ddp, zero1 and zero2 on 1-4 ranks against one process updating the whole buffer with
// the global gradient.
//
// Every rank's local gradient is G + (rank - (p-1)/2) * D, with G and D on a coarse dyadic grid: every partial sum
// is exact, so the group average is exactly G on every rank and in every strategy. What remains is the norm's
// summation order (whole buffer vs shards), which may move the clip factor by an ulp: 1e-6 relative covers it.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "parallel/mpi_communicator.hpp"
#include "train/dp_optimizer.hpp"

using namespace opendit;
using namespace opendit::train;
using opendit::parallel::MpiCommunicator;
using opendit::parallel::ProcessGroup;

namespace {

const int kSteps = 4;
const double kGradScale[kSteps] = {0.02, 4.0, 0.5, 0.01};  // some steps clip at max norm 1, others do not

std::vector<FlatLayout::Spec> specs() {
  return {{"embed.weight", {19, 7}}, {"embed.bias", {7}, false}, {"blocks.0.qkv", {7, 21}},
          {"blocks.0.norm", {3}, false}, {"final.weight", {5, 7}}, {"final.bias", {5}, false}};
}

// Values on a grid of 2^-12 with |x| < 16: sums of a few (and halves of them) stay exact in float32.
at::Tensor dyadic(at::IntArrayRef shape, double scale, uint64_t seed) {
  at::manual_seed(seed);
  return at::clamp(at::round(at::randn(shape) * scale * 4096) / 4096, -15.0, 15.0);
}

struct Model {
  NamedTensors tensors;
  FlatParams::Slots slots;
  explicit Model(uint64_t seed) {
    for (const auto& s : specs()) tensors[s.name] = dyadic(s.shape, 1.0, seed++).requires_grad_();
    for (const auto& s : specs()) slots.emplace_back(s.name, &tensors[s.name]);
  }
};

FlatParams::DecayRule decay_matrices() {
  return [](const std::string&, const at::Tensor& t) { return t.dim() > 1; };
}

DataParallelOptions options(DpStrategy s) {
  DataParallelOptions o;
  o.strategy = s;
  o.adamw.lr = 1e-2, o.adamw.weight_decay = 0.1;
  o.max_grad_norm = 1.0;
  o.ema_decay = 0.9;
  return o;
}

// The global gradient of step k, flat in `layout`, and the offset D that ranks add and subtract.
at::Tensor global_grad(const FlatLayout& layout, int64_t padded, int k, uint64_t salt) {
  NamedTensors g;
  uint64_t seed = 1000 * k + salt;
  for (const auto& s : specs()) g[s.name] = dyadic(s.shape, kGradScale[k], seed++);
  return flatten_range(layout, {0, padded}, g);
}

struct Result {
  at::Tensor master, ema;
  std::vector<double> norms;
};

// One process, the whole buffer: the definition the strategies must reproduce.
Result single_process_reference(const FlatLayout& layout, const DataParallelOptions& o) {
  Model m(7);
  const int64_t padded = layout.padded_numel(1);
  AdamWShard s;
  s.param = flatten_range(layout, {0, padded}, m.tensors);
  s.exp_avg = at::zeros_like(s.param);
  s.exp_avg_sq = at::zeros_like(s.param);
  s.ema = s.param.clone();
  s.decay_mask = at::zeros({padded}, at::kBool);
  for (const FlatEntry& e : layout.entries()) s.decay_mask.narrow(0, e.offset, e.numel).fill_(e.decay);
  Result r;
  for (int k = 0; k < kSteps; ++k) {
    s.grad = global_grad(layout, padded, k, 0);
    const double norm = std::sqrt(s.grad.to(at::kDouble).square().sum().item<double>());
    r.norms.push_back(norm);
    adamw_ema_step(s, o.adamw, k + 1, clip_scale_for(norm, o.max_grad_norm), o.ema_decay);
  }
  r.master = s.param.narrow(0, 0, layout.numel());
  r.ema = s.ema.narrow(0, 0, layout.numel());
  return r;
}

// The trainer's way through a step: device work only (the clip factor from grad_stats() on the device), then the
// host's read of the stats. Returns the norm, as step() does.
double device_path_step(DataParallelOptimizer& opt, const at::Tensor& loss) {
  opt.reduce_grads();
  opt.stage_update();
  const at::Tensor stats = opt.grad_stats(loss);
  opt.update(stats);
  opt.gather_params();
  const at::Tensor host = stats.cpu();
  opt.commit_update(std::isfinite(host[0].item<double>()) && std::isfinite(host[1].item<double>()));
  return std::sqrt(host[0].item<double>());
}

Result run_strategy(MpiCommunicator& comm, DpStrategy strategy, at::ScalarType working, Model& m,
                    bool device_path = false) {
  const int p = comm.size(), me = comm.rank();
  FlatParams flat(m.slots, p, me, 16, decay_matrices());
  if (working != at::kFloat) flat.use_working_copy(working);
  DataParallelOptimizer opt(flat, comm, options(strategy));
  const int64_t padded = flat.data().numel();
  Result r;
  for (int k = 0; k < kSteps; ++k) {
    at::Tensor g = global_grad(flat.layout(), padded, k, 0), d = global_grad(flat.layout(), padded, k, 500);
    flat.grad().copy_(g + (me - (p - 1) / 2.0) * d);
    r.norms.push_back(device_path ? device_path_step(opt, at::ones({}, at::kFloat)) : opt.step().grad_norm);
  }
  EXPECT_EQ(opt.step_count(), kSteps);
  EXPECT_EQ(opt.state_range().size(), strategy == DpStrategy::Ddp ? padded : padded / p);
  r.master = opt.gather_full_master().narrow(0, 0, flat.layout().numel());
  r.ema = opt.gather_full_ema().narrow(0, 0, flat.layout().numel());
  // What the model computes with: its slots are views of the gathered buffer.
  const at::Tensor& seen = working != at::kFloat ? flat.working() : flat.data();
  EXPECT_TRUE(at::equal(seen, opt.gather_full_master().to(working)));
  for (size_t i = 0; i < flat.layout().entries().size(); ++i) {
    const std::string& name = flat.layout().entries()[i].name;
    EXPECT_TRUE(at::equal(m.tensors[name], flat.view(seen, i))) << name;
  }
  return r;
}

double rel(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>() / b.abs().max().item<double>();
}

}  // namespace

class Strategies : public ::testing::TestWithParam<DpStrategy> {};

TEST_P(Strategies, MatchOneProcessWithTheGlobalGradient) {
  MpiCommunicator comm(ProcessGroup::world());
  FlatLayout layout(
      [] {
        auto s = specs();
        for (auto& x : s) x.decay = x.shape.size() > 1;
        return s;
      }(),
      16);
  Result ref = single_process_reference(layout, options(GetParam()));
  for (at::ScalarType working : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(std::string(dp_strategy_name(GetParam())) + " working " + c10::toString(working));
    Model m(7), m_dev(7);
    Result got = run_strategy(comm, GetParam(), working, m);
    // The device-decided update (stage_update, grad_stats, update(stats), commit_update) is the same arithmetic.
    Result dev = run_strategy(comm, GetParam(), working, m_dev, /*device_path=*/true);
    EXPECT_TRUE(at::equal(dev.master, got.master));
    EXPECT_TRUE(at::equal(dev.ema, got.ema));
    EXPECT_EQ(dev.norms, got.norms);
    for (int k = 0; k < kSteps; ++k) EXPECT_NEAR(got.norms[k], ref.norms[k], 1e-6 * ref.norms[k]) << "step " << k;
    const double e_master = rel(got.master, ref.master), e_ema = rel(got.ema, ref.ema);
    EXPECT_LE(e_master, 1e-6);
    EXPECT_LE(e_ema, 1e-6);
    if (comm.rank() == 0)
      std::printf("[ %s on %d ranks, %s ] max rel diff vs one process: master %.3g, ema %.3g\n",
                  dp_strategy_name(GetParam()), comm.size(), c10::toString(working), e_master, e_ema);
  }
}

INSTANTIATE_TEST_SUITE_P(DataParallel, Strategies,
                         ::testing::Values(DpStrategy::Ddp, DpStrategy::Zero1, DpStrategy::Zero2),
                         [](const auto& info) { return std::string(dp_strategy_name(info.param)); });

TEST(DpStrategy, ClippingWasExercised) {
  // The steps above include clipped and unclipped ones: otherwise the test would not cover clipping.
  FlatLayout layout(specs(), 16);
  int clipped = 0;
  for (int k = 0; k < kSteps; ++k) {
    at::Tensor g = global_grad(layout, layout.padded_numel(1), k, 0);
    clipped += clip_scale_for(g.norm().item<double>(), 1.0) < 1.0;
  }
  EXPECT_GT(clipped, 0);
  EXPECT_LT(clipped, kSteps);
}

TEST(DpStrategy, NamesParse) {
  EXPECT_EQ(parse_dp_strategy("zero1"), DpStrategy::Zero1);
  EXPECT_EQ(std::string(dp_strategy_name(parse_dp_strategy("ddp"))), "ddp");
  EXPECT_THROW(parse_dp_strategy("zero3"), Error);
}

// grad_stats sums the loss over the group, and a non-finite loss on one rank skips the update on every rank: no
// parameter, moment or EMA changes, and the step count stays.
TEST_P(Strategies, NonFiniteLossOnOneRankSkipsEverywhere) {
  MpiCommunicator comm(ProcessGroup::world());
  Model m(7);
  FlatParams flat(m.slots, comm.size(), comm.rank(), 16, decay_matrices());
  DataParallelOptimizer opt(flat, comm, options(GetParam()));
  flat.grad().copy_(global_grad(flat.layout(), flat.data().numel(), 0, 0));
  const at::Tensor loss = at::full({}, comm.rank() + 1.0, at::kFloat);
  EXPECT_EQ(device_path_step(opt, loss), device_path_step(opt, loss));  // two applied steps, norm unchanged
  const at::Tensor stats = opt.grad_stats(loss);
  EXPECT_EQ(stats[1].item<double>(), comm.size() * (comm.size() + 1) / 2.0);
  ASSERT_EQ(opt.step_count(), 2);
  const at::Tensor before = opt.gather_full_master(), ema = opt.gather_full_ema(), m1 = opt.exp_avg().clone();
  const at::Tensor bad = comm.rank() == 0 ? at::full({}, NAN, at::kFloat) : loss;
  const double norm = device_path_step(opt, bad);
  EXPECT_TRUE(std::isfinite(norm));
  EXPECT_EQ(opt.step_count(), 2);
  EXPECT_TRUE(at::equal(opt.gather_full_master(), before));
  EXPECT_TRUE(at::equal(opt.gather_full_ema(), ema));
  EXPECT_TRUE(at::equal(opt.exp_avg(), m1));
  EXPECT_THROW(DataParallelOptimizer(flat, comm, options(GetParam())).update(stats), std::logic_error);
}

// The trainer may queue a step before it has read the previous one's stats (stage_update(behind = true)): the
// device then picks this update's scalars by the previous update's skip flag. Against the same steps staged after
// each read: the same bits, with a skipped step (a NaN loss) and EMA updates on every second step among them.
TEST_P(Strategies, StagedBehindAQueuedStepEqualsStagedAfterItsRead) {
  MpiCommunicator comm(ProcessGroup::world());
  const double losses[] = {1.0, NAN, 1.0, 1.0, NAN, NAN, 1.0};  // step 2 skipped, then 5 and 6 in a row
  const int steps = int(sizeof(losses) / sizeof(losses[0]));
  struct Run {
    at::Tensor master, ema, m1, m2;
    int64_t count;
  };
  auto run = [&](bool queued) {
    Model m(11);
    FlatParams flat(m.slots, comm.size(), comm.rank(), 16, decay_matrices());
    DataParallelOptimizer opt(flat, comm, options(GetParam()));
    opt.set_ema_every(2);
    std::optional<at::Tensor> unread;  // the previous step's stats, read only after this step is staged
    auto read = [&](const at::Tensor& stats) {
      const at::Tensor host = stats.cpu();
      opt.commit_update(std::isfinite(host[0].item<double>()) && std::isfinite(host[1].item<double>()));
    };
    for (int k = 0; k < steps; ++k) {
      flat.grad().copy_(global_grad(flat.layout(), flat.data().numel(), k % kSteps, 0));
      opt.reduce_grads();
      opt.stage_update(/*behind=*/queued && unread.has_value());
      if (unread) read(*unread), unread.reset();
      const at::Tensor stats = opt.grad_stats(at::full({}, losses[k], at::kFloat)).clone();
      opt.update(stats);
      opt.gather_params();
      if (queued) unread = stats;
      else read(stats);
    }
    if (unread) read(*unread);
    return Run{opt.gather_full_master(), opt.gather_full_ema(), opt.exp_avg().clone(), opt.exp_avg_sq().clone(),
               opt.step_count()};
  };
  const Run a = run(false), b = run(true);
  EXPECT_EQ(a.count, 4);
  EXPECT_EQ(b.count, 4);
  EXPECT_TRUE(at::equal(a.master, b.master));
  EXPECT_TRUE(at::equal(a.ema, b.ema));
  EXPECT_TRUE(at::equal(a.m1, b.m1));
  EXPECT_TRUE(at::equal(a.m2, b.m2));
}
