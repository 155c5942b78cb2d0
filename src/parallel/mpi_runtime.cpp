#include "parallel/mpi_runtime.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "parallel/mpi_comm.hpp"

namespace opendit::parallel {

MpiRuntime::MpiRuntime(int* argc, char*** argv) {
  int provided = 0;
  // The main thread and the background checkpoint writer (train.async_checkpoint) call MPI, on communicators of
  // their own; data-loading threads never do. An MPI without MPI_THREAD_MULTIPLE gets foreground checkpoints.
  MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
  set_mpi_thread_multiple(provided >= MPI_THREAD_MULTIPLE);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  // Errors come back as return codes that callers turn into exceptions, instead of MPI killing the job silently.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  world_ = std::make_unique<ProcessGroup>(ProcessGroup::world());
}

MpiRuntime::~MpiRuntime() { finalize(); }

void MpiRuntime::finalize(int status) {
  if (finalized_) return;
  finalized_ = true;
  world_.reset();
  if (unclean_exit_needed()) {  // core/error.hpp: MPI_Finalize would run a library cleanup that crashes
    std::fflush(stdout);
    std::fflush(stderr);
    std::_Exit(status);
  }
  MPI_Finalize();
}

int MpiRuntime::exit_collective(const std::string& message) {
  if (rank_ == 0) std::fprintf(stderr, "opendit: error: %s\n", message.c_str());
  std::fflush(stderr);
  double grace = 10.0;
  if (const char* g = std::getenv("OPENDIT_ERROR_GRACE_S")) grace = std::atof(g);
  int rank = rank_;
  std::string msg = message;
  // MPI_Finalize waits for every rank; a rank that never comes would leave us waiting forever.
  std::thread([grace, rank, msg] {
    std::this_thread::sleep_for(std::chrono::duration<double>(grace));
    std::fprintf(stderr,
                 "opendit: error on rank %d: %s\n"
                 "opendit: the other ranks did not stop within %.0f s; ending the job\n",
                 rank, msg.c_str(), grace);
    std::fflush(stderr);
    std::_Exit(1);
  }).detach();
  finalize(1);
  return 1;
}

void abort_job(const std::string& message) {
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size == 1) std::fprintf(stderr, "opendit: error: %s\n", message.c_str());
  else std::fprintf(stderr, "opendit: error on rank %d: %s\n", rank, message.c_str());
  std::fflush(stdout);
  std::fflush(stderr);
  if (size > 1) MPI_Abort(MPI_COMM_WORLD, 1);
  std::_Exit(1);
}

void MpiRuntime::abort_one(const std::string& message) {
  if (size_ == 1) {
    std::fprintf(stderr, "opendit: error: %s\n", message.c_str());
    std::fflush(stderr);
    finalize(1);
    std::exit(1);
  }
  abort_job(message);
}

}  // namespace opendit::parallel
