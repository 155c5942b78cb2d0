// The MPI communicator behind a ProcessGroup, for the few places that hand one to a library: the MPI and NCCL
// communicators of parallel/, and HDF5's MPI-IO file access in io/h5_file.cpp. Everything else uses
// parallel/process_group.hpp.
#pragma once
#include <mpi.h>

#include "parallel/process_group.hpp"
#include "parallel/watchdog.hpp"

namespace opendit::parallel {

struct ProcessGroup::Impl {
  MPI_Comm comm = MPI_COMM_NULL;
  bool owned = true;  // freed with the last copy of the group (unless MPI is already finalized)
  ~Impl();
};

inline MPI_Comm mpi_comm(const ProcessGroup& group) { return group.impl()->comm; }

// Throws opendit::Error naming the call when an MPI call fails (MPI_ERRORS_RETURN is set on the world).
void mpi_check(int rc, const char* what);

// An MPI call under the watchdog (parallel/watchdog.hpp): mpi_call("MPI_Barrier", [&] { return MPI_Barrier(c); }).
template <typename Call>
void mpi_call(const char* what, Call&& call) {
  Watch watch(what);
  mpi_check(call(), what);
}

// The MPI operation of a reduction (Avg: a sum, divided afterwards).
inline MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Max: return MPI_MAX;
    case ReduceOp::Min: return MPI_MIN;
    default: return MPI_SUM;
  }
}

}  // namespace opendit::parallel
