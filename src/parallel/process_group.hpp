// A group of ranks (the world, a data-parallel or a sequence-parallel group) and the small host-side collectives
// the rest of opendit needs: broadcast a string, reduce a few numbers, gather short records, agree on a failure.
// MPI stays behind this header: only src/parallel/ and the HDF5 layer's file access (parallel/mpi_comm.hpp) see
// <mpi.h>. Tensor collectives are in parallel/communicator.hpp.
//
// Every call here is collective: every rank of the group makes the same calls in the same order. A failed MPI call
// throws opendit::Error naming it (MPI_ERRORS_RETURN is set on the world).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace opendit::parallel {

enum class ReduceOp { Sum, Avg, Max, Min };  // Avg: floating-point only

class ProcessGroup {
 public:
  static ProcessGroup world();  // every rank of the job (a duplicate of MPI_COMM_WORLD)
  static ProcessGroup self();   // this rank alone

  int rank() const { return rank_; }
  int size() const { return size_; }

  // Sub-groups: ranks with the same color, ordered by key (MPI_Comm_split); the ranks of this node.
  ProcessGroup split(int color, int key) const;
  ProcessGroup dup() const;  // the same ranks on a communicator of their own (for another thread)
  ProcessGroup node_local() const;

  void barrier() const;
  std::string broadcast(const std::string& value, int root = 0) const;
  std::vector<std::int64_t> broadcast(std::vector<std::int64_t> values, int root = 0) const;  // same size everywhere
  double all_reduce(double value, ReduceOp op) const;
  std::int64_t all_reduce(std::int64_t value, ReduceOp op) const;  // Sum, Max or Min
  std::vector<double> all_reduce(std::vector<double> values, ReduceOp op) const;
  // Every rank's values, rank after rank (each rank passes the same count).
  std::vector<std::int64_t> all_gather(const std::vector<std::int64_t>& mine) const;
  // Root receives every rank's values (any count per rank), in rank order; the other ranks receive nothing.
  std::vector<std::vector<std::int64_t>> gather(const std::vector<std::int64_t>& mine, int root = 0) const;
  std::vector<std::string> gather(const std::string& mine, int root = 0) const;

  // Runs `local` on every rank. If it throws on any rank, every rank throws opendit::CollectiveError with the
  // message of the lowest failing rank, so that all of them stop alike. `local` must not make collective calls
  // (a failing rank would skip them).
  void agree(const std::function<void()>& local) const;
  // Runs `fn` on rank 0, then on rank 1, ..., each turn inside agree(): the ranks take turns (serial HDF5 writes of
  // one file). A failure on the rank whose turn it is stops every rank.
  void in_turn(const std::function<void()>& fn) const;

  struct Impl;  // MPI_Comm and its release; see parallel/mpi_comm.hpp
  const std::shared_ptr<Impl>& impl() const { return impl_; }

 private:
  explicit ProcessGroup(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;  // shared: copies of a group are the same group
  int rank_ = 0, size_ = 1;
};

// Whether MPI was started with MPI_THREAD_MULTIPLE: two threads may then call MPI at once, each on its own group.
bool mpi_thread_multiple();
void set_mpi_thread_multiple(bool on);  // by MpiRuntime

// "Open MPI v4.1.4 (MPI 3.1)": the MPI library, for `opendit info`.
std::string mpi_library_version();

}  // namespace opendit::parallel
