// Version 2 of opendit.latents (what `opendit encode` writes; docs/FORMATS.md): validation on open and batched
// reads. The posterior is returned scaled: latents = (mean - shift) * scale and logvar + 2 ln(scale), so that the
// trainer's draw mean + exp(logvar / 2) * eps is the scaled latent diffusers' latent_dist.sample() gives.
#include <algorithm>
#include <cmath>

#include "core/error.hpp"
#include "core/strings.hpp"
#include "io/latent_dataset.hpp"
#include "io/latent_dataset_detail.hpp"

namespace opendit::io {
namespace {

bool is_float(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16; }

std::string bucket_name(std::size_t k) { return cat("bucket_", k); }

// An int64 [rows] dataset, read whole.
std::vector<std::int64_t> read_index(const H5Group& root, const std::string& name, std::int64_t rows) {
  const H5Dataset ds = root.open_dataset(name);
  if (ds.dtype() != at::kLong || ds.shape() != std::vector<std::int64_t>{rows})
    ds.fail(cat("must be int64 [", rows, "], found ", dtype_name(ds.dtype()), " ", shape_str(ds.shape())));
  const at::Tensor t = ds.read();
  const auto* p = t.data_ptr<std::int64_t>();
  return {p, p + rows};
}

// Offsets [n + 1] into a dataset of `total` rows: 0, non-decreasing, ending at total.
void check_offsets(const H5Group& root, const std::string& name, const std::vector<std::int64_t>& off,
                   std::int64_t total) {
  bool ok = !off.empty() && off.front() == 0 && off.back() == total;
  for (std::size_t i = 1; ok && i < off.size(); ++i) ok = off[i] >= off[i - 1];
  if (!ok) root.fail(cat("/", name, " is not a run of offsets from 0 to ", total));
}

}  // namespace

std::vector<std::string> v2_dataset_names(const H5File& file) { return dataset_paths(file.root()); }

std::int64_t v2_bytes(const H5File& file) {
  const H5Group root = file.root();
  std::int64_t bytes = 0;
  for (const std::string& name : v2_dataset_names(file)) {
    const H5Dataset ds = root.open_dataset(name);
    std::int64_t b = at::elementSize(ds.dtype());
    for (auto d : ds.shape()) b *= d;
    bytes += b;
  }
  return bytes;
}

void LatentDataset::open_v2(const H5Group& root) {
  shift_factor_ = root.has_attr("shift_factor") ? root.read_attr_double("shift_factor") : 0.0;
  const std::string posterior = root.read_attr_string("posterior");
  if (posterior != "mean_logvar" && posterior != "mean")
    root.fail(cat("posterior is \"", posterior, "\", expected mean_logvar or mean"));
  const std::int64_t nb = root.read_attr_int64("buckets");
  if (nb < 0 || (nb < 1 && count_ > 0)) root.fail(cat("attribute buckets is ", nb, " for ", count_, " samples"));
  row_bucket_ = read_index(root, "samples/bucket", count_);
  row_in_bucket_ = read_index(root, "samples/bucket_row", count_);
  buckets_.resize(nb);
  for (std::int64_t k = 0; k < nb; ++k) {
    means_.push_back(root.open_dataset(bucket_name(k) + "/mean", 0));
    const H5Dataset& mean = means_.back();
    const auto shape = mean.shape();
    if ((shape.size() != 4 && shape.size() != 5) || !is_float(mean.dtype()))
      mean.fail(cat("must be float [n, C, H, W] or [n, C, T, H, W], found ", dtype_name(mean.dtype()), " ",
                    shape_str(shape)));
    buckets_[k].shape.assign(shape.begin() + 1, shape.end());
    buckets_[k].rows = read_index(root, bucket_name(k) + "/row", shape[0]);
    if (posterior == "mean_logvar") {
      logvar_.push_back(root.open_dataset(bucket_name(k) + "/logvar", 0));
      if (logvar_.back().shape() != shape || logvar_.back().dtype() != mean.dtype())
        logvar_.back().fail(cat("must be ", dtype_name(mean.dtype()), " ", shape_str(shape), " as the mean, found ",
                                dtype_name(logvar_.back().dtype()), " ", shape_str(logvar_.back().shape())));
    }
    // Both directions of the row <-> (bucket, row in bucket) maps must agree.
    for (std::size_t j = 0; j < buckets_[k].rows.size(); ++j) {
      const std::int64_t r = buckets_[k].rows[j];
      if (r < 0 || r >= count_ || row_bucket_[r] != k || row_in_bucket_[r] != std::int64_t(j))
        root.fail(cat("/", bucket_name(k), "/row and /samples/bucket, /samples/bucket_row disagree at row ", j));
    }
  }
  std::int64_t placed = 0;
  for (const auto& b : buckets_) placed += std::int64_t(b.rows.size());
  if (placed != count_) root.fail(cat("the buckets hold ", placed, " samples, attribute count says ", count_));
  if (!buckets_.empty()) latents_.emplace(root.open_dataset(bucket_name(0) + "/mean", 0));

  if (num_classes_ > 0) {
    if (!root.has("samples") || !root.open_group("samples").has("label"))
      root.fail(cat("num_classes is ", num_classes_, " but /samples/label is missing"));
    labels_ = read_labels(root.open_dataset("samples/label"), count_, num_classes_);
  }
  text_length_ = root.has_attr("text_length") ? root.read_attr_int64("text_length") : 0;
  if (text_length_ > 0) {
    tokens_.emplace(root.open_dataset("text/tokens", 0));
    const auto t = tokens_->shape();
    if (t.size() != 2 || !is_float(tokens_->dtype()))
      tokens_->fail(cat("must be float [tokens, D], found ", dtype_name(tokens_->dtype()), " ", shape_str(t)));
    if (root.has_attr("text_dim") && root.read_attr_int64("text_dim") != t[1])
      tokens_->fail(cat("has width ", t[1], ", attribute text_dim says ", root.read_attr_int64("text_dim")));
    text_offset_ = read_index(root, "samples/text_offset", count_ + 1);
    check_offsets(root, "samples/text_offset", text_offset_, t[0]);
    for (std::int64_t i = 0; i < count_; ++i)
      if (text_offset_[i + 1] - text_offset_[i] > text_length_)
        root.fail(cat("sample ", i, " has ", text_offset_[i + 1] - text_offset_[i], " tokens, more than text_length ",
                      text_length_));
  }
}

LatentBatch LatentDataset::read_v2(const std::vector<std::int64_t>& indices, bool pin_memory) const {
  LatentBatch b;
  b.indices = at::tensor(indices, at::kLong);
  if (indices.empty() && buckets_.empty()) return b;
  std::int64_t bucket = -1;
  std::vector<std::int64_t> in_bucket;
  for (std::int64_t i : indices) {
    if (i < 0 || i >= count_) throw Error(cat("latent dataset '", path_, "': row ", i, " outside [0, ", count_, ")"));
    if (bucket >= 0 && row_bucket_[i] != bucket)
      throw Error(cat("latent dataset '", path_, "': one read takes rows of one bucket; row ", i, " is in bucket ",
                      row_bucket_[i], ", row ", indices.front(), " in bucket ", bucket));
    bucket = row_bucket_[i];
    in_bucket.push_back(row_in_bucket_[i]);
  }
  if (bucket < 0) bucket = 0;
  // The rows of the bucket as version 1 reads them: sorted, distinct, in runs, then the asked order.
  std::vector<std::int64_t> rows = in_bucket;
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  std::vector<std::pair<std::int64_t, std::int64_t>> runs;
  for (std::int64_t r : rows) {
    if (!runs.empty() && runs.back().first + runs.back().second == r)
      ++runs.back().second;
    else
      runs.push_back({r, 1});
  }
  std::vector<std::int64_t> order;
  if (rows != in_bucket)
    for (std::int64_t r : in_bucket) order.push_back(std::lower_bound(rows.begin(), rows.end(), r) - rows.begin());
  const auto n = std::int64_t(rows.size());
  b.latents = gather(means_[bucket], runs, n, order, true, pin_memory);
  if (shift_factor_ != 0) b.latents.sub_(shift_factor_);
  b.latents.mul_(scale_factor_);
  if (has_posterior()) {
    b.logvar = gather(logvar_[bucket], runs, n, order, true, pin_memory);
    b.logvar.add_(2 * std::log(scale_factor_));
  }
  if (labels_.defined()) b.labels = labels_.index_select(0, b.indices);
  if (tokens_) {
    // Each caption's tokens are one run of /text/tokens; padded to text_length with zeros, mask 1 on the tokens.
    std::vector<std::pair<std::int64_t, std::int64_t>> token_runs;
    std::int64_t total = 0;
    for (std::int64_t i : indices) {
      const std::int64_t len = text_offset_[i + 1] - text_offset_[i];
      if (len > 0) token_runs.push_back({text_offset_[i], len});
      total += len;
    }
    const at::Tensor packed = gather(*tokens_, token_runs, total, {}, true, false);
    const std::int64_t m = std::int64_t(indices.size()), L = text_length_, D = tokens_->shape()[1];
    b.text_emb = at::zeros({m, L, D}, at::TensorOptions().dtype(at::kFloat).pinned_memory(pin_memory));
    b.text_mask = at::zeros({m, L}, at::kByte);
    std::int64_t pos = 0;
    for (std::int64_t j = 0; j < m; ++j) {
      const std::int64_t len = text_offset_[indices[j] + 1] - text_offset_[indices[j]];
      if (len == 0) continue;
      b.text_emb[j].narrow(0, 0, len).copy_(packed.narrow(0, pos, len));
      b.text_mask[j].narrow(0, 0, len).fill_(1);
      pos += len;
    }
  }
  return b;
}

std::vector<std::string> read_v2_strings(const std::string& path, const std::string& name) {
  std::lock_guard<std::recursive_mutex> lock(h5_mutex());
  const H5File file = H5File::open(path);
  const H5Group root = file.root();
  return unpack_strings(root.open_dataset(name + "_offset").read(), root.open_dataset(name + "_bytes").read(),
                        cat(path, ":/", name));
}

}  // namespace opendit::io
