#include "io/shared_file.hpp"

#include <memory>

namespace opendit::io {

bool collective_writes(bool force_serial) { return hdf5_is_parallel() && !force_serial; }

void write_shared_file(const std::string& path, const parallel::ProcessGroup& group, bool force_serial,
                       const std::function<void(H5File&)>& create_structure,
                       const std::function<void(H5File&, bool collective)>& write_mine) {
  if (collective_writes(force_serial)) {
    // Collective HDF5 calls: a failure inside is reported by HDF5 on the ranks concerned; MPI-IO errors on
    // open/create are collective. Local failures are agreed upon after the file is closed.
    std::unique_ptr<H5File> file;
    group.agree([&] { file = std::make_unique<H5File>(H5File::create(path, &group)); });
    group.agree([&] {
      try {
        create_structure(*file);
        write_mine(*file, true);
        file->close();
      } catch (...) {
        file.reset();
        throw;
      }
    });
    return;
  }
  group.agree([&] {
    if (group.rank() != 0) return;
    H5File file = H5File::create(path);
    create_structure(file);
    file.close();
  });
  group.in_turn([&] {
    H5File file = H5File::open(path, H5Mode::read_write);
    write_mine(file, false);
    file.close();
  });
}

}  // namespace opendit::io
