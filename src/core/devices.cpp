#include "core/devices.hpp"

#include <ATen/detail/CUDAHooksInterface.h>

#ifdef OPENDIT_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <cuda_runtime_api.h>
#endif

namespace opendit {

static std::string dotted(long v, long major_div, long minor_div) {
  return std::to_string(v / major_div) + "." + std::to_string((v % major_div) / minor_div) + "." +
         std::to_string(v % minor_div);
}

std::vector<GpuInfo> visible_gpus() {
  std::vector<GpuInfo> out;
#ifdef OPENDIT_WITH_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: a CPU machine
    return out;
  }
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    out.push_back({p.name, p.totalGlobalMem / double(1ull << 30), p.major, p.minor});
  }
#endif
  return out;
}

std::string cuda_runtime_version() {
  try {
    long v = at::detail::getCUDAHooks().versionCUDART();  // e.g. 13000
    if (v > 0) return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
  } catch (const std::exception&) {
  }
  return "none";
}

std::string cudnn_version() {
  try {
    long v = at::detail::getCUDAHooks().versionCuDNN();  // e.g. 91900
    if (v > 0) return dotted(v, 10000, 100);
  } catch (const std::exception&) {
  }
  return "none";
}

int gpu_count() {
  try {
    return at::detail::getCUDAHooks().hasCUDA() ? at::detail::getCUDAHooks().getNumGPUs() : 0;
  } catch (const std::exception&) {
    return 0;
  }
}

double peak_memory_gib(int device) {
#ifdef OPENDIT_WITH_CUDA
  auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
  return stats.allocated_bytes[0].peak /  // [0]: the aggregate over pools
         double(1ull << 30);
#else
  return 0;
#endif
}

void reset_peak_memory(int device) {
#ifdef OPENDIT_WITH_CUDA
  c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device));
#endif
}

double dense_bf16_peak_tflops(const std::string& name) {
  // Dense bf16 tensor-core peaks of the SXM parts (the H100 figure is the one the ROADMAP's MFU uses).
  if (name.find("H100") != std::string::npos || name.find("H200") != std::string::npos) return 989;
  if (name.find("A100") != std::string::npos) return 312;
  return 0;
}

}  // namespace opendit
