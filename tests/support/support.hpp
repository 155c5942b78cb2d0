// Helpers shared by the GoogleTest suites: temporary folders, file bytes, bit-exact tensor comparison, the message
// of an expected opendit::Error, and for multi-rank tests the world as a process group and a folder every rank
// shares.
#pragma once
#include <ATen/ATen.h>
#include <ftw.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>

#include "core/error.hpp"
#include "parallel/process_group.hpp"

namespace opendit::test {

// A folder under $TMPDIR (or /tmp) that removes itself and everything in it.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string templ = std::string(base && *base ? base : "/tmp") + "/opendit_test_XXXXXX";
    if (!mkdtemp(templ.data())) throw std::runtime_error("mkdtemp failed");
    path_ = templ;
  }
  ~TempDir() {
    nftw(
        path_.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return std::remove(p); }, 16,
        FTW_DEPTH | FTW_PHYS);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// max |got - want| / max |want| over all elements, in float64 on the CPU (the kernels' tolerance measure).
inline double max_rel_error(const at::Tensor& got, const at::Tensor& want) {
  const at::Tensor g = got.to(at::kDouble).cpu(), w = want.to(at::kDouble).cpu();
  return ((g - w).abs().max() / w.abs().max().clamp_min(1e-300)).item<double>();
}

// fn throws a c10::Error (a TORCH_CHECK) whose message contains `text`.
inline void expect_c10_error(const std::function<void()>& fn, const std::string& text) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one saying \"" << text << "\"";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what_without_backtrace()).find(text), std::string::npos) << e.what_without_backtrace();
  }
}

// Same dtype, shape and bytes (NaN payloads and -0.0 included).
inline ::testing::AssertionResult bit_equal(const at::Tensor& got, const at::Tensor& want) {
  if (got.scalar_type() != want.scalar_type() || got.sizes() != want.sizes())
    return ::testing::AssertionFailure() << "got " << got.scalar_type() << " " << got.sizes() << ", want "
                                         << want.scalar_type() << " " << want.sizes();
  const at::Tensor a = got.cpu().contiguous(), b = want.cpu().contiguous();
  if (a.nbytes() && std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()) != 0)
    return ::testing::AssertionFailure() << "bytes differ";
  return ::testing::AssertionSuccess();
}

// The message of the opendit::Error that f throws; the test fails if f throws nothing or something else.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not an opendit::Error: " << e.what();
    return "";
  }
  ADD_FAILURE() << "no opendit::Error thrown";
  return "";
}

// The world as a process group (made once; every rank must first call it at the same point, as any collective).
inline const parallel::ProcessGroup& world_group() {
  static const parallel::ProcessGroup world = parallel::ProcessGroup::world();
  return world;
}
inline int world_rank() { return world_group().rank(); }
inline int world_size() { return world_group().size(); }

// A folder rank 0 makes (and removes, after every rank is done); every rank knows its path.
struct SharedDir {
  std::unique_ptr<TempDir> owner;
  std::string path;
  SharedDir() {
    if (world_rank() == 0) owner = std::make_unique<TempDir>();
    path = world_group().broadcast(owner ? owner->path() : std::string());
  }
  ~SharedDir() { world_group().barrier(); }
  std::string file(const std::string& name) const { return path + "/" + name; }
};

}  // namespace opendit::test
