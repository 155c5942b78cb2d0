// One rank's encoding of `opendit encode` (src/encode/job.cpp): its inputs decoded ahead on CPU threads, its blocks
// encoded in chunks of `batch` inputs. On a GPU the chunks are pipelined: a chunk's pixels are copied into pinned
// memory and sent, the VAE runs and its posterior comes back asynchronously, while the host gathers the next chunk;
// the host waits for a chunk only when the one after it is queued, so the GPU does not wait for the host.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "encode/block_file.hpp"
#include "encode/encoders.hpp"
#include "encode/job.hpp"
#include "encode/manifest.hpp"
#include "encode/prefetch.hpp"

namespace opendit::encode {

class Worker {
 public:
  // inputs: the input-list indices this rank encodes, in order (its blocks' inputs).
  Worker(const EncodeSettings& s, const InputList& in, at::Device device, LoadedVae vae, std::optional<LoadedT5> t5,
         const std::vector<int64_t>& inputs, int threads);
  ~Worker();

  EncodedBlock encode(int64_t block);  // the next of this rank's blocks, in order
  void stop();                         // stops decoding ahead (a job that ends early)
  const LoadedVae& vae() const { return vae_; }
  bool mean_only() const { return s_.mean_only || !vae_.model; }  // --vae pixel: no posterior
  const std::optional<LoadedT5>& t5() const { return t5_; }

  // Seconds waiting for decoded inputs; in encode(); of host time in the encoders; of the VAE's GPU work (copies in
  // and out included; CUDA events, 0 on the CPU).
  double wait_s = 0, busy_s = 0, encoder_s = 0, gpu_s = 0;

 private:
  struct Pending;
  void launch(const std::vector<int64_t>& ids, std::vector<at::Tensor>& pixels, std::vector<Pending>& queue);

  const EncodeSettings& s_;
  const InputList& in_;
  at::Device device_;
  LoadedVae vae_;
  std::optional<LoadedT5> t5_;
  std::vector<int64_t> inputs_;
  std::unique_ptr<OrderedPrefetch<PreparedItem>> ahead_;
};

}  // namespace opendit::encode
