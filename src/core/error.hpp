// Errors, the LAMMPS way (error->all vs error->one):
//  - opendit::Error: a problem every rank reaches the same way (bad deck, bad arguments, a mesh that does not
//    divide). main() prints it once from rank 0 and every rank exits non-zero through MPI_Finalize.
//  - any other exception: a problem of one rank (its file, its device). main() prints it with the rank and calls
//    MPI_Abort, so no rank waits forever in a collective.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace opendit {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Builds a message from any streamable pieces: throw Error(cat("expected ", a, ", found ", b)).
template <typename... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}

}  // namespace opendit
