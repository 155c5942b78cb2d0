// The last step of `opendit encode`: every block file (encode/block_file.hpp) copied into ONE opendit.latents
// version 2 file (docs/FORMATS.md), from all ranks: with parallel HDF5 one collective transfer per round of blocks,
// with serial HDF5 rank by rank (io/row_writer.hpp). The file is written as OUTPUT.partial and renamed when complete;
// a job killed here re-assembles on --resume. Row order does not depend on the world size: samples in input order,
// buckets sorted by shape, rows of a bucket in input order.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "encode/manifest.hpp"
#include "io/h5.hpp"
#include "parallel/process_group.hpp"

namespace opendit::encode {

struct AssembleSettings {
  std::string output, parts_dir;
  int64_t blocks = 0;
  at::ScalarType dtype = at::kHalf;  // of the latents and tokens (what the blocks hold)
  bool mean_only = false;
  int64_t text_dim = 0;  // > 0: the blocks hold caption tokens of this width
  bool force_serial = false;
  std::function<void(io::H5Group&)> root_attrs;  // the job's attributes (encoders, settings), same on every rank
};

struct AssembleResult {
  int64_t samples = 0, failures = 0, truncated = 0, bytes = 0;
  std::vector<std::pair<std::vector<int64_t>, int64_t>> buckets;  // shape, samples
  std::vector<std::pair<std::string, std::string>> failed;         // path, reason (input order)
};

// Collective over `group`. Throws opendit::CollectiveError when a block is missing or unreadable.
AssembleResult assemble(const InputList& inputs, const AssembleSettings& s, const parallel::ProcessGroup& group);

}  // namespace opendit::encode
