#include "sample/cuda_graph_denoiser.hpp"

#include <atomic>
#include <cstdio>
#include <exception>
#include <memory>
#include <mutex>

#ifdef OPENDIT_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#include "core/cuda_graph.hpp"
#include "core/error.hpp"

namespace opendit::sample {

namespace {

#ifdef OPENDIT_WITH_CUDA
std::atomic<bool> warned{false};  // the capture-failure warning, once per process
#endif

}  // namespace

struct CudaGraphDenoiser::State {
  diffusion::Denoiser fn;
  int warmup = 2;
  std::mutex mutex;  // one call at a time: the static inputs and output are shared
  bool failed = false;
  std::string failure;
  int captures = 0;
#ifdef OPENDIT_WITH_CUDA
  std::unique_ptr<CapturedGraph> graph;
  at::Tensor static_x, static_t, static_out;  // the graph's inputs and output, at fixed addresses

  bool matches(const at::Tensor& x, const at::Tensor& t) const {
    auto same = [](const at::Tensor& a, const at::Tensor& b) {
      return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() && a.device() == b.device();
    };
    return graph && same(static_x, x) && same(static_t, t);
  }

  // Warm-up and capture on a side stream that waits for the caller's stream; the caller's stream waits for the
  // side stream after them. Returns "" when captured, else why not (the failed capture cleaned up). Exceptions
  // of the warm-up calls (fn itself failing, eagerly) propagate.
  std::string capture(const at::Tensor& x, const at::Tensor& t) {
    static_out = at::Tensor();
    graph.reset();
    c10::cuda::CUDAGuard device(x.device());
    static_x = x.clone();  // on the caller's stream
    static_t = t.clone();
    const c10::cuda::CUDAStream caller = c10::cuda::getCurrentCUDAStream();
    const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
    c10::cuda::CUDAEvent inputs_ready;
    inputs_ready.record(caller);
    inputs_ready.block(side);
    std::string error;
    {
      c10::cuda::CUDAStreamGuard on_side(side);
      for (int i = 0; i < warmup; ++i) fn(static_x, static_t);
      auto g = std::make_unique<CapturedGraph>();
      error = g->capture([&] { static_out = fn(static_x, static_t); });
      if (error.empty())
        graph = std::move(g);
      else
        static_out = at::Tensor();
    }
    c10::cuda::CUDAEvent done;
    done.record(side);
    done.block(caller);
    if (graph) ++captures;
    return error;
  }

  at::Tensor replay(const at::Tensor& x, const at::Tensor& t) {
    static_x.copy_(x);
    static_t.copy_(t);
    graph->replay();
    return static_out.clone();
  }
#endif
};

CudaGraphDenoiser::CudaGraphDenoiser(diffusion::Denoiser fn, int warmup) : state_(std::make_shared<State>()) {
  if (!fn) throw Error("CUDA graph denoiser: expected a network, found none");
  if (warmup < 1) throw Error(cat("CUDA graph denoiser: expected warmup >= 1, found ", warmup));
  state_->fn = std::move(fn);
  state_->warmup = warmup;
}

at::Tensor CudaGraphDenoiser::operator()(const at::Tensor& x, const at::Tensor& t) const {
  State& s = *state_;
  std::lock_guard<std::mutex> lock(s.mutex);
#ifdef OPENDIT_WITH_CUDA
  if (!s.failed && x.is_cuda() && t.is_cuda() && x.device() == t.device()) {
    if (s.matches(x, t)) return s.replay(x, t);
    const std::string error = s.capture(x, t);
    if (error.empty()) return s.replay(x, t);
    s.failed = true;
    s.failure = error.substr(0, error.find('\n'));
    s.static_x = s.static_t = at::Tensor();
    if (!warned.exchange(true)) {
      std::fprintf(stderr, "opendit: warning: CUDA graph capture of the sampling step failed; sampling without a "
                           "graph (slower). Reason: %s\n", s.failure.c_str());
    }
  }
#endif
  return s.fn(x, t);
}

bool CudaGraphDenoiser::graphed() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
#ifdef OPENDIT_WITH_CUDA
  return !state_->failed && state_->graph != nullptr;
#else
  return false;
#endif
}

bool CudaGraphDenoiser::failed() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->failed;
}

std::string CudaGraphDenoiser::failure() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->failure;
}

int CudaGraphDenoiser::captures() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->captures;
}

}  // namespace opendit::sample
