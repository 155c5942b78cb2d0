// The RAII layer over HDF5 (see h5.hpp): errors, handles, property lists, dataspaces, attributes and groups.
// Datasets are in io/h5_dataset.cpp, files in io/h5_file.cpp. Every function that calls into HDF5 starts with
// `Lock lock;`.
#include "io/h5.hpp"

#include <cstring>

#include "core/error.hpp"
#include "core/strings.hpp"
#include "io/h5_detail.hpp"

namespace opendit::io {

using h5_detail::check;
using h5_detail::Lock;
using h5_detail::to_hsize;

namespace {

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

}  // namespace

bool hdf5_is_parallel() {
#ifdef H5_HAVE_PARALLEL
  return true;
#else
  return false;
#endif
}

std::string hdf5_library_version() {
  unsigned maj = 0, min = 0, rel = 0;
  H5get_libversion(&maj, &min, &rel);
  return cat(maj, ".", min, ".", rel,
             hdf5_is_parallel() ? " (parallel: yes)" : " (parallel: no, checkpoints are written through rank 0)");
}

bool is_hdf5_file(const std::string& path) {
  Lock lock;
  const htri_t rc = H5Fis_hdf5(path.c_str());
  H5Eclear2(H5E_DEFAULT);
  return rc > 0;
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
  std::string lib = error_stack_text();
  for (char& c : lib)
    if (c == '\n') c = ' ';  // one error, one line (the POSIX driver's messages span lines)
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

std::vector<std::string> H5Group::children() const {
  Lock lock;
  H5G_info_t info;
  if (H5Gget_info(id(), &info) < 0) fail("cannot list the group");
  std::vector<std::string> names;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t n = H5Lget_name_by_idx(id(), ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    if (n < 0) fail("cannot list the group");
    std::string name(std::size_t(n) + 1, '\0');
    H5Lget_name_by_idx(id(), ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), name.size(), H5P_DEFAULT);
    name.resize(std::size_t(n));
    names.push_back(name);
  }
  return names;
}

bool H5Group::is_group(const std::string& name) const {
  Lock lock;
  if (!has(name)) return false;
  H5Handle o(H5Oopen(id(), name.c_str(), H5P_DEFAULT), H5Oclose);
  if (!o.valid()) h5_fail(file_, child_path(name), "cannot open the object");
  return H5Iget_type(o.id()) == H5I_GROUP;
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

std::pair<at::Tensor, at::Tensor> pack_strings(const std::vector<std::string>& strings) {
  std::vector<std::int64_t> offsets{0};
  std::string all;
  for (const std::string& s : strings) all += s, offsets.push_back(std::int64_t(all.size()));
  at::Tensor bytes = at::empty({std::int64_t(all.size())}, at::kByte);
  if (!all.empty()) std::memcpy(bytes.data_ptr(), all.data(), all.size());
  return {at::tensor(offsets, at::kLong), bytes};
}

std::vector<std::string> unpack_strings(const at::Tensor& offsets, const at::Tensor& bytes, const std::string& what) {
  const at::Tensor off = offsets.to(at::kLong).contiguous();
  const std::int64_t n = off.numel();
  const auto* o = off.data_ptr<std::int64_t>();
  bool ok = n >= 1 && o[0] == 0 && o[n - 1] == bytes.numel();
  for (std::int64_t i = 1; ok && i < n; ++i) ok = o[i] >= o[i - 1];
  if (!ok) throw Error(cat(what, ": the string offsets do not run from 0 to ", bytes.numel()));
  const at::Tensor b = bytes.contiguous();
  const char* p = static_cast<const char*>(b.data_ptr());
  std::vector<std::string> out;
  for (std::int64_t i = 0; i + 1 < n; ++i) out.emplace_back(p + o[i], p + o[i + 1]);
  return out;
}

std::vector<std::string> dataset_paths(const H5Group& root) {
  std::vector<std::string> names;
  for (const std::string& name : root.children()) {
    if (!root.is_group(name)) {
      names.push_back(name);
      continue;
    }
    for (const std::string& child : root.open_group(name).children()) names.push_back(name + "/" + child);
  }
  return names;
}

}  // namespace opendit::io
