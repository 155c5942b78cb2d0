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
