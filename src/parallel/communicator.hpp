// Tensor collectives over a group of ranks (a dp or sp group): one interface, two implementations, MpiCommunicator
// for CPU tensors (parallel/mpi_communicator.hpp) and NcclCommunicator for CUDA tensors
// (parallel/nccl_communicator.hpp). Training code sees only this header; make_communicator picks by device.
//
// Every collective takes flat, contiguous tensors of one supported dtype (float32, float64, bfloat16, float16,
// int64, int32) on the communicator's device, and is issued by every rank of the group in the same order:
//   all_reduce(t, op)           t [n] in place, op over the group
//   reduce_scatter(out, in, op) in [size * n] -> out [n]: rank r gets op over ranks of in[r*n, (r+1)*n)
//   all_gather(out, in)         in [n] -> out [size * n]: out[r*n, (r+1)*n) = rank r's in; in may be that slice of out
//   all_to_all(out, in)         in, out [size * n]: out[r*n, (r+1)*n) = rank r's in[me*n, (me+1)*n)
//   broadcast(t, root)          t [n] in place, root's values
// The *_async variants start the operation and return a Work; the tensors (and their storage) must not be touched
// until wait() returns. wait() on an MPI Work completes the request; on an NCCL Work it makes the caller's current
// CUDA stream wait for the collective (the host does not block). A Work destroyed without wait() waits then.
//
// Avg is only defined for floating dtypes; Min and Max for every dtype. Shape and dtype mistakes are programming errors of one rank (the others
// would hang in the collective), so they throw std::invalid_argument, which ends the whole job.
#pragma once
#include <ATen/ATen.h>

#include <memory>
#include <string>

#include "parallel/process_group.hpp"

namespace opendit::parallel {

class Work {
 public:
  virtual ~Work() = default;
  virtual void wait() = 0;
};
using WorkPtr = std::unique_ptr<Work>;

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual at::Device device() const = 0;  // where its tensors live
  virtual std::string backend() const = 0;  // "mpi" or "nccl"

  virtual WorkPtr all_reduce_async(const at::Tensor& tensor, ReduceOp op) = 0;
  virtual WorkPtr reduce_scatter_async(const at::Tensor& output, const at::Tensor& input, ReduceOp op) = 0;
  virtual WorkPtr all_gather_async(const at::Tensor& output, const at::Tensor& input) = 0;
  virtual WorkPtr all_to_all_async(const at::Tensor& output, const at::Tensor& input) = 0;
  virtual WorkPtr broadcast_async(const at::Tensor& tensor, int root) = 0;
  // Returns once every rank has arrived and this rank's earlier collectives are complete.
  virtual void barrier() = 0;

  void all_reduce(const at::Tensor& tensor, ReduceOp op = ReduceOp::Sum) { all_reduce_async(tensor, op)->wait(); }
  void reduce_scatter(const at::Tensor& output, const at::Tensor& input, ReduceOp op = ReduceOp::Sum) {
    reduce_scatter_async(output, input, op)->wait();
  }
  void all_gather(const at::Tensor& output, const at::Tensor& input) { all_gather_async(output, input)->wait(); }
  void all_to_all(const at::Tensor& output, const at::Tensor& input) { all_to_all_async(output, input)->wait(); }
  void broadcast(const at::Tensor& tensor, int root = 0) { broadcast_async(tensor, root)->wait(); }
};

// NCCL for CUDA `device` tensors (MPI for CPU) over the ranks of `group`. Every rank of the group must call it.
// Throws opendit::CollectiveError for a CUDA device in a build without CUDA.
std::unique_ptr<Communicator> make_communicator(const ProcessGroup& group, at::Device device);

// "2.28.9", or "none" in a build without CUDA.
std::string nccl_version();

// For the implementations.
namespace detail {
// The checks every collective makes; they throw std::invalid_argument naming `what`.
void check_tensor(const at::Tensor& t, at::Device device, const char* what);
void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* what);
void check_numel(const at::Tensor& t, int64_t expected, const char* role, const char* what);
void check_op(const at::Tensor& t, ReduceOp op, const char* what);
int count_of(int64_t numel, const char* what);  // numel as an int element count (MPI and NCCL counts)
// Whether `part` is exactly out[offset, offset + part.numel()) (an in-place all-gather or reduce-scatter), and
// whether two tensors share any bytes (then the input must be copied first).
bool is_slice_at(const at::Tensor& part, const at::Tensor& whole, int64_t offset);
bool overlaps(const at::Tensor& a, const at::Tensor& b);
}  // namespace detail

}  // namespace opendit::parallel
