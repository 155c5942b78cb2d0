#include "io/row_writer.hpp"

#include "core/error.hpp"
#include "core/strings.hpp"
#include "io/shared_file.hpp"

namespace opendit::io {

RowWriter::RowWriter(std::string path, std::vector<RowDataset> datasets, const parallel::ProcessGroup& group,
                     bool force_serial, const std::function<void(H5Group&)>& root_attrs)
    : path_(std::move(path)),
      datasets_(std::move(datasets)),
      group_(group),
      collective_(collective_writes(force_serial)) {
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

void RowWriter::write(const std::map<std::string, RowBlock>& blocks) {
  if (closed_) throw Error(cat("row writer '", path_, "': write() after close()"));
  group_.agree([&] { check(blocks); });
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

void RowWriter::close() {
  if (closed_) return;
  closed_ = true;
  if (collective_) group_.agree([&] { file_->close(); });
  file_.reset();
}

}  // namespace opendit::io
