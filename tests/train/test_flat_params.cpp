// FlatParams: a model's tensors as views of one flat buffer, on the real MPI world (1-4 ranks), shards read back
// from a stored layout, and a DiT computing (and producing gradients) through it.
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "models/dit/dit.hpp"
#include "parallel/mpi_communicator.hpp"
#include "support/flat_params.hpp"
#include "train/flat_params.hpp"

using namespace opendit;
using namespace opendit::train;
using opendit::parallel::MpiCommunicator;
using opendit::parallel::ProcessGroup;

using opendit::test::expect_same_params;
using opendit::test::random_params;

namespace {
std::vector<FlatLayout::Spec> specs() { return opendit::test::flat_specs(); }

// Two identical tiny DiTs (one to bind to a FlatParams, one for plain autograd), moved off adaLN-Zero's all-zero
// start so that every gradient is non-zero, and one input batch.
struct TwinDiTs {
  models::dit::DiT bound, reference;
  FlatParams::Slots trainable;  // bound's
  at::Tensor x = at::randn({2, 3, 4, 4}), t = at::tensor({3.0, 700.0});
  models::Condition y;

  static models::dit::DiTConfig config() {
    models::dit::DiTConfig cfg;
    cfg.depth = 2, cfg.hidden_size = 32, cfg.num_heads = 4, cfg.patch_size = 2;
    cfg.in_channels = 3, cfg.input_size = 4, cfg.num_classes = 5, cfg.learn_sigma = false;
    return cfg;
  }
  TwinDiTs() : bound(config(), uint64_t{7}), reference(config(), uint64_t{7}) {
    for (auto* m : {&bound, &reference}) {
      at::manual_seed(11);
      for (const models::Param& p : m->parameters()) p.tensor->add_(at::randn_like(*p.tensor), 0.05);
      m->set_requires_grad(true);
    }
    for (const models::Param& p : bound.parameters())
      if (p.trainable) trainable.emplace_back(p.name, p.tensor);
    y.labels = at::tensor({int64_t{1}, int64_t{5}});
  }
  at::Tensor loss(models::dit::DiT& m) { return m.forward(x, t, y).square().mean(); }
};
}  // namespace

TEST(FlatParams, TheSlotsBecomeViewsOfTheFlatBuffer) {
  MpiCommunicator comm(ProcessGroup::world());
  NamedTensors original = random_params(specs(), 3);
  NamedTensors live;
  FlatParams::Slots slots;
  for (const auto& s : specs()) live[s.name] = original[s.name].clone().requires_grad_(s.decay);
  for (const auto& s : specs()) slots.emplace_back(s.name, &live[s.name]);
  FlatParams flat(slots, comm.size(), comm.rank(), 16, [](const std::string& n, const at::Tensor& t) {
    return t.dim() > 1;  // the usual rule: no decay for biases and other vectors
  });
  expect_same_params(live, original);
  EXPECT_EQ(flat.data().numel(), flat.layout().padded_numel(comm.size()));
  EXPECT_TRUE(at::equal(flat.data(), flatten_range(flat.layout(), {0, flat.data().numel()}, original)));
  for (const auto& s : specs()) {
    EXPECT_EQ(live[s.name].requires_grad(), s.decay) << s.name;
    EXPECT_EQ(flat.layout().entry(s.name).decay, s.decay) << s.name;
  }
  // Writing the buffer changes what the model sees.
  flat.data().mul_(2);
  EXPECT_TRUE(at::equal(live["final.weight"], original["final.weight"] * 2));
  // Grads land at the parameters' offsets; parameters without grad give zeros.
  (live["embed.weight"].square().sum() + live["blocks.0.w"].sum()).backward();
  flat.gather_grads();
  NamedTensors g = unflatten(flat.layout(), flat.grad());
  EXPECT_TRUE(at::allclose(g["embed.weight"], 2 * live["embed.weight"].detach()));
  EXPECT_TRUE(at::equal(g["blocks.0.w"], at::ones({3, 4, 2})));
  EXPECT_TRUE(at::equal(g["final.weight"], at::zeros({11, 3})));
  flat.clear_grads();
  EXPECT_FALSE(live["embed.weight"].grad().defined());
  // The shards of the real world gather back to the whole buffer.
  FlatRange own = flat.own();
  at::Tensor gathered = at::empty_like(flat.data());
  comm.all_gather(gathered, flat.data().narrow(0, own.begin, own.size()).contiguous());
  EXPECT_TRUE(at::equal(gathered, flat.data()));
}

TEST(FlatParams, EachRankReadsItsShardOfAFourRankCheckpoint) {
  MpiCommunicator comm(ProcessGroup::world());
  FlatLayout written(specs(), 16);
  NamedTensors params = random_params(specs(), 4);
  at::Tensor file = flatten_range(written, {0, written.numel()}, params);
  FlatLayout mine(specs(), 4);
  FlatRange own = mine.shard(comm.size(), comm.rank());
  at::Tensor shard = read_range(mine, own, written, [&](int64_t o, int64_t n) { return file.narrow(0, o, n); });
  at::Tensor whole = at::empty({mine.padded_numel(comm.size())});
  comm.all_gather(whole, shard);
  expect_same_params(unflatten(mine, whole), params);
}

TEST(FlatParams, DiTTrainsThroughTheFlatBuffer) {
  TwinDiTs d;
  FlatParams flat(d.trainable, 2, 1);
  d.loss(d.bound).backward();
  d.loss(d.reference).backward();
  flat.gather_grads();
  NamedTensors g = unflatten(flat.layout(), flat.grad());
  for (const models::Param& p : d.reference.parameters()) {
    if (!p.trainable) continue;
    ASSERT_TRUE(p.tensor->grad().defined()) << p.name;
    EXPECT_TRUE(at::allclose(g.at(p.name), p.tensor->grad(), 1e-5, 1e-7)) << p.name;
  }
}

// stream_grads(): the linear layers write their gradients into the flat buffer through their sinks (no .grad on
// those parameters), the rest arrive by hook; two micro-batches add up; a working copy bound afterwards keeps
// both; once the FlatParams is gone the model's gradients come back through autograd.
TEST(FlatParams, StreamedGradientsThroughSinksAndHooksEqualAutograd) {
  TwinDiTs d;
  {
    auto flat = std::make_unique<FlatParams>(d.trainable, 1, 0);
    flat->stream_grads();
    flat->use_working_copy(at::kFloat);  // rebinds the slots (new tensors): their hooks and sinks move along
    for (int micro = 0; micro < 2; ++micro) d.loss(d.bound).backward();
    int64_t sunk = 0;
    for (const auto& [name, slot] : d.trainable) sunk += !slot->grad().defined();
    EXPECT_EQ(sunk, int64_t(d.trainable.size())) << "every gradient streamed: by sink or by hook (then freed)";
    flat->gather_grads();
    (d.loss(d.reference) * 2).backward();
    NamedTensors g = unflatten(flat->layout(), flat->grad());
    for (const models::Param& p : d.reference.parameters()) {
      if (!p.trainable) continue;
      EXPECT_TRUE(at::allclose(g.at(p.name), p.tensor->grad(), 1e-5, 1e-7)) << p.name;
    }
  }
  d.loss(d.bound).backward();  // no FlatParams: no sinks, no hooks
  for (const auto& [name, slot] : d.trainable) EXPECT_TRUE(slot->grad().defined()) << name;
}
