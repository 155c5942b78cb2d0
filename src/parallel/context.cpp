#include "parallel/context.hpp"

#include <stdexcept>

#include "core/devices.hpp"
#include "core/error.hpp"

namespace opendit::parallel {

at::Device rank_device(const std::string& choice, const Mesh& mesh) {
  at::Device device = at::kCPU;
  // Nodes may differ in their GPUs: the ranks agree, so that a problem of one node stops every rank alike.
  mesh.world().agree([&] {
    const int gpus = gpu_count();
    if (choice == "cuda" && gpus == 0) throw Error("parallel.device = \"cuda\" but no GPU is visible");
    if (choice == "cpu" || gpus == 0) return;
    if (mesh.local_size() > gpus)
      throw Error(cat(mesh.local_size(), " ranks share a node with ", gpus, " GPU(s): each rank needs its own GPU; ",
                      "run at most ", gpus, " ranks per node, or set parallel.device = \"cpu\""));
    device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(mesh.local_rank() % gpus));
  });
  return device;
}

CountingCommunicator& ParallelContext::dp() const {
  if (!dp_) dp_ = std::make_unique<CountingCommunicator>(make_communicator(mesh_.dp(), device_));
  return *dp_;
}

CountingCommunicator& ParallelContext::sp() const {
  if (mesh_.sp_size() == 1)
    throw std::logic_error("ParallelContext::sp(): there is no sequence parallelism (sp_size 1)");
  if (!sp_) sp_ = std::make_unique<CountingCommunicator>(make_communicator(mesh_.sp(), device_));
  return *sp_;
}

}  // namespace opendit::parallel
