// The one place that starts and stops MPI, and the two ways a run ends in error (see core/error.hpp).
// Started without mpirun, MPI runs as a world of one.
#pragma once
#include <c10/util/Exception.h>

#include <exception>
#include <memory>
#include <string>

#include "core/error.hpp"
#include "parallel/process_group.hpp"

namespace opendit::parallel {

class MpiRuntime {
 public:
  MpiRuntime(int* argc, char*** argv);
  ~MpiRuntime();  // finalizes if finalize() was not called
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  const ProcessGroup& world() const { return *world_; }
  // status: the exit status of the process, used when a library left a state its exit cleanup cannot handle
  // (core/error.hpp, unclean_exit_needed): then the process ends here with it, without MPI_Finalize.
  void finalize(int status = 0);

  // An error every rank reached: rank 0 prints it; all ranks finalize and the caller exits 1. If the other ranks
  // do not arrive in MPI_Finalize within the grace period (OPENDIT_ERROR_GRACE_S, default 10 s), the error was not
  // collective after all: this rank prints it with its rank and ends the job, so nothing hangs.
  int exit_collective(const std::string& message);

  // An error of this rank alone: printed with the rank, then MPI_Abort ends every rank. In a world of one it is
  // printed like a collective error and the process exits 1 normally.
  [[noreturn]] void abort_one(const std::string& message);

 private:
  int rank_ = 0, size_ = 1;
  bool finalized_ = false;
  std::unique_ptr<ProcessGroup> world_;
};

// An error of this rank found outside the thread that runs the job (the background checkpoint writer): printed with
// the rank, then MPI_Abort ends every rank at once (the other ranks may be waiting in a collective for this one).
[[noreturn]] void abort_job(const std::string& message);

// Runs `body` (returning an exit code) and ends the run the right way for whatever it throws.
template <typename Body>
int run_guarded(MpiRuntime& mpi, Body&& body) {
  try {
    int rc = body();
    mpi.finalize(rc);
    return rc;
  } catch (const CollectiveError& e) {
    return mpi.exit_collective(e.what());
  } catch (const c10::Error& e) {
    mpi.abort_one(e.what_without_backtrace());
  } catch (const std::exception& e) {
    mpi.abort_one(e.what());
  }
}

}  // namespace opendit::parallel
