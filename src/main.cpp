// opendit: MPI starts and stops here; every error ends here (see core/error.hpp).
#include "cli/app.hpp"
#include "parallel/mpi_runtime.hpp"

#include <csignal>

int main(int argc, char** argv) {
  // A file-size limit (ulimit -f) makes writes fail with EFBIG, reported like a full disk, instead of killing us.
  std::signal(SIGXFSZ, SIG_IGN);
  opendit::parallel::MpiRuntime mpi(&argc, &argv);
  return opendit::parallel::run_guarded(mpi, [&] { return opendit::cli::run(argc, argv, mpi); });
}
