// MpiCommunicator: the collectives as non-blocking MPI_I* calls on CPU tensors.
#include <functional>
#include <utility>
#include <vector>

#include "core/error.hpp"
#include "parallel/mpi_communicator.hpp"
#include "parallel/mpi_comm.hpp"

namespace opendit::parallel {
namespace {

using detail::count_of;

bool is_half(const at::Tensor& t) { return t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf; }

// The MPI type that moves t's elements (half types move as their 16 bits; they are never reduced as such).
MPI_Datatype move_type(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return MPI_FLOAT;
    case at::kDouble: return MPI_DOUBLE;
    case at::kLong: return MPI_INT64_T;
    case at::kInt: return MPI_INT32_T;
    default: return MPI_UINT16_T;  // kBFloat16, kHalf
  }
}



// One started request; wait() completes it, then runs `finish` (copy back from a float32 buffer, divide for Avg).
// The tensors it holds keep their storage alive while MPI may still read or write it.
class MpiWork : public Work {
 public:
  MpiWork(MPI_Request request, std::vector<at::Tensor> keep, std::function<void()> finish, const char* what)
      : request_(request), keep_(std::move(keep)), finish_(std::move(finish)), what_(what) {}
  ~MpiWork() override {
    if (done_) return;
    try {
      wait();
    } catch (...) {  // a destructor must not throw; MPI's error handler has already reported the failure
    }
  }
  void wait() override {
    if (done_) return;
    done_ = true;
    mpi_call(what_, [&] { return MPI_Wait(&request_, MPI_STATUS_IGNORE); });  // under the watchdog
    if (finish_) finish_();
    keep_.clear();
  }

 private:
  MPI_Request request_;
  std::vector<at::Tensor> keep_;
  std::function<void()> finish_;
  const char* what_;
  bool done_ = false;
};

// What reduced tensors need after the sum: half types come back from their float32 copy, Avg divides.
std::function<void()> after_reduce(at::Tensor target, at::Tensor reduced, ReduceOp op, int size) {
  const bool copy_back = !target.is_same(reduced);
  if (!copy_back && op != ReduceOp::Avg) return nullptr;
  return [target, reduced, op, size, copy_back]() mutable {
    if (op == ReduceOp::Avg) reduced.div_(size);
    if (copy_back) target.copy_(reduced);
  };
}

}  // namespace

MpiCommunicator::MpiCommunicator(const ProcessGroup& group) : group_(group.split(0, group.rank())) {}

WorkPtr MpiCommunicator::all_reduce_async(const at::Tensor& tensor, ReduceOp op) {
  const char* what = "MPI_Iallreduce";
  detail::check_tensor(tensor, device(), what);
  detail::check_op(tensor, op, what);
  at::Tensor buf = is_half(tensor) ? tensor.to(at::kFloat) : tensor;
  MPI_Request req;
  mpi_check(MPI_Iallreduce(MPI_IN_PLACE, buf.data_ptr(), count_of(buf.numel(), what), move_type(buf), mpi_op(op),
                           mpi_comm(group_), &req),
            what);
  return std::make_unique<MpiWork>(req, std::vector<at::Tensor>{tensor, buf}, after_reduce(tensor, buf, op, group_.size()),
                                   what);
}

WorkPtr MpiCommunicator::reduce_scatter_async(const at::Tensor& output, const at::Tensor& input, ReduceOp op) {
  const char* what = "MPI_Ireduce_scatter_block";
  detail::check_tensor(output, device(), what);
  detail::check_tensor(input, device(), what);
  detail::check_same_dtype(output, input, what);
  detail::check_numel(input, output.numel() * size(), "input", what);
  detail::check_op(output, op, what);
  // Half types reduce through float32 copies; an output inside the input (in place) gets a buffer of its own.
  at::Tensor in = is_half(input) ? input.to(at::kFloat) : input;
  at::Tensor out = is_half(output) || detail::overlaps(output, input) ? at::empty_like(output, in.options()) : output;
  MPI_Request req;
  mpi_check(MPI_Ireduce_scatter_block(in.data_ptr(), out.data_ptr(), count_of(out.numel(), what), move_type(in),
                                      mpi_op(op), mpi_comm(group_), &req),
            what);
  return std::make_unique<MpiWork>(req, std::vector<at::Tensor>{output, input, in, out},
                                   after_reduce(output, out, op, group_.size()), what);
}

WorkPtr MpiCommunicator::all_gather_async(const at::Tensor& output, const at::Tensor& input) {
  const char* what = "MPI_Iallgather";
  detail::check_tensor(output, device(), what);
  detail::check_tensor(input, device(), what);
  detail::check_same_dtype(output, input, what);
  detail::check_numel(output, input.numel() * size(), "output", what);
  const int n = count_of(input.numel(), what);
  const bool in_place = detail::is_slice_at(input, output, int64_t(rank()) * n);
  at::Tensor in = !in_place && detail::overlaps(input, output) ? input.clone() : input;
  MPI_Request req;
  mpi_check(MPI_Iallgather(in_place ? MPI_IN_PLACE : in.data_ptr(), n, move_type(in), output.data_ptr(), n,
                           move_type(output), mpi_comm(group_), &req),
            what);
  return std::make_unique<MpiWork>(req, std::vector<at::Tensor>{output, input, in}, nullptr, what);
}

WorkPtr MpiCommunicator::all_to_all_async(const at::Tensor& output, const at::Tensor& input) {
  const char* what = "MPI_Ialltoall";
  detail::check_tensor(output, device(), what);
  detail::check_tensor(input, device(), what);
  detail::check_same_dtype(output, input, what);
  detail::check_numel(output, input.numel(), "output", what);
  if (input.numel() % size() != 0)
    throw std::invalid_argument(cat(what, ": ", input.numel(), " elements do not split into ", size(), " ranks"));
  const int n = count_of(input.numel() / size(), what);
  at::Tensor in = detail::overlaps(input, output) ? input.clone() : input;
  MPI_Request req;
  mpi_check(MPI_Ialltoall(in.data_ptr(), n, move_type(in), output.data_ptr(), n, move_type(output), mpi_comm(group_), &req),
            what);
  return std::make_unique<MpiWork>(req, std::vector<at::Tensor>{output, input, in}, nullptr, what);
}

WorkPtr MpiCommunicator::broadcast_async(const at::Tensor& tensor, int root) {
  const char* what = "MPI_Ibcast";
  detail::check_tensor(tensor, device(), what);
  if (root < 0 || root >= group_.size())
    throw std::invalid_argument(cat(what, ": root ", root, " outside a group of ", group_.size()));
  MPI_Request req;
  mpi_check(MPI_Ibcast(tensor.data_ptr(), count_of(tensor.numel(), what), move_type(tensor), root, mpi_comm(group_), &req),
            what);
  return std::make_unique<MpiWork>(req, std::vector<at::Tensor>{tensor}, nullptr, what);
}

void MpiCommunicator::barrier() {
  mpi_call("MPI_Barrier", [&] { return MPI_Barrier(mpi_comm(group_)); });
}

}  // namespace opendit::parallel
