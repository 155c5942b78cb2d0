#include <gtest/gtest.h>

#include "core/error.hpp"
#include "parallel/mesh.hpp"

using namespace opendit;
using namespace opendit::parallel;

TEST(MeshLayout, SpGroupsAreContiguousDpGroupsStrided) {
  // world 8, sp 2: sp groups [0 1] [2 3] [4 5] [6 7]; dp groups [0 2 4 6] [1 3 5 7]
  for (int r = 0; r < 8; ++r) {
    MeshCoord c = mesh_coord(r, 8, 2);
    EXPECT_EQ(c.sp_group, r / 2);
    EXPECT_EQ(c.sp_rank, r % 2);
    EXPECT_EQ(c.dp_group, r % 2);
    EXPECT_EQ(c.dp_rank, r / 2);
  }
  MeshCoord c = mesh_coord(5, 8, 4);  // sp groups [0..3] [4..7]
  EXPECT_EQ(c.sp_group, 1);
  EXPECT_EQ(c.sp_rank, 1);
  EXPECT_EQ(c.dp_group, 1);
  EXPECT_EQ(c.dp_rank, 1);
}

TEST(MeshLayout, WorldOfOne) {
  MeshCoord c = mesh_coord(0, 1, 1);
  EXPECT_EQ(c.sp_rank + c.sp_group + c.dp_rank + c.dp_group, 0);
}

TEST(MeshLayout, SpMustDivideWorld) {
  EXPECT_THROW(mesh_coord(0, 6, 4), Error);
  EXPECT_THROW(mesh_coord(0, 4, 0), Error);
  try {
    mesh_coord(0, 3, 2);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not divide the world size 3"), std::string::npos) << e.what();
  }
}
