// Parameters for the flat-layout tests (tests/core/test_flat_layout.cpp, tests/train/test_flat_params.cpp): specs
// with awkward sizes, random values for them, and a bit-exact comparison.
#pragma once
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <vector>

#include "core/flat_layout.hpp"

namespace opendit::test {

// Shapes with awkward sizes: scalars-ish, odd lengths, matrices.
inline std::vector<FlatLayout::Spec> flat_specs() {
  return {{"embed.weight", {7, 5}}, {"embed.bias", {5}, false}, {"blocks.0.w", {3, 4, 2}},
          {"blocks.0.b", {1}, false}, {"final.weight", {11, 3}}, {"final.bias", {3}, false}};
}

inline NamedTensors random_params(const std::vector<FlatLayout::Spec>& s, uint64_t seed) {
  at::manual_seed(seed);
  NamedTensors out;
  for (const auto& spec : s) out[spec.name] = at::randn(spec.shape);
  return out;
}

inline void expect_same_params(const NamedTensors& a, const NamedTensors& b) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) EXPECT_TRUE(at::equal(t, b.at(name))) << name;
}

}  // namespace opendit::test
