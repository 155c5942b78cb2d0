#include <gtest/gtest.h>

#include "core/strings.hpp"

using namespace opendit;

TEST(Strings, EditDistance) {
  EXPECT_EQ(edit_distance("", ""), 0u);
  EXPECT_EQ(edit_distance("abc", ""), 3u);
  EXPECT_EQ(edit_distance("kitten", "sitting"), 3u);
  EXPECT_EQ(edit_distance("sp_size", "sp_sise"), 1u);
}

TEST(Strings, ClosestMatch) {
  EXPECT_EQ(closest_match("parallel.sp_sise", {"parallel.sp_size", "train.lr"}), "parallel.sp_size");
  EXPECT_EQ(closest_match("x", {}), "");
}

TEST(Strings, SplitTrimJoin) {
  EXPECT_EQ(split("a.b.c", '.'), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(split("", '.'), (std::vector<std::string>{""}));
  EXPECT_EQ(trim("  a b \n"), "a b");
  EXPECT_EQ(trim("   "), "");
  EXPECT_EQ(join({"a", "b"}, ", "), "a, b");
}

// The digits of Python's repr(float) (the shortest that read back as the same double), in the shorter of fixed and
// scientific form: 1e-4 prints as 1e-4, never 0.00010000000000000000479.
TEST(Strings, ShortestRoundTrip) {
  EXPECT_EQ(shortest(1e-4), "1e-4");
  EXPECT_EQ(shortest(0.1), "0.1");
  EXPECT_EQ(shortest(0.18215), "0.18215");
  EXPECT_EQ(shortest(0.00015), "0.00015");
  EXPECT_EQ(shortest(2.0), "2");
  EXPECT_EQ(shortest(1e-8), "1e-8");
  EXPECT_EQ(shortest(6.02214076e23), "6.02214076e23");
  EXPECT_EQ(shortest(-2.5e-300), "-2.5e-300");
  EXPECT_EQ(shortest(0.9999), "0.9999");
  EXPECT_EQ(shortest(1.0 / 3.0), "0.3333333333333333");  // repr(1/3): 16 digits, not 17
  for (double x : {1e-4, 0.1, 1.0 / 3.0, 6.02214076e23, -2.5e-300, 0.1 + 0.2, 1e100})
    EXPECT_EQ(std::stod(shortest(x)), x) << shortest(x);
}
