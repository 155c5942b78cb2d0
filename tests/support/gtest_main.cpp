// main() of every GoogleTest binary of tests/: MPI is initialised (a world of one without mpirun, so that process
// groups and HDF5 work everywhere); under mpirun every rank runs every test, rank 0 prints, and the exit code is
// non-zero when a test failed on any rank.
#include <gtest/gtest.h>
#include <mpi.h>

#include "support/support.hpp"

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  opendit::test::world_group();  // made here, collectively, so that later calls need no partner
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int failed = RUN_ALL_TESTS() != 0, any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0 && any_failed && !failed) std::printf("a test failed on a rank other than 0\n");
  MPI_Finalize();
  return any_failed;
}
