// One CUDA graph captured from a function and replayed: at::cuda::CUDAGraph plus the clean-up after a failed
// capture, which LibTorch leaves to the caller (when an op inside the capture throws, e.g. a host sync, the stream
// stays in capture mode and the caching allocators keep routing its allocations to the graph's private pool).
// Used by the sampler (one network call per step) and the trainer (one whole optimizer step).
//
//   CapturedGraph g;
//   std::string why = g.capture([&] { out = fn(static_in); });  // on the current (non-default) stream
//   if (why.empty()) g.replay();                                 // the captured work, on the current stream
#pragma once
#include <functional>
#include <memory>
#include <string>

namespace opendit {

class CapturedGraph {
 public:
  CapturedGraph();
  ~CapturedGraph();
  CapturedGraph(const CapturedGraph&) = delete;
  CapturedGraph& operator=(const CapturedGraph&) = delete;

  // Captures the device work `fn` queues on the current CUDA stream, which must not be the default stream (use
  // c10::cuda::getStreamFromPool()). fn runs once on the host and nothing runs on the device. Returns "" when
  // captured; else why not (the first line of the exception), and the partial capture is cleaned up so that the
  // caller can go on eagerly. A graph captured earlier is dropped first. Without CUDA: "built without CUDA".
  std::string capture(const std::function<void()>& fn);
  bool captured() const;
  void replay();  // on the current stream; std::logic_error without a captured graph

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace opendit
