#include "train/run_folder.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.hpp"
#include "core/strings.hpp"
#include "io/checkpoint.hpp"
#include "io/files.hpp"

namespace opendit::train {

namespace {

constexpr const char* kLock = "run.lock";
// opendit's files in a run folder besides checkpoints/ (what --overwrite deletes, what a branch moves).
constexpr const char* kWeights[] = {"model.safetensors", "ema.safetensors"};

std::string host_name() {
  char buf[256] = {0};
  ::gethostname(buf, sizeof buf - 1);
  return buf;
}

std::string read_text(int fd) {
  std::string s;
  char buf[512];
  ::lseek(fd, 0, SEEK_SET);
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) s.append(buf, std::size_t(n));
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// Moves `from` into folder `to` (created), keeping its name; an error names both.
void move_into(const std::string& from, const std::string& to) {
  io::make_dirs(to, "abandoned-branch folder");
  const std::string name = from.substr(from.find_last_of('/') + 1);
  if (::rename(from.c_str(), (to + "/" + name).c_str()) != 0)
    throw Error(cat("cannot move '", from, "' to '", to, "/' (", io::errno_text(), ")"));
}

// The step of a metrics.jsonl line, or -1 when the line is not a record.
int64_t metrics_step(const std::string& line) {
  try {
    const auto j = nlohmann::json::parse(line);
    return j.at("step").get<int64_t>();
  } catch (const std::exception&) {
    return -1;
  }
}

}  // namespace

std::vector<std::string> RunContents::describe() const {
  std::vector<std::string> out;
  if (!checkpoints.empty())
    out.push_back(checkpoints.size() == 1 ? cat("a checkpoint at step ", checkpoints[0])
                                          : cat(checkpoints.size(), " checkpoints (steps ", checkpoints.front(), " to ",
                                                checkpoints.back(), ")"));
  if (metrics) out.push_back("metrics.jsonl");
  if (weights) out.push_back("final weights");
  return out;
}

RunContents run_contents(const std::string& dir) {
  RunContents c;
  c.checkpoints = io::complete_checkpoints(dir + "/checkpoints");
  struct stat st;
  c.metrics = ::stat((dir + "/metrics.jsonl").c_str(), &st) == 0 && st.st_size > 0;
  for (const char* w : kWeights) c.weights = c.weights || io::path_exists(dir + "/" + w);
  return c;
}

RunFolder::RunFolder(std::string dir, const parallel::ProcessGroup& world, const RunRules& rules)
    : dir_(std::move(dir)), world_(world), rules_(rules) {
  const bool root = world.rank() == 0;
  std::string notes;
  world.agree([&] {
    if (!root) return;
    const bool exists = io::path_exists(dir_);
    if (!rules.dry_run) io::make_dirs(dir_, "run folder");
    // The lock first: nothing below may touch a folder another run is writing.
    const std::string lock_path = dir_ + "/" + kLock;
    const int fd = rules.dry_run ? (exists ? ::open(lock_path.c_str(), O_RDONLY | O_CLOEXEC) : -1)
                                 : ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (!rules.dry_run && fd < 0)
      throw Error(cat("run folder '", dir_, "': cannot open ", kLock, " (", io::errno_text(), ")"));
    if (fd >= 0) {
      if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK) {
          const std::string holder = read_text(fd);
          ::close(fd);
          throw Error(cat("run folder '", dir_, "' is in use by another `opendit train` (",
                          holder.empty() ? "unknown" : holder, "): wait for it to end, or pick another run.name"));
        }
        notes += cat("warning: run folder '", dir_, "': the filesystem refuses locks (", io::errno_text(),
                     "): a second run into this folder would not be stopped\n");
      }
      const std::string previous = read_text(fd);
      if (!previous.empty())
        notes += cat("note: ", lock_path, ": the run that held it (", previous,
                     ") ended without releasing it (killed?); taking it over\n");
      if (rules.dry_run) ::close(fd);
      else lock_fd_ = fd;  // held from here on; the destructor releases it (and the catch below, on a refusal)
    }
    // A fresh start never mixes with an earlier run.
    const RunContents c = run_contents(dir_);
    if (!rules.resume && !c.empty()) {
      if (!rules.overwrite) {
        if (lock_fd_ >= 0) ::close(lock_fd_), lock_fd_ = -1;  // the constructor throws: no destructor
        throw Error(cat("run folder '", dir_, "' already holds a run (", join(c.describe(), ", "),
                        "): continue it with --resume auto, pick another run.name, or start over with --overwrite "
                        "(deletes them)"));
      }
      if (!rules.dry_run) {
        for (const std::string& f : io::checkpoint_files(checkpoint_dir(), [](int64_t, bool) { return true; }))
          ::unlink(f.c_str());
        for (const char* f : {"metrics.jsonl", "model.safetensors", "ema.safetensors", "profile.json", "profile.txt"})
          ::unlink((dir_ + "/" + f).c_str());
      }
      notes += cat("--overwrite: ", rules.dry_run ? "would delete" : "deleted", " the run that was in ", dir_, " (",
                   join(c.describe(), ", "), ")\n");
    }
    if (lock_fd_ >= 0) {  // the run is ours: say whose
      const std::string me = cat("host ", host_name(), " pid ", ::getpid(), " since ", io::now_iso8601(), "\n");
      if (::ftruncate(lock_fd_, 0) != 0 || ::pwrite(lock_fd_, me.data(), me.size(), 0) != ssize_t(me.size()))
        notes += cat("warning: cannot write ", lock_path, " (", io::errno_text(), ")\n");
    }
    // Files a killed save left behind (a .tmp is never complete).
    if (!rules.dry_run)
      for (const std::string& f : io::checkpoint_files(checkpoint_dir(), [](int64_t, bool tmp) { return tmp; })) {
        ::unlink(f.c_str());
        notes += cat("note: removed ", f, ", left by a save that did not finish\n");
      }
  });
  if (root && !notes.empty()) std::fprintf(stderr, "%s", notes.c_str());
}

RunFolder::~RunFolder() {
  if (lock_fd_ < 0) return;
  if (::ftruncate(lock_fd_, 0) != 0) { /* the lock itself goes with the descriptor */
  }
  ::close(lock_fd_);
}

std::vector<std::string> RunFolder::checkpoints_newest_first() const {
  std::string joined;
  if (world_.rank() == 0)
    for (auto it = io::complete_checkpoints(checkpoint_dir()); !it.empty(); it.pop_back())
      joined += io::checkpoint_path(checkpoint_dir(), it.back()) + "\n";
  joined = world_.broadcast(joined);
  if (joined.empty()) return {};
  return split(joined.substr(0, joined.size() - 1), '\n');
}

void RunFolder::settle(int64_t k) {
  if (rules_.dry_run) return;
  std::string notes;
  world_.agree([&] {
    if (world_.rank() != 0) return;
    const RunContents c = run_contents(dir_);
    const bool later_ckpt = !c.checkpoints.empty() && c.checkpoints.back() > k;
    // metrics.jsonl: lines of steps <= k stay; later ones are either the abandoned branch's or steps after the
    // last checkpoint of a run that was killed (done again now).
    // A line that is not a record (cut short by a full disk or a kill) is dropped, and the file rewritten.
    std::vector<std::string> keep, later;
    bool broken = false;
    {
      std::ifstream in(dir_ + "/metrics.jsonl");
      for (std::string line; std::getline(in, line);) {
        if (line.empty()) continue;
        const int64_t step = metrics_step(line);
        if (step < 0) broken = true;
        else (step <= k ? keep : later).push_back(line);
      }
    }
    const std::string branch = cat(dir_, "/abandoned/", io::now_iso8601(), "-from-", k);
    if (later_ckpt) {
      std::vector<std::string> moved;
      std::vector<std::string> files =
          io::checkpoint_files(checkpoint_dir(), [k](int64_t step, bool tmp) { return step > k && !tmp; });
      // Markers first: a crash between two moves never leaves a .done without its checkpoint.
      std::stable_partition(files.begin(), files.end(), [](const std::string& f) {
        return f.size() >= 5 && f.compare(f.size() - 5, 5, ".done") == 0;
      });
      for (const std::string& f : files) {
        move_into(f, branch + "/checkpoints");
        if (f.size() < 5 || f.compare(f.size() - 5, 5, ".done") != 0)
          moved.push_back(f.substr(f.find_last_of('/') + 1));
      }
      for (const char* w : kWeights)
        if (io::path_exists(dir_ + "/" + w)) move_into(dir_ + "/" + w, branch), moved.push_back(w);
      if (!later.empty()) {
        std::ofstream out(branch + "/metrics.jsonl");
        for (const auto& line : later) out << line << "\n";
        if (!out.flush()) throw Error(cat("cannot write '", branch, "/metrics.jsonl' (", io::errno_text(), ")"));
        moved.push_back(cat("metrics of ", later.size(), " log steps"));
      }
      notes += cat("resume from step ", k, ": the later steps of the run (", join(moved, ", "), ") moved to ", branch,
                   "/\n");
    }
    if (!later.empty() || broken) {
      const std::string tmp = dir_ + "/metrics.jsonl.tmp";
      {
        std::ofstream out(tmp, std::ios::trunc);
        for (const auto& line : keep) out << line << "\n";
        if (!out.flush()) throw Error(cat("cannot write '", tmp, "' (", io::errno_text(), ")"));
      }
      if (::rename(tmp.c_str(), (dir_ + "/metrics.jsonl").c_str()) != 0)
        throw Error(cat("cannot replace '", dir_, "/metrics.jsonl' (", io::errno_text(), ")"));
    }
  });
  if (world_.rank() == 0 && !notes.empty()) std::fprintf(stderr, "%s", notes.c_str());
}

}  // namespace opendit::train
