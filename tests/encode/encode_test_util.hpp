// Shared by the encoder suites: where the reference sets are, the relative error, and copies of a reference folder
// (or one of its files) to damage.
#pragma once
#include <ATen/ATen.h>

#include <filesystem>
#include <functional>
#include <map>
#include <string>

#include "io/safetensors.hpp"
#include "support/ref_data.hpp"
#include "support/support.hpp"

namespace opendit::test {

// max |a - b| / max |b| in float64 (any devices).
inline double rel(const at::Tensor& a, const at::Tensor& b) { return max_rel_diff(a.cpu(), b.cpu()); }

// A fresh copy of folder `src` inside `tmp` (a new name each call).
inline std::string copy_folder(const std::string& src, const TempDir& tmp) {
  static int copies = 0;
  const std::string dst = tmp.file(std::filesystem::path(src).filename().string() + std::to_string(++copies));
  std::filesystem::copy(src, dst, std::filesystem::copy_options::recursive);
  return dst;
}

// Rewrites a safetensors file after `edit` changed its tensors.
inline void rewrite_safetensors(const std::string& file,
                                const std::function<void(std::map<std::string, at::Tensor>&)>& edit) {
  auto sd = io::load_safetensors(file).tensors;
  edit(sd);
  io::save_safetensors(file, sd);
}

}  // namespace opendit::test
