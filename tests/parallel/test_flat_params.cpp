// The flat layout and its shards: arithmetic on any world size, round trips, and re-sharding of a stored layout,
// plus the live buffer on the real MPI world (1-4 ranks) and a DiT computing through it.
#include <gtest/gtest.h>
#include <mpi.h>

#include <map>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "models/dit.hpp"
#include "parallel/communicator.hpp"
#include "train/flat_params.hpp"

using namespace opendit;
using namespace opendit::train;

namespace {

// Shapes with awkward sizes: scalars-ish, odd lengths, matrices.
std::vector<FlatLayout::Spec> specs() {
  return {{"embed.weight", {7, 5}}, {"embed.bias", {5}, false}, {"blocks.0.w", {3, 4, 2}},
          {"blocks.0.b", {1}, false}, {"final.weight", {11, 3}}, {"final.bias", {3}, false}};
}

NamedTensors random_params(const std::vector<FlatLayout::Spec>& s, uint64_t seed) {
  at::manual_seed(seed);
  NamedTensors out;
  for (const auto& spec : s) out[spec.name] = at::randn(spec.shape);
  return out;
}

void expect_same_params(const NamedTensors& a, const NamedTensors& b) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) EXPECT_TRUE(at::equal(t, b.at(name))) << name;
}

}  // namespace

TEST(FlatLayout, OffsetsAreAlignedAndInOrder) {
  FlatLayout l(specs(), 16);
  int64_t end = 0;
  for (const FlatEntry& e : l.entries()) {
    EXPECT_EQ(e.offset % 16, 0) << e.name;
    EXPECT_GE(e.offset, end);
    EXPECT_LT(e.offset - end, 16);
    end = e.offset + e.numel;
  }
  EXPECT_EQ(l.numel(), end);
  EXPECT_EQ(l.entry("final.weight").numel, 33);
  EXPECT_FALSE(l.entry("final.bias").decay);
  EXPECT_THROW(l.entry("nope"), Error);
  FlatLayout packed(specs(), 1);
  EXPECT_EQ(packed.numel(), 35 + 5 + 24 + 1 + 33 + 3);
}

TEST(FlatLayout, ShardsCoverEveryElementExactlyOnce) {
  for (int64_t align : {1, 4, 16}) {
    FlatLayout l(specs(), align);
    for (int world = 1; world <= 9; ++world) {
      SCOPED_TRACE("align " + std::to_string(align) + " world " + std::to_string(world));
      const int64_t padded = l.padded_numel(world);
      EXPECT_EQ(padded % (world * align), 0);
      EXPECT_GE(padded, l.numel());
      EXPECT_LT(padded - l.numel(), world * align);
      // Count how often each parameter element is covered by the pieces of all shards.
      std::vector<std::vector<int>> seen;
      for (const FlatEntry& e : l.entries()) seen.emplace_back(e.numel, 0);
      int64_t next = 0;
      for (int r = 0; r < world; ++r) {
        FlatRange s = l.shard(world, r);
        EXPECT_EQ(s.begin, next);
        EXPECT_EQ(s.size(), l.shard_numel(world));
        next = s.end;
        for (const auto& p : l.pieces(s)) {
          EXPECT_GE(p.flat, s.begin);
          EXPECT_LE(p.flat + p.count, s.end);
          for (int64_t k = 0; k < p.count; ++k) seen[p.entry][p.param + k]++;
        }
      }
      EXPECT_EQ(next, padded);
      for (size_t i = 0; i < seen.size(); ++i)
        for (int c : seen[i]) ASSERT_EQ(c, 1) << l.entries()[i].name;
    }
  }
}

TEST(FlatLayout, FlattenAndUnflattenRoundTrip) {
  FlatLayout l(specs(), 16);
  NamedTensors params = random_params(specs(), 1);
  const FlatRange all{0, l.padded_numel(3)};
  at::Tensor flat = flatten_range(l, all, params);
  expect_same_params(unflatten(l, flat), params);
  // Gaps and padding are zeros: the flat sum of squares is the parameters'.
  double ss = 0;
  for (const auto& [n, t] : params) ss += t.to(at::kDouble).square().sum().item<double>();
  EXPECT_NEAR(flat.to(at::kDouble).square().sum().item<double>(), ss, 1e-12 * ss);
  // Ranges placed one by one rebuild the parameters.
  NamedTensors rebuilt;
  for (const auto& s : specs()) rebuilt[s.name] = at::full(s.shape, -1.0f);
  for (int r = 0; r < 3; ++r) {
    FlatRange s = l.shard(3, r);
    unflatten_range(l, s, flat.narrow(0, s.begin, s.size()), rebuilt);
  }
  expect_same_params(rebuilt, params);
  params.erase("embed.bias");
  EXPECT_THROW(flatten_range(l, all, params), Error);
}

TEST(FlatLayout, ShardsOfAFourRankLayoutReadBackOnAnyWorldSizeAlignmentOrOrder) {
  // A checkpoint written by 4 ranks: each writes its shard's part of [0, numel) into the global tensor.
  FlatLayout written(specs(), 16);
  NamedTensors params = random_params(specs(), 2);
  at::Tensor file = at::full({written.numel()}, std::nanf(""));
  for (int r = 0; r < 4; ++r) {
    FlatRange s = written.shard(4, r);
    const int64_t end = std::min(s.end, written.numel());
    if (s.begin < end) file.narrow(0, s.begin, end - s.begin).copy_(flatten_range(written, {s.begin, end}, params));
  }
  int reads = 0;
  RangeReader reader = [&](int64_t offset, int64_t count) {
    ++reads;
    EXPECT_LE(offset + count, file.numel());
    return file.narrow(0, offset, count);
  };
  const std::vector<FlatLayout::Spec> forward = specs();
  std::vector<FlatLayout::Spec> reversed(forward.rbegin(), forward.rend());
  for (const auto& [name, layout] : std::vector<std::pair<std::string, FlatLayout>>{
           {"same", FlatLayout(specs(), 16)}, {"packed", FlatLayout(specs(), 1)}, {"reversed", FlatLayout(reversed, 8)}}) {
    for (int world : {1, 2, 3, 4}) {
      SCOPED_TRACE(name + " on " + std::to_string(world) + " ranks");
      for (int r = 0; r < world; ++r) {
        FlatRange s = layout.shard(world, r);
        reads = 0;
        at::Tensor got = read_range(layout, s, written, reader);
        EXPECT_TRUE(at::equal(got, flatten_range(layout, s, params)));
        if (name == "same") EXPECT_LE(reads, 1);
      }
    }
  }
  // A stored shape that does not match is named.
  std::vector<FlatLayout::Spec> other = specs();
  other[0].shape = {5, 7};
  EXPECT_THROW(read_range(FlatLayout(other, 1), {0, 40}, written, reader), Error);
}

TEST(FlatParams, TheSlotsBecomeViewsOfTheFlatBuffer) {
  MpiCommunicator comm(MPI_COMM_WORLD);
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
  MpiCommunicator comm(MPI_COMM_WORLD);
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
  models::DiTConfig cfg;
  cfg.depth = 2, cfg.hidden_size = 32, cfg.num_heads = 4, cfg.patch_size = 2;
  cfg.in_channels = 3, cfg.input_size = 4, cfg.num_classes = 5, cfg.learn_sigma = false;
  models::DiT bound(cfg, 7), reference(cfg, 7);
  for (auto* m : {&bound, &reference}) {  // leave adaLN-Zero's all-zero start so every gradient is non-zero
    at::manual_seed(11);
    for (const auto& [name, t] : m->named_parameters()) t->add_(at::randn_like(*t), 0.05);
    m->set_requires_grad(true);
  }
  FlatParams::Slots trainable;
  for (const auto& [name, t] : bound.named_parameters())
    if (name != "pos_embed") trainable.emplace_back(name, t);
  FlatParams flat(trainable, 2, 1);
  at::Tensor x = at::randn({2, 3, 4, 4}), t = at::tensor({3.0, 700.0}), y = at::tensor({int64_t{1}, int64_t{5}});
  bound.forward(x, t, y).square().mean().backward();
  reference.forward(x, t, y).square().mean().backward();
  flat.gather_grads();
  NamedTensors g = unflatten(flat.layout(), flat.grad());
  for (const auto& [name, p] : reference.named_parameters()) {
    if (name == "pos_embed") continue;
    ASSERT_TRUE(p->grad().defined()) << name;
    EXPECT_TRUE(at::allclose(g.at(name), p->grad(), 1e-5, 1e-7)) << name;
  }
}
