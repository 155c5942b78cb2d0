// One HDF5 file whose datasets are filled row by row from many ranks: each rank writes the rows it computed at
// their place (the encoder's output: every rank encodes its share of the samples). Row counts are known up front.
//
//   RowWriter w(path, {{"latents", at::kHalf, {4, 32, 32}, n}, {"labels", at::kLong, {}, n}}, group);  // collective
//   w.write({{"latents", {first, my_latents}}, {"labels", {first, my_labels}}});  // collective, as often as needed
//   w.close();                                                                     // collective
//
// With parallel HDF5 the file stays open over MPI-IO and each write() is one collective transfer per dataset; with
// serial HDF5 (or force_serial) rank 0 creates the file and each write() has the ranks open, write and close it in
// turn (io/shared_file.hpp). Bad blocks (an unknown dataset, rows outside the dataset, another row shape) and HDF5
// failures stop every rank alike with one opendit::CollectiveError.
//
// Checksums: each rank takes the crc32 of the blocks it writes, from memory; close() combines them in row order on
// rank 0 and gives every dataset whose rows were written exactly once its crc32 attribute (io/checksum.hpp).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/h5.hpp"
#include "parallel/process_group.hpp"

namespace opendit::io {

struct RowDataset {
  std::string name;
  at::ScalarType dtype;               // float32, float16, bfloat16, int64 or uint8 (io/h5.hpp)
  std::vector<std::int64_t> row_shape;  // one row: {} for a scalar per row, {C, H, W} for a latent
  std::int64_t rows = 0;
};

// Rows [first, first + rows.size(0)) of one dataset (any float or integer dtype; converted to the stored one).
struct RowBlock {
  std::int64_t first = 0;
  at::Tensor rows;
};

class RowWriter {
 public:
  // Creates (truncating) `path` with the datasets; `root_attrs` writes attributes of the root group (it runs where
  // the file is created: every rank with parallel HDF5, rank 0 otherwise, so it must write the same everywhere).
  RowWriter(std::string path, std::vector<RowDataset> datasets, const parallel::ProcessGroup& group,
            bool force_serial = false, const std::function<void(H5Group&)>& root_attrs = nullptr);
  ~RowWriter();  // closes the file if close() was not called (errors cannot be reported there)
  RowWriter(const RowWriter&) = delete;
  RowWriter& operator=(const RowWriter&) = delete;

  // This rank's blocks, by dataset name; a rank may pass none (it still takes part).
  void write(const std::map<std::string, RowBlock>& blocks);
  void close();  // collective: the crc32 attributes, then the file is closed

 private:
  struct Piece {  // one block this rank wrote: its dataset (index), rows, crc32 and bytes
    std::int64_t dataset, first, rows, crc, bytes;
  };
  std::vector<std::int64_t> combined_crcs() const;  // collective: per dataset its crc32, or -1
  void check(const std::map<std::string, RowBlock>& blocks) const;
  void write_blocks(H5File& file, const std::map<std::string, RowBlock>& blocks, bool collective) const;

  std::string path_;
  std::vector<RowDataset> datasets_;
  parallel::ProcessGroup group_;
  bool collective_;
  std::unique_ptr<H5File> file_;  // open between writes with parallel HDF5
  bool closed_ = false;
  std::vector<Piece> pieces_;
};

}  // namespace opendit::io
