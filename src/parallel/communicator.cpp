// The checks shared by both communicators and the factory that picks one by device.
#include "parallel/communicator.hpp"

#include <climits>
#include <stdexcept>

#include "core/error.hpp"
#include "parallel/mpi_communicator.hpp"
#ifdef OPENDIT_WITH_CUDA
#include <nccl.h>

#include "parallel/nccl_communicator.hpp"
#endif

namespace opendit::parallel {

std::unique_ptr<Communicator> make_communicator(const ProcessGroup& group, at::Device device) {
  if (device.is_cpu()) return std::make_unique<MpiCommunicator>(group);
  if (device.is_cuda()) {
#ifdef OPENDIT_WITH_CUDA
    return std::make_unique<NcclCommunicator>(group, device);
#else
    throw CollectiveError(cat("device ", device.str(), " needs NCCL, but this opendit was built without CUDA: rebuild with ",
                    "nvcc available (OPENDIT_CUDA=ON) or run on the CPU"));
#endif
  }
  throw CollectiveError(cat("no communicator for device ", device.str(), ": use a CPU or CUDA device"));
}

std::string nccl_version() {
#ifdef OPENDIT_WITH_CUDA
  int v = 0;
  if (ncclGetVersion(&v) == ncclSuccess && v > 0)  // e.g. 22809
    return cat(v / 10000, ".", (v % 10000) / 100, ".", v % 100);
#endif
  return "none";
}

namespace detail {

static bool supported(at::ScalarType t) {
  switch (t) {
    case at::kFloat: case at::kDouble: case at::kBFloat16: case at::kHalf: case at::kLong: case at::kInt:
      return true;
    default:
      return false;
  }
}

void check_tensor(const at::Tensor& t, at::Device device, const char* what) {
  if (!t.defined()) throw std::invalid_argument(cat(what, ": undefined tensor"));
  if (!supported(t.scalar_type()))
    throw std::invalid_argument(cat(what, ": dtype ", t.scalar_type(),
                                    " is not supported (float32, float64, bfloat16, float16, int64, int32)"));
  if (!t.is_contiguous()) throw std::invalid_argument(cat(what, ": the tensor must be contiguous"));
  // CUDA tensors must be on the communicator's GPU; an index-less device means "the current one".
  if (t.device().type() != device.type() || (device.has_index() && t.device() != device))
    throw std::invalid_argument(cat(what, ": tensor on ", t.device().str(), ", communicator on ", device.str()));
}

void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* what) {
  if (a.scalar_type() != b.scalar_type())
    throw std::invalid_argument(cat(what, ": output is ", a.scalar_type(), " but input is ", b.scalar_type()));
}

void check_numel(const at::Tensor& t, int64_t expected, const char* role, const char* what) {
  if (t.numel() != expected)
    throw std::invalid_argument(cat(what, ": ", role, " has ", t.numel(), " elements, expected ", expected));
}

void check_op(const at::Tensor& t, ReduceOp op, const char* what) {
  if (op == ReduceOp::Avg && !at::isFloatingType(t.scalar_type()))
    throw std::invalid_argument(cat(what, ": Avg of ", t.scalar_type(), " (only floating dtypes average)"));
}

int count_of(int64_t numel, const char* what) {
  if (numel > INT_MAX)
    throw std::invalid_argument(cat(what, ": ", numel, " elements exceed the ", INT_MAX, " of one call"));
  return static_cast<int>(numel);
}

static const char* begin_of(const at::Tensor& t) { return static_cast<const char*>(t.data_ptr()); }

bool is_slice_at(const at::Tensor& part, const at::Tensor& whole, int64_t offset) {
  return part.numel() > 0 && begin_of(part) == begin_of(whole) + offset * whole.element_size();
}

bool overlaps(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0) return false;
  const char *a0 = begin_of(a), *a1 = a0 + a.nbytes(), *b0 = begin_of(b), *b1 = b0 + b.nbytes();
  return a0 < b1 && b0 < a1;
}

}  // namespace detail
}  // namespace opendit::parallel
