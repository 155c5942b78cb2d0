// Sequence parallelism (models/layers/seq_parallel.hpp) on 2 and 4 MPI ranks: DiT (ulysses, fastseq), STDiT and
// Latte (ulysses, fastseq, dsp) with sp = world and, on 4 ranks, sp = 2 (two groups side by side) against the
// same model without sp on one rank: outputs and gradients <= 1e-5 relative (float32), sizes that divide by P
// and sizes that do not (5 frames, a 9 x 9 latent grid, 6 heads at P = 4), and the bytes each mode moves against
// its formula. The reference is the model itself at sp = 1, which the other model tests check against diffusers
// and the torch reference: sp must change nothing but where the work is done.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>

#include "core/error.hpp"
#include "models/dit/dit.hpp"
#include "models/latte/latte.hpp"
#include "models/stdit/stdit.hpp"
#include "parallel/counting_communicator.hpp"
#include "parallel/process_group.hpp"
#include "sample/sampler.hpp"

using namespace opendit;
using namespace opendit::models;
using layers::SpMode;

namespace {

struct Case {
  std::string kind;  // dit | stdit | latte
  bool odd;          // sizes that do not divide by 2 or 4 (padding) or sizes that do
};

std::unique_ptr<Model> build(const Case& c) {
  const int heads = c.odd ? 6 : 4, D = heads * 8;
  if (c.kind == "dit") {
    dit::DiTConfig k;
    k.depth = 2, k.hidden_size = D, k.num_heads = heads, k.in_channels = 4, k.num_classes = 5;
    k.input_size = c.odd ? 18 : 16;  // 9 x 9 or 8 x 8 tokens
    return std::make_unique<dit::DiT>(k, uint64_t{1});
  }
  if (c.kind == "stdit") {
    stdit::STDiTConfig k;
    k.depth = 2, k.hidden_size = D, k.num_heads = heads, k.in_channels = 4;
    k.frames = c.odd ? 5 : 4, k.height = c.odd ? 18 : 8, k.width = c.odd ? 18 : 16;
    k.caption_channels = 16, k.text_length = 6;
    return std::make_unique<stdit::STDiT>(k, uint64_t{1});
  }
  latte::LatteConfig k;
  k.depth = 2, k.hidden_size = D, k.num_heads = heads, k.in_channels = 4, k.out_channels = 8;
  k.sample_size = c.odd ? 18 : 16, k.video_length = c.odd ? 5 : 4, k.caption_channels = 16, k.text_length = 6;
  return std::make_unique<latte::Latte>(k, uint64_t{1});
}

at::ScalarType g_dtype = at::kFloat;  // float64 shows exactness (~1e-14), float32 the rounding a user sees

// Every trainable tensor random (a fresh model has zero output layers, whose gradients would hide errors).
void randomize(Model& m) {
  at::Generator gen = at::detail::createCPUGenerator(7);
  at::NoGradGuard ng;
  for (const Param& p : m.parameters())
    if (p.trainable) p.tensor->normal_(0.0, 0.1, gen);
  m.to(at::TensorOptions(g_dtype));
}

struct Inputs {
  at::Tensor x, t, weight;  // weight: the loss is sum(out * weight)
  Condition cond;
};

Inputs inputs(const Model& m, int64_t n) {
  at::Generator gen = at::detail::createCPUGenerator(11);
  Inputs in;
  std::vector<int64_t> shape = {n};
  for (int64_t s : m.sample_shape()) shape.push_back(s);
  in.x = at::randn(shape, gen);
  in.t = at::rand({n}, gen) * 999;
  const ConditionSpec spec = m.condition_spec();
  if (spec.kind == ConditionKind::Labels) {
    in.cond.labels = at::randint(0, spec.num_classes + 1, {n}, gen, at::kLong);
  } else {
    in.cond.text = at::randn({n, spec.text_length, spec.text_dim}, gen);
    in.cond.text_mask = at::ones({n, spec.text_length}, at::kBool);
    in.cond.text_mask.narrow(1, 3, spec.text_length - 3).select(0, 0).fill_(false);  // sample 0: 3 tokens
  }
  shape[1] = m.out_channels();
  in.weight = at::randn(shape, gen);
  in.x = in.x.to(g_dtype), in.weight = in.weight.to(g_dtype);
  if (in.cond.text.defined()) in.cond.text = in.cond.text.to(g_dtype);
  return in;
}

struct Result {
  at::Tensor out;
  std::vector<at::Tensor> grads;  // of the trainable tensors, summed over the sp group
};

Result run(Model& m, const Inputs& in, parallel::Communicator* sp, double loss_scale) {
  m.set_requires_grad(true);
  for (const Param& p : m.parameters())
    if (p.trainable) p.tensor->mutable_grad() = at::Tensor();
  Result r;
  r.out = m.forward(in.x, in.t, in.cond);
  ((r.out * in.weight).sum() * loss_scale).backward();
  for (const Param& p : m.parameters()) {
    if (!p.trainable) continue;
    at::Tensor g = p.tensor->grad().defined() ? p.tensor->grad().clone() : at::zeros_like(*p.tensor);
    if (sp) sp->all_reduce(g.contiguous());
    r.grads.push_back(g);
  }
  r.out = r.out.detach();
  return r;
}

// The largest difference relative to the reference's largest entry, but at least `floor` (a gradient that nearly
// cancels, e.g. of a bias that shifts every caption key alike, has rounding far above its own size).
double rel(const at::Tensor& a, const at::Tensor& b, double floor = 1e-6) {
  const double scale = std::max(b.abs().max().item<double>(), floor);
  return (a - b).abs().max().item<double>() / scale;
}

class SeqParallelTest : public ::testing::TestWithParam<int> {  // the sp size (0: the world)
 protected:
  parallel::ProcessGroup world = parallel::ProcessGroup::world();
  int sp_size() const { return GetParam() == 0 ? world.size() : GetParam(); }
  // The sp group of this rank (contiguous ranks) with a counting communicator.
  std::unique_ptr<parallel::CountingCommunicator> group() {
    const int p = sp_size();
    return std::make_unique<parallel::CountingCommunicator>(
        parallel::make_communicator(world.split(world.rank() / p, world.rank()), at::kCPU));
  }
};

}  // namespace

TEST_P(SeqParallelTest, EveryModeEqualsOneRank) {
  if (world.size() % sp_size() != 0 || sp_size() < 2) GTEST_SKIP() << "sp " << sp_size() << " on " << world.size();
  auto comm = group();
  const std::vector<std::pair<std::string, std::vector<SpMode>>> kinds = {
      {"dit", {SpMode::Ulysses, SpMode::FastSeq}},
      {"stdit", {SpMode::Ulysses, SpMode::FastSeq, SpMode::Dsp}},
      {"latte", {SpMode::Ulysses, SpMode::FastSeq, SpMode::Dsp}}};
  for (at::ScalarType dtype : {at::kDouble, at::kFloat})
  for (const auto& [kind, modes] : kinds)
    for (bool odd : {false, true}) {
      g_dtype = dtype;
      const double tol = dtype == at::kDouble ? 1e-10 : 1e-5;
      const Case c{kind, odd};
      auto ref_model = build(c);
      randomize(*ref_model);
      const Inputs in = inputs(*ref_model, 2);
      const Result ref = run(*ref_model, in, nullptr, 1.0);
      for (SpMode mode : modes) {
        SCOPED_TRACE(cat(kind, odd ? " (padded)" : "", " ", layers::sp_mode_name(mode), " sp ", comm->size(), " ",
                         c10::toString(dtype)));
        auto m = build(c);
        randomize(*m);
        layers::SeqParallel sp;
        sp.comm = comm.get(), sp.mode = mode, sp.chunks = 3;
        m->set_sequence_parallel(sp);
        // The trainer's convention: the loss divided by P, gradients summed over the group.
        const Result got = run(*m, in, comm.get(), 1.0 / comm->size());
        const double out_err = rel(got.out, ref.out);
        EXPECT_LE(out_err, tol);
        // Floor: 1% of the largest gradient; key biases (softmax ignores them: true gradient 0, Latte's to_k.bias)
        // against the largest gradient alone.
        double largest = 0;
        for (const at::Tensor& g : ref.grads) largest = std::max(largest, g.abs().max().item<double>());
        double worst = 0;
        std::string worst_name;
        size_t gi = 0;
        for (const Param& p : m->parameters()) {
          if (!p.trainable) continue;
          const bool key_bias = p.name.find("to_k.bias") != std::string::npos;
          const double e = key_bias ? (got.grads[gi] - ref.grads[gi]).abs().max().item<double>() / largest
                                    : rel(got.grads[gi], ref.grads[gi], 0.01 * largest);
          if (e > worst) worst = e, worst_name = p.name;
          ++gi;
        }
        EXPECT_LE(worst, tol);
        if (world.rank() == 0)
          std::printf("%s%s %s sp %d %s: output %.2g, %zu gradients worst %.2g (%s)\n", kind.c_str(),
                      odd ? " padded" : "", layers::sp_mode_name(mode), comm->size(), c10::toString(dtype),
                      out_err, ref.grads.size(), worst, worst_name.c_str());
      }
    }
}

// The bytes of one forward pass against each mode's formula: per block DSP 2 all-to-alls of the rank's activation
// [N, T/P, S, D]; ulysses q, k, v then the output (4 x the rank's share of a head-padded activation); fastseq the
// all-gather of the rank's input and one all-to-all of the output; then one all-gather before the final layer.
TEST_P(SeqParallelTest, BytesPerModeFollowTheFormula) {
  if (world.size() % sp_size() != 0 || sp_size() < 2) GTEST_SKIP();
  auto comm = group();
  const int P = comm->size();
  for (const std::string kind : {"dit", "stdit", "latte"})
    for (bool odd : {false, true})
      for (SpMode mode : {SpMode::Ulysses, SpMode::FastSeq, SpMode::Dsp}) {
        if (kind == "dit" && mode == SpMode::Dsp) continue;
        SCOPED_TRACE(cat(kind, odd ? " (padded)" : "", " ", layers::sp_mode_name(mode)));
        auto m = build(Case{kind, odd});
        layers::SeqParallel sp;
        sp.comm = comm.get(), sp.mode = mode, sp.chunks = 2;
        m->set_sequence_parallel(sp);
        g_dtype = at::kFloat;
        m->to(at::TensorOptions(at::kFloat));
        const Inputs in = inputs(*m, 2);
        comm->reset();
        {
          at::NoGradGuard ng;
          m->forward(in.x, in.t, in.cond);
        }
        const int64_t N = 2, heads = odd ? 6 : 4, D = heads * 8, hd = 8, Hp = (heads + P - 1) / P * P, f = 4;
        const int64_t depth = 2;
        // The sequence sharded per sample: DiT's tokens; the video models' frames (x positions per frame).
        const std::vector<int64_t> shape = m->sample_shape();
        const int64_t T = kind == "dit" ? (shape[1] / 2) * (shape[2] / 2) : shape[1];
        const int64_t S = kind == "dit" ? 1 : (shape[2] / 2) * (shape[3] / 2);
        const int64_t Tl = (T + P - 1) / P, Sp = (S + P - 1) / P * P;
        int64_t a2a_calls = 0, a2a = 0, ag_calls = 1, ag = N * Tl * S * D * f;  // the final gather
        if (mode == SpMode::Dsp) {
          a2a_calls = 2 * depth, a2a = 2 * depth * N * Tl * Sp * D * f, ag = N * Tl * Sp * D * f;
        } else if (mode == SpMode::Ulysses) {
          a2a_calls = 2 * depth, a2a = depth * 4 * N * S * Tl * Hp * hd * f;
        } else {
          a2a_calls = depth, a2a = depth * N * S * Tl * Hp * hd * f;
          ag_calls += depth * std::min<int64_t>(2, Tl), ag += depth * N * S * Tl * D * f;
        }
        EXPECT_EQ(comm->count(parallel::Collective::AllToAll).calls, a2a_calls);
        EXPECT_EQ(comm->count(parallel::Collective::AllToAll).bytes, a2a);
        EXPECT_EQ(comm->count(parallel::Collective::AllGather).calls, ag_calls);
        EXPECT_EQ(comm->count(parallel::Collective::AllGather).bytes, ag);
        EXPECT_EQ(comm->count(parallel::Collective::AllReduce).calls, 0);
      }
}

TEST_P(SeqParallelTest, DspOnDiTIsOneError) {
  if (world.size() % sp_size() != 0 || sp_size() < 2) GTEST_SKIP();
  auto comm = group();
  auto m = build(Case{"dit", false});
  layers::SeqParallel sp;
  sp.comm = comm.get(), sp.mode = SpMode::Dsp;
  try {
    m->set_sequence_parallel(sp);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no temporal axis"), std::string::npos) << e.what();
  }
  EXPECT_THROW(layers::parse_sp_mode("ring"), Error);
  EXPECT_EQ(layers::parse_sp_mode("fastseq"), SpMode::FastSeq);
}

// The sampler on top: 5 guided DDIM steps with sp (each model's default mode and ulysses), and with the guidance
// halves on two ranks (CFG-parallel, alone and with sp when the world holds two sp groups) = one rank's samples.
sample::SamplePlan ddim_plan() {
  sample::SamplePlan plan;
  plan.steps = "ddim5", plan.ddim = true, plan.cfg_scale = 4.0, plan.cuda_graph = false;
  return plan;
}

at::Tensor sample_with(Model& m, const Inputs& in, parallel::Communicator* pair) {
  sample::Sampler sampler(m, ddim_plan(), at::kCPU);
  sampler.set_cfg_parallel(pair);
  models::Condition null;
  if (m.condition_spec().null_is_text) null = in.cond;  // Latte: a "negative prompt" (here: the same captions)
  at::Generator gen = at::detail::createCPUGenerator(3);
  return sampler.run(in.x.to(at::kFloat), in.cond, gen, nullptr, null);
}

TEST_P(SeqParallelTest, DdimSamplesEqualOneRank) {
  if (world.size() % sp_size() != 0 || sp_size() < 2) GTEST_SKIP();
  auto comm = group();
  // Pairs for CFG-parallel: rank r of each sp group with rank r of the next (the mesh's dp groups of 2).
  std::unique_ptr<parallel::Communicator> pair;
  if (world.size() == 2 * sp_size())
    pair = parallel::make_communicator(world.split(world.rank() % sp_size(), world.rank()), at::kCPU);
  g_dtype = at::kFloat;
  for (const std::string kind : {"dit", "stdit", "latte"}) {
    auto ref_model = build(Case{kind, true});
    randomize(*ref_model);
    const Inputs in = inputs(*ref_model, 2);
    const at::Tensor ref = sample_with(*ref_model, in, nullptr);
    for (const std::string mode : {"auto", "ulysses"})
      for (bool cfg : {false, true}) {
        if (cfg && !pair) continue;
        SCOPED_TRACE(cat(kind, " ", mode, cfg ? " cfg-parallel" : ""));
        auto m = build(Case{kind, true});
        randomize(*m);
        layers::SeqParallel sp;
        sp.comm = comm.get(), sp.mode = resolve_sp_mode(mode, *m);
        m->set_sequence_parallel(sp);
        comm->reset();
        const double err = rel(sample_with(*m, in, cfg ? pair.get() : nullptr), ref);
        EXPECT_GT(comm->count(parallel::Collective::AllToAll).calls, 0);  // the sp path ran
        if (world.rank() == 0)
          std::printf("%s ddim5 cfg 4, sp %d %s%s: %.2g\n", kind.c_str(), comm->size(),
                      layers::sp_mode_name(sp.mode), cfg ? " + cfg-parallel" : "", err);
        EXPECT_LE(err, 1e-5);
      }
  }
}

TEST(CfgParallel, EqualsOneRank) {
  parallel::ProcessGroup world = parallel::ProcessGroup::world();
  if (world.size() % 2 != 0) GTEST_SKIP();
  auto pair = parallel::make_communicator(world.split(world.rank() / 2, world.rank()), at::kCPU);
  for (const std::string kind : {"dit", "stdit"}) {
    auto m = build(Case{kind, false});
    randomize(*m);
    const Inputs in = inputs(*m, 3);
    const at::Tensor ref = sample_with(*m, in, nullptr), got = sample_with(*m, in, pair.get());
    EXPECT_LE(rel(got, ref), 1e-6) << kind;
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, SeqParallelTest, ::testing::Values(0, 2),
                         [](const auto& info) { return info.param == 0 ? std::string("world") : std::string("two"); });
