// The HDF5 side of checkpoints (io/checkpoint.cpp uses it): the root attributes (the meta), parameter datasets
// checked against the layout, and transfers of element runs between a dataset and a float32 buffer.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/flat_layout.hpp"
#include "io/checkpoint.hpp"
#include "io/checkpoint_plan.hpp"
#include "io/h5.hpp"

namespace opendit::io::ckpt {

void write_meta(H5Group& root, const CheckpointMeta& meta);
// Checks format and version (one opendit::Error naming the file and what was found), then reads the meta.
CheckpointMeta check_and_read_meta(const H5Group& root);

// A parameter dataset as the layout wants it: float32, the entry's shape, with a crc32 attribute.
H5Dataset open_param(const H5Group& group, const FlatEntry& entry);

// "optim/exp_avg" under root.
H5Group open_path(const H5Group& root, const std::string& path);

// Writes (or reads) `runs` (element offset, count; sorted, disjoint) of dataset ds between the file and the
// contiguous float32 buffer `buf` holding the runs one after another. An empty list takes part with no selection
// (collective transfers: every rank calls).
void transfer_runs(const H5Dataset& ds, bool write, const std::vector<Interval>& runs, void* buf, bool collective);

}  // namespace opendit::io::ckpt
