// Checkpoint datasets and attributes (see checkpoint_h5.hpp).
#include "io/checkpoint_h5.hpp"

#include <algorithm>

#include "core/error.hpp"
#include "core/strings.hpp"

namespace opendit::io::ckpt {
namespace {

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

}  // namespace

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
H5Dataset open_param(const H5Group& g, const FlatEntry& e) {
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

}  // namespace opendit::io::ckpt
