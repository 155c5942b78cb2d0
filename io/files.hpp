// Small POSIX helpers for the writers in io/ and the run folder of `train`: folders, durability, listing, time.
#pragma once
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace opendit::io {

std::string errno_text();  // strerror(errno)

// mkdir -p, then checks the folder is writable; errors are opendit::Error "<what> '<dir>': ...".
void make_dirs(const std::string& dir, const std::string& what);

// fsync of a file (failure is an error) or of a folder (best effort: some filesystems refuse it).
void fsync_path(const std::string& path, bool dir);

bool path_exists(const std::string& path);

// Before any work: whether a writer can make the file `path` (atomically: a temporary file beside it, then a
// rename). Its folder must exist and take a new file (tried, then removed) and `path` must not be a folder; errors
// are opendit::Error "<what> <path>: ...". Returns whether a file is there already (it would be replaced).
bool check_can_write(const std::string& path, const std::string& what);

// The entries of a folder as (name, full path); empty when it cannot be read.
std::vector<std::pair<std::string, std::string>> list_dir(const std::string& dir);

// The bytes an unprivileged user may still write on the filesystem of `path` (or of its nearest existing parent
// folder: the path may not exist yet), from statvfs; nullopt when that cannot be read.
std::optional<long long> free_bytes(const std::string& path);

// "1.5 GiB", "320 MiB", "12 KiB", "12 B"
std::string format_bytes(double bytes);

std::string now_iso8601();  // UTC, e.g. 2026-11-25T02:53:40Z

// A whole file as text; opendit::Error "<path>: cannot be read" when it cannot.
std::string read_text_file(const std::string& path);
// `text` as the whole of `path`, atomically (io/atomic_file.hpp); errors name the file.
void write_text_file(const std::string& path, const std::string& text);

}  // namespace opendit::io
