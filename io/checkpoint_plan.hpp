// How a checkpoint is shared out between ranks, before any file is touched (io/checkpoint.cpp uses it):
//  1. every rank learns every rank's flat range and so who handles what: an element belongs to the lowest rank
//     whose range holds it (when saving, a parameter element nobody holds is an error; when loading, rank 0 also
//     verifies what no range holds);
//  2. checksums: each rank computes the crc32 of its pieces from memory; rank 0 gathers them and combines them in
//     flat order (crc32_combine) into one crc per dataset.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/flat_layout.hpp"
#include "parallel/process_group.hpp"

namespace opendit::io::ckpt {

using Interval = std::pair<std::int64_t, std::int64_t>;  // [first, second)

// Collective: every rank's range, in rank order.
std::vector<FlatRange> all_ranges(FlatRange mine, const parallel::ProcessGroup& group);

// The flat intervals of [0, numel) that rank r handles: its range minus the ranges of lower ranks; rank 0 also
// gets what no range holds when `rank0_takes_rest` (loading verifies every element), else that is returned in *rest.
std::vector<Interval> assigned(const std::vector<FlatRange>& ranges, int r, std::int64_t numel, bool rank0_takes_rest,
                               std::vector<Interval>* rest);
std::vector<FlatLayout::Piece> pieces_of(const FlatLayout& layout, const std::vector<Interval>& intervals);

std::uint32_t crc_bytes(const void* p, std::int64_t bytes, std::uint32_t crc = 0);
std::uint32_t crc_tensor(const at::Tensor& t);  // of its bytes in C order

// The crc32 of one piece of one dataset: group g, entry e, elements [param, param + count).
struct CrcRecord {
  std::int64_t group, entry, param, count, crc;
};

// Collective. Rank 0: every rank's records combined into one crc per (group, entry) ([ngroups x entries]); an
// element of a group in `groups` missing from the records is described in *gap. Other ranks: empty.
std::vector<std::int64_t> combine_crcs(const std::vector<CrcRecord>& mine, const FlatLayout& layout,
                                       std::size_t ngroups, const std::vector<std::size_t>& groups,
                                       const parallel::ProcessGroup& group, std::string* gap);

}  // namespace opendit::io::ckpt
