// Test probe for the two error paths of run_guarded(): `mpi_error_probe one` fails on rank 1 only while the other
// ranks wait in a barrier; `mpi_error_probe partial` throws a "collective" opendit::Error on rank 1 only, which the
// grace-period watchdog must turn into an end of the job. tests/cli/test_cli.sh checks that neither hangs.
#include <mpi.h>

#include <cstring>
#include <stdexcept>

#include "parallel/mpi_runtime.hpp"

int main(int argc, char** argv) {
  opendit::MpiRuntime mpi(&argc, &argv);
  const std::string mode = argc > 1 ? argv[1] : "";
  return opendit::run_guarded(mpi, [&] {
    if (mpi.rank() == 1 && mode == "one") throw std::runtime_error("cannot open shard-1.h5 (probe)");
    if (mpi.rank() == 1 && mode == "partial") throw opendit::Error("deck differs on rank 1 (probe)");
    MPI_Barrier(MPI_COMM_WORLD);  // the other ranks wait here forever unless the job is ended
    return 0;
  });
}
