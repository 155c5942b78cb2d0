// Helpers shared by the HDF5 / latent dataset / data loader tests: a temporary folder, raw file bytes, and a
// synthetic latent dataset whose every row is a known function of its index.
#pragma once
#include <ftw.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "io/latent_dataset.hpp"

namespace opendit::test {

// A folder under $TMPDIR (or /tmp) that removes itself and everything in it.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string templ = std::string(base && *base ? base : "/tmp") + "/opendit_io_XXXXXX";
    if (!mkdtemp(templ.data())) throw std::runtime_error("mkdtemp failed");
    path_ = templ;
  }
  explicit TempDir(std::string existing) : path_(std::move(existing)) {}
  ~TempDir() {
    nftw(
        path_.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return std::remove(p); }, 16,
        FTW_DEPTH | FTW_PHYS);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Row i of the synthetic data, before rounding to the stored dtype: distinct for every (i, element).
inline at::Tensor synthetic_row(std::int64_t i, const std::vector<std::int64_t>& shape) {
  std::int64_t numel = 1;
  for (auto d : shape) numel *= d;
  return at::sin(at::arange(numel, at::kDouble) * 0.37 + double(i) * 1.3).reshape(shape).to(at::kFloat);
}

// What a reader must return for row i: the synthetic row rounded to the stored dtype, as float32.
inline at::Tensor expected_row(std::int64_t i, const std::vector<std::int64_t>& shape, at::ScalarType dtype) {
  return synthetic_row(i, shape).to(dtype).to(at::kFloat);
}

inline std::int64_t synthetic_label(std::int64_t i, std::int64_t num_classes) { return (i * 7) % num_classes; }

// Writes n synthetic samples with labels (num_classes > 0) in batches of `batch`.
inline void write_synthetic(const std::string& path, std::int64_t n, const std::vector<std::int64_t>& shape,
                            at::ScalarType dtype = at::kHalf, std::int64_t num_classes = 10, std::int64_t batch = 64,
                            std::int64_t chunk_rows = 0) {
  io::LatentDatasetInfo info;
  info.num_classes = num_classes;
  info.source = "synthetic test data";
  io::LatentDatasetWriter w(path, shape, dtype, info, chunk_rows);
  for (std::int64_t start = 0; start < n; start += batch) {
    const std::int64_t m = std::min(batch, n - start);
    std::vector<at::Tensor> rows;
    std::vector<std::int64_t> labels;
    for (std::int64_t i = start; i < start + m; ++i) {
      rows.push_back(synthetic_row(i, shape));
      labels.push_back(synthetic_label(i, std::max<std::int64_t>(num_classes, 1)));
    }
    w.append(at::stack(rows), num_classes > 0 ? at::tensor(labels, at::kLong) : at::Tensor());
  }
  w.finalize();
}

}  // namespace opendit::test
