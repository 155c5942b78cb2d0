// Reads the reference set written by tests/ref/make_diffusion_ref.py: index.json + raw little-endian .bin files.
#pragma once
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

namespace opendit::test {

class RefData {
 public:
  explicit RefData(const std::string& area) {
    const char* root = std::getenv("OPENDIT_REF_DIR");
    if (root == nullptr) throw std::runtime_error("OPENDIT_REF_DIR is not set (run the test through ctest)");
    dir_ = std::string(root) + "/" + area;
    std::ifstream in(dir_ + "/index.json");
    if (!in) throw std::runtime_error("cannot open " + dir_ + "/index.json");
    in >> index_;
  }

  const nlohmann::json& meta() const { return index_.at("meta"); }
  bool has(const std::string& name) const { return index_.at("tensors").contains(name); }

  // float64 or int64 tensor, as stored.
  at::Tensor get(const std::string& name) const {
    const auto& e = index_.at("tensors").at(name);
    const std::vector<int64_t> shape = e.at("shape").get<std::vector<int64_t>>();
    const bool f64 = e.at("dtype").get<std::string>() == "f64";
    at::Tensor t = at::empty(shape, f64 ? at::kDouble : at::kLong);
    std::ifstream in(dir_ + "/" + e.at("file").get<std::string>(), std::ios::binary);
    in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(t.numel() * 8));
    if (!in) throw std::runtime_error("short read of reference tensor " + name);
    return t;
  }

  std::vector<double> vec(const std::string& name) const {
    const at::Tensor t = get(name).contiguous();
    return std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
  }
  std::vector<int64_t> ivec(const std::string& name) const {
    const at::Tensor t = get(name).contiguous();
    return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
  }

 private:
  std::string dir_;
  nlohmann::json index_;
};

// $OPENDIT_REF_DIR/AREA/NAME, where the reference scripts write (ctest sets the variable); "" without it.
inline std::string ref_path(const std::string& area, const std::string& name) {
  const char* d = std::getenv("OPENDIT_REF_DIR");
  return d ? std::string(d) + "/" + area + "/" + name : "";
}

inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}
// max |a - b| / max |b|: relative to the reference's scale, robust where single entries are near zero.
inline double max_rel_diff(const at::Tensor& a, const at::Tensor& b) {
  return max_abs_diff(a, b) / std::max(b.to(at::kDouble).abs().max().item<double>(), 1e-300);
}
inline double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

}  // namespace opendit::test
