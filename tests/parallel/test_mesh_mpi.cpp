// The mesh's communicators on a real MPI world (run at 1, 2 and 4 ranks).
#include <gtest/gtest.h>

#include "core/error.hpp"
#include "parallel/mesh.hpp"
#include "support/support.hpp"

using namespace opendit;
using namespace opendit::parallel;

using opendit::test::world_group;
using opendit::test::world_size;

namespace {
int64_t sum_over(const ProcessGroup& g, int64_t x) { return g.all_reduce(x, ReduceOp::Sum); }
}  // namespace

TEST(MeshMpi, GroupsMatchTheLayoutForEverySpThatDivides) {
  const int world = world_size();
  for (int sp = 1; sp <= world; ++sp) {
    if (world % sp) continue;
    Mesh mesh(world_group(), sp);
    EXPECT_EQ(mesh.sp().size(), sp);
    EXPECT_EQ(mesh.dp().size(), world / sp);
    EXPECT_EQ(mesh.sp().rank(), mesh.coord().sp_rank);
    EXPECT_EQ(mesh.dp().rank(), mesh.coord().dp_rank);
    EXPECT_EQ(mesh.world().size(), world);
    // Summing world ranks over each group identifies its members: sp groups are contiguous, dp groups strided.
    const int g = mesh.coord().sp_group, d = mesh.coord().dp_group;
    EXPECT_EQ(sum_over(mesh.sp(), mesh.rank()), sp * g * sp + sp * (sp - 1) / 2);
    const int k = world / sp;
    EXPECT_EQ(sum_over(mesh.dp(), mesh.rank()), k * d + sp * k * (k - 1) / 2);
    // describe() lists the same groups.
    auto groups = mesh.sp_groups();
    ASSERT_EQ(int(groups.size()), world / sp);
    EXPECT_EQ(groups[g].front(), g * sp);
  }
}

TEST(MeshMpi, SpThatDoesNotDivideIsACollectiveError) {
  const int world = world_size();
  EXPECT_THROW(Mesh(world_group(), world + 1), CollectiveError);
  if (world == 4) EXPECT_THROW(Mesh(world_group(), 3), CollectiveError);
}
