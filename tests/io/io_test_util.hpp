// Helpers of the HDF5 / latent dataset / data loader tests: a synthetic latent dataset whose every row is a known
// function of its index (the general helpers are in tests/support.hpp).
#pragma once
#include <ftw.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "support/support.hpp"
#include "io/latent_dataset.hpp"

namespace opendit::test {

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
