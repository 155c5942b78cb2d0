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

#include "core/error.hpp"

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
