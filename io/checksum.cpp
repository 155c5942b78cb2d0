// Dataset checksums; see checksum.hpp and docs/FORMATS.md.
#include "io/checksum.hpp"

#include <zlib.h>

#include <algorithm>
#include <memory>

#include "core/error.hpp"
#include "core/strings.hpp"
#include "io/checkpoint_plan.hpp"

namespace opendit::io {

void Crc32::add(const void* data, std::int64_t bytes) {
  crc_ = ckpt::crc_bytes(data, bytes, crc_);
  bytes_ += bytes;
}

void Crc32::add(const at::Tensor& t) {
  const at::Tensor c = t.cpu().contiguous();
  add(c.data_ptr(), c.numel() * std::int64_t(c.element_size()));
}

void Crc32::append(std::uint32_t crc, std::int64_t bytes) {
  crc_ = std::uint32_t(crc32_combine(uLong(crc_), uLong(crc), z_off_t(bytes)));
  bytes_ += bytes;
}

std::optional<std::uint32_t> stored_crc32(const H5Dataset& ds) {
  if (!ds.has_attr(kCrcAttribute)) return std::nullopt;
  const std::int64_t v = ds.read_attr_int64(kCrcAttribute);
  if (v < 0 || v > std::int64_t(0xffffffffu))
    ds.fail(cat("attribute 'crc32' = ", v, " is not a CRC-32 (expected 0 to 4294967295): the file is damaged"));
  return std::uint32_t(v);
}

std::int64_t dataset_bytes(const H5Dataset& ds) {
  std::int64_t n = at::elementSize(ds.dtype());
  for (auto d : ds.shape()) n *= d;
  return n;
}

std::string dataset_summary(const H5Dataset& ds) { return cat(dtype_name(ds.dtype()), " ", shape_str(ds.shape())); }

Crc32 compute_crc32(const H5Dataset& ds, std::int64_t begin, std::int64_t end,
                    const std::function<void(std::int64_t)>& on_bytes) {
  Crc32 crc;
  const auto shape = ds.shape();
  if (shape.empty()) {  // a scalar: one value
    crc.add(ds.read());
    if (on_bytes) on_bytes(crc.bytes());
    return crc;
  }
  std::int64_t row_bytes = at::elementSize(ds.dtype());
  for (std::size_t i = 1; i < shape.size(); ++i) row_bytes *= shape[i];
  // Blocks of whole chunks (a chunk is read once, and no chunk cache is needed) of about 64 MiB.
  const auto chunk = ds.chunk();
  const std::int64_t chunk_rows = chunk.empty() ? 1 : std::max<std::int64_t>(chunk[0], 1);
  const std::int64_t want = std::max<std::int64_t>(1, (std::int64_t(64) << 20) / std::max<std::int64_t>(row_bytes, 1));
  const std::int64_t block = std::max<std::int64_t>(1, want / chunk_rows) * chunk_rows;
  if (end <= begin) return crc;
  auto dims = shape;
  dims[0] = std::min(block, end - begin);
  at::Tensor buf = at::empty(dims, at::TensorOptions().dtype(ds.dtype()));
  for (std::int64_t r = begin; r < end;) {
    // Blocks end on chunk boundaries, so that a share that starts mid-chunk aligns after its first block.
    const std::int64_t stop = std::min(end, (r / chunk_rows) * chunk_rows + block);
    at::Tensor rows = buf.narrow(0, 0, stop - r);
    ds.read_rows_into(r, rows);
    crc.add(rows.data_ptr(), (stop - r) * row_bytes);
    if (on_bytes) on_bytes((stop - r) * row_bytes);
    r = stop;
  }
  return crc;
}

std::string crc_mismatch(std::uint32_t expected, std::uint32_t found) {
  return cat("checksum mismatch: expected crc32 ", expected, ", found ", found, " (the data is damaged)");
}

DatasetCheck check_dataset(const H5Dataset& ds, const std::function<void(std::int64_t)>& on_bytes) {
  DatasetCheck c;
  c.path = ds.path();
  c.what = dataset_summary(ds);
  c.bytes = dataset_bytes(ds);
  c.expected = stored_crc32(ds);
  const auto shape = ds.shape();
  c.found = compute_crc32(ds, 0, shape.empty() ? 1 : shape[0], on_bytes).value();
  return c;
}

std::vector<DatasetCheck> verify_datasets(const std::string& file, const std::vector<std::string>& names,
                                          const parallel::ProcessGroup& group,
                                          const std::function<void(std::int64_t)>& on_bytes) {
  const int rank = group.rank(), size = group.size();
  std::vector<DatasetCheck> checks(names.size());
  std::vector<std::int64_t> mine;  // per dataset: crc, bytes of this rank's rows
  group.agree([&] {
    H5File f = H5File::open(file);
    const H5Group root = f.root();
    for (std::size_t i = 0; i < names.size(); ++i) {
      const H5Dataset ds = root.open_dataset(names[i], 0);
      checks[i].path = ds.path();
      checks[i].what = dataset_summary(ds);
      checks[i].bytes = dataset_bytes(ds);
      checks[i].expected = stored_crc32(ds);
      const auto shape = ds.shape();
      const std::int64_t rows = shape.empty() ? 1 : shape[0];
      // Rank r reads rows [rows r / size, rows (r + 1) / size): contiguous shares, in rank order.
      Crc32 crc;
      if (checks[i].expected) {
        const std::int64_t lo = shape.empty() ? (rank == 0 ? 0 : 1) : rows * rank / size;
        const std::int64_t hi = shape.empty() ? 1 : rows * (rank + 1) / size;
        if (hi > lo) crc = compute_crc32(ds, lo, hi, on_bytes);
      }
      mine.push_back(std::int64_t(crc.value()));
      mine.push_back(crc.bytes());
    }
  });
  const auto all = group.all_gather(mine);  // [rank][dataset][crc, bytes]
  for (std::size_t i = 0; i < names.size(); ++i) {
    Crc32 whole;
    for (int r = 0; r < size; ++r) {
      const std::size_t k = (std::size_t(r) * names.size() + i) * 2;
      whole.append(std::uint32_t(all[k]), all[k + 1]);
    }
    checks[i].found = whole.value();
  }
  return checks;
}

}  // namespace opendit::io
