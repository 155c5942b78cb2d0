// Latent datasets: writer, validating reader and batched row reads; see latent_dataset.hpp and docs/FORMATS.md.
#include "io/latent_dataset.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <type_traits>

#include "core/build_info.hpp"
#include "core/error.hpp"
#include "core/strings.hpp"
#include "io/checksum.hpp"
#include "io/files.hpp"
#include "io/latent_dataset_detail.hpp"

namespace opendit::io {
namespace {

bool is_float_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16; }

std::vector<std::int64_t> with_rows(std::int64_t rows, std::vector<std::int64_t> shape) {
  shape.insert(shape.begin(), rows);
  return shape;
}

}  // namespace

// ---- writer ----------------------------------------------------------------------------------------

LatentDatasetWriter::LatentDatasetWriter(std::string path, std::vector<std::int64_t> sample_shape, at::ScalarType dtype,
                                         LatentDatasetInfo info, std::int64_t chunk_rows)
    : path_(std::move(path)),
      sample_shape_(std::move(sample_shape)),
      dtype_(dtype),
      info_(std::move(info)) {
  if (sample_shape_.size() != 3 && sample_shape_.size() != 4)
    fail(cat("sample shape must be [C, H, W] or [C, T, H, W], found ", shape_str(sample_shape_)));
  if (!is_float_dtype(dtype_)) fail(cat("latents must be float32, float16 or bfloat16, found ", dtype_name(dtype_)));
  if (info_.space != "latent" && info_.space != "pixel")
    fail(cat("space must be \"latent\" or \"pixel\", found \"", info_.space, "\""));
  if ((info_.text_length > 0) != (info_.text_dim > 0)) fail("text_length and text_dim must both be set or both 0");
  if (info_.created_by.empty()) info_.created_by = cat("opendit ", OPENDIT_VERSION, " (", OPENDIT_GIT_COMMIT, ")");

  out_.emplace(path_, ".partial");  // only now: a writer that refused its arguments leaves any PATH.partial alone
  file_.emplace(H5File::create(out_->tmp_path()));
  H5Group root = file_->root();
  root.write_attr("format", kLatentsFormat);
  root.write_attr("version", kLatentsVersion);
  root.write_attr("scale_factor", info_.scale_factor);
  root.write_attr("space", info_.space);
  root.write_attr("source", info_.source);
  root.write_attr("num_classes", info_.num_classes);
  root.write_attr("created_by", info_.created_by);

  // Chunks along N only: whole samples, about 1 MiB of latents per chunk unless told otherwise.
  std::int64_t row_bytes = at::elementSize(dtype_);
  for (auto d : sample_shape_) row_bytes *= d;
  const std::int64_t rows = chunk_rows > 0 ? chunk_rows : std::max<std::int64_t>(1, (1 << 20) / row_bytes);
  auto options = [&](std::vector<std::int64_t> sample) {
    return H5DatasetOptions{with_rows(rows, std::move(sample)), true};
  };
  latents_.emplace(root.create_dataset("latents", dtype_, with_rows(0, sample_shape_), options(sample_shape_)));
  if (info_.num_classes > 0) labels_.emplace(root.create_dataset("labels", at::kLong, {0}, {{}, true}));
  if (info_.text_length > 0) {
    const std::int64_t L = info_.text_length, D = info_.text_dim;
    text_emb_.emplace(root.create_dataset("text_emb", dtype_, {0, L, D}, options({L, D})));
    text_mask_.emplace(root.create_dataset("text_mask", at::kByte, {0, L}, options({L})));
  }
}

// Without finalize(), out_ removes the partial file after the members above it have closed it.
LatentDatasetWriter::~LatentDatasetWriter() = default;

void LatentDatasetWriter::fail(const std::string& what) const {
  throw Error(cat("latent dataset '", path_, "': ", what));
}

// Rows go to the file and into the dataset's running crc32, from the same memory: no second pass.
void LatentDatasetWriter::append_rows(H5Dataset& ds, const at::Tensor& rows) {
  const at::Tensor c = rows.contiguous();
  ds.extend_rows(count_ + c.size(0));
  ds.write_rows(count_, c);
  crcs_[ds.path()].add(c);
}

void LatentDatasetWriter::append(const at::Tensor& latents, const at::Tensor& labels, const at::Tensor& text_emb,
                                 const at::Tensor& text_mask) {
  if (!file_) fail("append after finalize()");
  const auto want = with_rows(latents.dim() > 0 ? latents.size(0) : 0, sample_shape_);
  if (latents.sizes().vec() != want || !at::isFloatingType(latents.scalar_type()))
    fail(cat("latents must be float ", shape_str(want), ", found ", dtype_name(latents.scalar_type()), " ",
             shape_str(latents.sizes())));
  const std::int64_t n = latents.size(0);
  if (labels_) {
    if (!labels.defined() || labels.sizes().vec() != std::vector<std::int64_t>{n} ||
        at::isFloatingType(labels.scalar_type()))
      fail(cat("labels must be an integer tensor [", n, "] (num_classes = ", info_.num_classes, "), found ",
               labels.defined() ? shape_str(labels.sizes()) : "none"));
    if (n > 0) {
      const std::int64_t lo = labels.min().item<std::int64_t>(), hi = labels.max().item<std::int64_t>();
      if (lo < 0 || hi >= info_.num_classes)
        fail(cat("labels must lie in [0, ", info_.num_classes, "), found ", lo < 0 ? lo : hi));
    }
  } else if (labels.defined()) {
    fail("labels given but num_classes is 0");
  }
  if (text_emb_) {
    const std::int64_t L = info_.text_length, D = info_.text_dim;
    if (!text_emb.defined() || text_emb.sizes().vec() != std::vector<std::int64_t>{n, L, D} || !text_mask.defined() ||
        text_mask.sizes().vec() != std::vector<std::int64_t>{n, L})
      fail(cat("text_emb must be [", n, ", ", L, ", ", D, "] and text_mask [", n, ", ", L, "]"));
  } else if (text_emb.defined() || text_mask.defined()) {
    fail("text given but text_length is 0");
  }

  append_rows(*latents_, latents.to(at::kCPU, dtype_));
  if (labels_) append_rows(*labels_, labels.to(at::kCPU, at::kLong));
  if (text_emb_) {
    append_rows(*text_emb_, text_emb.to(at::kCPU, dtype_));
    append_rows(*text_mask_, text_mask.to(at::kCPU, at::kByte));
  }
  count_ += n;
}

void LatentDatasetWriter::finalize() {
  if (!file_) fail("finalize() called twice");
  {
    H5Group root = file_->root();
    for (auto* ds : {&latents_, &labels_, &text_emb_, &text_mask_})
      if (ds->has_value()) (*ds)->write_attr(kCrcAttribute, std::int64_t(crcs_[(*ds)->path()].value()));
    root.write_attr("count", count_);
    root.write_attr("created_at", now_iso8601());
  }
  latents_.reset(), labels_.reset(), text_emb_.reset(), text_mask_.reset();
  file_->close();
  file_.reset();
  out_->commit();
}

// ---- reader ----------------------------------------------------------------------------------------

LatentDataset::LatentDataset(const std::string& path) : path_(path) {
  file_.emplace(H5File::open(path));
  const H5Group root = file_->root();
  if (!root.has_attr("format")) root.fail(cat("attribute 'format' is missing: not an opendit latent dataset"));
  const std::string format = root.read_attr_string("format");
  if (format != kLatentsFormat) root.fail(cat("format is \"", format, "\", expected \"", kLatentsFormat, "\""));
  version_ = root.read_attr_int64("version");
  if (version_ != kLatentsVersion && version_ != kLatentsVersion2)
    root.fail(cat("format version ", version_, " is not supported (this build reads versions ", kLatentsVersion,
                  " and ", kLatentsVersion2, ")"));
  if (!root.has_attr("count")) root.fail("attribute 'count' is missing: the writer did not finish this file");
  count_ = root.read_attr_int64("count");
  num_classes_ = root.read_attr_int64("num_classes");
  scale_factor_ = root.read_attr_double("scale_factor");
  space_ = root.read_attr_string("space");
  if (space_ != "latent" && space_ != "pixel") root.fail(cat("space is \"", space_, "\", expected latent or pixel"));
  if (!std::isfinite(scale_factor_) || scale_factor_ <= 0)
    root.fail(cat("scale_factor ", scale_factor_, " is not > 0"));
  if (num_classes_ < 0) root.fail(cat("num_classes ", num_classes_, " is negative"));
  if (version_ == kLatentsVersion2)
    open_v2(root);
  else
    open_v1(root);
}

// /labels of either version: int64 [count], read whole and verified against its crc32 on every open.
at::Tensor read_labels(const H5Dataset& labels, std::int64_t count, std::int64_t num_classes) {
  if (labels.dtype() != at::kLong || labels.shape().size() != 1)
    labels.fail(cat("must be int64 [N], found ", dtype_name(labels.dtype()), " ", shape_str(labels.shape())));
  if (labels.shape()[0] != count) labels.fail(cat("has ", labels.shape()[0], " labels for ", count, " samples"));
  at::Tensor all = labels.read();
  // Verified before the range check, which damage would trip first.
  if (const auto want = stored_crc32(labels)) {
    Crc32 found;
    found.add(all);
    if (found.value() != *want) labels.fail(crc_mismatch(*want, found.value()));
  }
  const auto bad = (all < 0).logical_or(all >= num_classes).nonzero();
  if (bad.numel() > 0) {
    const std::int64_t row = bad[0][0].item<std::int64_t>();
    labels.fail(cat("label ", all[row].item<std::int64_t>(), " at row ", row, " is outside [0, ", num_classes, ") (",
                    bad.size(0), " such labels)"));
  }
  return all;
}

void LatentDataset::open_v1(const H5Group& root) {
  // Random rows want no chunk cache: a partial chunk is then read straight from the file, not the whole chunk.
  latents_.emplace(root.open_dataset("latents", 0));
  const auto shape = latents_->shape();
  if (shape.size() != 4 && shape.size() != 5)
    latents_->fail(cat("shape must be [N, C, H, W] or [N, C, T, H, W], found ", shape_str(shape)));
  if (!is_float_dtype(latents_->dtype()))
    latents_->fail(cat("dtype must be float32, float16 or bfloat16, found ", dtype_name(latents_->dtype())));
  if (shape[0] != count_) latents_->fail(cat("has ", shape[0], " samples, attribute count says ", count_));
  LatentBucket all{{shape.begin() + 1, shape.end()}, std::vector<std::int64_t>(count_)};
  for (std::int64_t i = 0; i < count_; ++i) all.rows[i] = i;
  buckets_ = {std::move(all)};

  if (num_classes_ > 0) {
    if (!root.has("labels")) root.fail(cat("num_classes is ", num_classes_, " but /labels is missing"));
    labels_ = read_labels(root.open_dataset("labels"), count_, num_classes_);
  } else if (root.has("labels")) {
    root.fail("/labels is present but num_classes is 0");
  }

  if (root.has("text_emb") != root.has("text_mask")) root.fail("/text_emb and /text_mask must come together");
  if (root.has("text_emb")) {
    text_emb_.emplace(root.open_dataset("text_emb", 0));
    text_mask_.emplace(root.open_dataset("text_mask", 0));
    const auto e = text_emb_->shape(), m = text_mask_->shape();
    if (e.size() != 3 || e[0] != count_ || !is_float_dtype(text_emb_->dtype()))
      text_emb_->fail(
          cat("must be float [", count_, ", L, D], found ", dtype_name(text_emb_->dtype()), " ", shape_str(e)));
    if (text_mask_->dtype() != at::kByte || m != std::vector<std::int64_t>{count_, e[1]})
      text_mask_->fail(
          cat("must be uint8 [", count_, ", ", e[1], "], found ", dtype_name(text_mask_->dtype()), " ", shape_str(m)));
    text_length_ = e[1];
  }
}

std::vector<std::string> LatentDataset::dataset_names() const {
  if (version_ == kLatentsVersion2) return v2_dataset_names(*file_);
  std::vector<std::string> names = {"latents"};
  if (has_labels()) names.push_back("labels");
  if (has_text()) names.insert(names.end(), {"text_emb", "text_mask"});
  return names;
}

std::int64_t LatentDataset::bytes_per_sample() const {
  if (version_ == kLatentsVersion2) return count_ > 0 ? v2_bytes(*file_) / count_ : 0;
  auto row_bytes = [](const H5Dataset& ds) {
    const auto s = ds.shape();
    std::int64_t b = at::elementSize(ds.dtype());
    for (std::size_t i = 1; i < s.size(); ++i) b *= s[i];
    return b;
  };
  std::int64_t b = row_bytes(*latents_) + (has_labels() ? 8 : 0);
  if (text_emb_) b += row_bytes(*text_emb_) + row_bytes(*text_mask_);
  return b;
}

namespace {

// out[i] = float(raw[src(i)]) row by row, on this thread: a batch takes about a millisecond, and ATen's intra-op
// threads are better left to the training step (on a busy machine, waking them costs more than the copy).
template <typename From, typename To>
void copy_rows(const at::Tensor& raw, const std::vector<std::int64_t>& order, at::Tensor& out) {
  const std::int64_t rows = out.size(0), row = rows > 0 ? out.numel() / rows : 0;
  const From* src = static_cast<const From*>(raw.data_ptr());
  To* dst = static_cast<To*>(out.data_ptr());
  for (std::int64_t i = 0; i < rows; ++i) {
    const From* s = src + (order.empty() ? i : order[i]) * row;
    To* d = dst + i * row;
    if constexpr (std::is_same_v<From, To>) {
      std::memcpy(d, s, row * sizeof(To));
    } else {
      for (std::int64_t k = 0; k < row; ++k) d[k] = static_cast<To>(s[k]);
    }
  }
}

}  // namespace

// Reads the runs (start, length) of ds into `distinct` rows, then puts them in the asked order (order[i]: which
// distinct row answers request i; empty when the request was sorted and distinct) and converts to float32.
at::Tensor LatentDataset::gather(const H5Dataset& ds, const std::vector<std::pair<std::int64_t, std::int64_t>>& runs,
                                 std::int64_t distinct, const std::vector<std::int64_t>& order, bool to_float,
                                 bool pin) const {
  const at::ScalarType out_type = to_float ? at::kFloat : ds.dtype();
  const bool direct = ds.dtype() == out_type && order.empty();  // the rows as read are the answer
  auto dims = ds.shape();
  dims[0] = distinct;
  at::Tensor raw = at::empty(dims, at::TensorOptions().dtype(ds.dtype()).pinned_memory(pin && direct));
  {
    std::lock_guard<std::recursive_mutex> lock(h5_mutex());  // one batch, one lock
    std::int64_t pos = 0;
    for (const auto& [start, len] : runs) {
      ds.read_rows_into(start, raw.narrow(0, pos, len));
      pos += len;
    }
  }
  if (direct) return raw;
  dims[0] = order.empty() ? distinct : std::int64_t(order.size());
  at::Tensor out = at::empty(dims, at::TensorOptions().dtype(out_type).pinned_memory(pin));
  switch (ds.dtype()) {
    case at::kFloat:
      copy_rows<float, float>(raw, order, out);
      break;
    case at::kHalf:
      copy_rows<at::Half, float>(raw, order, out);
      break;
    case at::kBFloat16:
      copy_rows<at::BFloat16, float>(raw, order, out);
      break;
    default:
      copy_rows<std::uint8_t, std::uint8_t>(raw, order, out);
      break;  // text_mask
  }
  return out;
}

LatentBatch LatentDataset::read(const std::vector<std::int64_t>& indices, bool pin_memory) const {
  if (version_ == kLatentsVersion2) return read_v2(indices, pin_memory);
  for (std::size_t i = 0; i < indices.size(); ++i)
    if (indices[i] < 0 || indices[i] >= count_)
      throw Error(cat("latent dataset '", path_, "': row ", indices[i], " outside [0, ", count_, ")"));
  std::vector<std::int64_t> rows = indices;
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  std::vector<std::pair<std::int64_t, std::int64_t>> runs;  // neighbours coalesce into one hyperslab
  for (std::int64_t r : rows) {
    if (!runs.empty() && runs.back().first + runs.back().second == r)
      ++runs.back().second;
    else
      runs.push_back({r, 1});
  }
  std::vector<std::int64_t> order;  // position of each asked row among the distinct sorted rows
  if (rows != indices)
    for (std::int64_t i : indices) order.push_back(std::lower_bound(rows.begin(), rows.end(), i) - rows.begin());
  const auto n = std::int64_t(rows.size());

  LatentBatch b;
  b.indices = at::tensor(indices, at::kLong);
  b.latents = gather(*latents_, runs, n, order, true, pin_memory);
  if (has_labels()) b.labels = labels_.index_select(0, b.indices);
  if (text_emb_) {
    b.text_emb = gather(*text_emb_, runs, n, order, true, pin_memory);
    b.text_mask = gather(*text_mask_, runs, n, order, false, false);
  }
  return b;
}

std::int64_t LatentDataset::text_dim() const {
  if (text_emb_) return text_emb_->shape().back();
  if (tokens_) return tokens_->shape().back();
  return 0;
}

}  // namespace opendit::io
