// The RAII layer over HDF5; see h5.hpp. Every function that calls into HDF5 starts with `Lock lock;`.
#include "io/h5.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>

#include "core/error.hpp"

namespace opendit::io {
namespace {

// Holds the process-wide HDF5 lock and makes sure HDF5 prints nothing itself (the setting is per thread in
// thread-safe builds, global otherwise).
struct Lock {
  std::lock_guard<std::recursive_mutex> guard{h5_mutex()};
  Lock() {
    thread_local bool silenced = false;
    if (!silenced) H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr), silenced = true;
  }
};

// The descriptions of the current error stack, outermost (the API call) first.
herr_t collect(unsigned, const H5E_error2_t* e, void* out) {
  if (e->desc && *e->desc) static_cast<std::vector<std::string>*>(out)->push_back(e->desc);
  return 0;
}

std::string error_stack_text() {
  std::vector<std::string> msgs;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect, &msgs);
  H5Eclear2(H5E_DEFAULT);
  if (msgs.empty()) return "";
  // The API call's message says what failed, the innermost one why ("file signature not found").
  return msgs.size() == 1 ? msgs.front() : msgs.front() + ": " + msgs.back();
}

template <typename Id>
Id check(Id rc, const std::string& file, const std::string& object, const char* what) {
  if (rc < 0) h5_fail(file, object, what);
  return rc;
}

std::vector<hsize_t> to_hsize(const std::vector<std::int64_t>& v) { return {v.begin(), v.end()}; }

std::string shape_str(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace

bool hdf5_is_parallel() {
#ifdef H5_HAVE_PARALLEL
  return true;
#else
  return false;
#endif
}

std::recursive_mutex& h5_mutex() {
  static std::recursive_mutex m;
  return m;
}

std::string dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return "float32";
    case at::kHalf:
      return "float16";
    case at::kBFloat16:
      return "bfloat16";
    case at::kDouble:
      return "float64";
    case at::kLong:
      return "int64";
    case at::kInt:
      return "int32";
    case at::kByte:
      return "uint8";
    case at::kBool:
      return "bool";
    default:
      return c10::toString(dtype);
  }
}

std::string h5_type_name(hid_t t) {
  Lock lock;
  const std::size_t bits = 8 * H5Tget_size(t);
  switch (H5Tget_class(t)) {
    case H5T_FLOAT:
      return cat("float", bits);
    case H5T_INTEGER:
      return cat(H5Tget_sign(t) == H5T_SGN_NONE ? "uint" : "int", bits);
    case H5T_STRING:
      return "string";
    case H5T_COMPOUND:
      return "compound";
    default:
      return cat("type class ", int(H5Tget_class(t)));
  }
}

void h5_fail(const std::string& file, const std::string& object, const std::string& what) {
  Lock lock;
  const std::string lib = error_stack_text();
  throw Error(cat("HDF5 file '", file, "'", object.empty() ? "" : ", object '" + object + "'", ": ", what,
                  lib.empty() ? "" : " (HDF5: " + lib + ")"));
}

// ---- handles, property lists, dataspaces ------------------------------------------------------------

H5Handle& H5Handle::operator=(H5Handle&& o) noexcept {
  if (this != &o) {
    reset();
    id_ = o.id_, close_ = o.close_;
    o.id_ = H5I_INVALID_HID;
  }
  return *this;
}

void H5Handle::reset() {
  if (id_ >= 0 && close_) {
    Lock lock;
    close_(id_);
    H5Eclear2(H5E_DEFAULT);
  }
  id_ = H5I_INVALID_HID;
}

H5PropList::H5PropList(hid_t cls) {
  Lock lock;
  h_ = H5Handle(check(H5Pcreate(cls), "", "", "cannot create a property list"), H5Pclose);
}

H5PropList H5PropList::file_access(MPI_Comm comm) {
  Lock lock;
  H5PropList p(H5P_FILE_ACCESS);
#ifdef H5_HAVE_PARALLEL
  if (comm != MPI_COMM_NULL)
    check(H5Pset_fapl_mpio(p.id(), comm, MPI_INFO_NULL), "", "", "cannot set MPI-IO file access");
#endif
  return p;
}

H5PropList H5PropList::transfer(bool collective) {
  Lock lock;
  H5PropList p(H5P_DATASET_XFER);
#ifdef H5_HAVE_PARALLEL
  if (collective) check(H5Pset_dxpl_mpio(p.id(), H5FD_MPIO_COLLECTIVE), "", "", "cannot set collective transfer");
#endif
  return p;
}

H5Space H5Space::simple(const std::vector<std::int64_t>& dims, const std::vector<std::int64_t>& max_dims) {
  Lock lock;
  if (dims.empty()) return scalar();
  const auto d = to_hsize(dims);
  std::vector<hsize_t> m;
  for (auto x : max_dims) m.push_back(x < 0 ? H5S_UNLIMITED : hsize_t(x));
  return H5Space(check(H5Screate_simple(int(d.size()), d.data(), m.empty() ? nullptr : m.data()), "", "",
                       "cannot create a dataspace"));
}

H5Space H5Space::scalar() {
  Lock lock;
  return H5Space(check(H5Screate(H5S_SCALAR), "", "", "cannot create a dataspace"));
}

std::vector<std::int64_t> H5Space::dims() const {
  Lock lock;
  const int rank = check(H5Sget_simple_extent_ndims(id()), "", "", "cannot read a dataspace's rank");
  std::vector<hsize_t> d(rank);
  H5Sget_simple_extent_dims(id(), d.data(), nullptr);
  return {d.begin(), d.end()};
}

void H5Space::select_rows(std::int64_t start, std::int64_t count) {
  Lock lock;
  auto d = dims();
  std::vector<hsize_t> offset(d.size(), 0), size = to_hsize(d);
  offset[0] = hsize_t(start), size[0] = hsize_t(count);
  check(H5Sselect_hyperslab(id(), H5S_SELECT_SET, offset.data(), nullptr, size.data(), nullptr), "", "",
        "cannot select a hyperslab");
}

void H5Space::select_none() {
  Lock lock;
  H5Sselect_none(id());
}

// ---- attributes ------------------------------------------------------------------------------------

bool H5Object::has_attr(const std::string& name) const {
  Lock lock;
  return check(H5Aexists(id(), name.c_str()), file_, path_, "cannot look up an attribute") > 0;
}

namespace {

// Replaces attribute `name` of `obj` with a scalar of type `type` holding *value.
void put_attr(const H5Object& obj, const std::string& name, hid_t type, const void* value) {
  Lock lock;
  if (obj.has_attr(name) && H5Adelete(obj.id(), name.c_str()) < 0)
    obj.fail(cat("cannot replace attribute '", name, "'"));
  H5Space space = H5Space::scalar();
  H5Handle a(H5Acreate2(obj.id(), name.c_str(), type, space.id(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (!a.valid()) obj.fail(cat("cannot create attribute '", name, "'"));
  if (H5Awrite(a.id(), type, value) < 0) obj.fail(cat("cannot write attribute '", name, "'"));
}

// Opens attribute `name`, which must hold exactly one value of one of the classes in `want`; returns it and its type.
std::pair<H5Handle, H5Handle> get_attr(const H5Object& obj, const std::string& name,
                                       std::initializer_list<H5T_class_t> want, const char* want_words) {
  if (!obj.has_attr(name)) obj.fail(cat("attribute '", name, "' is missing"));
  H5Handle a(H5Aopen(obj.id(), name.c_str(), H5P_DEFAULT), H5Aclose);
  if (!a.valid()) obj.fail(cat("cannot open attribute '", name, "'"));
  H5Handle t(H5Aget_type(a.id()), H5Tclose);
  H5Space s(H5Aget_space(a.id()));
  const H5T_class_t cls = H5Tget_class(t.id());
  if (std::find(want.begin(), want.end(), cls) == want.end())
    obj.fail(cat("attribute '", name, "' must be ", want_words, ", found ", h5_type_name(t.id())));
  if (H5Sget_simple_extent_npoints(s.id()) != 1)
    obj.fail(cat("attribute '", name, "' must hold one value, found ", H5Sget_simple_extent_npoints(s.id())));
  return {std::move(a), std::move(t)};
}

}  // namespace

void H5Object::write_attr(const std::string& name, const std::string& value) {
  Lock lock;
  H5Handle t(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(t.id(), H5T_VARIABLE);
  H5Tset_cset(t.id(), H5T_CSET_UTF8);
  const char* p = value.c_str();
  put_attr(*this, name, t.id(), &p);
}

void H5Object::write_attr(const std::string& name, std::int64_t value) {
  Lock lock;
  put_attr(*this, name, H5T_NATIVE_INT64, &value);
}

void H5Object::write_attr(const std::string& name, double value) {
  Lock lock;
  put_attr(*this, name, H5T_NATIVE_DOUBLE, &value);
}

std::string H5Object::read_attr_string(const std::string& name) const {
  Lock lock;
  auto [a, t] = get_attr(*this, name, {H5T_STRING}, "a string");
  if (H5Tis_variable_str(t.id()) > 0) {  // read with the stored type itself: no conversion between character sets
    char* p = nullptr;
    if (H5Aread(a.id(), t.id(), &p) < 0) fail(cat("cannot read attribute '", name, "'"));
    std::string s = p ? p : "";
    H5free_memory(p);
    return s;
  }
  std::string s(H5Tget_size(t.id()), '\0');
  if (H5Aread(a.id(), t.id(), s.data()) < 0) fail(cat("cannot read attribute '", name, "'"));
  s.resize(std::strlen(s.c_str()));  // fixed-length strings are padded with NULs or spaces
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

std::int64_t H5Object::read_attr_int64(const std::string& name) const {
  Lock lock;
  auto [a, t] = get_attr(*this, name, {H5T_INTEGER}, "an integer");
  std::int64_t v = 0;
  if (H5Aread(a.id(), H5T_NATIVE_INT64, &v) < 0) fail(cat("cannot read attribute '", name, "' as int64"));
  return v;
}

double H5Object::read_attr_double(const std::string& name) const {
  Lock lock;
  auto [a, t] = get_attr(*this, name, {H5T_FLOAT, H5T_INTEGER}, "a number");
  double v = 0;
  if (H5Aread(a.id(), H5T_NATIVE_DOUBLE, &v) < 0) fail(cat("cannot read attribute '", name, "' as double"));
  return v;
}

// ---- groups ----------------------------------------------------------------------------------------

bool H5Group::has(const std::string& name) const {
  Lock lock;
  return check(H5Lexists(id(), name.c_str(), H5P_DEFAULT), file_, child_path(name), "cannot look up a link") > 0;
}

H5Group H5Group::create_group(const std::string& name) {
  Lock lock;
  H5Handle g(H5Gcreate2(id(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
  if (!g.valid()) h5_fail(file_, child_path(name), "cannot create group");
  return H5Group(std::move(g), file_, child_path(name), mpio_);
}

H5Group H5Group::open_group(const std::string& name) const {
  Lock lock;
  if (!has(name)) h5_fail(file_, child_path(name), "group is missing");
  H5Handle g(H5Gopen2(id(), name.c_str(), H5P_DEFAULT), H5Gclose);
  if (!g.valid()) h5_fail(file_, child_path(name), "cannot open group");
  return H5Group(std::move(g), file_, child_path(name), mpio_);
}

void H5Group::remove(const std::string& name) {
  Lock lock;
  if (H5Ldelete(id(), name.c_str(), H5P_DEFAULT) < 0) h5_fail(file_, child_path(name), "cannot remove");
}

// ---- datasets --------------------------------------------------------------------------------------

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

  H5Handle d(H5Dcreate2(id(), name.c_str(), type.id(), space.id(), H5P_DEFAULT, dcpl.id(), H5P_DEFAULT), H5Dclose);
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

// ---- files -----------------------------------------------------------------------------------------

namespace {
// With serial HDF5, several ranks may read one file but not write it: each would write its own copy.
void refuse_serial_writes(const std::string& path, MPI_Comm comm, const char* what) {
  if (hdf5_is_parallel() || comm == MPI_COMM_NULL) return;
  int size = 1;
  MPI_Comm_size(comm, &size);
  if (size > 1)
    h5_fail(path, "",
            cat("cannot ", what, " one file from ", size,
                " ranks: this HDF5 library is serial (build "
                "with parallel HDF5, or write from one rank)"));
}
}  // namespace

H5File H5File::create(const std::string& path, MPI_Comm comm) {
  Lock lock;
  refuse_serial_writes(path, comm, "create");
  H5PropList fapl = H5PropList::file_access(comm);
  H5Handle f(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.id()), H5Fclose);
  if (!f.valid()) h5_fail(path, "", "cannot create file");
  return H5File(std::move(f), path, hdf5_is_parallel() && comm != MPI_COMM_NULL);
}

H5File H5File::open(const std::string& path, H5Mode mode, MPI_Comm comm) {
  Lock lock;
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) h5_fail(path, "", std::strerror(errno));
  if (mode == H5Mode::read_write) refuse_serial_writes(path, comm, "open for writing");
  H5PropList fapl = H5PropList::file_access(comm);
  const unsigned flags = mode == H5Mode::read_only ? H5F_ACC_RDONLY : H5F_ACC_RDWR;
  H5Handle f(H5Fopen(path.c_str(), flags, fapl.id()), H5Fclose);
  if (!f.valid()) h5_fail(path, "", "cannot open file (not an HDF5 file, truncated, or locked by a writer?)");
  return H5File(std::move(f), path, hdf5_is_parallel() && comm != MPI_COMM_NULL);
}

H5Group H5File::root() const {
  Lock lock;
  H5Handle g(H5Gopen2(h_.id(), "/", H5P_DEFAULT), H5Gclose);
  if (!g.valid()) h5_fail(path_, "/", "cannot open the root group");
  return H5Group(std::move(g), path_, "/", mpio_);
}

void H5File::flush() {
  Lock lock;
  if (H5Fflush(h_.id(), H5F_SCOPE_GLOBAL) < 0) h5_fail(path_, "", "cannot flush");
}

void H5File::close() {
  Lock lock;
  if (!h_.valid()) return;
  const herr_t rc = H5Fclose(h_.release());
  if (rc < 0) h5_fail(path_, "", "cannot close file");
}

}  // namespace opendit::io
