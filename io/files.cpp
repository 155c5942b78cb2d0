#include "io/files.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>

#include "core/error.hpp"
#include "io/atomic_file.hpp"

namespace opendit::io {

std::string errno_text() { return std::strerror(errno); }

void make_dirs(const std::string& dir, const std::string& what) {
  std::string cur;
  std::size_t pos = 0;
  while (pos != std::string::npos) {
    pos = dir.find('/', pos + 1);
    cur = dir.substr(0, pos);
    if (cur.empty()) continue;
    struct stat st;
    if (::stat(cur.c_str(), &st) == 0) {
      if (!S_ISDIR(st.st_mode)) throw Error(cat(what, " '", dir, "': cannot create it, '", cur, "' is not a folder"));
      continue;
    }
    if (::mkdir(cur.c_str(), 0777) != 0 && errno != EEXIST)
      throw Error(cat(what, " '", dir, "': cannot create '", cur, "' (", errno_text(), ")"));
  }
  if (::access(dir.c_str(), W_OK | X_OK) != 0) throw Error(cat(what, " '", dir, "': not writable (", errno_text(), ")"));
}

void fsync_path(const std::string& path, bool dir) {
  const int fd = ::open(path.c_str(), dir ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) throw Error(cat("'", path, "': cannot open for fsync (", errno_text(), ")"));
  const int rc = ::fsync(fd);
  const std::string why = errno_text();
  ::close(fd);
  if (rc != 0 && !dir) throw Error(cat("'", path, "': fsync failed (", why, ")"));
}

bool path_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

bool check_can_write(const std::string& path, const std::string& what) {
  const std::size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    throw Error(cat(what, " ", path, ": the folder '", dir, "' does not exist (create it first)"));
  const bool exists = ::stat(path.c_str(), &st) == 0;
  if (exists && S_ISDIR(st.st_mode)) throw Error(cat(what, " ", path, ": is a folder; expected a file name"));
  // A probe file beside it: what the writer's temporary file needs (access() says yes to root on a read-only mount).
  const std::string probe = cat(path, ".probe-", ::getpid());
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
  if (fd < 0) throw Error(cat(what, " ", path, ": cannot create a file in '", dir, "' (", errno_text(), ")"));
  ::close(fd);
  ::unlink(probe.c_str());
  return exists;
}

std::vector<std::pair<std::string, std::string>> list_dir(const std::string& dir) {
  std::vector<std::pair<std::string, std::string>> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = ::readdir(d)) out.push_back({e->d_name, dir + "/" + e->d_name});
  ::closedir(d);
  return out;
}

std::optional<long long> free_bytes(const std::string& path) {
  std::string p = path.empty() ? "." : path;
  struct statvfs st;
  while (::statvfs(p.c_str(), &st) != 0) {
    if ((errno != ENOENT && errno != ENOTDIR) || p == "." || p == "/") return std::nullopt;
    const auto slash = p.find_last_of('/');
    if (slash == std::string::npos)
      p = ".";
    else if (slash == 0)
      p = "/";
    else
      p = p.substr(0, slash);
  }
  return static_cast<long long>(st.f_bavail) * static_cast<long long>(st.f_frsize);
}

std::string format_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) bytes /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
  return buf;
}

std::string now_iso8601() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace opendit::io

namespace opendit::io {

std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(cat(path, ": cannot be read"));
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

void write_text_file(const std::string& path, const std::string& text) {
  AtomicFile f(path);
  std::FILE* out = std::fopen(f.tmp_path().c_str(), "wb");
  const bool ok = out && std::fwrite(text.data(), 1, text.size(), out) == text.size();
  if (!out || std::fclose(out) != 0 || !ok) throw Error(cat(path, ": cannot be written (", errno_text(), ")"));
  f.commit();
}

}  // namespace opendit::io
