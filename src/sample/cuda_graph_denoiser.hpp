// A Denoiser that replays a CUDA graph of one call of another. A sampling step's network call (with
// classifier-free guidance: the doubled-batch forward and the guidance combine) is hundreds of small kernels; as a
// graph it is one launch, so the host's launch overhead leaves the step's time.
#pragma once
#include <ATen/ATen.h>

#include <memory>
#include <string>

#include "diffusion/gaussian_diffusion.hpp"

namespace opendit::sample {

class CudaGraphDenoiser {
 public:
  // fn must be capturable on CUDA inputs: device work only, no host syncs (.item(), printing a tensor), no copies
  // from host memory (keep labels and weights on the device), no random numbers. warmup: eager calls on the
  // capture stream before the capture (lazy initialisation such as cuBLAS workspaces must not happen inside it).
  explicit CudaGraphDenoiser(diffusion::Denoiser fn, int warmup = 2);

  // CPU inputs: fn(x, t). CUDA inputs: the first call warms up, captures one call of fn on a side stream and
  // replays it; later calls with x and t of the same shapes, dtypes and device copy them into the graph's inputs
  // and replay; other shapes are captured anew. Returns a new tensor (a copy of the graph's output), so results
  // survive the next call. If the capture throws, the graph is abandoned, a warning is printed (once per process)
  // and fn runs eagerly from then on. An exception from the warm-up calls (fn itself failing) propagates.
  at::Tensor operator()(const at::Tensor& x, const at::Tensor& t) const;

  bool graphed() const;        // a captured graph is being replayed
  bool failed() const;         // a capture failed: eager from now on
  std::string failure() const;  // why, when failed()
  int captures() const;        // graphs captured so far (1 for a run of one shape)

 private:
  struct State;
  std::shared_ptr<State> state_;  // shared by copies (a Denoiser is a copyable std::function)
};

}  // namespace opendit::sample
