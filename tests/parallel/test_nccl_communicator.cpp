// NcclCommunicator against MpiCommunicator: the same collectives on the same values give the same results.
// GPU only (skipped without one). With at least as many GPUs as ranks the group is the world (rank r on GPU r);
// otherwise every rank runs a group of one (ProcessGroup::self()) on GPU rank % count.
#include <ATen/detail/CUDAHooksInterface.h>
#include <gtest/gtest.h>

#include <functional>
#include <vector>

#include "parallel/mpi_communicator.hpp"
#ifdef OPENDIT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

using namespace opendit;
using namespace opendit::parallel;

namespace {

int gpu_count() { return at::detail::getCUDAHooks().getNumGPUs(); }

struct Pair {
  ProcessGroup group;
  at::Device gpu{at::kCPU};
};

Pair pick_group() {
  const ProcessGroup world = ProcessGroup::world();
  const int gpus = gpu_count();
  return {gpus >= world.size() ? world : ProcessGroup::self(), at::Device(at::kCUDA, world.rank() % gpus)};
}

// Runs `collective` through both communicators on copies of `inputs` and compares every output exactly
// (a float sum over one rank, or over ranks in the same order, is the same arithmetic in both).
void expect_same(Communicator& mpi, Communicator& nccl, const std::vector<at::Tensor>& inputs,
                 const std::function<void(Communicator&, std::vector<at::Tensor>&)>& collective) {
  std::vector<at::Tensor> on_cpu, on_gpu;
  for (const at::Tensor& t : inputs) {
    on_cpu.push_back(t.clone());
    on_gpu.push_back(t.to(nccl.device()));
  }
  collective(mpi, on_cpu);
  collective(nccl, on_gpu);
  for (size_t i = 0; i < inputs.size(); ++i)
    EXPECT_TRUE(at::equal(on_gpu[i].cpu(), on_cpu[i])) << "tensor " << i << ": nccl\n"
                                                       << on_gpu[i].cpu() << "\nmpi\n" << on_cpu[i];
}

}  // namespace

TEST(NcclCommunicator, CollectivesEqualTheMpiResults) {
  if (gpu_count() == 0) GTEST_SKIP() << "no GPU";
  Pair g = pick_group();
  MpiCommunicator mpi(g.group);
  std::unique_ptr<Communicator> nccl = make_communicator(g.group, g.gpu);
  ASSERT_EQ(nccl->backend(), "nccl");
  const int p = mpi.size(), me = mpi.rank();
  const int64_t n = 37;
  for (at::ScalarType dt : {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf, at::kLong, at::kInt}) {
    SCOPED_TRACE(c10::toString(dt));
    // Small integers: exact in every dtype, so every reduction order gives the same values.
    at::Tensor x = (at::arange(p * n, at::kLong) % 7 + me).to(dt);
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max})
      expect_same(mpi, *nccl, {x}, [op](Communicator& c, std::vector<at::Tensor>& t) { c.all_reduce(t[0], op); });
    expect_same(mpi, *nccl, {at::empty({n}, x.options()), x}, [](Communicator& c, std::vector<at::Tensor>& t) {
      c.reduce_scatter(t[0], t[1], ReduceOp::Sum);
    });
    expect_same(mpi, *nccl, {at::empty({p * n}, x.options()), x.narrow(0, 0, n).contiguous()},
                [](Communicator& c, std::vector<at::Tensor>& t) { c.all_gather(t[0], t[1]); });
    expect_same(mpi, *nccl, {at::empty({p * n}, x.options()), x},
                [](Communicator& c, std::vector<at::Tensor>& t) { c.all_to_all(t[0], t[1]); });
    expect_same(mpi, *nccl, {x}, [p](Communicator& c, std::vector<at::Tensor>& t) { c.broadcast(t[0], p - 1); });
  }
  // Avg: NCCL may scale before summing, MPI divides the sum; the two agree to rounding.
  at::Tensor f = at::arange(p * n, at::kFloat) * 0.5f + me, f_gpu = f.to(g.gpu);
  mpi.all_reduce(f, ReduceOp::Avg);
  nccl->all_reduce(f_gpu, ReduceOp::Avg);
  EXPECT_TRUE(at::allclose(f_gpu.cpu(), f, 1e-6, 0));
  nccl->barrier();
}

TEST(NcclCommunicator, OrderedAgainstTheCallersStream) {
  if (gpu_count() == 0) GTEST_SKIP() << "no GPU";
#ifdef OPENDIT_WITH_CUDA
  Pair g = pick_group();
  std::unique_ptr<Communicator> nccl = make_communicator(g.group, g.gpu);
  const int p = nccl->size();
  c10::cuda::CUDAGuard device_guard(g.gpu);
  // Work on a side stream: the collective must see the fill queued before it, and the read after wait() must see
  // the collective's result, with no host synchronisation in between.
  c10::cuda::CUDAStreamGuard stream_guard(c10::cuda::getStreamFromPool(false, g.gpu.index()));
  at::Tensor t = at::empty({1 << 22}, at::TensorOptions(g.gpu));
  for (int round = 1; round <= 3; ++round) {
    t.fill_(float(round));
    WorkPtr w = nccl->all_reduce_async(t, ReduceOp::Sum);
    w->wait();
    at::Tensor s = t.sum();  // queued on the side stream after wait()
    EXPECT_EQ(s.item<float>(), float(round) * p * t.numel());
  }
  // A dropped input stays valid until the collective is done (its memory is recorded on the NCCL stream).
  at::Tensor out = at::empty({p * 1024}, at::TensorOptions(g.gpu));
  WorkPtr w = nccl->all_gather_async(out, at::full({1024}, 2.0f, at::TensorOptions(g.gpu)));
  w->wait();
  EXPECT_EQ(out.sum().item<float>(), 2.0f * p * 1024);
#endif
}
