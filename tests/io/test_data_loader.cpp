// io/data_loader in one process (dp ranks simulated by one loader each): every sample once per epoch, the ranks'
// micro-batches concatenate to the single-rank batch, epochs differ, restore continues bit-exactly, prefetch
// changes nothing but timing, and the prefetch thread stops cleanly mid-epoch.
#include <gtest/gtest.h>

#include <chrono>
#include <set>

#include "core/error.hpp"
#include "io/data_loader.hpp"
#include "io_test_util.hpp"

using namespace opendit::io;
using namespace opendit::test;
using opendit::Error;

namespace {

const std::vector<std::int64_t> kShape = {4, 4, 4};
constexpr std::int64_t kN = 103;

// One dataset for the whole file: 103 float16 samples in chunks of 8 rows.
class DataLoaderTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    write_synthetic(dir_->file("d.h5"), kN, kShape, at::kHalf, 10, 16, 8);
    dataset_ = std::make_shared<const LatentDataset>(dir_->file("d.h5"));
  }
  static void TearDownTestSuite() {
    dataset_.reset();
    delete dir_;
  }
  static TempDir* dir_;
  static std::shared_ptr<const LatentDataset> dataset_;
};
TempDir* DataLoaderTest::dir_ = nullptr;
std::shared_ptr<const LatentDataset> DataLoaderTest::dataset_;

std::vector<std::int64_t> as_vector(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return {c.data_ptr<std::int64_t>(), c.data_ptr<std::int64_t>() + c.numel()};
}

// The batch holds exactly the rows its indices name.
void expect_rows_match(const LatentBatch& b) {
  for (std::int64_t i = 0; i < b.indices.numel(); ++i) {
    const std::int64_t row = b.indices[i].item<std::int64_t>();
    ASSERT_TRUE(b.latents[i].equal(expected_row(row, kShape, at::kHalf))) << "row " << row;
    ASSERT_EQ(b.labels[i].item<std::int64_t>(), synthetic_label(row, 10));
  }
}

bool same_batch(const LatentBatch& a, const LatentBatch& b) {
  return a.indices.equal(b.indices) && a.latents.equal(b.latents) && a.labels.equal(b.labels);
}

}  // namespace

TEST_F(DataLoaderTest, EverySampleOnceAcrossRanks) {
  for (bool drop_last : {true, false}) {
    const int dp = 4;
    std::vector<std::unique_ptr<DataLoader>> ranks;
    for (int r = 0; r < dp; ++r)
      ranks.push_back(std::make_unique<DataLoader>(dataset_, 8, r, dp, 42, DataLoaderOptions{drop_last, 2}));
    const std::int64_t batches = ranks[0]->batches_per_epoch();
    EXPECT_EQ(batches, drop_last ? 12 : 13);
    std::multiset<std::int64_t> seen;
    for (std::int64_t b = 0; b < batches; ++b) {
      for (auto& loader : ranks) {
        LatentBatch batch = loader->next();
        if (b < 12) EXPECT_EQ(batch.latents.size(0), 2);
        expect_rows_match(batch);
        for (auto i : as_vector(batch.indices)) seen.insert(i);
      }
    }
    EXPECT_EQ(std::int64_t(seen.size()), drop_last ? 96 : kN);
    EXPECT_EQ(std::set<std::int64_t>(seen.begin(), seen.end()).size(), seen.size()) << "a sample seen twice";
    for (auto& loader : ranks) EXPECT_EQ(loader->state(), (LoaderState{1, 0}));  // rolled into epoch 1
  }
}

TEST_F(DataLoaderTest, RanksConcatenateToTheSingleRankBatch) {
  for (int dp : {2, 4}) {
    DataLoader single(dataset_, 16, 0, 1, 7);
    std::vector<std::unique_ptr<DataLoader>> ranks;
    for (int r = 0; r < dp; ++r) ranks.push_back(std::make_unique<DataLoader>(dataset_, 16, r, dp, 7));
    for (int b = 0; b < 2 * single.batches_per_epoch() + 1; ++b) {  // across an epoch boundary
      LatentBatch whole = single.next();
      std::vector<at::Tensor> idx, lat;
      for (auto& loader : ranks) {
        LatentBatch part = loader->next();
        EXPECT_EQ(part.latents.size(0), 16 / dp);
        idx.push_back(part.indices), lat.push_back(part.latents);
      }
      ASSERT_TRUE(at::cat(idx).equal(whole.indices)) << "dp " << dp << " batch " << b;
      ASSERT_TRUE(at::cat(lat).equal(whole.latents)) << "dp " << dp << " batch " << b;
    }
  }
}

TEST_F(DataLoaderTest, EpochsAndSeedsDiffer) {
  const auto e0 = as_vector(DataLoader::epoch_order(kN, 5, 0)), e1 = as_vector(DataLoader::epoch_order(kN, 5, 1));
  EXPECT_NE(e0, e1);
  EXPECT_EQ(e0, as_vector(DataLoader::epoch_order(kN, 5, 0)));  // deterministic
  EXPECT_NE(e0, as_vector(DataLoader::epoch_order(kN, 6, 0)));
  std::vector<std::int64_t> sorted = e0;
  std::sort(sorted.begin(), sorted.end());
  for (std::int64_t i = 0; i < kN; ++i) ASSERT_EQ(sorted[i], i);  // a permutation

  DataLoader loader(dataset_, 8, 0, 1, 5);
  EXPECT_EQ(loader.indices({0, 0}), std::vector<std::int64_t>(e0.begin(), e0.begin() + 8));
  EXPECT_EQ(loader.indices({1, 2}), std::vector<std::int64_t>(e1.begin() + 16, e1.begin() + 24));
}

TEST_F(DataLoaderTest, RestoreMidEpochContinuesBitExactly) {
  for (int prefetch : {0, 3}) {
    DataLoader straight(dataset_, 12, 1, 2, 99, DataLoaderOptions{true, prefetch});
    std::vector<LatentBatch> want;
    for (int i = 0; i < 20; ++i) want.push_back(straight.next());  // 8 batches an epoch: into epoch 2

    LoaderState saved;
    {
      DataLoader first(dataset_, 12, 1, 2, 99, DataLoaderOptions{true, prefetch});
      for (int i = 0; i < 11; ++i) first.next();
      saved = first.state();  // epoch 1, batch 3, with batches already read ahead
    }
    EXPECT_EQ(saved, (LoaderState{1, 3}));
    DataLoader resumed(dataset_, 12, 1, 2, 99, DataLoaderOptions{true, prefetch});
    resumed.restore(saved);
    for (int i = 11; i < 20; ++i) ASSERT_TRUE(same_batch(resumed.next(), want[i])) << "batch " << i;

    resumed.restore({0, 5});  // restore on a loader in use, backwards
    ASSERT_TRUE(same_batch(resumed.next(), want[5]));
  }
}

TEST_F(DataLoaderTest, PrefetchOnAndOffGiveIdenticalBatches) {
  DataLoader off(dataset_, 10, 0, 1, 3, DataLoaderOptions{false, 0});
  DataLoader on(dataset_, 10, 0, 1, 3, DataLoaderOptions{false, 4, true});  // pinned when CUDA is there
  EXPECT_EQ(off.batches_per_epoch(), 11);
  for (int i = 0; i < 25; ++i) {
    LatentBatch a = off.next(), b = on.next();
    ASSERT_TRUE(same_batch(a, b)) << "batch " << i;
    if (on.pinned()) EXPECT_TRUE(b.latents.is_pinned());
  }
}

TEST_F(DataLoaderTest, StopsCleanlyMidEpoch) {
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 20; ++i) {
    DataLoader loader(dataset_, 4, 0, 1, i, DataLoaderOptions{true, 4});
    for (int k = 0; k < i % 3; ++k) loader.next();
  }  // destroyed with a full queue, a half-full one, or a read in flight
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 10.0);
}

TEST_F(DataLoaderTest, Errors) {
  auto message = [](auto&& make) -> std::string {
    try {
      make();
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  };
  std::string msg = message([&] { DataLoader(dataset_, 128, 0, 1, 0); });
  EXPECT_NE(msg.find("the dataset has 103 samples, fewer than the global batch 128"), std::string::npos) << msg;
  msg = message([&] { DataLoader(dataset_, 10, 0, 4, 0); });
  EXPECT_NE(msg.find("global batch 10 is not divisible by the dp size 4"), std::string::npos) << msg;
  msg = message([&] { DataLoader(dataset_, 8, 4, 4, 0); });
  EXPECT_NE(msg.find("dp rank 4 outside [0, 4)"), std::string::npos) << msg;
  DataLoader loader(dataset_, 8, 0, 1, 0);
  EXPECT_THROW(loader.restore({0, 12}), Error);  // 12 batches an epoch: 0..11
}
