// The files of the HDF5 layer (see h5.hpp): create and open, serial or through MPI-IO. The one place of io/ that
// hands HDF5 an MPI communicator (parallel HDF5 needs it).
#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "core/error.hpp"
#include "io/h5.hpp"
#include "io/h5_detail.hpp"
#include "parallel/mpi_comm.hpp"

namespace opendit::io {

using h5_detail::check;
using h5_detail::Lock;

H5PropList H5PropList::file_access(const parallel::ProcessGroup* group) {
  Lock lock;
  H5PropList p(H5P_FILE_ACCESS);
#ifdef H5_HAVE_PARALLEL
  if (group != nullptr)
    check(H5Pset_fapl_mpio(p.id(), parallel::mpi_comm(*group), MPI_INFO_NULL), "", "", "cannot set MPI-IO file access");
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

namespace {

herr_t close_file(hid_t id) {
  const herr_t rc = H5Fclose(id);
  if (rc < 0) unclean_exit_needed() = true;  // HDF5 keeps the file half open; its exit cleanup would crash
  return rc;
}

// With serial HDF5, several ranks may read one file but not write it: each would write its own copy.
void refuse_serial_writes(const std::string& path, const parallel::ProcessGroup* group, const char* what) {
  if (hdf5_is_parallel() || group == nullptr) return;
  const int size = group->size();
  if (size > 1)
    h5_fail(path, "",
            cat("cannot ", what, " one file from ", size,
                " ranks: this HDF5 library is serial (build "
                "with parallel HDF5, or write from one rank)"));
}
}  // namespace

H5File H5File::create(const std::string& path, const parallel::ProcessGroup* group) {
  Lock lock;
  refuse_serial_writes(path, group, "create");
  H5PropList fapl = H5PropList::file_access(group);
  H5Handle f(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.id()), close_file);
  if (!f.valid()) h5_fail(path, "", "cannot create file");
  return H5File(std::move(f), path, hdf5_is_parallel() && group != nullptr);
}

H5File H5File::open(const std::string& path, H5Mode mode, const parallel::ProcessGroup* group) {
  Lock lock;
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) h5_fail(path, "", std::strerror(errno));
  if (mode == H5Mode::read_write) refuse_serial_writes(path, group, "open for writing");
  H5PropList fapl = H5PropList::file_access(group);
  const unsigned flags = mode == H5Mode::read_only ? H5F_ACC_RDONLY : H5F_ACC_RDWR;
  H5Handle f(H5Fopen(path.c_str(), flags, fapl.id()), close_file);
  if (!f.valid()) h5_fail(path, "", "cannot open file (not an HDF5 file, truncated, or locked by a writer?)");
  return H5File(std::move(f), path, hdf5_is_parallel() && group != nullptr);
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
  const herr_t rc = close_file(h_.release());
  if (rc < 0) h5_fail(path_, "", "cannot close file");
}

}  // namespace opendit::io
