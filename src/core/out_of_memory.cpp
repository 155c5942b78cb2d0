#include "core/out_of_memory.hpp"

#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "core/error.hpp"

namespace opendit {

namespace {

constexpr std::string_view kCpuRefusal = "DefaultCPUAllocator: can't allocate memory: you tried to allocate ";

}  // namespace

bool is_out_of_memory(const c10::Error& e) {
  return dynamic_cast<const c10::OutOfMemoryError*>(&e) != nullptr ||
         std::string_view(e.what_without_backtrace()).find(kCpuRefusal) != std::string_view::npos;
}

std::string out_of_memory_summary(const c10::Error& e) {
  std::string m = e.what_without_backtrace();
  m = m.substr(0, m.find('\n'));
  if (const size_t at = m.find(kCpuRefusal); at != std::string::npos) {
    // "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: ... allocate N bytes. Error code 12 (...)"
    const char* bytes = m.c_str() + at + kCpuRefusal.size();
    const size_t why = m.rfind('(');
    char gib[32];
    std::snprintf(gib, sizeof gib, "%.2f", std::strtod(bytes, nullptr) / double(1ull << 30));
    return cat("host memory: an allocation of ", gib, " GiB failed",
               why == std::string::npos ? std::string() : " " + m.substr(why));
  }
  // The CUDA allocator's tail points at Python's documentation; PYTORCH_CUDA_ALLOC_CONF itself applies here too.
  if (const size_t doc = m.find("See documentation for Memory Management"); doc != std::string::npos)
    m = m.substr(0, doc);
  while (!m.empty() && m.back() == ' ') m.pop_back();
  return m;
}

}  // namespace opendit
