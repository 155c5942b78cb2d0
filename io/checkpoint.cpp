// Checkpoints; see checkpoint.hpp and docs/FORMATS.md ("Checkpoints"). The plan (who writes and verifies what,
// checksums) is io/checkpoint_plan.cpp, the HDF5 side io/checkpoint_h5.cpp; this file puts them together: check the
// input, plan, write through write_shared_file (parallel HDF5 collectively, else rank by rank), then rank 0 makes
// the file durable, visible and marked complete (AtomicFile), and prunes older ones.
#include "io/checkpoint.hpp"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <optional>
#include <sstream>

#include "core/build_info.hpp"
#include "core/error.hpp"
#include "core/strings.hpp"
#include "io/atomic_file.hpp"
#include "io/checkpoint_h5.hpp"
#include "io/checkpoint_plan.hpp"
#include "io/files.hpp"
#include "io/shared_file.hpp"

namespace opendit::io {

using namespace ckpt;

namespace {

const std::vector<std::string> kGroups = {"model", "ema", "optim/exp_avg", "optim/exp_avg_sq"};
constexpr std::size_t kEma = 1;

bool layout_has(const FlatLayout& layout, const std::string& name) {
  for (const auto& e : layout.entries())
    if (e.name == name) return true;
  return false;
}

// ckpt-<digits>.h5, ckpt-<digits>.h5.tmp, ckpt-<digits>.h5.done: the step and the suffix ("", ".tmp", ".done").
std::optional<std::pair<std::int64_t, std::string>> parse_name(const std::string& name) {
  if (name.rfind("ckpt-", 0) != 0) return std::nullopt;
  std::size_t i = 5;
  while (i < name.size() && std::isdigit(static_cast<unsigned char>(name[i]))) ++i;
  if (i - 5 < 8 || i - 5 > 18 || name.compare(i, 3, ".h5") != 0) return std::nullopt;
  const std::string suffix = name.substr(i + 3);
  if (suffix != "" && suffix != ".tmp" && suffix != ".done") return std::nullopt;
  return std::make_pair(std::stoll(name.substr(5, i - 5)), suffix);
}

void prune(const std::string& dir, std::int64_t current_step, int keep_last) {
  std::vector<std::int64_t> complete = complete_checkpoints(dir);
  std::reverse(complete.begin(), complete.end());  // newest first
  std::vector<std::int64_t> keep(complete.begin(), keep_last > 0 && std::size_t(keep_last) < complete.size()
                                                       ? complete.begin() + keep_last
                                                       : complete.end());
  for (const auto& [name, path] : list_dir(dir)) {
    auto p = parse_name(name);
    if (!p || p->first == current_step || std::find(keep.begin(), keep.end(), p->first) != keep.end()) continue;
    // Older than the newest kept ones (or a leftover of an earlier step): the marker goes first, so a
    // half-deleted checkpoint never looks complete.
    if (p->first > current_step) continue;  // a later step (another run's?): not ours to judge
    if (p->second.empty()) ::unlink(done_marker(path).c_str());
    ::unlink(path.c_str());
  }
}

}  // namespace

const std::vector<std::string>& checkpoint_groups() { return kGroups; }

std::string checkpoint_path(const std::string& dir, std::int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "ckpt-%08lld.h5", static_cast<long long>(step));
  return dir + "/" + buf;
}

// ---- save --------------------------------------------------------------------------------------------

std::string save_checkpoint(const std::string& dir, const FlatLayout& layout, const ShardedState& mine,
                            const std::map<std::string, at::Tensor>& frozen, const CheckpointMeta& meta_in,
                            const parallel::ProcessGroup& group, int keep_last, bool force_serial) {
  const int rank = group.rank();
  const auto& entries = layout.entries();
  const std::string final_path = checkpoint_path(dir, meta_in.step);
  const std::string tmp_path = AtomicFile::tmp_path_for(final_path);  // every rank writes into it
  // Rank 0 owns the file once the input is checked: it removes NAME.tmp if anything fails, and renames and marks
  // it complete at the end.
  std::optional<AtomicFile> file_out;

  // Which groups: every rank must agree on whether there is an EMA.
  const std::int64_t has_ema = mine.groups.count("ema") ? 1 : 0;
  const std::int64_t ema_min = group.all_reduce(has_ema, parallel::ReduceOp::Min);
  const std::int64_t ema_max = group.all_reduce(has_ema, parallel::ReduceOp::Max);
  std::vector<std::size_t> groups;
  for (std::size_t g = 0; g < kGroups.size(); ++g)
    if (g != kEma || ema_max) groups.push_back(g);

  // Check the input on every rank; rank 0 makes the folder.
  group.agree([&] {
    if (ema_min != ema_max) throw Error("save_checkpoint: some ranks pass an 'ema' group and some do not");
    for (std::size_t g : groups) {
      auto it = mine.groups.find(kGroups[g]);
      if (it == mine.groups.end()) throw Error(cat("save_checkpoint: group '", kGroups[g], "' is missing"));
      const at::Tensor& t = it->second;
      if (t.scalar_type() != at::kFloat || t.dim() != 1 || t.size(0) != mine.range.size())
        throw Error(cat("save_checkpoint: group '", kGroups[g], "' must be float32 [", mine.range.size(), "], found ",
                        dtype_name(t.scalar_type()), " ", shape_str(t.sizes().vec())));
    }
    for (const auto& e : entries)
      if (e.name.empty() || e.name.find('/') != std::string::npos || e.name == "." || e.name == "..")
        throw Error(cat("save_checkpoint: parameter name '", e.name, "' cannot name a dataset"));
    if (rank == 0) {
      for (const auto& [name, t] : frozen) {
        if (layout_has(layout, name)) throw Error(cat("save_checkpoint: frozen tensor '", name, "' is in the layout"));
        if (t.dim() == 0 || name.find('/') != std::string::npos)
          throw Error(cat("save_checkpoint: frozen tensor '", name, "' must have a name without '/' and rank >= 1"));
      }
      make_dirs(dir, "checkpoint folder");
    }
  });
  if (rank == 0) file_out.emplace(final_path);

  // Who writes what.
  const auto ranges = all_ranges(mine.range, group);
  std::vector<Interval> rest;
  const auto my_ivs = assigned(ranges, rank, layout.numel(), false, &rest);
  const auto rest_pieces = pieces_of(layout, rest);
  if (!rest_pieces.empty())
    throw CollectiveError(cat("save_checkpoint: elements [", rest_pieces[0].param, ", ",
                    rest_pieces[0].param + rest_pieces[0].count, ") of parameter '", entries[rest_pieces[0].entry].name,
                    "' are in no rank's range"));
  const auto my_pieces = pieces_of(layout, my_ivs);

  // Checksums: pieces from memory, combined on rank 0, then known to all.
  std::vector<CrcRecord> records;
  std::map<std::size_t, at::Tensor> host;  // group -> contiguous CPU float32
  for (std::size_t g : groups) host[g] = mine.groups.at(kGroups[g]).cpu().contiguous();
  for (std::size_t g : groups)
    for (const auto& p : my_pieces) {
      const float* data = host[g].data_ptr<float>() + (p.flat - mine.range.begin);
      records.push_back(
          {std::int64_t(g), std::int64_t(p.entry), p.param, p.count, std::int64_t(crc_bytes(data, p.count * 4))});
    }
  std::string gap;
  std::vector<std::int64_t> crcs = combine_crcs(records, layout, kGroups.size(), groups, group, &gap);
  crcs.resize(kGroups.size() * entries.size());
  crcs = group.broadcast(crcs, 0);

  // Rank 0's meta and frozen tensors (names, shapes, crcs) for everyone.
  CheckpointMeta meta = meta_in;
  meta.created_at = group.broadcast(now_iso8601());
  meta.created_by = group.broadcast(cat("opendit ", OPENDIT_VERSION, " (", OPENDIT_GIT_COMMIT, ")"));
  meta.strategy = group.broadcast(meta.strategy);
  meta.deck_json = group.broadcast(meta.deck_json);
  meta.model_json = group.broadcast(meta.model_json);
  const std::vector<std::int64_t> ints = group.broadcast(std::vector<std::int64_t>{
      meta.step, meta.loader_epoch, meta.loader_cursor, meta.skipped_in_a_row, meta.world_size, meta.dp_size,
      meta.sp_size, std::int64_t(meta.seed), meta.optimizer_step});
  meta.optimizer_step = ints[8];
  meta.step = ints[0], meta.loader_epoch = ints[1], meta.loader_cursor = ints[2], meta.skipped_in_a_row = ints[3];
  meta.world_size = int(ints[4]), meta.dp_size = int(ints[5]), meta.sp_size = int(ints[6]);
  meta.seed = std::uint64_t(ints[7]);
  struct FrozenInfo {
    std::string name;
    std::vector<std::int64_t> shape;
    std::int64_t crc;
  };
  std::vector<FrozenInfo> frozen_info;
  {
    std::string desc;
    if (rank == 0)
      for (const auto& [name, t] : frozen) {
        desc += name + "\n" + std::to_string(t.dim());
        for (auto d : t.sizes()) desc += " " + std::to_string(d);
        desc += " " + std::to_string(crc_tensor(t.to(at::kFloat).cpu())) + "\n";
      }
    desc = group.broadcast(desc);
    std::istringstream in(desc);
    std::string name;
    while (std::getline(in, name)) {
      FrozenInfo f{name, {}, 0};
      int nd = 0;
      in >> nd;
      f.shape.resize(nd);
      for (auto& d : f.shape) in >> d;
      in >> f.crc;
      in.ignore(1);
      frozen_info.push_back(f);
    }
  }

  // The metadata of the file: groups, datasets, attributes. Identical on every rank that calls it.
  auto create_structure = [&](H5File& file) {
    H5Group root = file.root();
    write_meta(root, meta);
    H5Group optim = root.create_group("optim");
    for (std::size_t g : groups) {
      H5Group grp =
          kGroups[g].rfind("optim/", 0) == 0 ? optim.create_group(kGroups[g].substr(6)) : root.create_group(kGroups[g]);
      for (std::size_t e = 0; e < entries.size(); ++e) {
        H5Dataset ds = grp.create_dataset(entries[e].name, at::kFloat, entries[e].shape);
        ds.write_attr("crc32", crcs[g * entries.size() + e]);
      }
      if (g == 0 || g == kEma)
        for (const auto& f : frozen_info) {
          H5Dataset ds = grp.create_dataset(f.name, at::kFloat, f.shape);
          ds.write_attr("crc32", f.crc);
        }
    }
  };
  // This rank's pieces of every dataset; with `collective`, every rank calls every write.
  auto write_pieces = [&](H5File& file, bool collective) {
    H5Group root = file.root();
    for (std::size_t g : groups) {
      H5Group grp = open_path(root, kGroups[g]);
      for (std::size_t e = 0; e < entries.size(); ++e) {
        std::vector<Interval> runs;
        std::vector<at::Tensor> parts;
        for (const auto& p : my_pieces)
          if (p.entry == e)
            runs.push_back({p.param, p.count}), parts.push_back(host[g].narrow(0, p.flat - mine.range.begin, p.count));
        if (runs.empty() && !collective) continue;
        std::sort(runs.begin(), runs.end());  // pieces come in flat order, which is element order within an entry
        at::Tensor buf = parts.empty() ? at::empty({1}, at::kFloat) : parts.size() == 1 ? parts[0] : at::cat(parts);
        transfer_runs(grp.open_dataset(entries[e].name), true, runs, buf.data_ptr(), collective);
      }
      if (rank == 0 && (g == 0 || g == kEma))
        for (const auto& [name, t] : frozen) grp.open_dataset(name).write(t.to(at::kFloat).cpu().contiguous());
    }
  };

  write_shared_file(tmp_path, group, force_serial, create_structure, write_pieces);
  group.agree([&] {
    if (!gap.empty()) throw Error(cat("save_checkpoint: internal error: no checksum for ", gap));
  });

  // Durable, then visible, then marked complete.
  group.agree([&] {
    if (rank != 0) return;
    file_out->commit_with_marker(cat(kCheckpointFormat, " step ", meta.step, " complete ", meta.created_at, "\n"));
    prune(dir, meta.step, keep_last);
  });
  return final_path;
}

// ---- find ----------------------------------------------------------------------------------------------

std::vector<std::int64_t> complete_checkpoints(const std::string& dir) {
  std::vector<std::int64_t> steps;
  for (const auto& [name, path] : list_dir(dir)) {
    auto p = parse_name(name);
    if (p && p->second.empty() && path_exists(done_marker(path))) steps.push_back(p->first);
  }
  std::sort(steps.begin(), steps.end());
  return steps;
}

std::optional<std::string> latest_checkpoint(const std::string& dir) {
  const std::vector<std::int64_t> steps = complete_checkpoints(dir);
  if (steps.empty()) return std::nullopt;
  return checkpoint_path(dir, steps.back());
}

std::vector<std::string> checkpoint_files(const std::string& dir, std::function<bool(std::int64_t, bool)> pick) {
  std::vector<std::string> out;
  for (const auto& [name, path] : list_dir(dir)) {
    auto p = parse_name(name);
    if (p && pick(p->first, p->second == ".tmp")) out.push_back(path);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// ---- load ----------------------------------------------------------------------------------------------

CheckpointMeta read_checkpoint_meta(const std::string& path) {
  H5File file = H5File::open(path);
  return check_and_read_meta(file.root());
}

CheckpointMeta load_checkpoint(const std::string& path, const FlatLayout& layout, ShardedState& mine,
                               const parallel::ProcessGroup& group) {
  const int rank = group.rank();
  const auto& entries = layout.entries();
  std::unique_ptr<H5File> file;
  CheckpointMeta meta;
  std::vector<std::size_t> groups;
  std::vector<std::int64_t> stored;  // crc per (group, entry)

  // 1. Structure: every rank opens the file on its own (reading needs no MPI-IO) and checks it.
  group.agree([&] {
    file = std::make_unique<H5File>(H5File::open(path));
    H5Group root = file->root();
    meta = check_and_read_meta(root);
    stored.assign(kGroups.size() * entries.size(), 0);
    for (std::size_t g = 0; g < kGroups.size(); ++g) {
      if (g == kEma && !root.has("ema")) continue;
      groups.push_back(g);
      H5Group grp = open_path(root, kGroups[g]);
      for (std::size_t e = 0; e < entries.size(); ++e)
        stored[g * entries.size() + e] = open_param(grp, entries[e]).read_attr_int64("crc32");
    }
  });

  // 2. Data: this rank's range, plus the crc32 of the pieces it verifies.
  const auto ranges = all_ranges(mine.range, group);
  std::vector<CrcRecord> records;
  group.agree([&] {
    H5Group root = file->root();
    const auto my_pieces = layout.pieces(mine.range);
    const auto verify = pieces_of(layout, assigned(ranges, rank, layout.numel(), true, nullptr));
    mine.groups.clear();
    for (std::size_t g : groups) {
      H5Group grp = open_path(root, kGroups[g]);
      at::Tensor out = at::zeros({mine.range.size()}, at::kFloat);
      for (const auto& p : my_pieces) {
        at::Tensor dst = out.narrow(0, p.flat - mine.range.begin, p.count);
        transfer_runs(grp.open_dataset(entries[p.entry].name), false, {{p.param, p.count}}, dst.data_ptr(), false);
      }
      for (const auto& p : verify) {
        const bool inside = p.flat >= mine.range.begin && p.flat + p.count <= mine.range.end;
        at::Tensor data;
        if (inside) {
          data = out.narrow(0, p.flat - mine.range.begin, p.count);
        } else {
          data = at::empty({p.count}, at::kFloat);
          transfer_runs(grp.open_dataset(entries[p.entry].name), false, {{p.param, p.count}}, data.data_ptr(), false);
        }
        records.push_back({std::int64_t(g), std::int64_t(p.entry), p.param, p.count,
                           std::int64_t(crc_bytes(data.data_ptr(), p.count * 4))});
      }
      mine.groups[kGroups[g]] = out;
    }
  });
  file.reset();

  // 3. Checksums, combined and compared on rank 0.
  std::string gap;
  const auto crcs = combine_crcs(records, layout, kGroups.size(), groups, group, &gap);
  group.agree([&] {
    if (rank != 0) return;
    if (!gap.empty()) throw Error(cat("load_checkpoint: internal error: no checksum for ", gap));
    for (std::size_t g : groups)
      for (std::size_t e = 0; e < entries.size(); ++e) {
        const std::size_t k = g * entries.size() + e;
        if (crcs[k] != stored[k])
          throw Error(cat("HDF5 file '", path, "', object '/", kGroups[g], "/", entries[e].name,
                          "': checksum mismatch: expected crc32 ", stored[k], ", found ", crcs[k],
                          " (the data is damaged)"));
      }
  });
  return meta;
}

std::map<std::string, at::Tensor> read_checkpoint_weights(const std::string& path, const std::string& group) {
  if (std::find(kGroups.begin(), kGroups.end(), group) == kGroups.end())
    throw Error(
        cat("read_checkpoint_weights: unknown group '", group, "' (model, ema, optim/exp_avg, optim/exp_avg_sq)"));
  H5File file = H5File::open(path);
  H5Group root = file.root();
  check_and_read_meta(root);
  return read_checkpoint_tensors(path, group, open_path(root, group).children());
}

std::map<std::string, at::Tensor> read_checkpoint_tensors(const std::string& path, const std::string& group,
                                                          const std::vector<std::string>& names) {
  H5File file = H5File::open(path);
  H5Group root = file.root();
  check_and_read_meta(root);
  H5Group grp = open_path(root, group);
  std::map<std::string, at::Tensor> out;
  for (const auto& name : names) {
    if (!grp.has(name)) throw Error(cat(path, ": /", group, " holds no '", name, "'"));
    H5Dataset ds = grp.open_dataset(name);
    if (ds.dtype() != at::kFloat) ds.fail(cat("expected dtype float32, found ", dtype_name(ds.dtype())));
    at::Tensor t = ds.read();
    const std::int64_t want = ds.read_attr_int64("crc32"), found = crc_tensor(t);
    if (want != found)
      ds.fail(cat("checksum mismatch: expected crc32 ", want, ", found ", found, " (the data is damaged)"));
    out[name] = t;
  }
  return out;
}

CheckpointMeta check_checkpoint(const std::string& path, const std::function<void(const DatasetCheck&)>& on_check,
                                const std::function<void(std::int64_t)>& on_bytes) {
  H5File file = H5File::open(path);
  const H5Group root = file.root();
  const CheckpointMeta meta = check_and_read_meta(root);
  for (std::size_t g = 0; g < kGroups.size(); ++g) {
    if (g == kEma && !root.has("ema")) continue;
    const H5Group grp = open_path(root, kGroups[g]);
    for (const auto& name : grp.children()) on_check(check_dataset(grp.open_dataset(name), on_bytes));
  }
  return meta;
}

}  // namespace opendit::io
