// opendit: MPI starts and stops here; every error ends here (see core/error.hpp).
#include "cli/app.hpp"
#include "parallel/mpi_runtime.hpp"

int main(int argc, char** argv) {
  opendit::parallel::MpiRuntime mpi(&argc, &argv);
  return opendit::parallel::run_guarded(mpi, [&] { return opendit::cli::run(argc, argv, mpi); });
}
