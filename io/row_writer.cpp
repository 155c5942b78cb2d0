#include "io/row_writer.hpp"

#include <algorithm>
#include <tuple>

#include "core/error.hpp"
#include "core/strings.hpp"
#include "io/checksum.hpp"
#include "io/shared_file.hpp"

namespace opendit::io {

RowWriter::RowWriter(std::string path, std::vector<RowDataset> datasets, const parallel::ProcessGroup& group,
                     bool force_serial, const std::function<void(H5Group&)>& root_attrs)
    : path_(std::move(path)),
      datasets_(std::move(datasets)),
      group_(group),
      collective_(collective_writes(force_serial, group)) {
  auto create = [&](H5File& file) {
    H5Group root = file.root();
    if (root_attrs) root_attrs(root);
    for (const RowDataset& d : datasets_) {
      std::vector<std::int64_t> shape{d.rows};
      shape.insert(shape.end(), d.row_shape.begin(), d.row_shape.end());
      root.create_dataset(d.name, d.dtype, shape);
    }
  };
  group_.agree([&] {
    for (const RowDataset& d : datasets_)
      if (d.name.empty() || d.rows < 0) throw Error(cat("row writer '", path_, "': bad dataset '", d.name, "'"));
  });
  if (collective_) {
    group_.agree([&] { file_ = std::make_unique<H5File>(H5File::create(path_, &group_)); });
    group_.agree([&] { create(*file_); });
  } else {
    group_.agree([&] {
      if (group_.rank() != 0) return;
      H5File file = H5File::create(path_);
      create(file);
      file.close();
    });
  }
}

RowWriter::~RowWriter() {
  if (closed_ || !file_) return;
  try {
    file_->close();
  } catch (...) {  // a destructor must not throw; write() and close() report failures
  }
}

void RowWriter::check(const std::map<std::string, RowBlock>& blocks) const {
  for (const auto& [name, block] : blocks) {
    const RowDataset* d = nullptr;
    for (const RowDataset& x : datasets_)
      if (x.name == name) d = &x;
    if (!d) throw Error(cat("row writer '", path_, "': no dataset '", name, "'"));
    const at::Tensor& t = block.rows;
    std::vector<std::int64_t> want{t.defined() && t.dim() > 0 ? t.size(0) : 0};
    want.insert(want.end(), d->row_shape.begin(), d->row_shape.end());
    if (!t.defined() || t.sizes().vec() != want)
      throw Error(cat("row writer '", path_, "', dataset '", name, "': rows must be ", shape_str(want), ", found ",
                      t.defined() ? shape_str(t.sizes()) : std::string("none")));
    if (block.first < 0 || block.first + want[0] > d->rows)
      throw Error(cat("row writer '", path_, "', dataset '", name, "': rows [", block.first, ", ",
                      block.first + want[0], ") outside [0, ", d->rows, ")"));
  }
}

void RowWriter::write_blocks(H5File& file, const std::map<std::string, RowBlock>& blocks, bool collective) const {
  H5Group root = file.root();
  for (const RowDataset& d : datasets_) {
    // An empty dataset takes no transfer (every rank knows it): HDF5 allocates no storage for it, and a collective
    // write of nothing into it fails.
    if (d.rows == 0) continue;
    auto it = blocks.find(d.name);
    if (it == blocks.end() && !collective) continue;
    H5Dataset ds = root.open_dataset(d.name);
    if (it == blocks.end()) {  // takes part in the collective transfer with no rows
      std::vector<std::int64_t> empty{0};
      empty.insert(empty.end(), d.row_shape.begin(), d.row_shape.end());
      ds.write_rows(0, at::empty(empty, at::TensorOptions(d.dtype)), Transfer::collective);
      continue;
    }
    ds.write_rows(it->second.first, it->second.rows.to(at::kCPU, d.dtype),
                  collective ? Transfer::collective : Transfer::independent);
  }
}

void RowWriter::write(const std::map<std::string, RowBlock>& in) {
  if (closed_) throw Error(cat("row writer '", path_, "': write() after close()"));
  group_.agree([&] { check(in); });
  // The stored dtype, contiguous on the CPU: written as it is and its crc32 taken from the same memory.
  std::map<std::string, RowBlock> blocks;
  for (std::size_t i = 0; i < datasets_.size(); ++i) {
    auto it = in.find(datasets_[i].name);
    if (it == in.end()) continue;
    RowBlock b{it->second.first, it->second.rows.to(at::kCPU, datasets_[i].dtype).contiguous()};
    Crc32 crc;
    crc.add(b.rows);
    pieces_.push_back({std::int64_t(i), b.first, b.rows.size(0), std::int64_t(crc.value()), crc.bytes()});
    blocks.emplace(it->first, std::move(b));
  }
  if (collective_) {
    group_.agree([&] { write_blocks(*file_, blocks, true); });
    return;
  }
  group_.in_turn([&] {
    if (blocks.empty()) return;
    H5File file = H5File::open(path_, H5Mode::read_write);
    write_blocks(file, blocks, false);
    file.close();
  });
}

// Rank 0 combines every rank's pieces in row order. A dataset gets its crc32 only when the pieces cover its rows
// exactly once: otherwise the writes do not tell what it holds (unwritten rows, rows written twice).
std::vector<std::int64_t> RowWriter::combined_crcs() const {
  std::vector<std::int64_t> flat;
  for (const Piece& p : pieces_) flat.insert(flat.end(), {p.dataset, p.first, p.rows, p.crc, p.bytes});
  const auto gathered = group_.gather(flat, 0);
  std::vector<std::int64_t> crcs(datasets_.size(), -1);  // -1: no crc32
  if (group_.rank() == 0) {
    std::vector<Piece> all;
    for (const auto& v : gathered)
      for (std::size_t i = 0; i + 5 <= v.size(); i += 5) all.push_back({v[i], v[i + 1], v[i + 2], v[i + 3], v[i + 4]});
    std::sort(all.begin(), all.end(), [](const Piece& a, const Piece& b) {
      return std::tie(a.dataset, a.first) < std::tie(b.dataset, b.first);
    });
    for (std::size_t d = 0; d < datasets_.size(); ++d) {
      Crc32 whole;
      std::int64_t next = 0;
      bool exact = true;
      for (const Piece& p : all) {
        if (p.dataset != std::int64_t(d) || p.rows == 0) continue;
        exact = exact && p.first == next;
        whole.append(std::uint32_t(p.crc), p.bytes);
        next = p.first + p.rows;
      }
      if (exact && next == datasets_[d].rows) crcs[d] = whole.value();
    }
  }
  return group_.broadcast(crcs, 0);
}

void RowWriter::close() {
  if (closed_) return;
  closed_ = true;
  const std::vector<std::int64_t> crcs = combined_crcs();
  auto write_crcs = [&](H5File& file) {
    H5Group root = file.root();
    for (std::size_t d = 0; d < datasets_.size(); ++d)
      if (crcs[d] >= 0) root.open_dataset(datasets_[d].name).write_attr(kCrcAttribute, crcs[d]);
  };
  if (collective_) {  // attribute writes are collective with parallel HDF5: every rank writes the same
    group_.agree([&] {
      write_crcs(*file_);
      file_->close();
    });
  } else {
    group_.agree([&] {
      if (group_.rank() != 0) return;
      H5File file = H5File::open(path_, H5Mode::read_write);
      write_crcs(file);
      file.close();
    });
  }
  file_.reset();
}

}  // namespace opendit::io
