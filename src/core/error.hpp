// Errors choose their scope where they are thrown (LAMMPS' error->one vs error->all):
//  - opendit::Error: a problem of this rank (its file, its device, its data). The top level prints it with the rank
//    and ends the job at once (MPI_Abort), so no rank waits for a collective that will never come. In a world of
//    one it is a plain error message and exit status 1.
//  - opendit::CollectiveError: a problem every rank reaches the same way (a bad deck or argument, a mesh that does
//    not divide, a failure the ranks agreed on with ProcessGroup::agree). Rank 0 prints it once and every rank
//    exits 1 through MPI_Finalize.
// Collective code promotes a rank error on purpose: it runs the local work inside ProcessGroup::agree, which turns
// a failure on any rank into the same CollectiveError on every rank.
#pragma once
#include <atomic>
#include <sstream>
#include <stdexcept>
#include <string>

namespace opendit {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct CollectiveError : Error {
  using Error::Error;
};

// Builds a message from any streamable pieces: throw Error(cat("expected ", a, ", found ", b)).
template <typename... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}

// A library was left in a state that its own cleanup at exit cannot handle (parallel HDF5 1.10 crashes in MPI_Finalize
// closing a file whose close failed after a failed write). The exit paths (parallel/mpi_runtime) then leave
// without that cleanup: the error is printed, the exit status is kept, no crash follows it.
inline std::atomic<bool>& unclean_exit_needed() {
  static std::atomic<bool> flag{false};
  return flag;
}

}  // namespace opendit
