// A thin RAII layer over the HDF5 C API: files, groups, dataspaces, property lists, datasets and attributes,
// with tensors in and out. Everything else in io/ (latent datasets, checkpoints) is written on top of it.
//
// Types: float32, float16 (IEEE half, the same 16-bit float type h5py writes), bfloat16 (stored as uint16 with a
// string attribute dtype = "bfloat16"), int64 and uint8. Any other stored type is an opendit::Error when read.
//
// Parallel: an H5File opened with a process group uses MPI-IO when the HDF5 library is parallel (hdf5_is_parallel());
// then Transfer::collective makes a read or write collective over that group (every rank calls, a rank with nothing
// to do passes count 0). With a serial library the same code runs: files are opened per process, which is fine for
// reading; creating or writing one file from several ranks is refused. (io/h5_file.cpp is the one place that hands
// HDF5 the group's MPI communicator.)
//
// Errors: every failed HDF5 call becomes an opendit::Error naming the file, the object path, what we tried and the
// library's own messages (HDF5's automatic printing to stderr is turned off).
//
// Threads: the usual HDF5 builds are not thread-safe; every call here holds one process-wide lock (h5_mutex()),
// so a data loader may read in a background thread while the main thread writes a checkpoint.
#pragma once
#include <ATen/ATen.h>
#include <hdf5.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "parallel/process_group.hpp"

namespace opendit::io {

bool hdf5_is_parallel();
// "1.10.8 (parallel: yes)", for `opendit info`.
std::string hdf5_library_version();
std::recursive_mutex& h5_mutex();
// Whether `path` is an HDF5 file (its signature); false when it cannot be read.
bool is_hdf5_file(const std::string& path);

// Throws opendit::Error: "HDF5 file 'F', object 'O': WHAT (HDF5: messages of the current error stack)".
[[noreturn]] void h5_fail(const std::string& file, const std::string& object, const std::string& what);

// "float32", "float16", "bfloat16", "int64", "uint8", ... (ATen's own names otherwise), for messages.
std::string dtype_name(at::ScalarType dtype);

// A stored type in words ("float32", "int32", "string"), for messages.
std::string h5_type_name(hid_t type);

// An hid_t that closes itself with the matching H5?close.
class H5Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  H5Handle() = default;
  H5Handle(hid_t id, Closer close) : id_(id), close_(close) {}
  ~H5Handle() { reset(); }
  H5Handle(H5Handle&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = H5I_INVALID_HID; }
  H5Handle& operator=(H5Handle&& o) noexcept;
  H5Handle(const H5Handle&) = delete;
  H5Handle& operator=(const H5Handle&) = delete;

  hid_t id() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void reset();
  hid_t release() {  // gives up ownership
    hid_t id = id_;
    id_ = H5I_INVALID_HID;
    return id;
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer close_ = nullptr;
};

// A property list (H5Pcreate): file access, dataset creation and access, transfer.
class H5PropList {
 public:
  explicit H5PropList(hid_t cls);
  hid_t id() const { return h_.id(); }
  // MPI-IO over the group when one is given and HDF5 is parallel (io/h5_file.cpp).
  static H5PropList file_access(const parallel::ProcessGroup* group);
  static H5PropList transfer(bool collective);   // H5P_DATASET_XFER; collective only with parallel HDF5

 private:
  H5Handle h_;
};

// A dataspace; dimensions are int64 here (hsize_t in HDF5).
class H5Space {
 public:
  explicit H5Space(hid_t adopt) : h_(adopt, H5Sclose) {}
  static H5Space simple(const std::vector<std::int64_t>& dims, const std::vector<std::int64_t>& max_dims = {});
  static H5Space scalar();
  hid_t id() const { return h_.id(); }
  std::vector<std::int64_t> dims() const;
  void select_rows(std::int64_t start, std::int64_t count);  // [start, start + count) along dim 0, all of the rest
  void select_none();

 private:
  H5Handle h_;
};

enum class H5Mode { read_only, read_write };
enum class Transfer { independent, collective };

// What groups and datasets share: a handle, where it lives (for messages) and attributes.
class H5Object {
 public:
  hid_t id() const { return h_.id(); }
  const std::string& file_path() const { return file_; }
  const std::string& path() const { return path_; }  // inside the file, e.g. "/latents"
  bool mpio() const { return mpio_; }

  bool has_attr(const std::string& name) const;
  // Writing replaces an attribute of the same name. Strings are stored as variable-length UTF-8 (as h5py does).
  void write_attr(const std::string& name, const std::string& value);
  void write_attr(const std::string& name, const char* value) { write_attr(name, std::string(value)); }
  void write_attr(const std::string& name, std::int64_t value);
  void write_attr(const std::string& name, int value) { write_attr(name, std::int64_t(value)); }
  void write_attr(const std::string& name, double value);
  // Reading checks the stored type class (a string read as a number is an error, not a conversion).
  std::string read_attr_string(const std::string& name) const;
  std::int64_t read_attr_int64(const std::string& name) const;
  double read_attr_double(const std::string& name) const;  // integer attributes are read as doubles too

  [[noreturn]] void fail(const std::string& what) const { h5_fail(file_, path_, what); }

 protected:
  H5Object(H5Handle h, std::string file, std::string path, bool mpio)
      : h_(std::move(h)), file_(std::move(file)), path_(std::move(path)), mpio_(mpio) {}
  std::string child_path(const std::string& name) const { return path_ == "/" ? "/" + name : path_ + "/" + name; }

  H5Handle h_;
  std::string file_, path_;
  bool mpio_ = false;
};

class H5Dataset;

struct H5DatasetOptions {
  std::vector<std::int64_t> chunk;  // chunk dimensions; empty: contiguous storage (or automatic when extensible)
  bool extensible = false;          // dim 0 may grow (extend_rows); needs chunked storage
};

class H5Group : public H5Object {
 public:
  H5Group(H5Handle h, std::string file, std::string path, bool mpio)
      : H5Object(std::move(h), std::move(file), std::move(path), mpio) {}
  bool has(const std::string& name) const;  // a direct child (group or dataset)
  std::vector<std::string> children() const;  // the names of the direct children, in name order
  bool is_group(const std::string& name) const;  // a direct child that is a group
  H5Group create_group(const std::string& name);
  H5Group open_group(const std::string& name) const;
  void remove(const std::string& name);  // unlinks a child (the space is not reclaimed)
  H5Dataset create_dataset(const std::string& name, at::ScalarType dtype, const std::vector<std::int64_t>& shape,
                           const H5DatasetOptions& options = {});
  // chunk_cache_bytes < 0 keeps HDF5's default cache (1 MiB); 0 reads partial chunks straight from the file,
  // which is what random row access wants.
  H5Dataset open_dataset(const std::string& name, std::int64_t chunk_cache_bytes = -1) const;
};

class H5Dataset : public H5Object {
 public:
  H5Dataset(H5Handle h, std::string file, std::string path, bool mpio);
  at::ScalarType dtype() const { return dtype_; }
  std::vector<std::int64_t> shape() const;  // current extent
  std::vector<std::int64_t> chunk() const;  // empty when not chunked

  // Whole dataset: the tensor's shape must equal the dataset's, its dtype the dataset's.
  void write(const at::Tensor& t, Transfer transfer = Transfer::independent);
  at::Tensor read(Transfer transfer = Transfer::independent) const;
  // Rows [start, start + t.size(0)) along dim 0; t has the dataset's trailing dimensions.
  void write_rows(std::int64_t start, const at::Tensor& t, Transfer transfer = Transfer::independent);
  at::Tensor read_rows(std::int64_t start, std::int64_t count, Transfer transfer = Transfer::independent) const;
  // Into a contiguous CPU tensor of the dataset's dtype (pinned memory, a narrow() of a larger batch, ...).
  void read_rows_into(std::int64_t start, const at::Tensor& out, Transfer transfer = Transfer::independent) const;
  // 1-D datasets (flattened tensors): elements [offset, offset + numel); t is flattened first. Count 0 is valid,
  // so that a rank with no slice still takes part in a collective transfer.
  void write_slice(std::int64_t offset, const at::Tensor& t, Transfer transfer = Transfer::independent);
  at::Tensor read_slice(std::int64_t offset, std::int64_t count, Transfer transfer = Transfer::independent) const;
  void extend_rows(std::int64_t rows);  // new extent of dim 0 (extensible datasets)

 private:
  friend class H5Group;
  H5Dataset(H5Handle h, std::string file, std::string path, bool mpio, at::ScalarType dtype)
      : H5Object(std::move(h), std::move(file), std::move(path), mpio), dtype_(dtype) {}
  void transfer_rows(bool write, std::int64_t start, std::int64_t count, void* buf, Transfer transfer) const;
  at::ScalarType dtype_;
};

class H5File {
 public:
  // Creates (truncating) or opens a file. With a communicator and parallel HDF5 the file is opened through
  // MPI-IO and creating/opening is collective over the group; see the top of this header for serial HDF5.
  static H5File create(const std::string& path, const parallel::ProcessGroup* group = nullptr);
  static H5File open(const std::string& path, H5Mode mode = H5Mode::read_only,
                     const parallel::ProcessGroup* group = nullptr);

  const std::string& path() const { return path_; }
  bool mpio() const { return mpio_; }
  H5Group root() const;
  void flush();
  void close();  // reports a failed close (the destructor cannot); objects still open keep the file open

 private:
  H5File(H5Handle h, std::string path, bool mpio) : h_(std::move(h)), path_(std::move(path)), mpio_(mpio) {}
  H5Handle h_;
  std::string path_;
  bool mpio_ = false;
};

// Strings as plain arrays, which h5py and every tool read without string types: offsets [n + 1] int64 and the UTF-8
// bytes uint8; string i is bytes[offsets[i]:offsets[i + 1]].
std::pair<at::Tensor, at::Tensor> pack_strings(const std::vector<std::string>& strings);  // (offsets, bytes)
// The inverse; opendit::Error naming `what` when the offsets do not run from 0 up to the byte count.
std::vector<std::string> unpack_strings(const at::Tensor& offsets, const at::Tensor& bytes, const std::string& what);

// The datasets at the root and in its direct groups ("labels", "bucket_0/mean", ...), in name order.
std::vector<std::string> dataset_paths(const H5Group& root);

}  // namespace opendit::io
