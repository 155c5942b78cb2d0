// The datasets of the HDF5 layer (see h5.hpp): stored types, creation, whole/row/slice transfers.
#include <algorithm>

#include "core/error.hpp"
#include "core/strings.hpp"
#include "io/h5.hpp"
#include "io/h5_detail.hpp"

namespace opendit::io {

using h5_detail::check;
using h5_detail::Lock;
using h5_detail::to_hsize;

namespace {

// IEEE half: the layout h5py uses for numpy.float16 (sign bit 15, exponent 10..14 biased by 15, mantissa 0..9).
H5Handle half_type() {
  hid_t t = H5Tcopy(H5T_IEEE_F32LE);
  H5Tset_fields(t, 15, 10, 5, 0, 10);
  H5Tset_size(t, 2);
  H5Tset_ebias(t, 15);
  return {t, H5Tclose};
}

// The type a dtype is stored as. Tensors in memory use the same type (little-endian hosts), so nothing converts.
H5Handle stored_type(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return {H5Tcopy(H5T_IEEE_F32LE), H5Tclose};
    case at::kHalf:
      return half_type();
    case at::kBFloat16:
      return {H5Tcopy(H5T_STD_U16LE), H5Tclose};
    case at::kLong:
      return {H5Tcopy(H5T_STD_I64LE), H5Tclose};
    case at::kByte:
      return {H5Tcopy(H5T_STD_U8LE), H5Tclose};
    default:
      return {};
  }
}

constexpr const char* kSupportedDtypes = "float32, float16, bfloat16 (uint16 + dtype attribute), int64, uint8";

}  // namespace

H5Dataset H5Group::create_dataset(const std::string& name, at::ScalarType dtype, const std::vector<std::int64_t>& shape,
                                  const H5DatasetOptions& options) {
  Lock lock;
  const std::string where = child_path(name);
  H5Handle type = stored_type(dtype);
  if (!type.valid())
    h5_fail(file_, where, cat("cannot store dtype ", dtype_name(dtype), " (supported: ", kSupportedDtypes, ")"));
  if (options.extensible && shape.empty()) h5_fail(file_, where, "a scalar dataset cannot be extensible");
  std::vector<std::int64_t> max_dims = shape;
  if (options.extensible) max_dims[0] = -1;  // unlimited
  H5Space space = H5Space::simple(shape, max_dims);

  H5PropList dcpl(H5P_DATASET_CREATE);
  std::vector<std::int64_t> chunk = options.chunk;
  if (chunk.empty() && options.extensible) {  // about 1 MiB of rows
    std::int64_t row_bytes = std::int64_t(H5Tget_size(type.id()));
    for (std::size_t i = 1; i < shape.size(); ++i) row_bytes *= std::max<std::int64_t>(shape[i], 1);
    chunk = shape;
    chunk[0] = (1 << 20) / row_bytes;
    for (auto& c : chunk) c = std::max<std::int64_t>(c, 1);
  }
  if (!chunk.empty()) {
    if (chunk.size() != shape.size())
      h5_fail(file_, where, cat("chunk ", shape_str(chunk), " does not match the rank of shape ", shape_str(shape)));
    const auto c = to_hsize(chunk);
    check(H5Pset_chunk(dcpl.id(), int(c.size()), c.data()), file_, where, "cannot set chunking");
  }
  H5Pset_fill_time(dcpl.id(), H5D_FILL_TIME_NEVER);  // we write every element; skip the fill pass

  // "group/name" creates the groups on the way (the row writer's datasets of opendit.latents v2).
  H5PropList lcpl(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl.id(), 1);
  H5Handle d(H5Dcreate2(id(), name.c_str(), type.id(), space.id(), lcpl.id(), dcpl.id(), H5P_DEFAULT), H5Dclose);
  if (!d.valid()) h5_fail(file_, where, cat("cannot create dataset of shape ", shape_str(shape)));
  H5Dataset ds(std::move(d), file_, where, mpio_, dtype);
  if (dtype == at::kBFloat16) ds.write_attr("dtype", "bfloat16");
  return ds;
}

H5Dataset H5Group::open_dataset(const std::string& name, std::int64_t chunk_cache_bytes) const {
  Lock lock;
  const std::string where = child_path(name);
  if (!has(name)) h5_fail(file_, where, "dataset is missing");
  H5PropList dapl(H5P_DATASET_ACCESS);
  if (chunk_cache_bytes >= 0)
    H5Pset_chunk_cache(dapl.id(), H5D_CHUNK_CACHE_NSLOTS_DEFAULT, std::size_t(chunk_cache_bytes),
                       H5D_CHUNK_CACHE_W0_DEFAULT);
  H5Handle d(H5Dopen2(id(), name.c_str(), dapl.id()), H5Dclose);
  if (!d.valid()) h5_fail(file_, where, "cannot open dataset");
  return H5Dataset(std::move(d), file_, where, mpio_);
}

// Recognises the stored type; anything but the five supported dtypes is an error naming what was found.
H5Dataset::H5Dataset(H5Handle h, std::string file, std::string path, bool mpio)
    : H5Object(std::move(h), std::move(file), std::move(path), mpio) {
  Lock lock;
  H5Handle t(H5Dget_type(id()), H5Tclose);
  if (!t.valid()) fail("cannot read the stored type");
  const std::size_t size = H5Tget_size(t.id());
  const H5T_class_t cls = H5Tget_class(t.id());
  const bool is_unsigned = cls == H5T_INTEGER && H5Tget_sign(t.id()) == H5T_SGN_NONE;
  std::optional<at::ScalarType> dtype;
  if (cls == H5T_FLOAT && size == 4) {
    dtype = at::kFloat;
  } else if (cls == H5T_FLOAT && size == 2) {
    std::size_t spos, epos, esize, mpos, msize;
    H5Tget_fields(t.id(), &spos, &epos, &esize, &mpos, &msize);
    if (spos == 15 && epos == 10 && esize == 5 && mpos == 0 && msize == 10 && H5Tget_ebias(t.id()) == 15)
      dtype = at::kHalf;
  } else if (cls == H5T_INTEGER && size == 8 && !is_unsigned) {
    dtype = at::kLong;
  } else if (cls == H5T_INTEGER && size == 1 && is_unsigned) {
    dtype = at::kByte;
  } else if (cls == H5T_INTEGER && size == 2 && is_unsigned && has_attr("dtype")) {
    if (read_attr_string("dtype") == "bfloat16") dtype = at::kBFloat16;
  }
  if (!dtype) fail(cat("stored type ", h5_type_name(t.id()), " is not supported (supported: ", kSupportedDtypes, ")"));
  dtype_ = *dtype;
}

std::vector<std::int64_t> H5Dataset::shape() const {
  Lock lock;
  H5Space s(H5Dget_space(id()));
  if (s.id() < 0) fail("cannot read the dataspace");
  return s.dims();
}

std::vector<std::int64_t> H5Dataset::chunk() const {
  Lock lock;
  H5Handle dcpl(H5Dget_create_plist(id()), H5Pclose);
  if (H5Pget_layout(dcpl.id()) != H5D_CHUNKED) return {};
  std::vector<hsize_t> c(shape().size());
  H5Pget_chunk(dcpl.id(), int(c.size()), c.data());
  return {c.begin(), c.end()};
}

// Reads or writes rows [start, start + count) along dim 0 between the file and a contiguous buffer.
void H5Dataset::transfer_rows(bool write, std::int64_t start, std::int64_t count, void* buf, Transfer transfer) const {
  Lock lock;
  H5Space file_space(H5Dget_space(id()));
  const auto dims = file_space.dims();
  if (dims.empty()) fail("a scalar dataset has no rows");
  if (start < 0 || count < 0 || start + count > dims[0])
    fail(cat(write ? "writing" : "reading", " rows [", start, ", ", start + count, ") outside [0, ", dims[0], ")"));
  auto mem_dims = dims;
  mem_dims[0] = std::max<std::int64_t>(count, 1);
  H5Space mem_space = H5Space::simple(mem_dims);
  if (count == 0) {
    file_space.select_none(), mem_space.select_none();
  } else {
    file_space.select_rows(start, count);
  }
  H5Handle type = stored_type(dtype_);
  H5PropList xfer = H5PropList::transfer(transfer == Transfer::collective && mpio_);
  const herr_t rc = write ? H5Dwrite(id(), type.id(), mem_space.id(), file_space.id(), xfer.id(), buf)
                          : H5Dread(id(), type.id(), mem_space.id(), file_space.id(), xfer.id(), buf);
  if (rc < 0) fail(cat(write ? "cannot write" : "cannot read", " rows [", start, ", ", start + count, ")"));
}

namespace {
// A contiguous CPU copy of t after checking its dtype against the dataset's.
at::Tensor cpu_contiguous(const H5Dataset& ds, const at::Tensor& t) {
  if (t.scalar_type() != ds.dtype())
    ds.fail(cat("tensor of dtype ", dtype_name(t.scalar_type()), " written to a dataset of dtype ",
                dtype_name(ds.dtype())));
  return t.cpu().contiguous();
}

std::vector<std::int64_t> tensor_shape(const at::Tensor& t) { return t.sizes().vec(); }
}  // namespace

void H5Dataset::write(const at::Tensor& t, Transfer transfer) {
  Lock lock;
  if (tensor_shape(t) != shape())
    fail(cat("tensor of shape ", shape_str(tensor_shape(t)), " written to a dataset of shape ", shape_str(shape())));
  at::Tensor c = cpu_contiguous(*this, t);
  if (c.dim() == 0) {
    H5Handle type = stored_type(dtype_);
    if (H5Dwrite(id(), type.id(), H5S_ALL, H5S_ALL, H5P_DEFAULT, c.data_ptr()) < 0) fail("cannot write");
    return;
  }
  transfer_rows(true, 0, c.size(0), c.data_ptr(), transfer);
}

at::Tensor H5Dataset::read(Transfer transfer) const {
  Lock lock;
  at::Tensor out = at::empty(shape(), at::TensorOptions().dtype(dtype_));
  if (out.dim() == 0) {
    H5Handle type = stored_type(dtype_);
    if (H5Dread(id(), type.id(), H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data_ptr()) < 0) fail("cannot read");
    return out;
  }
  transfer_rows(false, 0, out.size(0), out.data_ptr(), transfer);
  return out;
}

void H5Dataset::write_rows(std::int64_t start, const at::Tensor& t, Transfer transfer) {
  Lock lock;
  auto want = shape();
  if (t.dim() != std::int64_t(want.size()) || want.empty() ||
      !std::equal(want.begin() + 1, want.end(), t.sizes().begin() + 1))
    fail(cat("rows of shape ", shape_str(tensor_shape(t)), " written to a dataset of shape ", shape_str(want)));
  at::Tensor c = cpu_contiguous(*this, t);
  transfer_rows(true, start, c.size(0), c.data_ptr(), transfer);
}

at::Tensor H5Dataset::read_rows(std::int64_t start, std::int64_t count, Transfer transfer) const {
  Lock lock;
  auto dims = shape();
  if (dims.empty()) fail("a scalar dataset has no rows");
  dims[0] = std::max<std::int64_t>(count, 0);
  at::Tensor out = at::empty(dims, at::TensorOptions().dtype(dtype_));
  read_rows_into(start, out, transfer);
  return out;
}

void H5Dataset::read_rows_into(std::int64_t start, const at::Tensor& out, Transfer transfer) const {
  Lock lock;
  auto want = shape();
  if (out.scalar_type() != dtype_ || !out.device().is_cpu() || !out.is_contiguous() || want.empty() ||
      out.dim() != std::int64_t(want.size()) || !std::equal(want.begin() + 1, want.end(), out.sizes().begin() + 1))
    fail(cat("cannot read rows into a ", out.is_contiguous() ? "" : "non-contiguous ", out.device(), " tensor ",
             dtype_name(out.scalar_type()), " ", shape_str(tensor_shape(out)), " (dataset: ", dtype_name(dtype_), " ",
             shape_str(want), ")"));
  transfer_rows(false, start, out.size(0), out.data_ptr(), transfer);
}

void H5Dataset::write_slice(std::int64_t offset, const at::Tensor& t, Transfer transfer) {
  Lock lock;
  if (shape().size() != 1) fail(cat("slices are for 1-D datasets; this one has shape ", shape_str(shape())));
  at::Tensor c = cpu_contiguous(*this, t).reshape({-1});
  transfer_rows(true, offset, c.numel(), c.data_ptr(), transfer);
}

at::Tensor H5Dataset::read_slice(std::int64_t offset, std::int64_t count, Transfer transfer) const {
  Lock lock;
  if (shape().size() != 1) fail(cat("slices are for 1-D datasets; this one has shape ", shape_str(shape())));
  return read_rows(offset, count, transfer);
}

void H5Dataset::extend_rows(std::int64_t rows) {
  Lock lock;
  auto dims = to_hsize(shape());
  if (dims.empty()) fail("a scalar dataset has no rows");
  dims[0] = hsize_t(rows);
  if (H5Dset_extent(id(), dims.data()) < 0) fail(cat("cannot extend to ", rows, " rows (is it extensible?)"));
}

}  // namespace opendit::io
