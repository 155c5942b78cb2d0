#include "core/cuda_graph.hpp"

#include <exception>
#include <stdexcept>

#ifdef OPENDIT_WITH_CUDA
#include <ATen/core/CachingHostAllocator.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <c10/util/Exception.h>

namespace opendit {

#ifdef OPENDIT_WITH_CUDA
namespace {

class Graph : public at::cuda::CUDAGraph {
 public:
  // Call after an exception between capture_begin() and the end of capture_end().
  void abandon_capture() noexcept {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(capture_stream_.stream(), &status) == cudaSuccess &&
        status != cudaStreamCaptureStatusNone) {
      cudaGraph_t partial = nullptr;
      if (cudaStreamEndCapture(capture_stream_.stream(), &partial) == cudaSuccess && partial != nullptr)
        cudaGraphDestroy(partial);
    }
    (void)cudaGetLastError();  // capture errors are not sticky: clear it, so that no later launch check sees it
    // capture_begin() put the generators it registered (the default one at least) into capture mode, which only
    // capture_end() leaves: left so, every later eager random op on them fails ("Offset increment outside graph
    // capture"). Their eager offsets did not move during the capture, so eager draws go on where they were.
    for (auto& entry : captured_generator_states_) entry.first->capturing_ = false;
    // capture_end() got past the pool bookkeeping (the destructor releases the pool then), or no pool was opened.
    if (capture_ended_ || (mempool_id_.first == 0 && mempool_id_.second == 0)) return;
    // Each may already be done, depending on where capture_end() threw; then it throws, and that is fine.
    auto quietly = [](auto&& undo) {
      try {
        undo();
      } catch (...) {
      }
    };
    quietly([&] { c10::cuda::CUDACachingAllocator::endAllocateToPool(capture_dev_, mempool_id_); });
    quietly([&] { at::getHostAllocator(at::kCUDA)->end_allocate_to_pool(mempool_id_); });
    quietly([&] { c10::cuda::CUDACachingAllocator::releasePool(capture_dev_, mempool_id_); });
    quietly([&] { at::getHostAllocator(at::kCUDA)->release_pool(mempool_id_); });
  }
};

}  // namespace

struct CapturedGraph::Impl {
  std::unique_ptr<Graph> graph;
};
#else
struct CapturedGraph::Impl {};
#endif

CapturedGraph::CapturedGraph() : impl_(std::make_unique<Impl>()) {}
CapturedGraph::~CapturedGraph() = default;

std::string CapturedGraph::capture(const std::function<void()>& fn) {
#ifdef OPENDIT_WITH_CUDA
  impl_->graph.reset();
  auto g = std::make_unique<Graph>();
  std::string error;
  try {
    // Thread-local mode: the CUDA calls that capture forbids are forbidden to this thread only. Other threads of the
    // process go on meanwhile (the data loader's worker pins the next batches, whose allocator queries events); in
    // global mode their calls fail, or break this capture, whenever they happen to overlap it.
    g->capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
    fn();
    g->capture_end();
    impl_->graph = std::move(g);
    return "";
  } catch (const c10::Error& e) {
    error = e.what_without_backtrace();
  } catch (const std::exception& e) {
    error = e.what();
  } catch (...) {
    error = "unknown exception";
  }
  g->abandon_capture();
  error = error.substr(0, error.find('\n'));
  return error.empty() ? "the capture failed" : error;
#else
  (void)fn;
  return "built without CUDA";
#endif
}

bool CapturedGraph::captured() const {
#ifdef OPENDIT_WITH_CUDA
  return impl_->graph != nullptr;
#else
  return false;
#endif
}

void CapturedGraph::replay() {
#ifdef OPENDIT_WITH_CUDA
  if (impl_->graph) return impl_->graph->replay();
#endif
  throw std::logic_error("CapturedGraph::replay: no captured graph");
}

}  // namespace opendit
