// RowWriter on 1-4 ranks: one HDF5 file, each rank writing its own rows of several datasets over several writes
// (a rank may write nothing), through MPI-IO with parallel HDF5 and rank by rank on the serial path; bad blocks are
// one CollectiveError on every rank.
#include <gtest/gtest.h>

#include <zlib.h>

#include "core/error.hpp"
#include "io/checksum.hpp"
#include "io/h5.hpp"
#include "io/row_writer.hpp"
#include "support/support.hpp"

using namespace opendit;
using namespace opendit::io;
using opendit::test::SharedDir;

namespace {
const parallel::ProcessGroup& world() { return opendit::test::world_group(); }

// zlib's crc32 of a dataset as read back: what its crc32 attribute must hold.
std::int64_t crc_of_read(const H5Dataset& ds) {
  const at::Tensor t = ds.read().contiguous();
  return std::int64_t(crc32(0, static_cast<const Bytef*>(t.data_ptr()), uInt(t.nbytes())));
}
}  // namespace

TEST(RowWriter, EveryRankWritesItsRowsOfOneFile) {
  SharedDir dir;
  const int me = world().rank(), p = world().size();
  const int64_t rows = 3 * p + 1;  // uneven shares; the last rank takes the extra row
  const at::Tensor latents = at::arange(rows * 2 * 3, at::kFloat).view({rows, 2, 3});
  const at::Tensor labels = at::arange(rows, at::kLong) * 10;
  for (bool serial : {false, true}) {
    const std::string path = dir.file(serial ? "serial.h5" : "parallel.h5");
    RowWriter w(path, {{"latents", at::kHalf, {2, 3}, rows}, {"labels", at::kLong, {}, rows}}, world(), serial,
                [](H5Group& root) { root.write_attr("format", "opendit.test"); });
    // Two writes of about half the share each; rank 0 writes nothing in the second.
    const int64_t first = 3 * me, count = me == p - 1 ? 4 : 3;
    w.write({{"latents", {first, latents.narrow(0, first, 2)}}, {"labels", {first, labels.narrow(0, first, 2)}}});
    std::map<std::string, RowBlock> rest;
    if (me != 0 || p == 1)
      rest = {{"latents", {first + 2, latents.narrow(0, first + 2, count - 2)}},
              {"labels", {first + 2, labels.narrow(0, first + 2, count - 2)}}};
    w.write(rest);
    if (me == 0 && p > 1) w.write({{"latents", {2, latents.narrow(0, 2, 1)}}, {"labels", {2, labels.narrow(0, 2, 1)}}});
    else w.write({});
    w.close();
    world().barrier();
    H5File f = H5File::open(path);
    EXPECT_EQ(f.root().read_attr_string("format"), "opendit.test");
    EXPECT_TRUE(f.root().open_dataset("latents").read().equal(latents.to(at::kHalf))) << path;
    EXPECT_TRUE(f.root().open_dataset("labels").read().equal(labels)) << path;
    // The pieces of every rank, combined in row order, are the crc32 of the whole dataset.
    for (const char* name : {"latents", "labels"}) {
      const H5Dataset ds = f.root().open_dataset(name);
      ASSERT_TRUE(ds.has_attr(kCrcAttribute)) << path << " " << name;
      EXPECT_EQ(ds.read_attr_int64(kCrcAttribute), crc_of_read(ds)) << path << " " << name;
    }
  }
}

// A dataset whose rows were not written exactly once gets no crc32: the writes do not tell what it holds.
TEST(RowWriter, NoChecksumUnlessEveryRowWasWrittenOnce) {
  SharedDir dir;
  const int me = world().rank(), p = world().size();
  const std::string path = dir.file("partial.h5");
  RowWriter w(path, {{"gaps", at::kFloat, {2}, 2 * p + 1}, {"twice", at::kFloat, {2}, p}, {"whole", at::kLong, {}, p}},
              world());
  const at::Tensor two = at::ones({2, 2});
  w.write({{"gaps", {2 * me, two}},
           {"twice", {me, two.narrow(0, 0, 1)}},
           {"whole", {me, at::full({1}, me, at::kLong)}}});
  w.write({{"twice", {0, two.narrow(0, 0, 1)}}});  // row 0 again, from every rank
  w.close();
  world().barrier();
  const H5File f = H5File::open(path);
  EXPECT_FALSE(f.root().open_dataset("gaps").has_attr(kCrcAttribute));  // the last row never written
  EXPECT_FALSE(f.root().open_dataset("twice").has_attr(kCrcAttribute));
  const H5Dataset whole = f.root().open_dataset("whole");
  ASSERT_TRUE(whole.has_attr(kCrcAttribute));
  EXPECT_EQ(whole.read_attr_int64(kCrcAttribute), crc_of_read(whole));
}

TEST(RowWriter, BadBlocksAreOneErrorOnEveryRank) {
  SharedDir dir;
  const int me = world().rank(), p = world().size();
  RowWriter w(dir.file("bad.h5"), {{"x", at::kFloat, {4}, 2 * p}}, world());
  auto expect_error = [&](const std::map<std::string, RowBlock>& mine, const std::string& part) {
    try {
      w.write(mine);
      ADD_FAILURE() << "no error; expected " << part;
    } catch (const CollectiveError& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  // Only the last rank is wrong; every rank hears of it.
  const bool last = me == p - 1;
  expect_error({{last ? "y" : "x", {2 * me, at::zeros({2, 4})}}}, "no dataset 'y'");
  expect_error({{"x", {2 * me, at::zeros({2, last ? 5 : 4})}}}, "rows must be [2, 4], found [2, 5]");
  expect_error({{"x", {last ? 2 * p - 1 : 2 * me, at::zeros({2, 4})}}}, "outside [0, " + std::to_string(2 * p) + ")");
  w.close();
  EXPECT_THROW(w.write({}), Error);
}
