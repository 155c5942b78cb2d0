// NcclCommunicator: the collectives on CUDA tensors, on a CUDA stream of its own (see parallel/communicator.hpp).
// Ordering: each collective first waits (event) for work already queued on torch's current stream, so it reads
// finished inputs; Work::wait() makes the caller's current stream wait for the collective. The tensors' memory is
// recorded on the communicator's stream, so the caching allocator does not hand it out again before the collective
// is done even if the caller drops the tensors. Built only with CUDA.
#pragma once
#ifdef OPENDIT_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <nccl.h>

#include <functional>
#include <vector>

#include "parallel/communicator.hpp"

namespace opendit::parallel {

class NcclCommunicator : public Communicator {
 public:
  // Collective over the ranks of `group`: its rank 0 makes the ncclUniqueId and broadcasts it over the group.
  // `device` is this rank's GPU (cuda without an index: the current one).
  NcclCommunicator(const ProcessGroup& group, at::Device device);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  at::Device device() const override { return device_; }
  std::string backend() const override { return "nccl"; }
  c10::cuda::CUDAStream stream() const { return stream_; }

  WorkPtr all_reduce_async(const at::Tensor& tensor, ReduceOp op) override;
  WorkPtr reduce_scatter_async(const at::Tensor& output, const at::Tensor& input, ReduceOp op) override;
  WorkPtr all_gather_async(const at::Tensor& output, const at::Tensor& input) override;
  WorkPtr all_to_all_async(const at::Tensor& output, const at::Tensor& input) override;
  WorkPtr broadcast_async(const at::Tensor& tensor, int root) override;
  void barrier() override;

 private:
  // Runs `launch` on stream_ after the current stream's queued work; records `tensors` on stream_.
  WorkPtr enqueue(const std::vector<at::Tensor>& tensors, const std::function<void(cudaStream_t)>& launch);
  void check(ncclResult_t rc, const char* what) const;

  ProcessGroup group_;  // for the unique id and the barrier
  ncclComm_t nccl_ = nullptr;
  at::Device device_;
  c10::cuda::CUDAStream stream_;
  int rank_ = 0, size_ = 1;
};

}  // namespace opendit::parallel
#endif  // OPENDIT_WITH_CUDA
