#include "parallel/context.hpp"

#include "core/devices.hpp"
#include "core/error.hpp"

namespace opendit::parallel {

at::Device rank_device(const std::string& choice, const Mesh& mesh) {
  const int gpus = gpu_count();
  if (choice == "cuda" && gpus == 0) throw CollectiveError("parallel.device = \"cuda\" but no GPU is visible");
  if (choice == "cpu" || gpus == 0) return at::kCPU;
  // Every rank of a node sees the same count, so all fail alike.
  if (mesh.local_size() > gpus)
    throw CollectiveError(cat(mesh.local_size(), " ranks share a node with ", gpus, " GPU(s): each rank needs its own ",
                              "GPU; run at most ", gpus, " ranks per node, or set parallel.device = \"cpu\""));
  return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(mesh.local_rank() % gpus));
}

ParallelContext::ParallelContext(const Mesh& mesh, at::Device device)
    : mesh_(mesh),
      device_(device),
      dp_(make_communicator(mesh.dp(), device)),
      sp_(mesh.sp_size() > 1 ? make_communicator(mesh.sp(), device) : nullptr) {}

}  // namespace opendit::parallel
