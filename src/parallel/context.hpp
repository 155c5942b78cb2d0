// What the trainer and the sampler hand down: the mesh (world, dp and sp groups), this rank's device, and the tensor
// communicators of the dp and sp groups on that device. Models never see it whole: each receives only what it needs
// (sequence-parallel attention will receive the sp communicator as a setting of its attention).
#pragma once
#include <ATen/ATen.h>

#include <memory>
#include <string>

#include "parallel/communicator.hpp"
#include "parallel/mesh.hpp"

namespace opendit::parallel {

// This rank's device for parallel.device = "auto" | "cpu" | "cuda": one GPU per rank of a node (node-local rank
// modulo the GPUs), or the CPU. Throws opendit::CollectiveError when "cuda" is asked without a GPU, or when more
// ranks share a node than it has GPUs (NCCL needs a GPU per rank).
at::Device rank_device(const std::string& choice, const Mesh& mesh);

class ParallelContext {
 public:
  // Collective over the world: makes the communicators (NCCL for a CUDA device, MPI for the CPU).
  ParallelContext(const Mesh& mesh, at::Device device);

  const Mesh& mesh() const { return mesh_; }
  const ProcessGroup& world() const { return mesh_.world(); }
  at::Device device() const { return device_; }
  bool gpu() const { return device_.is_cuda(); }
  Communicator& dp() const { return *dp_; }
  Communicator* sp() const { return sp_.get(); }  // null when sp_size == 1

 private:
  const Mesh& mesh_;
  at::Device device_;
  std::unique_ptr<Communicator> dp_, sp_;
};

}  // namespace opendit::parallel
