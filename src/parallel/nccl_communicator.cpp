// NcclCommunicator: NCCL collectives on a stream of their own, ordered against torch's current stream by events.
#ifdef OPENDIT_WITH_CUDA
#include "parallel/nccl_communicator.hpp"

#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstring>
#include <stdexcept>

#include "core/error.hpp"

namespace opendit::parallel {
namespace {

using detail::count_of;

ncclDataType_t nccl_type(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return ncclFloat32;
    case at::kDouble: return ncclFloat64;
    case at::kBFloat16: return ncclBfloat16;
    case at::kHalf: return ncclFloat16;
    case at::kLong: return ncclInt64;
    default: return ncclInt32;  // check_tensor admits nothing else
  }
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return ncclSum;
    case ReduceOp::Avg: return ncclAvg;
    default: return ncclMax;
  }
}

// Done when the caller's current stream has been made to wait for the collective's event.
class NcclWork : public Work {
 public:
  explicit NcclWork(at::Device device) : device_(device) {}
  c10::cuda::CUDAEvent& done() { return done_; }
  void wait() override {
    c10::cuda::CUDAGuard guard(device_);
    done_.block(c10::cuda::getCurrentCUDAStream(device_.index()));
  }

 private:
  at::Device device_;
  c10::cuda::CUDAEvent done_;
};

at::Device with_index(at::Device device) {
  if (!device.is_cuda()) throw std::invalid_argument(cat("NcclCommunicator: ", device.str(), " is not a CUDA device"));
  return device.has_index() ? device : at::Device(at::kCUDA, c10::cuda::current_device());
}

}  // namespace

NcclCommunicator::NcclCommunicator(const ProcessGroup& group, at::Device device)
    : group_(group), device_(with_index(device)), stream_(c10::cuda::getStreamFromPool(false, device_.index())),
      rank_(group.rank()), size_(group.size()) {
  ncclUniqueId id{};
  if (rank_ == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId");
  std::string bytes(reinterpret_cast<const char*>(&id), sizeof(id));
  bytes = group_.broadcast(bytes, 0);
  std::memcpy(&id, bytes.data(), sizeof(id));
  c10::cuda::CUDAGuard guard(device_);
  check(ncclCommInitRank(&nccl_, size_, id, rank_), "ncclCommInitRank");
}

NcclCommunicator::~NcclCommunicator() {
  if (nccl_ != nullptr) {
    c10::cuda::CUDAGuard guard(device_);
    ncclCommFinalize(nccl_);  // flushes queued collectives; errors cannot be reported from a destructor
    ncclCommDestroy(nccl_);
  }
}

void NcclCommunicator::check(ncclResult_t rc, const char* what) const {
  if (rc == ncclSuccess) return;
  std::string detail = nccl_ != nullptr ? ncclGetLastError(nccl_) : "";
  throw std::runtime_error(cat(what, " failed: ", ncclGetErrorString(rc), detail.empty() ? "" : " (", detail,
                               detail.empty() ? "" : ")", " on rank ", rank_, " of ", size_));
}

WorkPtr NcclCommunicator::enqueue(const std::vector<at::Tensor>& tensors,
                                  const std::function<void(cudaStream_t)>& launch) {
  c10::cuda::CUDAGuard guard(device_);
  c10::cuda::CUDAEvent inputs_ready;
  inputs_ready.record(c10::cuda::getCurrentCUDAStream(device_.index()));
  inputs_ready.block(stream_);
  launch(stream_.stream());
  for (const at::Tensor& t : tensors)
    if (t.numel() > 0) c10::cuda::CUDACachingAllocator::recordStream(t.storage().data_ptr(), stream_);
  auto work = std::make_unique<NcclWork>(device_);
  work->done().record(stream_);
  return work;
}

WorkPtr NcclCommunicator::all_reduce_async(const at::Tensor& tensor, ReduceOp op) {
  const char* what = "ncclAllReduce";
  detail::check_tensor(tensor, device_, what);
  detail::check_op(tensor, op, what);
  const size_t n = count_of(tensor.numel(), what);
  return enqueue({tensor}, [&](cudaStream_t s) {
    check(ncclAllReduce(tensor.data_ptr(), tensor.data_ptr(), n, nccl_type(tensor), nccl_op(op), nccl_, s), what);
  });
}

WorkPtr NcclCommunicator::reduce_scatter_async(const at::Tensor& output, const at::Tensor& input, ReduceOp op) {
  const char* what = "ncclReduceScatter";
  detail::check_tensor(output, device_, what);
  detail::check_tensor(input, device_, what);
  detail::check_same_dtype(output, input, what);
  detail::check_numel(input, output.numel() * size_, "input", what);
  detail::check_op(output, op, what);
  const size_t n = count_of(output.numel(), what);
  // NCCL allows output == input + rank * n (in place); any other overlap reads a copy of the input.
  const bool in_place = detail::is_slice_at(output, input, int64_t(rank_) * output.numel());
  at::Tensor in = !in_place && detail::overlaps(output, input) ? input.clone() : input;
  return enqueue({output, in}, [&](cudaStream_t s) {
    check(ncclReduceScatter(in.data_ptr(), output.data_ptr(), n, nccl_type(in), nccl_op(op), nccl_, s), what);
  });
}

WorkPtr NcclCommunicator::all_gather_async(const at::Tensor& output, const at::Tensor& input) {
  const char* what = "ncclAllGather";
  detail::check_tensor(output, device_, what);
  detail::check_tensor(input, device_, what);
  detail::check_same_dtype(output, input, what);
  detail::check_numel(output, input.numel() * size_, "output", what);
  const size_t n = count_of(input.numel(), what);
  const bool in_place = detail::is_slice_at(input, output, int64_t(rank_) * input.numel());
  at::Tensor in = !in_place && detail::overlaps(input, output) ? input.clone() : input;
  return enqueue({output, in}, [&](cudaStream_t s) {
    check(ncclAllGather(in.data_ptr(), output.data_ptr(), n, nccl_type(in), nccl_, s), what);
  });
}

WorkPtr NcclCommunicator::all_to_all_async(const at::Tensor& output, const at::Tensor& input) {
  const char* what = "ncclSend/ncclRecv (all_to_all)";
  detail::check_tensor(output, device_, what);
  detail::check_tensor(input, device_, what);
  detail::check_same_dtype(output, input, what);
  detail::check_numel(output, input.numel(), "output", what);
  if (input.numel() % size_ != 0)
    throw std::invalid_argument(cat(what, ": ", input.numel(), " elements do not split into ", size_, " ranks"));
  const size_t n = count_of(input.numel() / size_, what);
  at::Tensor in = detail::overlaps(input, output) ? input.clone() : input;
  return enqueue({output, in}, [&](cudaStream_t s) {
    const size_t bytes = n * in.element_size();
    auto* send = static_cast<const char*>(in.data_ptr());
    auto* recv = static_cast<char*>(output.data_ptr());
    check(ncclGroupStart(), "ncclGroupStart");
    for (int peer = 0; peer < size_; ++peer) {
      check(ncclSend(send + peer * bytes, n, nccl_type(in), peer, nccl_, s), "ncclSend");
      check(ncclRecv(recv + peer * bytes, n, nccl_type(in), peer, nccl_, s), "ncclRecv");
    }
    check(ncclGroupEnd(), "ncclGroupEnd");
  });
}

WorkPtr NcclCommunicator::broadcast_async(const at::Tensor& tensor, int root) {
  const char* what = "ncclBroadcast";
  detail::check_tensor(tensor, device_, what);
  if (root < 0 || root >= size_)
    throw std::invalid_argument(cat(what, ": root ", root, " outside a group of ", size_));
  const size_t n = count_of(tensor.numel(), what);
  return enqueue({tensor}, [&](cudaStream_t s) {
    check(ncclBroadcast(tensor.data_ptr(), tensor.data_ptr(), n, nccl_type(tensor), root, nccl_, s), what);
  });
}

void NcclCommunicator::barrier() {
  // Once every rank has drained its own stream, all earlier collectives of the group are complete.
  c10::cuda::CUDAGuard guard(device_);
  stream_.synchronize();
  group_.barrier();
}

}  // namespace opendit::parallel
#endif  // OPENDIT_WITH_CUDA
