#include "io/atomic_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>

#include "core/error.hpp"
#include "io/files.hpp"

namespace opendit::io {

namespace {

std::string folder_of(const std::string& path) {
  const auto slash = path.rfind('/');
  return slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

std::string done_marker(const std::string& path) { return path + ".done"; }

AtomicFile::AtomicFile(std::string path, const std::string& tmp_suffix)
    : path_(std::move(path)), tmp_(tmp_path_for(path_, tmp_suffix)) {}

AtomicFile::~AtomicFile() {
  if (!committed_) std::remove(tmp_.c_str());
}

void AtomicFile::commit() {
  fsync_path(tmp_, false);
  if (::rename(tmp_.c_str(), path_.c_str()) != 0)
    throw Error(cat("'", tmp_, "': cannot rename to '", path_, "' (", errno_text(), ")"));
  committed_ = true;
  fsync_path(folder_of(path_), true);
}

void AtomicFile::commit_with_marker(const std::string& marker_text) {
  commit();
  const std::string done = done_marker(path_);
  const int fd = ::open(done.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(cat("'", done, "': cannot create (", errno_text(), ")"));
  const bool ok =
      ::write(fd, marker_text.data(), marker_text.size()) == ssize_t(marker_text.size()) && ::fsync(fd) == 0;
  const std::string why = errno_text();
  ::close(fd);
  if (!ok) throw Error(cat("'", done, "': cannot write (", why, ")"));
  fsync_path(folder_of(path_), true);
}

}  // namespace opendit::io
