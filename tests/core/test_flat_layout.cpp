// The flat layout of parameters and its shards (core/flat_layout.hpp): arithmetic on any world size, round trips,
// and re-sharding of a stored layout.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/flat_layout.hpp"
#include "support/flat_params.hpp"

using namespace opendit;

using opendit::test::expect_same_params;
using opendit::test::random_params;

namespace {
std::vector<FlatLayout::Spec> specs() { return opendit::test::flat_specs(); }
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
