// Checkpoints; see checkpoint.hpp and docs/FORMATS.md ("Checkpoints").
//
// Both writing paths share one plan, made before the file is touched:
//  1. every rank learns every rank's flat range (allgather) and so who writes what: an element belongs to the
//     lowest rank whose range holds it; a parameter element nobody holds is an error (the same on every rank);
//  2. every rank computes the crc32 of each of its pieces from memory; rank 0 gathers them, combines them in flat
//     order (crc32_combine) into one crc per dataset and broadcasts them, so that every rank writes the same
//     attributes (parallel HDF5 wants identical metadata on all ranks).
// Then, with parallel HDF5: create the file, groups, datasets and attributes collectively and write every dataset
// with one collective H5Dwrite per rank (a rank without a piece selects nothing). With serial HDF5 (or
// force_serial): rank 0 creates everything, then rank after rank opens the file, writes its pieces and closes it.
// Rank 0 finally fsyncs, renames NAME.tmp to NAME, writes and fsyncs NAME.done and the folder, and prunes.
#include "io/checkpoint.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <ctime>
#include <functional>
#include <memory>
#include <sstream>
#include <tuple>

#include "core/build_info.hpp"
#include "core/error.hpp"
#include "io/files.hpp"
#include "io/h5.hpp"

namespace opendit::io {
namespace {

using train::FlatLayout;
using train::FlatRange;
using Interval = std::pair<std::int64_t, std::int64_t>;  // [first, second)

const std::vector<std::string> kGroups = {"model", "ema", "optim/exp_avg", "optim/exp_avg_sq"};
constexpr std::size_t kEma = 1;

int comm_rank(MPI_Comm c) {
  int r = 0;
  MPI_Comm_rank(c, &r);
  return r;
}
int comm_size(MPI_Comm c) {
  int s = 1;
  MPI_Comm_size(c, &s);
  return s;
}

// Runs f on every rank; if it threw on any rank, every rank throws the message of the lowest such rank.
// f must not call collectives that a failing rank could skip.
void agree(MPI_Comm comm, const std::function<void()>& f) {
  std::string msg;
  int mine = INT_MAX;
  try {
    f();
  } catch (const std::exception& e) {
    msg = e.what(), mine = comm_rank(comm);
  }
  int first = INT_MAX;
  MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm);
  if (first == INT_MAX) return;
  int len = int(msg.size());
  MPI_Bcast(&len, 1, MPI_INT, first, comm);
  msg.resize(len);
  MPI_Bcast(msg.data(), len, MPI_CHAR, first, comm);
  throw Error(msg);
}

std::string bcast_string(std::string s, MPI_Comm comm) {
  std::int64_t len = std::int64_t(s.size());
  MPI_Bcast(&len, 1, MPI_INT64_T, 0, comm);
  s.resize(len);
  if (len) MPI_Bcast(s.data(), int(len), MPI_CHAR, 0, comm);
  return s;
}

bool layout_has(const FlatLayout& layout, const std::string& name) {
  for (const auto& e : layout.entries())
    if (e.name == name) return true;
  return false;
}

std::string shape_str(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// ---- who handles what -------------------------------------------------------------------------------

std::vector<Interval> subtract(const std::vector<Interval>& a, Interval b) {
  std::vector<Interval> out;
  for (auto [s, e] : a) {
    if (b.second <= s || b.first >= e) {
      out.push_back({s, e});
      continue;
    }
    if (s < b.first) out.push_back({s, b.first});
    if (b.second < e) out.push_back({b.second, e});
  }
  return out;
}

// The flat intervals of [0, numel) that rank r handles: its range minus the ranges of lower ranks; rank 0 also
// gets what no range holds when `rank0_takes_rest` (loading verifies every element), else that is returned in *rest.
std::vector<Interval> assigned(const std::vector<FlatRange>& ranges, int r, std::int64_t numel, bool rank0_takes_rest,
                               std::vector<Interval>* rest) {
  std::vector<Interval> mine = {{std::max<std::int64_t>(ranges[r].begin, 0), std::min(ranges[r].end, numel)}};
  if (mine[0].first >= mine[0].second) mine.clear();
  for (int q = 0; q < r; ++q) mine = subtract(mine, {ranges[q].begin, ranges[q].end});
  std::vector<Interval> uncovered = {{0, numel}};
  for (const auto& x : ranges) uncovered = subtract(uncovered, {x.begin, x.end});
  if (rest) *rest = uncovered;
  if (r == 0 && rank0_takes_rest) mine.insert(mine.end(), uncovered.begin(), uncovered.end());
  return mine;
}

std::vector<FlatLayout::Piece> pieces_of(const FlatLayout& layout, const std::vector<Interval>& ivs) {
  std::vector<FlatLayout::Piece> out;
  for (auto [s, e] : ivs)
    for (const auto& p : layout.pieces({s, e})) out.push_back(p);
  return out;
}

std::vector<FlatRange> allgather_ranges(FlatRange r, MPI_Comm comm) {
  const int n = comm_size(comm);
  std::int64_t mine[2] = {r.begin, r.end};
  std::vector<std::int64_t> all(2 * n);
  MPI_Allgather(mine, 2, MPI_INT64_T, all.data(), 2, MPI_INT64_T, comm);
  std::vector<FlatRange> out(n);
  for (int i = 0; i < n; ++i) out[i] = {all[2 * i], all[2 * i + 1]};
  return out;
}

// ---- checksums ---------------------------------------------------------------------------------------

std::uint32_t crc_bytes(const void* p, std::int64_t bytes, std::uint32_t crc = 0) {
  auto c = static_cast<const Bytef*>(p);
  uLong v = crc;
  while (bytes > 0) {
    const uInt n = uInt(std::min<std::int64_t>(bytes, std::int64_t(1) << 30));
    v = crc32(v, c, n);
    c += n, bytes -= n;
  }
  return std::uint32_t(v);
}

std::uint32_t crc_tensor(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  return crc_bytes(c.data_ptr(), c.numel() * std::int64_t(c.element_size()));
}

// The crc32 of one piece of one dataset: group g, entry e, elements [param, param + count).
struct CrcRecord {
  std::int64_t group, entry, param, count, crc;
};

// Rank 0: every rank's records combined into one crc per (group, entry), in C order; an element missing from the
// records is an internal error. Other ranks: empty.
std::vector<std::int64_t> combine_crcs(const std::vector<CrcRecord>& mine, const FlatLayout& layout,
                                       std::size_t ngroups, const std::vector<std::size_t>& groups, MPI_Comm comm,
                                       std::string* gap) {
  static_assert(sizeof(CrcRecord) == 5 * sizeof(std::int64_t));
  const int n = comm_size(comm), rank = comm_rank(comm);
  int count = int(mine.size() * 5);
  std::vector<int> counts(n), displs(n);
  MPI_Gather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, 0, comm);
  int total = 0;
  for (int i = 0; i < n; ++i) displs[i] = total, total += counts[i];
  std::vector<CrcRecord> all(rank == 0 ? total / 5 : 0);
  MPI_Gatherv(mine.data(), count, MPI_INT64_T, all.data(), counts.data(), displs.data(), MPI_INT64_T, 0, comm);
  if (rank != 0) return {};
  std::sort(all.begin(), all.end(), [](const CrcRecord& a, const CrcRecord& b) {
    return std::tie(a.group, a.entry, a.param) < std::tie(b.group, b.entry, b.param);
  });
  const auto& entries = layout.entries();
  std::vector<std::int64_t> crcs(ngroups * entries.size(), 0);
  std::vector<std::int64_t> done(ngroups * entries.size(), 0);
  for (const auto& r : all) {
    const std::size_t k = std::size_t(r.group) * entries.size() + std::size_t(r.entry);
    if (r.param != done[k]) {
      if (gap->empty()) *gap = cat("elements [", done[k], ", ", r.param, ") of ", entries[r.entry].name);
      continue;
    }
    crcs[k] = std::int64_t(crc32_combine(uLong(crcs[k]), uLong(r.crc), z_off_t(r.count * 4)));
    done[k] += r.count;
  }
  for (std::size_t k = 0; k < done.size(); ++k)
    if (std::count(groups.begin(), groups.end(), k / entries.size()) && done[k] != entries[k % entries.size()].numel &&
        gap->empty())
      *gap = cat("elements [", done[k], ", ", entries[k % entries.size()].numel, ") of ",
                 entries[k % entries.size()].name);
  return crcs;
}

// ---- hyperslabs ----------------------------------------------------------------------------------------

// Selects (OR) elements [offset, offset + count) of a C-order array of shape dims in `space`: a contiguous run of
// a row-major array is a union of at most 2 * rank - 1 boxes.
void select_run(hid_t space, const std::vector<std::int64_t>& dims, std::int64_t offset, std::int64_t count) {
  const std::size_t nd = dims.size();
  if (nd == 0) {
    if (count > 0) H5Sselect_all(space);
    return;
  }
  std::vector<std::int64_t> stride(nd, 1);
  for (std::size_t i = nd - 1; i > 0; --i) stride[i - 1] = stride[i] * dims[i];
  std::vector<hsize_t> start(nd), size(nd);
  while (count > 0) {
    std::size_t i = 0;  // the outermost dimension whose blocks start here and fit
    while (offset % stride[i] != 0 || stride[i] > count) ++i;
    const std::int64_t coord = (offset / stride[i]) % dims[i];
    const std::int64_t m = std::min(count / stride[i], dims[i] - coord);
    for (std::size_t j = 0; j < nd; ++j) {
      if (j < i)
        start[j] = hsize_t((offset / stride[j]) % dims[j]), size[j] = 1;
      else if (j == i)
        start[j] = hsize_t(coord), size[j] = hsize_t(m);
      else
        start[j] = 0, size[j] = hsize_t(dims[j]);
    }
    if (H5Sselect_hyperslab(space, H5S_SELECT_OR, start.data(), nullptr, size.data(), nullptr) < 0)
      throw Error("cannot select a hyperslab");
    offset += m * stride[i], count -= m * stride[i];
  }
}

// Writes (or reads) `runs` (element offset, count; sorted, disjoint) of dataset ds between the file and the
// contiguous float32 buffer `buf` holding the runs one after another. An empty list takes part with no selection.
void transfer_runs(const H5Dataset& ds, bool write, const std::vector<Interval>& runs, void* buf, bool collective) {
  std::lock_guard<std::recursive_mutex> lock(h5_mutex());
  H5Space file_space(H5Dget_space(ds.id()));
  if (file_space.id() < 0) ds.fail("cannot read the dataspace");
  const auto dims = ds.shape();
  std::int64_t total = 0;
  H5Sselect_none(file_space.id());
  for (auto [off, n] : runs) select_run(file_space.id(), dims, off, n), total += n;
  H5Space mem_space = H5Space::simple({std::max<std::int64_t>(total, 1)});
  if (total == 0) mem_space.select_none();
  H5PropList xfer = H5PropList::transfer(collective);
  const herr_t rc = write ? H5Dwrite(ds.id(), H5T_NATIVE_FLOAT, mem_space.id(), file_space.id(), xfer.id(), buf)
                          : H5Dread(ds.id(), H5T_NATIVE_FLOAT, mem_space.id(), file_space.id(), xfer.id(), buf);
  if (rc < 0) ds.fail(cat(write ? "cannot write " : "cannot read ", total, " elements"));
}

H5Group open_path(const H5Group& root, const std::string& path) {
  H5Group g = root.open_group(path.substr(0, path.find('/')));
  std::size_t pos = path.find('/');
  while (pos != std::string::npos) {
    const std::size_t next = path.find('/', pos + 1);
    g = g.open_group(path.substr(pos + 1, next == std::string::npos ? std::string::npos : next - pos - 1));
    pos = next;
  }
  return g;
}

// ---- files and folders -------------------------------------------------------------------------------------

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
  std::vector<std::int64_t> complete;
  for (const auto& [name, path] : list_dir(dir)) {
    auto p = parse_name(name);
    if (p && p->second.empty() && path_exists(path + ".done")) complete.push_back(p->first);
  }
  std::sort(complete.rbegin(), complete.rend());
  std::vector<std::int64_t> keep(complete.begin(), keep_last > 0 && std::size_t(keep_last) < complete.size()
                                                       ? complete.begin() + keep_last
                                                       : complete.end());
  for (const auto& [name, path] : list_dir(dir)) {
    auto p = parse_name(name);
    if (!p || p->first == current_step || std::find(keep.begin(), keep.end(), p->first) != keep.end()) continue;
    // Older than the newest kept ones (or a leftover of an earlier step): the marker goes first, so a
    // half-deleted checkpoint never looks complete.
    if (p->first > current_step) continue;  // a later step (another run's?): not ours to judge
    if (p->second.empty()) ::unlink((path + ".done").c_str());
    ::unlink(path.c_str());
  }
}


// ---- meta --------------------------------------------------------------------------------------------

void write_meta(H5Group& root, const CheckpointMeta& m) {
  root.write_attr("format", kCheckpointFormat);
  root.write_attr("version", kCheckpointVersion);
  root.write_attr("step", m.step);
  root.write_attr("loader_epoch", m.loader_epoch);
  root.write_attr("loader_cursor", m.loader_cursor);
  root.write_attr("skipped_in_a_row", m.skipped_in_a_row);
  root.write_attr("optimizer_step", m.optimizer_step);
  root.write_attr("world_size", m.world_size);
  root.write_attr("dp_size", m.dp_size);
  root.write_attr("sp_size", m.sp_size);
  root.write_attr("strategy", m.strategy);
  root.write_attr("seed", std::int64_t(m.seed));
  root.write_attr("deck", m.deck_json);
  root.write_attr("model", m.model_json);
  root.write_attr("created_at", m.created_at);
  root.write_attr("created_by", m.created_by);
}

CheckpointMeta check_and_read_meta(const H5Group& root) {
  if (!root.has_attr("format")) root.fail(cat("not an opendit checkpoint: attribute 'format' is missing"));
  const std::string format = root.read_attr_string("format");
  if (format != kCheckpointFormat)
    root.fail(cat("attribute 'format': expected '", kCheckpointFormat, "', found '", format, "'"));
  const std::int64_t version = root.read_attr_int64("version");
  if (version != kCheckpointVersion)
    root.fail(cat("attribute 'version': expected ", kCheckpointVersion, ", found ", version));
  CheckpointMeta m;
  m.step = root.read_attr_int64("step");
  m.loader_epoch = root.read_attr_int64("loader_epoch");
  m.loader_cursor = root.read_attr_int64("loader_cursor");
  m.skipped_in_a_row = root.read_attr_int64("skipped_in_a_row");
  m.optimizer_step = root.read_attr_int64("optimizer_step");
  m.world_size = int(root.read_attr_int64("world_size"));
  m.dp_size = int(root.read_attr_int64("dp_size"));
  m.sp_size = int(root.read_attr_int64("sp_size"));
  m.strategy = root.read_attr_string("strategy");
  m.seed = std::uint64_t(root.read_attr_int64("seed"));
  m.deck_json = root.read_attr_string("deck");
  m.model_json = root.read_attr_string("model");
  m.created_at = root.read_attr_string("created_at");
  m.created_by = root.read_attr_string("created_by");
  return m;
}

// A parameter dataset as the layout wants it: float32, the entry's shape, with a crc32 attribute.
H5Dataset open_param(const H5Group& g, const train::FlatEntry& e) {
  if (!g.has(e.name))
    h5_fail(g.file_path(), g.path() + "/" + e.name,
            cat("parameter missing (expected float32 ", shape_str(e.shape), "; a checkpoint of another model?)"));
  H5Dataset ds = g.open_dataset(e.name);
  if (ds.dtype() != at::kFloat) ds.fail(cat("expected dtype float32, found ", dtype_name(ds.dtype())));
  if (ds.shape() != e.shape)
    ds.fail(cat("expected shape ", shape_str(e.shape), ", found ", shape_str(ds.shape()),
                " (a checkpoint of another model?)"));
  if (!ds.has_attr("crc32")) ds.fail("attribute 'crc32' is missing");
  return ds;
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
                            MPI_Comm comm, int keep_last, bool force_serial) {
  const int rank = comm_rank(comm), world = comm_size(comm);
  const auto& entries = layout.entries();
  const std::string final_path = checkpoint_path(dir, meta_in.step), tmp_path = final_path + ".tmp";

  // Which groups: every rank must agree on whether there is an EMA.
  int has_ema = mine.groups.count("ema") ? 1 : 0, ema_min = 0, ema_max = 0;
  MPI_Allreduce(&has_ema, &ema_min, 1, MPI_INT, MPI_MIN, comm);
  MPI_Allreduce(&has_ema, &ema_max, 1, MPI_INT, MPI_MAX, comm);
  std::vector<std::size_t> groups;
  for (std::size_t g = 0; g < kGroups.size(); ++g)
    if (g != kEma || ema_max) groups.push_back(g);

  // Check the input on every rank; rank 0 makes the folder.
  agree(comm, [&] {
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

  // Who writes what.
  const auto ranges = allgather_ranges(mine.range, comm);
  std::vector<Interval> rest;
  const auto my_ivs = assigned(ranges, rank, layout.numel(), false, &rest);
  const auto rest_pieces = pieces_of(layout, rest);
  if (!rest_pieces.empty())
    throw Error(cat("save_checkpoint: elements [", rest_pieces[0].param, ", ",
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
  std::vector<std::int64_t> crcs = combine_crcs(records, layout, kGroups.size(), groups, comm, &gap);
  crcs.resize(kGroups.size() * entries.size());
  MPI_Bcast(crcs.data(), int(crcs.size()), MPI_INT64_T, 0, comm);

  // Rank 0's meta and frozen tensors (names, shapes, crcs) for everyone.
  CheckpointMeta meta = meta_in;
  meta.created_at = bcast_string(now_iso8601(), comm);
  meta.created_by = bcast_string(cat("opendit ", OPENDIT_VERSION, " (", OPENDIT_GIT_COMMIT, ")"), comm);
  meta.strategy = bcast_string(meta.strategy, comm);
  meta.deck_json = bcast_string(meta.deck_json, comm);
  meta.model_json = bcast_string(meta.model_json, comm);
  std::int64_t ints[9] = {meta.step,       meta.loader_epoch, meta.loader_cursor, meta.skipped_in_a_row,
                          meta.world_size, meta.dp_size,      meta.sp_size,       std::int64_t(meta.seed),
                          meta.optimizer_step};
  MPI_Bcast(ints, 9, MPI_INT64_T, 0, comm);
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
    desc = bcast_string(desc, comm);
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

  const bool parallel = hdf5_is_parallel() && !force_serial;
  if (parallel) {
    // Collective HDF5 calls: a failure inside is reported by HDF5 on the ranks concerned; MPI-IO errors on
    // open/create are collective. Local failures are agreed upon after the file is closed.
    std::unique_ptr<H5File> file;
    agree(comm, [&] { file = std::make_unique<H5File>(H5File::create(tmp_path, comm)); });
    agree(comm, [&] {
      try {
        create_structure(*file);
        write_pieces(*file, true);
        file->close();
      } catch (...) {
        file.reset();
        throw;
      }
    });
  } else {
    agree(comm, [&] {
      if (rank != 0) return;
      H5File file = H5File::create(tmp_path);
      create_structure(file);
      file.close();
    });
    for (int r = 0; r < world; ++r) {
      agree(comm, [&] {
        if (rank != r) return;
        H5File file = H5File::open(tmp_path, H5Mode::read_write);
        write_pieces(file, false);
        file.close();
      });
    }
  }
  agree(comm, [&] {
    if (!gap.empty()) throw Error(cat("save_checkpoint: internal error: no checksum for ", gap));
  });

  // Durable, then visible, then marked complete.
  agree(comm, [&] {
    if (rank != 0) return;
    fsync_path(tmp_path, false);
    if (::rename(tmp_path.c_str(), final_path.c_str()) != 0)
      throw Error(cat("checkpoint '", tmp_path, "': cannot rename to '", final_path, "' (", errno_text(), ")"));
    fsync_path(dir, true);
    const std::string done = final_path + ".done";
    const int fd = ::open(done.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) throw Error(cat("checkpoint '", done, "': cannot create (", errno_text(), ")"));
    const std::string text = cat(kCheckpointFormat, " step ", meta.step, " complete ", meta.created_at, "\n");
    const bool ok = ::write(fd, text.data(), text.size()) == ssize_t(text.size()) && ::fsync(fd) == 0;
    const std::string why = errno_text();
    ::close(fd);
    if (!ok) throw Error(cat("checkpoint '", done, "': cannot write (", why, ")"));
    fsync_path(dir, true);
    prune(dir, meta.step, keep_last);
  });
  return final_path;
}

// ---- find ----------------------------------------------------------------------------------------------

std::optional<std::string> latest_checkpoint(const std::string& dir) {
  std::optional<std::pair<std::int64_t, std::string>> best;
  for (const auto& [name, path] : list_dir(dir)) {
    auto p = parse_name(name);
    if (!p || !p->second.empty() || !path_exists(path + ".done")) continue;
    if (!best || p->first > best->first) best = std::make_pair(p->first, path);
  }
  if (!best) return std::nullopt;
  return best->second;
}

// ---- load ----------------------------------------------------------------------------------------------

CheckpointMeta read_checkpoint_meta(const std::string& path) {
  H5File file = H5File::open(path);
  return check_and_read_meta(file.root());
}

CheckpointMeta load_checkpoint(const std::string& path, const FlatLayout& layout, ShardedState& mine, MPI_Comm comm) {
  const int rank = comm_rank(comm);
  const auto& entries = layout.entries();
  std::unique_ptr<H5File> file;
  CheckpointMeta meta;
  std::vector<std::size_t> groups;
  std::vector<std::int64_t> stored;  // crc per (group, entry)

  // 1. Structure: every rank opens the file on its own (reading needs no MPI-IO) and checks it.
  agree(comm, [&] {
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
  const auto ranges = allgather_ranges(mine.range, comm);
  std::vector<CrcRecord> records;
  agree(comm, [&] {
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
  const auto crcs = combine_crcs(records, layout, kGroups.size(), groups, comm, &gap);
  agree(comm, [&] {
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
  H5Group grp = open_path(root, group);
  std::vector<std::string> names;
  {
    std::lock_guard<std::recursive_mutex> lock(h5_mutex());
    H5G_info_t info;
    if (H5Gget_info(grp.id(), &info) < 0) grp.fail("cannot list the group");
    for (hsize_t i = 0; i < info.nlinks; ++i) {
      const ssize_t n = H5Lget_name_by_idx(grp.id(), ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
      if (n < 0) grp.fail("cannot list the group");
      std::string name(std::size_t(n) + 1, '\0');
      H5Lget_name_by_idx(grp.id(), ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), name.size(), H5P_DEFAULT);
      name.resize(std::size_t(n));
      names.push_back(name);
    }
  }
  std::map<std::string, at::Tensor> out;
  for (const auto& name : names) {
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

}  // namespace opendit::io
