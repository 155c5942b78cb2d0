// AtomicFile: a file appears whole under its name or not at all; a failed write leaves nothing behind.
#include <gtest/gtest.h>

#include <fstream>

#include "core/error.hpp"
#include "io/atomic_file.hpp"
#include "io/files.hpp"
#include "support/support.hpp"

using namespace opendit;
using opendit::test::read_bytes;
using opendit::test::TempDir;

TEST(AtomicFile, CommitMakesTheFileVisibleWhole) {
  TempDir dir;
  const std::string path = dir.file("out.bin");
  {
    io::AtomicFile f(path);
    EXPECT_EQ(f.tmp_path(), path + ".tmp");
    std::ofstream(f.tmp_path()) << "complete";
    EXPECT_FALSE(io::path_exists(path));  // not before the commit
    f.commit();
  }
  EXPECT_EQ(read_bytes(path), "complete");
  EXPECT_FALSE(io::path_exists(path + ".tmp"));
  EXPECT_FALSE(io::path_exists(io::done_marker(path)));
  // Replacing an existing file: readers see the old or the new one, never a mix.
  {
    io::AtomicFile f(path, ".partial");
    std::ofstream(f.tmp_path()) << "new";
    EXPECT_EQ(read_bytes(path), "complete");
    f.commit_with_marker("done at step 7\n");
  }
  EXPECT_EQ(read_bytes(path), "new");
  EXPECT_EQ(read_bytes(io::done_marker(path)), "done at step 7\n");
}

TEST(AtomicFile, AnUncommittedWriteLeavesNothing) {
  TempDir dir;
  const std::string path = dir.file("half.bin");
  {
    io::AtomicFile f(path);
    std::ofstream(f.tmp_path()) << "half a file";
  }  // an exception would leave the same way
  EXPECT_FALSE(io::path_exists(path));
  EXPECT_FALSE(io::path_exists(path + ".tmp"));
  // A commit that cannot happen (no temporary file) is one clear error naming it.
  io::AtomicFile f(dir.file("none.bin"));
  try {
    f.commit();
    ADD_FAILURE() << "committed a file that was never written";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("none.bin.tmp"), std::string::npos) << e.what();
  }
}
