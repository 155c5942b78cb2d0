// Training checkpoints: model (fp32 master weights), EMA and AdamW state in one HDF5 file, written by any number of
// ranks and read back by any number (format "opendit.checkpoint", version 1: docs/FORMATS.md, "Checkpoints").
//
// Every parameter is stored as a float32 dataset of its own global shape, named by its key (/model/NAME, /ema/NAME,
// /optim/exp_avg/NAME, /optim/exp_avg_sq/NAME), so nothing in the file depends on the world size, the flat layout's
// alignment or the parameter order: a rank writes and reads the parts of parameters its flat range covers
// (FlatLayout::pieces), by name. Each dataset carries a crc32 of its data (C order, little-endian float32).
//
// Safety: the file is written as NAME.tmp, flushed, fsync'ed and renamed to NAME; then NAME.done is written and
// fsync'ed (io/atomic_file.hpp); a failed save removes its NAME.tmp. Only a checkpoint with its .done marker counts (latest_checkpoint); a crash at any point leaves the
// previous checkpoints as they were.
//
// Errors: everything a user can cause (missing or damaged file, another model, an unwritable folder) is an
// opendit::CollectiveError with one line naming the file, the object and expected vs found, thrown on EVERY rank of
// the group: the ranks agree on failure after each phase (ProcessGroup::agree), so no rank is left waiting in a
// collective.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/flat_layout.hpp"
#include "io/checksum.hpp"
#include "parallel/process_group.hpp"

namespace opendit::io {

inline constexpr const char* kCheckpointFormat = "opendit.checkpoint";
inline constexpr std::int64_t kCheckpointVersion = 1;

struct CheckpointMeta {
  std::int64_t step = 0;  // optimizer steps done
  std::int64_t loader_epoch = 0, loader_cursor = 0;
  std::int64_t skipped_in_a_row = 0;
  std::int64_t optimizer_step = 0;  // AdamW updates done (steps minus skipped ones): bias correction resumes here
  int world_size = 1, dp_size = 1, sp_size = 1;  // as written
  std::string strategy, deck_json, model_json;   // "ddp"|"zero1"|"zero2"; the resolved deck; DiTConfig as JSON
  std::uint64_t seed = 0;
  // Filled in by save / read back by load; ignored when passed to save.
  std::string created_at, created_by;
};

// One rank's part of the sharded training state: float32 CPU tensors [range.size()] for the flat range `range` of
// the layout, one per group: "model", "ema" (optional: leave it out when training without EMA; then every rank
// leaves it out), "optim/exp_avg", "optim/exp_avg_sq". Gaps and padding inside the range are ignored on save and
// zero on load. Ranges of different ranks may overlap (ddp: every rank holds everything); each element is written
// by the lowest rank that holds it. Together they must cover every parameter.
struct ShardedState {
  FlatRange range;
  std::map<std::string, at::Tensor> groups;
};

// The groups a checkpoint holds, in file order.
const std::vector<std::string>& checkpoint_groups();  // model, ema, optim/exp_avg, optim/exp_avg_sq

// "DIR/ckpt-00000042.h5" for step 42.
std::string checkpoint_path(const std::string& dir, std::int64_t step);

// Collective over comm. Writes DIR/ckpt-<step, 8 digits>.h5 atomically (creating DIR if needed) and returns its
// path; then keeps the newest `keep_last` complete checkpoints in DIR (keep_last <= 0: keeps all) and deletes older
// ones and leftover .tmp files of earlier steps. `frozen` (rank 0's is used) holds full tensors that are not in the
// layout (DiT's pos_embed), written under /model and /ema too so that both are complete state dicts.
// force_serial: the serial path even when HDF5 is parallel (rank 0 creates the file, the ranks write in turn).
std::string save_checkpoint(const std::string& dir, const FlatLayout& layout, const ShardedState& mine,
                            const std::map<std::string, at::Tensor>& frozen, const CheckpointMeta& meta,
                            const parallel::ProcessGroup& group, int keep_last, bool force_serial = false);

// The newest complete checkpoint in DIR (ckpt-NNNNNNNN.h5 with its .done marker), or nullopt. One process.
std::optional<std::string> latest_checkpoint(const std::string& dir);
// The steps of DIR's complete checkpoints, ascending. One process.
std::vector<std::int64_t> complete_checkpoints(const std::string& dir);
// The checkpoint files of DIR (ckpt-N.h5, .done, .tmp) for which pick(step, is_tmp) holds, sorted by name.
std::vector<std::string> checkpoint_files(const std::string& dir, std::function<bool(std::int64_t, bool)> pick);

// Collective: validates the file (format and version, every parameter of `layout` present with its shape and
// float32, checksums of every parameter dataset) and fills mine.groups for mine.range from /model,
// /optim/exp_avg, /optim/exp_avg_sq and, when the file has it, /ema. Any world size and any layout with the same
// parameter names and shapes. Returns the meta.
CheckpointMeta load_checkpoint(const std::string& path, const FlatLayout& layout, ShardedState& mine,
                               const parallel::ProcessGroup& group);

// Reads only the meta (root attributes), after checking format and version. One process.
CheckpointMeta read_checkpoint_meta(const std::string& path);

// Full tensors of one group ("model" or "ema", also the optimizer groups) by parameter name, frozen ones included,
// checksums verified. One process (for export).
std::map<std::string, at::Tensor> read_checkpoint_weights(const std::string& path, const std::string& group);
// The same for the named tensors only (a resume reads the frozen buffers that are not recomputed: STDiT's null
// caption). A name the group lacks is an opendit::Error naming it.
std::map<std::string, at::Tensor> read_checkpoint_tensors(const std::string& path, const std::string& group,
                                                          const std::vector<std::string>& names);

// `opendit check`: the meta (format and version first), then every dataset of every group the file has (/model,
// /ema when present, /optim/...), each read and compared with its crc32; a dataset without one is reported with no
// expected value (the caller counts it as damaged: every checkpoint dataset has one). One process.
CheckpointMeta check_checkpoint(const std::string& path, const std::function<void(const DatasetCheck&)>& on_check,
                                const std::function<void(std::int64_t)>& on_bytes = {});

}  // namespace opendit::io
