// A file made visible whole or not at all, shared by every writer of io/ (checkpoints, safetensors, PNG, latent
// datasets, and the coming encoder): it is written under a temporary name beside its final path, then commit()
// flushes it to disk (fsync), renames it over the final path and makes the rename durable (fsync of the folder);
// commit_with_marker() then also writes PATH.done, the mark that a file written in several steps (a checkpoint of
// many ranks) is complete. Destroyed without a commit, the temporary file is removed: a failed write leaves nothing.
//
//   AtomicFile f("out/ema.safetensors");
//   write_everything_to(f.tmp_path());
//   f.commit();
#pragma once
#include <string>

namespace opendit::io {

class AtomicFile {
 public:
  explicit AtomicFile(std::string path, const std::string& tmp_suffix = ".tmp");
  ~AtomicFile();  // removes the temporary file unless committed
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  const std::string& path() const { return path_; }
  const std::string& tmp_path() const { return tmp_; }
  // The temporary name of `path` (for writers on other ranks of a file one rank commits).
  static std::string tmp_path_for(const std::string& path, const std::string& tmp_suffix = ".tmp") {
    return path + tmp_suffix;
  }

  // fsync, rename to path(), fsync of the folder. Errors are opendit::Error naming the file and the call.
  void commit();
  // commit(), then path() + ".done" holding `marker_text`, fsync'ed with its folder.
  void commit_with_marker(const std::string& marker_text);

 private:
  std::string path_, tmp_;
  bool committed_ = false;
};

// PATH.done: the completion marker of commit_with_marker().
std::string done_marker(const std::string& path);

}  // namespace opendit::io
