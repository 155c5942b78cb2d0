// Allocation failures are told apart from other errors, and their messages shortened to one line: a real refusal of
// the CPU allocator (an allocation larger than any machine's memory) and, with a GPU, of the CUDA one.
#include <gtest/gtest.h>

#include "core/out_of_memory.hpp"

using namespace opendit;

namespace {

struct Caught {
  bool thrown = false, oom = false;
  std::string summary, what;
};

// What the functions say of the error fn throws, asked inside the handler (a copy would slice the error's type).
template <typename Fn>
Caught caught(Fn&& fn) {
  Caught c;
  try {
    fn();
  } catch (const c10::Error& e) {
    c = {true, is_out_of_memory(e), out_of_memory_summary(e), e.what_without_backtrace()};
  }
  return c;
}

}  // namespace

TEST(OutOfMemory, CpuAllocatorRefusal) {
  const int64_t bytes = int64_t(1) << 50;  // 1 PiB
  const Caught e = caught([&] { at::empty({bytes}, at::kByte); });
  ASSERT_TRUE(e.thrown);
  EXPECT_TRUE(e.oom) << e.what;
  const std::string& s = e.summary;
  EXPECT_EQ(s.rfind("host memory: an allocation of 1048576.00 GiB failed", 0), 0u) << s;
  EXPECT_EQ(s.find("enforce"), std::string::npos) << s;
}

TEST(OutOfMemory, OtherErrorsAreNot) {
  const Caught e = caught([] { at::matmul(at::ones({2, 3}), at::ones({2, 3})); });
  ASSERT_TRUE(e.thrown);
  EXPECT_FALSE(e.oom) << e.what;
}

TEST(OutOfMemory, CudaAllocatorRefusal) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no GPU";
  const int64_t bytes = int64_t(1) << 50;
  const Caught e = caught([&] { at::empty({bytes}, at::TensorOptions(at::kByte).device(at::kCUDA)); });
  ASSERT_TRUE(e.thrown);
  EXPECT_TRUE(e.oom) << e.what;
  const std::string& s = e.summary;
  EXPECT_EQ(s.rfind("CUDA out of memory. Tried to allocate ", 0), 0u) << s;
  EXPECT_EQ(s.find("See documentation"), std::string::npos) << s;
  EXPECT_EQ(s.find('\n'), std::string::npos) << s;
}
