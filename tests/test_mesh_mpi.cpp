// The mesh's communicators on a real MPI world (run at 1, 2 and 4 ranks).
#include <gtest/gtest.h>
#include <mpi.h>

#include "core/error.hpp"
#include "parallel/mesh.hpp"

using namespace opendit;

namespace {
int world_size() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}
int sum_over(MPI_Comm comm, int x) {
  int s = 0;
  MPI_Allreduce(&x, &s, 1, MPI_INT, MPI_SUM, comm);
  return s;
}
}  // namespace

TEST(MeshMpi, GroupsMatchTheLayoutForEverySpThatDivides) {
  const int world = world_size();
  for (int sp = 1; sp <= world; ++sp) {
    if (world % sp) continue;
    Mesh mesh(MPI_COMM_WORLD, sp);
    int n = 0;
    MPI_Comm_size(mesh.sp_comm(), &n);
    EXPECT_EQ(n, sp);
    MPI_Comm_size(mesh.dp_comm(), &n);
    EXPECT_EQ(n, world / sp);
    int r = 0;
    MPI_Comm_rank(mesh.sp_comm(), &r);
    EXPECT_EQ(r, mesh.coord().sp_rank);
    MPI_Comm_rank(mesh.dp_comm(), &r);
    EXPECT_EQ(r, mesh.coord().dp_rank);
    // Summing world ranks over each group identifies its members: sp groups are contiguous, dp groups strided.
    const int g = mesh.coord().sp_group, d = mesh.coord().dp_group;
    EXPECT_EQ(sum_over(mesh.sp_comm(), mesh.rank()), sp * g * sp + sp * (sp - 1) / 2);
    const int k = world / sp;
    EXPECT_EQ(sum_over(mesh.dp_comm(), mesh.rank()), k * d + sp * k * (k - 1) / 2);
    // describe() lists the same groups.
    auto groups = mesh.sp_groups();
    ASSERT_EQ(int(groups.size()), world / sp);
    EXPECT_EQ(groups[g].front(), g * sp);
  }
}

TEST(MeshMpi, SpThatDoesNotDivideIsACollectiveError) {
  const int world = world_size();
  EXPECT_THROW(Mesh(MPI_COMM_WORLD, world + 1), Error);
  if (world == 4) EXPECT_THROW(Mesh(MPI_COMM_WORLD, 3), Error);
}
