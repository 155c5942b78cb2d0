// safetensors reader and writer; see safetensors.hpp for the layout.
// Files are read with pread at validated offsets only: every offset and length comes from a header that has been
// checked against the file size, so no malformed file can make us read or allocate past what the file holds.
#include "io/safetensors.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <tuple>
#include <vector>

#include "core/error.hpp"
#include "core/strings.hpp"
#include "io/atomic_file.hpp"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian and is copied as it is: a big-endian host needs byte swaps here"
#endif

namespace opendit::io {
namespace {

using json = nlohmann::json;

// The reference library refuses headers over 100 MB too; a larger "length" means this is not a safetensors file.
constexpr std::uint64_t kMaxHeaderBytes = 100ull << 20;

struct DtypeName {
  const char* name;
  at::ScalarType type;
};
constexpr DtypeName kDtypes[] = {{"F64", at::kDouble}, {"F32", at::kFloat}, {"F16", at::kHalf},
                                 {"BF16", at::kBFloat16}, {"I64", at::kLong}, {"I32", at::kInt},
                                 {"I16", at::kShort}, {"I8", at::kChar}, {"U8", at::kByte},
                                 {"BOOL", at::kBool}};
constexpr const char* kSupported = "F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL";

std::optional<at::ScalarType> dtype_from_name(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return d.type;
  return std::nullopt;
}

const char* dtype_name(at::ScalarType type) {
  for (const auto& d : kDtypes)
    if (type == d.type) return d.name;
  return nullptr;
}

// A name as a JSON string literal: quoted, and escaped so that no name can break the one-line message.
std::string quoted(const std::string& name) { return json(name).dump(); }

// A file descriptor that closes itself.
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// ---- reading --------------------------------------------------------------------------------------

using Entry = SafetensorsEntry;

class Reader {
 public:
  explicit Reader(std::string path) : path_(std::move(path)) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw Error(cat("safetensors file '", path_, "': ", what));
  }
  [[noreturn]] void fail(const std::string& tensor, const std::string& what) const {
    fail(cat("tensor ", quoted(tensor), ": ", what));
  }

  // Reads exactly n bytes at offset; the file may still shrink under us, which is reported, not crashed on.
  void read_exact(int fd, void* dst, std::uint64_t n, std::uint64_t offset) const {
    auto* p = static_cast<char*>(dst);
    while (n > 0) {
      const ssize_t got = ::pread(fd, p, std::min<std::uint64_t>(n, 1ull << 30), static_cast<off_t>(offset));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) fail(cat("read failed at byte ", offset, ": ", std::strerror(errno)));
      if (got == 0) fail(cat("file ended at byte ", offset, " while ", n, " more bytes were expected (truncated?)"));
      p += got, n -= static_cast<std::uint64_t>(got), offset += static_cast<std::uint64_t>(got);
    }
  }

  // Checks one "name": {"dtype", "shape", "data_offsets"} entry against the size of the data buffer.
  Entry parse_entry(const std::string& name, const json& v, std::uint64_t data_size) const {
    if (!v.is_object()) fail(name, cat("entry must be a JSON object, found ", v.type_name()));
    auto field = [&](const char* key) -> const json& {
      auto it = v.find(key);
      if (it == v.end()) fail(name, cat("entry lacks \"", key, "\""));
      return *it;
    };
    // nlohmann parses non-negative integers as unsigned, negative ones as signed and the rest as floats.
    auto count = [&](const json& x, const char* what) -> std::uint64_t {
      if (!x.is_number_unsigned() || x.get<std::uint64_t>() > std::uint64_t(INT64_MAX))
        fail(name, cat(what, " must be a non-negative integer, found ", x.dump()));
      return x.get<std::uint64_t>();
    };

    Entry e{name, at::kByte, {}, 0, 0};
    const json& dtype = field("dtype");
    if (!dtype.is_string()) fail(name, cat("\"dtype\" must be a string, found ", dtype.dump()));
    const auto type = dtype_from_name(dtype.get<std::string>());
    if (!type) fail(name, cat("unsupported dtype ", dtype.dump(), " (supported: ", kSupported, ")"));
    e.dtype = *type;

    const json& shape = field("shape");
    if (!shape.is_array()) fail(name, cat("\"shape\" must be an array, found ", shape.dump()));
    // torch's strides are products of max(dim, 1), even for an empty tensor, so that product must fit int64 too.
    std::uint64_t extent = 1, numel = 1, nbytes = 0;
    for (const json& d : shape) {
      const std::uint64_t dim = count(d, "shape dimension");
      if (__builtin_mul_overflow(extent, std::max<std::uint64_t>(dim, 1), &extent) || extent > INT64_MAX)
        fail(name, cat("shape ", shape.dump(), " overflows 64-bit sizes"));
      numel *= dim;  // <= extent
      e.shape.push_back(static_cast<std::int64_t>(dim));
    }
    if (__builtin_mul_overflow(numel, at::elementSize(e.dtype), &nbytes) || nbytes > INT64_MAX)
      fail(name, cat("shape ", shape.dump(), " overflows 64-bit sizes"));

    const json& offsets = field("data_offsets");
    if (!offsets.is_array() || offsets.size() != 2)
      fail(name, cat("\"data_offsets\" must be [begin, end], found ", offsets.dump()));
    e.begin = count(offsets[0], "data_offsets begin");
    e.end = count(offsets[1], "data_offsets end");
    if (e.begin > e.end) fail(name, cat("data_offsets [", e.begin, ", ", e.end, "] has begin > end"));
    if (e.end - e.begin != nbytes)
      fail(name, cat("data_offsets [", e.begin, ", ", e.end, "] span ", e.end - e.begin, " bytes, but ",
                     dtype.get<std::string>(), " ", shape_str(e.shape), " needs ", nbytes));
    if (e.end > data_size)
      fail(name, cat("data_offsets end ", e.end, " is past the data buffer of ", data_size,
                     " bytes (truncated file?)"));
    return e;
  }

  SafetensorsFile load() const {
    const int raw = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (raw < 0) throw Error(cat("cannot open safetensors file '", path_, "': ", std::strerror(errno)));
    Fd fd(raw);
    const SafetensorsHeader h = header(fd.fd);
    const std::uint64_t data_start = h.file_bytes - h.data_bytes;
    SafetensorsFile out;
    out.metadata = h.metadata;
    // Only now, with every entry validated, touch the data.
    for (const Entry& e : h.tensors) {
      at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(e.dtype));
      read_exact(fd.fd, t.data_ptr(), e.end - e.begin, data_start + e.begin);
      if (e.dtype == at::kBool) {  // any byte but 0/1 in a torch bool tensor is undefined behaviour
        const auto* b = static_cast<const unsigned char*>(t.data_ptr());
        const auto* bad = std::find_if(b, b + t.numel(), [](unsigned char c) { return c > 1; });
        if (bad != b + t.numel())
          fail(e.name, cat("BOOL element ", bad - b, " holds byte ", int(*bad), ", expected 0 or 1"));
      }
      out.tensors.emplace(e.name, std::move(t));
    }
    return out;
  }

  SafetensorsHeader header() const {
    const int raw = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (raw < 0) throw Error(cat("cannot open safetensors file '", path_, "': ", std::strerror(errno)));
    Fd fd(raw);
    return header(fd.fd);
  }

  // The header, validated against the file size; entries sorted by offset.
  SafetensorsHeader header(int fd) const {
    struct stat st {};
    if (::fstat(fd, &st) != 0) fail(cat("cannot stat: ", std::strerror(errno)));
    if (!S_ISREG(st.st_mode)) fail("not a regular file");
    const auto size = static_cast<std::uint64_t>(st.st_size);

    // 8-byte little-endian header length, then the header.
    if (size < 8) fail(cat("file is ", size, " bytes, shorter than the 8-byte header length"));
    unsigned char len_bytes[8];
    read_exact(fd, len_bytes, 8, 0);
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
    if (n == 0) fail("header length is 0");
    if (n > kMaxHeaderBytes) fail(cat("header length ", n, " exceeds the 100 MiB limit (not a safetensors file?)"));
    if (n > size - 8) fail(cat("header length ", n, " but only ", size - 8, " bytes follow (truncated file?)"));
    std::string text(n, '\0');
    read_exact(fd, text.data(), n, 8);
    const std::uint64_t data_start = 8 + n, data_size = size - data_start;

    // A name given twice would silently hide one tensor: the parser callback sees every top-level key.
    std::set<std::string> seen;
    auto no_duplicates = [&](int depth, json::parse_event_t event, json& parsed) {
      if (depth == 1 && event == json::parse_event_t::key && !seen.insert(parsed.get<std::string>()).second)
        fail(cat("header names ", parsed.dump(), " twice"));
      return true;
    };
    json header;
    try {
      header = json::parse(text, no_duplicates);
    } catch (const json::exception& e) {
      // "[json.exception.parse_error.101] parse error at ...": keep the part after the tag, printable ASCII only.
      std::string why = e.what();
      why = why.substr(why.find("] ") == std::string::npos ? 0 : why.find("] ") + 2);
      std::replace_if(why.begin(), why.end(), [](char c) { return c < 0x20 || c > 0x7e; }, '?');
      fail(cat("header is not valid JSON (", why, ")"));
    }
    if (!header.is_object()) fail(cat("header must be a JSON object, found ", header.type_name()));

    SafetensorsHeader out;
    out.file_bytes = size;
    out.data_bytes = data_size;
    std::vector<Entry>& entries = out.tensors;
    for (const auto& [name, value] : header.items()) {
      if (name != "__metadata__") {
        entries.push_back(parse_entry(name, value, data_size));
        continue;
      }
      if (!value.is_object()) fail(cat("\"__metadata__\" must be an object, found ", value.type_name()));
      for (const auto& [key, s] : value.items()) {
        if (!s.is_string()) fail(cat("__metadata__ value of ", quoted(key), " must be a string, found ", s.dump()));
        out.metadata[key] = s.get<std::string>();
      }
    }

    // No two tensors may share bytes (empty tensors hold none). Gaps are tolerated.
    std::sort(entries.begin(), entries.end(),
              [](const Entry& a, const Entry& b) { return std::tie(a.begin, a.end) < std::tie(b.begin, b.end); });
    const Entry* last = nullptr;  // the non-empty entry reaching furthest so far
    for (const Entry& e : entries) {
      if (e.begin == e.end) continue;
      if (last && e.begin < last->end)
        fail(cat("tensors ", quoted(last->name), " (data_offsets [", last->begin, ", ", last->end, "]) and ",
                 quoted(e.name), " (data_offsets [", e.begin, ", ", e.end, "]) overlap"));
      if (!last || e.end > last->end) last = &e;
    }

    return out;
  }

 private:
  std::string path_;
};

// ---- writing --------------------------------------------------------------------------------------

[[noreturn]] void write_failed(const std::string& path, const std::string& step, int err) {
  throw Error(cat("cannot write safetensors file '", path, "': ", step, ": ", std::strerror(err)));
}

void write_all(int fd, const void* src, std::uint64_t n, const std::string& path) {
  const auto* p = static_cast<const char*>(src);
  while (n > 0) {
    const ssize_t put = ::write(fd, p, std::min<std::uint64_t>(n, 1ull << 30));
    if (put < 0 && errno == EINTR) continue;
    if (put < 0) write_failed(path, "write", errno);
    p += put, n -= static_cast<std::uint64_t>(put);
  }
}

}  // namespace

SafetensorsFile load_safetensors(const std::string& path) { return Reader(path).load(); }

SafetensorsHeader read_safetensors_header(const std::string& path) { return Reader(path).header(); }

void save_safetensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // The header keeps the reference library's key order ("__metadata__" first; dtype, shape, data_offsets).
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> data;  // contiguous CPU copies, in header order (std::map: sorted by name)
  std::uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name == "__metadata__")
      throw Error(cat("cannot save '", path, "': the tensor name \"__metadata__\" is reserved"));
    if (!tensor.defined()) throw Error(cat("cannot save '", path, "': tensor '", name, "' is undefined"));
    const char* dtype = dtype_name(tensor.scalar_type());
    if (!dtype)
      throw Error(cat("cannot save '", path, "': tensor '", name, "' has unsupported dtype ", tensor.scalar_type(),
                      " (supported: ", kSupported, ")"));
    at::Tensor c = tensor.detach().resolve_conj().resolve_neg().to(at::kCPU).contiguous();
    const auto nbytes = static_cast<std::uint64_t>(c.nbytes());
    header[name] = nlohmann::ordered_json::object(
        {{"dtype", dtype}, {"shape", c.sizes().vec()}, {"data_offsets", {offset, offset + nbytes}}});
    data.push_back(std::move(c));
    offset += nbytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception&) {
    throw Error(cat("cannot save '", path, "': a tensor name or metadata string is not valid UTF-8"));
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // so the data starts 8-byte aligned, as the reference writes it
  unsigned char len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>(text.size() >> (8 * i));

  // Written beside the target and renamed over it: readers see the old file or the complete new one.
  AtomicFile file(path);
  {
    const int raw = ::open(file.tmp_path().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (raw < 0) write_failed(path, cat("cannot create '", file.tmp_path(), "'"), errno);
    Fd fd(raw);
    write_all(fd.fd, len_bytes, 8, path);
    write_all(fd.fd, text.data(), text.size(), path);
    for (const at::Tensor& t : data) write_all(fd.fd, t.data_ptr(), t.nbytes(), path);
    const int closing = fd.fd;
    fd.fd = -1;
    if (::close(closing) != 0) write_failed(path, "close", errno);
  }
  file.commit();
}

}  // namespace opendit::io
