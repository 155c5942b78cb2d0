// MpiCommunicator: the tensor collectives (parallel/communicator.hpp) as non-blocking MPI calls on CPU tensors,
// over a duplicate of the group's communicator (its traffic never mixes with the group's other users).
// The MPI_I* calls progress inside MPI calls (OpenMPI has no progress thread by default): work that overlaps
// computation may finish only at wait(). bfloat16/float16 reductions are done in float32 (converted, reduced,
// rounded once): MPI has no half-precision types, and one rounding is more accurate than one per partial sum.
#pragma once
#include "parallel/communicator.hpp"

namespace opendit::parallel {

class MpiCommunicator : public Communicator {
 public:
  explicit MpiCommunicator(const ProcessGroup& group);
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return group_.rank(); }
  int size() const override { return group_.size(); }
  at::Device device() const override { return at::kCPU; }
  std::string backend() const override { return "mpi"; }

  WorkPtr all_reduce_async(const at::Tensor& tensor, ReduceOp op) override;
  WorkPtr reduce_scatter_async(const at::Tensor& output, const at::Tensor& input, ReduceOp op) override;
  WorkPtr all_gather_async(const at::Tensor& output, const at::Tensor& input) override;
  WorkPtr all_to_all_async(const at::Tensor& output, const at::Tensor& input) override;
  WorkPtr broadcast_async(const at::Tensor& tensor, int root) override;
  void barrier() override;

 private:
  ProcessGroup group_;  // a duplicate of the caller's group
};

}  // namespace opendit::parallel
