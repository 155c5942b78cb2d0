#include "train/step_graph.hpp"

#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/Event.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#ifdef OPENDIT_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "core/error.hpp"

namespace opendit::train {

namespace {

// Each field of a micro-batch, for the copies in and the allocation of the graph's inputs.
template <typename Mine, typename F>  // Mine: MicroBatch or const MicroBatch
void each_field(Mine& a, const MicroBatch& b, F f) {
  f(a.x0, b.x0), f(a.logvar, b.logvar), f(a.eps, b.eps), f(a.labels, b.labels), f(a.text, b.text);
  f(a.text_mask, b.text_mask), f(a.t, b.t), f(a.noise, b.noise);
}

}  // namespace

namespace {

c10::Stream pool_stream(const at::Device& device) {
  if (!device.is_cuda())
    throw std::invalid_argument(cat("StepGraph: CUDA graphs need a CUDA device, not ", device.str()));
#ifdef OPENDIT_WITH_CUDA
  return c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index());
#else
  throw std::invalid_argument("StepGraph: this build has no CUDA");
#endif
}

// `waiter` waits for the work queued so far on `on`.
void order_after(const c10::Stream& waiter, const c10::Stream& on) {
  c10::Event done(on.device_type());
  done.record(on);
  done.block(waiter);
}

}  // namespace

StepGraph::StepGraph(DeviceStep fn, at::Device device)
    : fn_(std::move(fn)), device_(device), stream_(pool_stream(device)) {
  if (!fn_) throw std::invalid_argument("StepGraph: no step function");
}

StepGraph::StreamScope::StreamScope(const StepGraph& graph)
    : previous_(c10::impl::getDeviceGuardImpl(graph.device_.type())->getStream(graph.device_)),
      side_(graph.stream_) {
  order_after(side_, previous_);
  c10::impl::getDeviceGuardImpl(side_.device_type())->exchangeStream(side_);
}

StepGraph::StreamScope::~StreamScope() {
  try {
    order_after(previous_, side_);
  } catch (...) {  // a destructor must not throw; the device's error surfaces at the next call anyway
  }
  c10::impl::getDeviceGuardImpl(previous_.device_type())->exchangeStream(previous_);
}

bool StepGraph::fits(const std::vector<MicroBatch>& in) const {
  if (!graph_.captured()) return true;
  if (in.size() != inputs_.size()) return false;
  bool same = true;
  for (size_t m = 0; m < in.size(); ++m)
    each_field(inputs_[m], in[m], [&](const at::Tensor& mine, const at::Tensor& theirs) {
      same = same && mine.defined() == theirs.defined() && (!mine.defined() || mine.sizes() == theirs.sizes());
    });
  return same;
}

at::Tensor StepGraph::run(const std::vector<MicroBatch>& in) {
  if (!graph_.captured()) {
    if (!failure_.empty()) return {};
    inputs_.assign(in.size(), MicroBatch{});
    for (size_t m = 0; m < in.size(); ++m)
      each_field(inputs_[m], in[m], [&](at::Tensor& mine, const at::Tensor& theirs) {
        if (theirs.defined()) mine = at::empty(theirs.sizes(), at::TensorOptions(theirs.scalar_type()).device(device_));
      });
#ifdef OPENDIT_WITH_CUDA
    // The eager steps before left their activations cached in the allocator's general pool; the graph gets a pool
    // of its own. Released first, peak memory stays that of one step.
    at::detail::getCUDAHooks().deviceSynchronize(device_.index());
    c10::cuda::CUDACachingAllocator::emptyCache();
#endif
    failure_ = graph_.capture([&] { stats_ = fn_(inputs_); });
    if (!failure_.empty()) {
      inputs_.clear();
      stats_ = at::Tensor();
      return {};
    }
  }
  if (!fits(in)) throw std::logic_error("StepGraph::run: the micro-batches differ in shape from the captured ones");
  for (size_t m = 0; m < in.size(); ++m)
    each_field(inputs_[m], in[m], [](at::Tensor& mine, const at::Tensor& theirs) {
      // From pinned memory: a copy from pageable memory may wait for the stream, and the host must not (it queues
      // the next step while this one runs; the caching host allocator keeps the block until the copy has run).
      if (mine.defined()) mine.copy_(theirs.is_cpu() && !theirs.is_pinned() ? theirs.pin_memory() : theirs, true);
    });
  graph_.replay();
  return stats_;
}

}  // namespace opendit::train
