// Test probe for the two error endings of run_guarded(): `mpi_error_probe one` fails on rank 1 only (a rank error:
// its file) while the other ranks wait in a barrier; `mpi_error_probe partial` throws a CollectiveError on rank 1
// only, which the grace-period watchdog must turn into an end of the job. tests/cli/test_cli.sh checks that neither
// hangs.
#include <string>

#include "core/error.hpp"
#include "parallel/mpi_runtime.hpp"

int main(int argc, char** argv) {
  opendit::parallel::MpiRuntime mpi(&argc, &argv);
  const std::string mode = argc > 1 ? argv[1] : "";
  return opendit::parallel::run_guarded(mpi, [&] {
    if (mpi.rank() == 1 && mode == "one") throw opendit::Error("cannot open shard-1.h5 (probe)");
    if (mpi.rank() == 1 && mode == "partial") throw opendit::CollectiveError("deck differs on rank 1 (probe)");
    mpi.world().barrier();  // the other ranks wait here forever unless the job is ended
    return 0;
  });
}
