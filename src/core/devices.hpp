// What accelerators this process sees and the versions of the GPU libraries (empty/zero on a CPU-only build);
// NCCL's version is parallel::nccl_version().
#pragma once
#include <string>
#include <vector>

namespace opendit {

struct GpuInfo {
  std::string name;
  double memory_gib = 0;
  int sm_major = 0, sm_minor = 0;
};

std::vector<GpuInfo> visible_gpus();  // empty without CUDA, a driver or a device
std::string cuda_runtime_version();  // "13.0", or "none"
std::string cudnn_version();         // "9.19.0", or "none"

int gpu_count();                                // 0 without CUDA, a driver or a device
double peak_memory_gib(int device);             // torch's caching allocator: peak allocated since the reset
void reset_peak_memory(int device);
double dense_bf16_peak_tflops(const std::string& gpu_name);  // for MFU; 0 when the GPU is not in the table

}  // namespace opendit
