// A training step's device work replayed as one CUDA graph. A DiT-XL/2 step is about 2,000 kernels; issued one by
// one from the host, the GPU waits between many of them (about 10% of a batch-64 step on an H200). Captured once,
// a step is one launch: the host only copies the next micro-batches into the graph's inputs and replays.
//
// What the step may do (train/trainer_step.cpp keeps to it): device work on the current stream only, no host read
// of a device value, no host value that changes from step to step (the optimizer's scalars sit in a device tensor,
// DataParallelOptimizer::stage_update), no collectives (the trainer uses graphs on one rank only).
//
//   StepGraph g(device_step);          // device_step(micro-batches) -> stats, as in eager steps
//   at::Tensor stats = g.run(inputs);  // first call: capture; every call: copy inputs, replay
#pragma once
#include <ATen/ATen.h>

#include <c10/core/Stream.h>

#include <functional>
#include <string>
#include <vector>

#include "core/cuda_graph.hpp"

namespace opendit::train {

// One micro-batch's inputs (undefined where the data has none).
struct MicroBatch {
  at::Tensor x0, logvar, eps;          // latents [n, ...]; a stored posterior's log-variance and its draw
  at::Tensor labels, text, text_mask;  // the condition, dropout applied
  at::Tensor t, noise;                 // timesteps [n] int64; noise like x0
};

class StepGraph {
 public:
  using DeviceStep = std::function<at::Tensor(const std::vector<MicroBatch>&)>;  // -> the step's stats
  StepGraph(DeviceStep fn, at::Device device);  // device: a CUDA device

  // While alive, the graph's stream (one of the device's pool: graphs are captured on a stream other than the
  // default one) is current, ordered after the work queued so far on the previous stream, which in turn waits for it
  // at the end. The eager warm-up steps run in such a scope too: cuBLAS keeps a workspace per stream.
  class StreamScope {
   public:
    explicit StreamScope(const StepGraph& graph);
    ~StreamScope();
    StreamScope(const StreamScope&) = delete;
    StreamScope& operator=(const StreamScope&) = delete;

   private:
    c10::Stream previous_, side_;
  };

  // The first call allocates the graph's inputs like `in` and captures one call of fn on them; nothing runs on the
  // device then. Every call copies `in` (host or device tensors) into those inputs and replays. Returns the stats
  // (the graph's output, overwritten by the next replay), or an undefined tensor when the capture failed: failure()
  // says why, and the caller goes on eagerly (the step has not run).
  at::Tensor run(const std::vector<MicroBatch>& in);
  bool captured() const { return graph_.captured(); }
  // Whether `in` has the captured inputs' micro-batch count and shapes (true before the capture); a step that does
  // not (a data file whose batches change shape) runs eagerly instead.
  bool fits(const std::vector<MicroBatch>& in) const;
  const std::string& failure() const { return failure_; }

 private:
  DeviceStep fn_;
  at::Device device_;
  c10::Stream stream_;
  CapturedGraph graph_;
  std::vector<MicroBatch> inputs_;  // at fixed addresses: what the graph reads
  at::Tensor stats_;                // what the graph writes
  std::string failure_;
};

}  // namespace opendit::train
