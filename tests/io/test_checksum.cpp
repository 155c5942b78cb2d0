// Dataset checksums (io/checksum.hpp) in one process: the CRC-32 is zlib's, the latent dataset writer stores one per
// dataset that matches the bytes in the file, a flipped bit is found and named, and a file from before checksums
// reads as unverified, not damaged.
#include <gtest/gtest.h>
#include <zlib.h>

#include "io/checksum.hpp"
#include "io_test_util.hpp"
#include "support/h5_damage.hpp"

using namespace opendit;
using namespace opendit::io;
using namespace opendit::test;

namespace {
const std::vector<std::int64_t> kShape = {4, 8, 8};

// zlib's crc32 of a dataset's bytes as read back: what the attribute must hold.
std::uint32_t crc_of_read(const H5Dataset& ds) {
  const at::Tensor t = ds.read().contiguous();
  return std::uint32_t(crc32(0, static_cast<const Bytef*>(t.data_ptr()), uInt(t.nbytes())));
}
}  // namespace

TEST(Checksum, IsZlibsCrc32AndCombinesPieces) {
  Crc32 whole;
  whole.add("123456789", 9);
  EXPECT_EQ(whole.value(), 0xCBF43926u);  // the CRC-32 check value (zlib.crc32(b"123456789"))
  Crc32 a, b;
  a.add("1234", 4);
  b.add("56789", 5);
  a.append(b.value(), b.bytes());
  EXPECT_EQ(a.value(), whole.value());
  EXPECT_EQ(a.bytes(), 9);
}

TEST(Checksum, LatentDatasetsCarryTheCrcOfTheirBytes) {
  TempDir dir;
  const std::string path = dir.file("d.h5");
  write_synthetic(path, 150, kShape, at::kBFloat16, 10, 64, 16);  // three appends, ten chunks
  const H5File f = H5File::open(path);
  for (const char* name : {"latents", "labels"}) {
    const H5Dataset ds = f.root().open_dataset(name);
    ASSERT_TRUE(stored_crc32(ds).has_value()) << name;
    EXPECT_EQ(*stored_crc32(ds), crc_of_read(ds)) << name;
    const DatasetCheck c = check_dataset(ds);
    EXPECT_TRUE(c.verified() && c.intact()) << name;
    EXPECT_EQ(c.bytes, std::int64_t(ds.read().nbytes())) << name;
  }
}

TEST(Checksum, AFlippedBitIsNamed) {
  TempDir dir;
  const std::string path = dir.file("d.h5");
  write_synthetic(path, 100, kShape, at::kHalf, 10, 64, 16);
  flip_stored_byte(path, "/latents");
  {
    const H5File f = H5File::open(path);
    const DatasetCheck latents = check_dataset(f.root().open_dataset("latents"));
    EXPECT_TRUE(latents.verified());
    EXPECT_FALSE(latents.intact());
    EXPECT_NE(latents.mismatch().find("checksum mismatch: expected crc32"), std::string::npos) << latents.mismatch();
    EXPECT_TRUE(check_dataset(f.root().open_dataset("labels")).intact());
  }
  // /labels is read whole on open, and verified there: the reader refuses it, naming the dataset.
  write_synthetic(path, 100, kShape, at::kHalf, 10, 64, 16);
  flip_stored_byte(path, "/labels");
  const std::string msg = error_of([&] { LatentDataset ds(path); });
  EXPECT_NE(msg.find("'/labels': checksum mismatch"), std::string::npos) << msg;
}

TEST(Checksum, AFileFromBeforeChecksumsIsUnverifiedNotDamaged) {
  TempDir dir;
  const std::string path = dir.file("d.h5");
  write_synthetic(path, 50, kShape, at::kHalf, 10, 64, 16);
  EXPECT_EQ(strip_checksums(path), 2);
  const LatentDataset ds(path);  // opens as before
  EXPECT_EQ(ds.size(), 50);
  const H5File f = H5File::open(path);
  const DatasetCheck c = check_dataset(f.root().open_dataset("latents"));
  EXPECT_FALSE(c.verified());
  EXPECT_TRUE(c.intact());
}
