// opendit.latents v2 without the encoders: block files made here with known contents -> assemble() -> the reader
// (rows, buckets, the scaled posterior, caption tokens padded with their mask, strings), the bucket-aware loader
// (one shape per batch, every sample once per epoch, the same batches on any dp size, resume) and the statistics of
// latents drawn from the stored posterior. Reference values are the inputs themselves: no third-party code writes
// this format (tests/cli/test_encode.sh checks real encodes against diffusers and transformers).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <set>

#include "encode/assemble.hpp"
#include "encode/block_file.hpp"
#include "io/data_loader.hpp"
#include "io/files.hpp"
#include "io/latent_dataset.hpp"
#include "support/support.hpp"

namespace opendit::test {
namespace {

using encode::EncodedBlock;
using encode::EncodedGroup;

constexpr int64_t kD = 6;  // caption token width

// Input i: image (shape [2, 4, 4]) when i % 3 != 2, video ([2, 3, 4, 4]) otherwise; input 4 failed. Its mean is
// filled with i, its logvar with -i / 10, its caption has 1 + i % 4 tokens of value i + position / 10.
struct Fixture {
  TempDir tmp;
  encode::InputList inputs;
  std::string parts, output;
  int64_t n = 11, block = 4;

  bool is_video(int64_t i) const { return i % 3 == 2; }
  int64_t tokens(int64_t i) const { return 1 + i % 4; }

  Fixture() {
    parts = tmp.file("out.h5.parts");
    output = tmp.file("out.h5");
    io::make_dirs(parts, "test");
    inputs.origin = "test";
    inputs.has_captions = inputs.has_labels = true;
    for (int64_t i = 0; i < n; ++i) inputs.items.push_back({cat("file", i, ".x"), cat("caption ", i), i % 5, i + 1});
    for (int64_t b = 0; b * block < n; ++b) {
      EncodedBlock blk;
      blk.index = b, blk.first = b * block, blk.count = std::min(block, n - b * block);
      EncodedGroup img{{2, 4, 4}, {}, {}, {}}, vid{{2, 3, 4, 4}, {}, {}, {}};
      std::vector<at::Tensor> im, il, vm, vl, tok;
      for (int64_t i = blk.first; i < blk.first + blk.count; ++i) {
        if (i == 4) {
          blk.failed.push_back(i), blk.reasons.push_back("damaged");
          continue;
        }
        EncodedGroup& g = is_video(i) ? vid : img;
        g.inputs.push_back(i);
        (is_video(i) ? vm : im).push_back(at::full(g.shape, double(i), at::kHalf));
        (is_video(i) ? vl : il).push_back(at::full(g.shape, -i / 10.0, at::kHalf));
        blk.text_inputs.push_back(i), blk.text_lengths.push_back(tokens(i));
        tok.push_back(at::arange(tokens(i), at::kFloat).div(10).add(i).unsqueeze(1).expand({tokens(i), kD}).to(at::kHalf));
      }
      if (!im.empty()) img.mean = at::stack(im), img.logvar = at::stack(il), blk.groups.push_back(img);
      if (!vm.empty()) vid.mean = at::stack(vm), vid.logvar = at::stack(vl), blk.groups.push_back(vid);
      blk.text_tokens = at::cat(tok);
      encode::write_block(encode::block_path(parts, b), blk);
    }
  }

  encode::AssembleResult assemble() {
    encode::AssembleSettings s;
    s.output = output, s.parts_dir = parts, s.blocks = (n + block - 1) / block, s.dtype = at::kHalf;
    s.text_dim = kD;
    s.root_attrs = [](io::H5Group& g) {
      g.write_attr("space", "latent");
      g.write_attr("scale_factor", 0.5);
      g.write_attr("shift_factor", 1.0);
      g.write_attr("source", "test");
      g.write_attr("text_length", int64_t(5));
    };
    return encode::assemble(inputs, s, parallel::ProcessGroup::self());
  }
};

TEST(Assemble, BucketsRowsAndStrings) {
  Fixture f;
  const auto res = f.assemble();
  EXPECT_EQ(res.samples, 10);
  EXPECT_EQ(res.failures, 1);
  ASSERT_EQ(res.buckets.size(), 2u);  // sorted by shape: [2, 3, 4, 4] < [2, 4, 4]
  EXPECT_EQ(res.buckets[0].first, (std::vector<int64_t>{2, 3, 4, 4}));
  EXPECT_EQ(res.buckets[0].second, 3);  // inputs 2, 5, 8
  EXPECT_FALSE(io::path_exists(f.output + ".partial"));

  const io::LatentDataset ds(f.output);
  EXPECT_EQ(ds.version(), 2);
  EXPECT_EQ(ds.size(), 10);
  EXPECT_TRUE(ds.has_posterior());
  EXPECT_EQ(ds.text_length(), 5);
  EXPECT_EQ(ds.num_classes(), 5);
  const auto paths = io::read_v2_strings(f.output, "samples/path");
  const auto captions = io::read_v2_strings(f.output, "samples/caption");
  ASSERT_EQ(paths.size(), 10u);
  EXPECT_EQ(paths[4], "file5.x");  // input 4 failed: sample 4 is input 5
  EXPECT_EQ(captions[4], "caption 5");
  EXPECT_EQ(io::read_v2_strings(f.output, "failures/path"), std::vector<std::string>{"file4.x"});
  EXPECT_EQ(io::read_v2_strings(f.output, "failures/reason"), std::vector<std::string>{"damaged"});
}

TEST(Assemble, ReadsOneBucketAtATimeScaled) {
  Fixture f;
  f.assemble();
  const io::LatentDataset ds(f.output);
  const auto& video = ds.buckets()[0].rows;  // samples of inputs 2, 5, 8 -> samples 2, 4, 7
  EXPECT_EQ(video, (std::vector<int64_t>{2, 4, 7}));
  EXPECT_NE(error_of([&] { ds.read({2, 1}); }).find("one bucket"), std::string::npos);
  const io::LatentBatch b = ds.read({7, 2, 7});
  ASSERT_EQ(b.latents.sizes().vec(), (std::vector<int64_t>{3, 2, 3, 4, 4}));
  // (mean - shift) * scale and logvar + 2 ln(scale), as stored: inputs 8, 2, 8.
  EXPECT_DOUBLE_EQ(b.latents[0].max().item<double>(), (8 - 1) * 0.5);
  EXPECT_DOUBLE_EQ(b.latents[1].min().item<double>(), (2 - 1) * 0.5);
  EXPECT_NEAR(b.logvar[0].max().item<double>(), double(at::Half(-0.8f)) + 2 * std::log(0.5), 1e-6);
  EXPECT_EQ(b.labels[1].item<int64_t>(), 2);
  ASSERT_EQ(b.text_emb.sizes().vec(), (std::vector<int64_t>{3, 5, kD}));
  // Input 8 has 1 + 8 % 4 = 1 token, input 2 has 3: values i + position / 10, zeros after, mask on the tokens.
  EXPECT_EQ(b.text_mask[0].sum().item<int64_t>(), 1);
  EXPECT_EQ(b.text_mask[1].sum().item<int64_t>(), 3);
  EXPECT_NEAR(b.text_emb[1][2][0].item<double>(), 2.2, 1e-3);
  EXPECT_EQ(b.text_emb[1][3].abs().sum().item<double>(), 0.0);
  EXPECT_NEAR(b.text_emb[0][0][kD - 1].item<double>(), 8.0, 1e-3);
}

TEST(Assemble, AMissingBlockIsAnErrorAndNoFile) {
  Fixture f;
  std::filesystem::remove(encode::block_path(f.parts, 1));
  EXPECT_NE(error_of([&] { f.assemble(); }).find("block-000001.h5 is missing"), std::string::npos);
  EXPECT_FALSE(io::path_exists(f.output));
}

TEST(BucketLoader, OneShapePerBatchEveryRowOnceAnyDpSize) {
  Fixture f;
  f.assemble();
  auto ds = std::make_shared<const io::LatentDataset>(f.output);
  io::DataLoaderOptions opt;
  opt.prefetch = 0;
  opt.drop_last = false;
  io::DataLoader one(ds, 2, 0, 1, 9, opt);
  EXPECT_EQ(one.batches_per_epoch(), 2 + 4);  // 3 videos -> 2 batches, 7 images -> 4
  std::multiset<int64_t> seen;
  for (int64_t c = 0; c < one.batches_per_epoch(); ++c) {
    const auto rows = one.indices({0, c});
    std::set<int64_t> buckets;
    for (int64_t r : rows) buckets.insert(std::count(ds->buckets()[0].rows.begin(), ds->buckets()[0].rows.end(), r));
    EXPECT_EQ(buckets.size(), 1u) << "batch " << c << " mixes shapes";
    seen.insert(rows.begin(), rows.end());
    // Two dp ranks read the two halves of the same global batch.
    io::DataLoader r0(ds, 2, 0, 2, 9, opt), r1(ds, 2, 1, 2, 9, opt);
    auto both = r0.indices({0, c});
    const auto second = r1.indices({0, c});
    both.insert(both.end(), second.begin(), second.end());
    EXPECT_EQ(both, rows);
  }
  EXPECT_EQ(seen.size(), 10u);
  EXPECT_EQ(std::set<int64_t>(seen.begin(), seen.end()).size(), 10u);
  EXPECT_NE(one.indices({0, 0}), one.indices({1, 0}));  // a new order each epoch (seeded)
  // Resume: a loader restored at (1, 3) continues with what an uninterrupted one reads there.
  io::DataLoader resumed(ds, 2, 0, 1, 9, opt);
  resumed.restore({1, 3});
  EXPECT_TRUE(resumed.next().indices.equal(at::tensor(one.indices({1, 3}), at::kLong)));
  // Only the image bucket, as the trainer picks for an image model.
  opt.buckets = {1};
  io::DataLoader images(ds, 2, 0, 1, 9, opt);
  EXPECT_EQ(images.batches_per_epoch(), 4);
  EXPECT_EQ(images.next().latents.dim(), 4);
}

TEST(BucketLoader, PosteriorDrawsHaveThePosteriorsStatistics) {
  Fixture f;
  f.assemble();
  const io::LatentDataset ds(f.output);
  const io::LatentBatch b = ds.read({0});  // input 0: mean (0 - 1) * 0.5 = -0.5, std 0.5 * exp(0) = 0.5
  at::Generator gen = at::detail::createCPUGenerator(3);
  const int64_t draws = 20000;
  const at::Tensor eps = at::randn({draws, b.latents.numel()}, gen);
  const at::Tensor x = io::posterior_sample(b.latents.reshape({1, -1}), b.logvar.reshape({1, -1}), eps);
  EXPECT_NEAR(x.mean().item<double>(), -0.5, 0.01);
  EXPECT_NEAR(x.std().item<double>(), 0.5, 0.01);
}

}  // namespace
}  // namespace opendit::test
