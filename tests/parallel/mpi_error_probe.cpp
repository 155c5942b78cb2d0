// Test probe for the two error endings of run_guarded(): `mpi_error_probe one` fails on rank 1 only (a rank error:
// its file) while the other ranks wait in a barrier; `mpi_error_probe partial` throws a CollectiveError on rank 1
// only, which the grace-period watchdog must turn into an end of the job; `mpi_error_probe hang` has rank 1 stop
// answering (a long sleep) while the others wait in a barrier under the collective watchdog (parallel/watchdog.hpp,
// 2 s). tests/cli/test_cli.sh checks that none of them hangs.
#include <chrono>
#include <string>
#include <thread>

#include "core/error.hpp"
#include "parallel/mpi_runtime.hpp"
#include "parallel/watchdog.hpp"

int main(int argc, char** argv) {
  opendit::parallel::MpiRuntime mpi(&argc, &argv);
  const std::string mode = argc > 1 ? argv[1] : "";
  return opendit::parallel::run_guarded(mpi, [&] {
    if (mpi.rank() == 1 && mode == "one") throw opendit::Error("cannot open shard-1.h5 (probe)");
    if (mpi.rank() == 1 && mode == "partial") throw opendit::CollectiveError("deck differs on rank 1 (probe)");
    if (mode == "hang") {
      opendit::parallel::Watchdog::start(2, mpi.rank());
      opendit::parallel::Watch step("training step", 7);
      if (mpi.rank() == 1) std::this_thread::sleep_for(std::chrono::seconds(120));  // a rank that stopped answering
      mpi.world().barrier();  // the others wait here for rank 1
      return 0;
    }
    mpi.world().barrier();  // the other ranks wait here forever unless the job is ended
    return 0;
  });
}
