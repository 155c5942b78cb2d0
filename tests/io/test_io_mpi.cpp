// Several ranks on one HDF5 file (run with 1, 2 and 4 ranks): data loaders of every dp rank together give the
// single-rank batches, sequence-parallel partners get the same samples, all ranks read one file at once, and — with
// parallel HDF5 — ranks write 1-D slices of one flattened tensor collectively (the checkpoint pattern).
#include <gtest/gtest.h>

#include <memory>

#include "core/error.hpp"
#include "io/checksum.hpp"
#include "io/data_loader.hpp"
#include "io/h5.hpp"
#include "io_test_util.hpp"
#include "parallel/mesh.hpp"
#include "support/h5_damage.hpp"

using namespace opendit::io;
using namespace opendit::test;

namespace {

const std::vector<std::int64_t> kShape = {4, 8, 8};
constexpr std::int64_t kN = 500;


// The dataset every test reads: written by rank 0, then opened by all.
std::shared_ptr<const LatentDataset> shared_dataset(const SharedDir& dir) {
  if (world_rank() == 0) write_synthetic(dir.file("d.h5"), kN, kShape, at::kHalf, 10, 100, 16);
  world_group().barrier();
  return std::make_shared<const LatentDataset>(dir.file("d.h5"));
}

// Every rank's `local` (same length on all ranks), rank after rank.
std::vector<std::int64_t> allgather(const std::vector<std::int64_t>& local) {
  return world_group().all_gather(local);
}

std::vector<std::int64_t> as_vector(const at::Tensor& t) {
  return {t.data_ptr<std::int64_t>(), t.data_ptr<std::int64_t>() + t.numel()};
}

}  // namespace

TEST(IoMpi, DpRanksTogetherReadTheSingleRankBatches) {
  SharedDir dir;
  auto dataset = shared_dataset(dir);
  const std::int64_t global = 32;  // divisible by 1, 2 and 4
  DataLoader loader(dataset, global, world_rank(), world_size(), 1234);
  DataLoader single(dataset, global, 0, 1, 1234, DataLoaderOptions{true, 0});
  std::vector<std::int64_t> epoch_seen;
  for (std::int64_t b = 0; b < loader.batches_per_epoch() + 3; ++b) {
    LatentBatch mine = loader.next();
    ASSERT_EQ(mine.latents.size(0), global / world_size());
    for (std::int64_t i = 0; i < mine.indices.numel(); ++i) {
      const std::int64_t row = mine.indices[i].item<std::int64_t>();
      ASSERT_TRUE(mine.latents[i].equal(expected_row(row, kShape, at::kHalf))) << "row " << row;
    }
    const auto all = allgather(as_vector(mine.indices));
    ASSERT_EQ(all, as_vector(single.next().indices)) << "batch " << b;
    if (b < loader.batches_per_epoch()) epoch_seen.insert(epoch_seen.end(), all.begin(), all.end());
  }
  std::sort(epoch_seen.begin(), epoch_seen.end());
  EXPECT_EQ(std::unique(epoch_seen.begin(), epoch_seen.end()), epoch_seen.end()) << "a sample seen twice";
  EXPECT_EQ(std::int64_t(epoch_seen.size()), kN / global * global);
}

// Ranks of one sp group pass the same dp rank (from the mesh) and get the same samples.
TEST(IoMpi, SequenceParallelPartnersSeeTheSameSamples) {
  if (world_size() < 2) GTEST_SKIP() << "needs 2 ranks";
  SharedDir dir;
  auto dataset = shared_dataset(dir);
  const int sp = 2, dp = world_size() / sp;
  const auto coord = opendit::parallel::mesh_coord(world_rank(), world_size(), sp);
  DataLoader loader(dataset, 8 * dp, coord.dp_rank, dp, 77);
  for (int b = 0; b < 5; ++b) {
    const auto all = allgather(as_vector(loader.next().indices));  // 8 rows per rank
    for (int r = 0; r < world_size(); ++r) {
      const int partner = r - r % sp;  // first rank of r's sp group
      ASSERT_TRUE(std::equal(all.begin() + 8 * r, all.begin() + 8 * r + 8, all.begin() + 8 * partner));
      if (r % sp == 0 && r > 0) ASSERT_NE(all[8 * r], all[8 * (r - sp)]) << "dp groups read the same rows";
    }
  }
}

// Read-only concurrent access works with serial HDF5 too: each rank opens the file on its own.
TEST(IoMpi, AllRanksReadOneFileAtOnce) {
  SharedDir dir;
  auto dataset = shared_dataset(dir);
  std::vector<std::int64_t> rows(kN);
  for (std::int64_t i = 0; i < kN; ++i) rows[i] = (i * 37 + world_rank()) % kN;
  for (int round = 0; round < 3; ++round) {
    world_group().barrier();  // start together
    LatentBatch b = dataset->read(rows);
    for (std::int64_t i = 0; i < kN; i += 17)
      ASSERT_TRUE(b.latents[i].equal(expected_row(rows[i], kShape, at::kHalf))) << "row " << rows[i];
  }
}

// `opendit train`'s verification: each rank reads a share of every dataset's rows (500 rows in chunks of 16: the
// shares start mid-chunk), rank 0 combines the pieces; every rank gets the same verdict, and a flipped bit in the
// last rank's share is found.
TEST(IoMpi, RanksVerifyADatasetTogether) {
  SharedDir dir;
  auto dataset = shared_dataset(dir);
  const std::string path = dir.file("d.h5");
  auto checks = verify_datasets(path, dataset->dataset_names(), world_group());
  ASSERT_EQ(checks.size(), 2u);
  for (const DatasetCheck& c : checks) {
    EXPECT_TRUE(c.verified() && c.intact()) << c.path << ": " << c.mismatch();
    EXPECT_EQ(allgather({std::int64_t(c.found)}), std::vector<std::int64_t>(world_size(), c.found)) << c.path;
  }
  world_group().barrier();
  if (world_rank() == 0) flip_stored_byte(path, "/latents", true);
  world_group().barrier();
  checks = verify_datasets(path, {"latents", "labels"}, world_group());
  EXPECT_FALSE(checks[0].intact()) << "the flipped bit went unnoticed";
  EXPECT_TRUE(checks[1].intact());
  EXPECT_EQ(checks[0].path, "/latents");
}

// The checkpoint pattern: one flattened tensor, rank r writes its contiguous slice, the last rank none.
TEST(IoMpi, CollectiveSliceWrites) {
  SharedDir dir;
  const std::string path = dir.file("slices.h5");
  const int rank = world_rank(), size = world_size();
  const auto& world = world_group();
  const at::Tensor full = at::arange(1000, at::kFloat).to(at::kBFloat16);
  const std::int64_t per = size > 1 ? 1000 / (size - 1) + 1 : 1000;
  const std::int64_t lo = std::min<std::int64_t>(1000, per * rank), hi = std::min<std::int64_t>(1000, lo + per);
  if (!hdf5_is_parallel() && size > 1) {  // serial HDF5: one file from several ranks is refused, on every rank
    EXPECT_THROW(H5File::create(path, &world), opendit::Error);
    GTEST_SKIP() << "serial HDF5: collective writes need a parallel build";
  }
  {
    H5File f = H5File::create(path, &world);
    EXPECT_EQ(f.mpio(), hdf5_is_parallel());
    H5Group root = f.root();
    root.write_attr("format", "opendit.test");  // attributes: same value from every rank
    H5Dataset ds = root.create_dataset("w", at::kBFloat16, {1000});
    ds.write_slice(lo, full.narrow(0, lo, hi - lo), Transfer::collective);
  }
  {
    H5File f = H5File::open(path, H5Mode::read_only, &world);
    H5Dataset ds = f.root().open_dataset("w");
    EXPECT_TRUE(ds.read_slice(lo, hi - lo, Transfer::collective).equal(full.narrow(0, lo, hi - lo)));
    EXPECT_TRUE(ds.read(Transfer::collective).equal(full));
  }
  world_group().barrier();
  EXPECT_TRUE(H5File::open(path).root().open_dataset("w").read().equal(full));  // and without MPI-IO
}
