#include "io/shared_file.hpp"

#include <memory>

#include "core/error.hpp"

namespace opendit::io {

bool collective_writes(bool force_serial, const parallel::ProcessGroup& group) {
  return hdf5_is_parallel() && !force_serial && group.size() > 1;
}

void write_shared_file(const std::string& path, const parallel::ProcessGroup& group, bool force_serial,
                       const std::function<void(H5File&)>& create_structure,
                       const std::function<void(H5File&, bool collective)>& write_mine) {
  if (collective_writes(force_serial, group)) {
    // MPI-IO errors on create are collective. Inside the collective transfers and the close, a failure (a full
    // disk, a quota, an I/O error) reaches only the ranks whose writes failed, while the others wait in the next
    // collective call: no agreement is possible there, and closing the file is itself collective. So a failing
    // rank leaves the file open and ends the job with its error (a rank error: MPI_Abort); NAME.tmp stays and the
    // next run removes it. The newest complete checkpoint is untouched.
    std::unique_ptr<H5File> file;
    group.agree([&] { file = std::make_unique<H5File>(H5File::create(path, &group)); });
    try {
      create_structure(*file);
      write_mine(*file, true);
      file->close();
    } catch (const std::exception& e) {
      (void)file.release();
      throw Error(cat("writing '", path, "' failed on this rank while the others were writing it too: ", e.what()));
    }
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
