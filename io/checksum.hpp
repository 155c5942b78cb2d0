// Dataset checksums (docs/FORMATS.md): a dataset opendit writes carries an int64 attribute `crc32`, the zlib CRC-32
// of its data in C order as stored (little-endian bytes; bfloat16 as its raw 16 bits), as checkpoints always had.
// Writers compute it from memory while they write (Crc32, no second pass over the file); readers recompute it from
// the file: one process (check_dataset, `opendit check`) or a group of ranks that each read a share of the rows
// (verify_datasets, `opendit train` at start).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "io/h5.hpp"
#include "parallel/process_group.hpp"

namespace opendit::io {

inline constexpr const char* kCrcAttribute = "crc32";

// The CRC-32 of bytes that arrive in order, piece by piece (zlib's crc32, as io/checkpoint_plan.hpp's crc_bytes).
class Crc32 {
 public:
  void add(const void* data, std::int64_t bytes);
  void add(const at::Tensor& t);  // its bytes in C order (a contiguous CPU copy when needed)
  // This crc followed by a piece of `bytes` bytes whose crc is `crc` (crc32_combine): the pieces of one dataset
  // from several ranks, in row order.
  void append(std::uint32_t crc, std::int64_t bytes);
  std::uint32_t value() const { return crc_; }
  std::int64_t bytes() const { return bytes_; }

 private:
  std::uint32_t crc_ = 0;
  std::int64_t bytes_ = 0;
};

// The crc32 attribute of a dataset; nullopt when it has none (files written before checksums). A value outside
// [0, 2^32) is an opendit::Error naming the dataset.
std::optional<std::uint32_t> stored_crc32(const H5Dataset& ds);

// The CRC-32 of rows [begin, end) of ds (a scalar dataset: its one value), read in blocks of about 64 MiB of whole
// chunks; on_bytes(n) after each block, for progress lines.
Crc32 compute_crc32(const H5Dataset& ds, std::int64_t begin, std::int64_t end,
                    const std::function<void(std::int64_t)>& on_bytes = {});

// "checksum mismatch: expected crc32 E, found F (the data is damaged)"
std::string crc_mismatch(std::uint32_t expected, std::uint32_t found);

// One dataset checked against its crc32 attribute.
struct DatasetCheck {
  std::string path;  // inside the file, e.g. "/latents"
  std::string what;  // "float16 [300, 4, 32, 32]"
  std::int64_t bytes = 0;
  std::optional<std::uint32_t> expected;  // nullopt: no checksum stored (unverified)
  std::uint32_t found = 0;
  bool verified() const { return expected.has_value(); }
  bool intact() const { return !expected || *expected == found; }
  std::string mismatch() const { return crc_mismatch(expected.value_or(0), found); }
};

// Reads the whole dataset (one process) and compares.
DatasetCheck check_dataset(const H5Dataset& ds, const std::function<void(std::int64_t)>& on_bytes = {});

// Collective over `group`: the datasets `names` (paths from the root) of `file`, each rank reading a contiguous
// share of every dataset's rows, rank 0 combining the pieces in row order. Every rank opens the file on its own.
// Returns every rank the same checks (expected, found). HDF5 failures are one CollectiveError on every rank.
std::vector<DatasetCheck> verify_datasets(const std::string& file, const std::vector<std::string>& names,
                                          const parallel::ProcessGroup& group,
                                          const std::function<void(std::int64_t)>& on_bytes = {});

// The bytes a dataset stores (every element, its dtype's size), and "float16 [300, 4, 32, 32]".
std::int64_t dataset_bytes(const H5Dataset& ds);
std::string dataset_summary(const H5Dataset& ds);

}  // namespace opendit::io
