// Latent datasets: precomputed training inputs in one HDF5 file (format "opendit.latents", docs/FORMATS.md).
//
//   LatentDatasetWriter w(path, {4, 32, 32}, at::kHalf, info);     // writes path + ".partial"
//   w.append(latents, labels);  ...                                 // [n, 4, 32, 32], [n]
//   w.finalize();                                                   // crc32s, count, created_at; renamed
//
//   LatentDataset ds(path);                                         // validated on open (and /labels' crc32)
//   LatentBatch b = ds.read({7, 3, 4});                             // float32 [3, 4, 32, 32], labels [3]
//
// The reader takes version 1 (written here, one shape) and version 2 (written by `opendit encode`, src/encode/: the
// VAE posterior in buckets of equal shape, T5 embeddings of the valid tokens, captions, paths, failures).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "io/atomic_file.hpp"
#include "io/checksum.hpp"
#include "io/h5.hpp"

namespace opendit::io {

inline constexpr const char* kLatentsFormat = "opendit.latents";
inline constexpr std::int64_t kLatentsVersion = 1;    // what LatentDatasetWriter writes
inline constexpr std::int64_t kLatentsVersion2 = 2;   // what `opendit encode` writes (src/encode/assemble.cpp)

// The root attributes a writer sets (count and created_at come at finalize()).
struct LatentDatasetInfo {
  double scale_factor = 0.18215;  // SD VAE; 1 for pixel data
  std::string space = "latent";   // "latent" or "pixel"
  std::string source;             // free text: data set, split, resolution, VAE
  std::int64_t num_classes = 0;   // > 0: every append carries labels in [0, num_classes)
  std::int64_t text_length = 0;   // L and D > 0: every append carries text_emb [n, L, D] and text_mask [n, L]
  std::int64_t text_dim = 0;
  std::string created_by;  // empty: "opendit VERSION (COMMIT)"
};

class LatentDatasetWriter {
 public:
  // sample_shape: [C, H, W] or [C, T, H, W]; dtype: float32, float16 or bfloat16 (also used for text_emb).
  // chunk_rows: samples per chunk; 0 picks about 1 MiB.
  LatentDatasetWriter(std::string path, std::vector<std::int64_t> sample_shape, at::ScalarType dtype,
                      LatentDatasetInfo info, std::int64_t chunk_rows = 0);
  ~LatentDatasetWriter();  // without finalize(): the partial file is removed
  LatentDatasetWriter(const LatentDatasetWriter&) = delete;
  LatentDatasetWriter& operator=(const LatentDatasetWriter&) = delete;

  // Appends n samples (any float dtype, converted to the stored one; any device).
  void append(const at::Tensor& latents, const at::Tensor& labels = {}, const at::Tensor& text_emb = {},
              const at::Tensor& text_mask = {});
  std::int64_t count() const { return count_; }
  void finalize();

 private:
  [[noreturn]] void fail(const std::string& what) const;
  void append_rows(H5Dataset& ds, const at::Tensor& rows);

  std::string path_;
  std::optional<AtomicFile> out_;  // PATH.partial until finalize(); declared before the HDF5 handles (closed first)
  std::vector<std::int64_t> sample_shape_;
  at::ScalarType dtype_;
  LatentDatasetInfo info_;
  std::int64_t count_ = 0;
  std::optional<H5File> file_;
  std::optional<H5Dataset> latents_, labels_, text_emb_, text_mask_;
  std::map<std::string, Crc32> crcs_;  // by dataset path: the crc32 of the rows appended so far
};

// Rows of a latent dataset, in the order they were asked for.
struct LatentBatch {
  at::Tensor latents;    // [n, C, H, W] or [n, C, T, H, W], float32, scaled (v2: the posterior mean, scaled)
  at::Tensor logvar;     // v2 posterior: the log-variance of the scaled latent, like latents; undefined otherwise
  at::Tensor labels;     // [n] int64; undefined when the data has no labels
  at::Tensor text_emb;   // [n, L, D] float32, zeros past each caption's tokens (v2: L = text_length); undefined without text
  at::Tensor text_mask;  // [n, L] uint8
  at::Tensor indices;    // [n] int64: which rows
};

// Rows of one shape: a batch never mixes buckets. Version 1 has one bucket of every row.
struct LatentBucket {
  std::vector<std::int64_t> shape;  // [C, H, W] or [C, T, H, W]
  std::vector<std::int64_t> rows;   // the dataset rows (read() indices) in it, ascending
};

class LatentDataset {
 public:
  explicit LatentDataset(const std::string& path);  // opens read-only and validates (throws opendit::Error)

  const std::string& path() const { return path_; }
  std::int64_t size() const { return count_; }
  std::int64_t version() const { return version_; }
  // The shape of every sample when the file has one bucket; of bucket 0 otherwise (see buckets()).
  const std::vector<std::int64_t>& sample_shape() const { return buckets_.at(0).shape; }
  const std::vector<LatentBucket>& buckets() const { return buckets_; }
  std::int64_t bucket_of(std::int64_t row) const { return row_bucket_.empty() ? 0 : row_bucket_.at(row); }
  at::ScalarType stored_dtype() const { return latents_->dtype(); }
  bool has_posterior() const { return logvar_.size() > 0; }  // v2 with mean and log-variance: batches carry logvar
  std::int64_t text_length() const { return text_length_; }  // L of LatentBatch::text_emb (0 without text)
  std::int64_t text_dim() const;                               // D of LatentBatch::text_emb (0 without text)
  std::int64_t num_classes() const { return num_classes_; }
  bool has_labels() const { return labels_.defined(); }
  bool has_text() const { return text_emb_.has_value() || tokens_.has_value(); }
  double scale_factor() const { return scale_factor_; }
  const std::string& space() const { return space_; }
  std::int64_t bytes_per_sample() const;  // as stored, all datasets
  // The datasets it has, by name under the root ("latents", "labels", "text_emb", "text_mask"): what
  // io::verify_datasets checks. /labels is read whole on open and so verified against its crc32 there.
  std::vector<std::string> dataset_names() const;

  // Any rows of one bucket in any order (repeats allowed). Reads the sorted distinct rows in contiguous runs, one
  // hyperslab per run, then puts them in the asked order. pin_memory: the float tensors are in pinned host memory
  // (needs CUDA). Rows of different buckets in one call are an error.
  LatentBatch read(const std::vector<std::int64_t>& indices, bool pin_memory = false) const;

 private:
  void open_v1(const H5Group& root);
  void open_v2(const H5Group& root);  // io/latent_dataset_v2.cpp
  LatentBatch read_v2(const std::vector<std::int64_t>& indices, bool pin_memory) const;
  at::Tensor gather(const H5Dataset& ds, const std::vector<std::pair<std::int64_t, std::int64_t>>& runs,
                    std::int64_t distinct, const std::vector<std::int64_t>& order, bool to_float, bool pin) const;

  std::string path_;
  std::optional<H5File> file_;
  std::optional<H5Dataset> latents_, text_emb_, text_mask_;  // v1; v2: latents_ is bucket 0's mean
  std::vector<LatentBucket> buckets_;
  std::int64_t version_ = 1, count_ = 0, num_classes_ = 0, text_length_ = 0;
  double scale_factor_ = 1, shift_factor_ = 0;
  std::string space_;
  at::Tensor labels_;  // all labels, read on open
  // v2: per bucket its mean and log-variance; where each row lives; the packed caption tokens.
  std::vector<H5Dataset> means_, logvar_;
  std::vector<std::int64_t> row_bucket_, row_in_bucket_, text_offset_;  // [count], [count], [count + 1]
  std::optional<H5Dataset> tokens_;
};

// A latent drawn from a stored posterior: mean + exp(logvar / 2) * eps (what the trainer feeds the model; with the
// reader's scaled mean and logvar this is diffusers' latent_dist.sample() * scaling_factor).
inline at::Tensor posterior_sample(const at::Tensor& mean, const at::Tensor& logvar, const at::Tensor& eps) {
  return mean + (0.5 * logvar).exp() * eps;
}

// Version 2: strings stored as UTF-8 bytes with offsets, by name: "samples/path", "samples/caption",
// "failures/path", "failures/reason" (name + "_bytes" and name + "_offset"; docs/FORMATS.md).
std::vector<std::string> read_v2_strings(const std::string& path, const std::string& name);

}  // namespace opendit::io
