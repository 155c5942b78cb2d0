// What the trainer and the sampler hand down: the mesh (world, dp and sp groups), this rank's device, and the tensor
// communicators of the dp and sp groups on that device. Models never see it whole: each receives only what it needs
// (sequence-parallel attention will receive the sp communicator as a setting of its attention).
#pragma once
#include <ATen/ATen.h>

#include <memory>
#include <string>

#include "parallel/counting_communicator.hpp"
#include "parallel/mesh.hpp"

namespace opendit::parallel {

// This rank's device for parallel.device = "auto" | "cpu" | "cuda": one GPU per rank of a node (node-local rank
// modulo the GPUs), or the CPU. Collective over the world: "cuda" without a GPU, or more ranks on a node than it has
// GPUs (NCCL needs a GPU per rank), on any node is one opendit::CollectiveError on every rank.
at::Device rank_device(const std::string& choice, const Mesh& mesh);

class ParallelContext {
 public:
  ParallelContext(const Mesh& mesh, at::Device device) : mesh_(mesh), device_(device) {}

  const Mesh& mesh() const { return mesh_; }
  const ProcessGroup& world() const { return mesh_.world(); }
  at::Device device() const { return device_; }
  bool gpu() const { return device_.is_cuda(); }
  // The tensor communicators of this rank's dp and sp groups (NCCL for a CUDA device, MPI for the CPU), made on the
  // first call: collective over the group, so every rank of it asks at the same point. A plan or a dry run that
  // never asks starts no NCCL. sp() throws when sp_size == 1.
  // Both count their traffic (parallel/counting_communicator.hpp).
  CountingCommunicator& dp() const;
  CountingCommunicator& sp() const;

 private:
  const Mesh& mesh_;
  at::Device device_;
  mutable std::unique_ptr<CountingCommunicator> dp_, sp_;
};

}  // namespace opendit::parallel
