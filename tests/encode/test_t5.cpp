// The T5 encoder against transformers' T5EncoderModel (tests/ref/make_t5_ref.py: a small random T5 v1.1), from one
// file, from shards, from a whole T5 and from bf16 files; bf16 against float32; every way a T5 folder can be wrong.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "encode/encode_test_util.hpp"
#include "encode/encoders.hpp"
#include "encode/text.hpp"
#include "io/safetensors.hpp"
#include "support/support.hpp"

using namespace opendit;
using opendit::test::error_of;
using opendit::test::rel;
namespace fs = std::filesystem;

namespace {

std::string ref(const std::string& name) { return test::ref_path("t5", name); }

encode::LoadedT5 load(const std::string& name, at::ScalarType dt = at::kFloat) {
  return encode::load_t5(ref(name), at::TensorOptions(dt), /*with_tokenizer=*/false);
}

std::map<std::string, at::Tensor> io_tensors() { return io::load_safetensors(ref("io.safetensors")).tensors; }

void expect_matches_transformers(const encode::LoadedT5& t5) {
  const auto io = io_tensors();
  EXPECT_LE(rel(t5.model->forward(io.at("ids"), io.at("mask")), io.at("out")), 1e-5);
  EXPECT_LE(rel(t5.model->forward(io.at("ids2"), io.at("mask2")), io.at("out2")), 1e-5);
}

std::string copy_of(const std::string& name, const test::TempDir& tmp) { return test::copy_folder(ref(name), tmp); }

void rewrite(const std::string& file, const std::function<void(std::map<std::string, at::Tensor>&)>& edit) {
  test::rewrite_safetensors(file, edit);
}

}  // namespace

// Captions of different lengths in one batch (padding masked), sequences longer than the largest bucket distance.
TEST(T5Transformers, OneFile) {
  ASSERT_FALSE(ref("").empty()) << "OPENDIT_REF_DIR is not set (run through ctest)";
  const encode::LoadedT5 t5 = load("t5");
  EXPECT_EQ(t5.model->config().num_layers, 3);
  EXPECT_TRUE(t5.model->config().gated);
  expect_matches_transformers(t5);
}

TEST(T5Transformers, ShardsThroughTheIndex) {
  const encode::LoadedT5 t5 = load("t5_sharded");
  EXPECT_GE(t5.weight_files.size(), 3u);
  expect_matches_transformers(t5);
}

TEST(T5Transformers, WholeT5SkipsTheDecoder) {
  const encode::LoadedT5 t5 = load("t5_full");
  EXPECT_FALSE(t5.skipped.empty());
  for (const std::string& n : t5.skipped) EXPECT_TRUE(n.rfind("decoder.", 0) == 0 || n == "lm_head.weight") << n;
  expect_matches_transformers(t5);
}

// bf16 files load into a float32 run as their exact values; a bf16 run stays near float32 (the figures for XXL are
// in bench/RESULTS.md; this bound is for the tiny model).
TEST(T5Transformers, Bfloat16FilesAndRuns) {
  const encode::LoadedT5 f = load("t5"), from_b16 = load("t5_bf16");
  EXPECT_EQ(from_b16.file_dtype, at::kBFloat16);
  const auto& w = f.model->weights();
  for (const std::string& n : w.names())
    EXPECT_TRUE(at::equal(from_b16.model->weights()[n], w[n].to(at::kBFloat16).to(at::kFloat))) << n;
  const auto io = io_tensors();
  EXPECT_LE(rel(from_b16.model->forward(io.at("ids"), io.at("mask")), io.at("out_bf16w")), 1e-5);
  const encode::LoadedT5 b16 = load("t5", at::kBFloat16);
  const at::Tensor out = b16.model->forward(io.at("ids"), io.at("mask"));
  EXPECT_EQ(out.scalar_type(), at::kFloat);
  const double err = rel(out, io.at("out"));
  std::printf("T5 bf16 run vs float32 transformers: max |error| / max |output| = %.2e\n", err);
  EXPECT_LE(err, 3e-2);
}

TEST(T5Buckets, MatchTheRelativePositionScheme) {
  const encode::LoadedT5 t5 = load("t5");
  const at::Tensor b = t5.model->position_buckets(200);  // 32 buckets, max distance 128
  auto at_ = [&](int64_t q, int64_t k) { return b[q][k].item<int64_t>(); };
  EXPECT_EQ(at_(10, 10), 0);
  EXPECT_EQ(at_(10, 13), 16 + 3);  // key after the query: the upper half, exact below 8
  EXPECT_EQ(at_(13, 10), 3);
  EXPECT_EQ(at_(0, 8), 16 + 8);  // the first logarithmic bucket
  EXPECT_EQ(at_(0, 199), 31);    // beyond max distance: the last bucket
  EXPECT_EQ(at_(199, 0), 15);
}

TEST(T5Inputs, WrongIdsAreErrors) {
  const encode::LoadedT5 t5 = load("t5");
  const at::Tensor ids = at::ones({2, 5}, at::kLong), mask = at::ones({2, 5}, at::kLong);
  EXPECT_NE(error_of([&] { t5.model->forward(ids.to(at::kInt), mask); }).find("int64"), std::string::npos);
  EXPECT_NE(error_of([&] { t5.model->forward(ids, at::ones({2, 4})); }).find("does not match"), std::string::npos);
  EXPECT_NE(error_of([&] { t5.model->forward(ids * 1000, mask); }).find("[0, 320)"), std::string::npos);
}

TEST(T5Folder, EveryDamageIsOneClearError) {
  test::TempDir tmp;
  const auto opts = at::TensorOptions();
  const std::string missing = copy_of("t5", tmp);
  rewrite(missing + "/model.safetensors", [](auto& sd) { sd.erase("encoder.final_layer_norm.weight"); });
  std::string e = error_of([&] { encode::load_t5(missing, opts, false); });
  EXPECT_NE(e.find("1 missing: encoder.final_layer_norm.weight"), std::string::npos) << e;

  const std::string extra = copy_of("t5", tmp);
  rewrite(extra + "/model.safetensors",
          [](auto& sd) { sd["encoder.block.9.layer.0.SelfAttention.q.weight"] = at::zeros({1}); });
  e = error_of([&] { encode::load_t5(extra, opts, false); });
  EXPECT_NE(e.find("1 unexpected: encoder.block.9.layer.0.SelfAttention.q.weight"), std::string::npos) << e;

  const std::string shape = copy_of("t5", tmp);
  rewrite(shape + "/model.safetensors", [](auto& sd) {
    sd["encoder.block.1.layer.1.DenseReluDense.wo.weight"] = at::zeros({64, 95});
  });
  e = error_of([&] { encode::load_t5(shape, opts, false); });
  EXPECT_NE(e.find("wo.weight is [64, 95] (expected [64, 96])"), std::string::npos) << e;

  const std::string vae_config = copy_of("t5", tmp);
  test::write_bytes(vae_config + "/config.json", R"({"_class_name": "AutoencoderKL", "latent_channels": 4})");
  e = error_of([&] { encode::load_t5(vae_config, opts, false); });
  EXPECT_NE(e.find("a diffusers AutoencoderKL config"), std::string::npos) << e;
  test::write_bytes(vae_config + "/config.json", R"({"model_type": "t5", "feed_forward_proj": "gated-silu"})");
  e = error_of([&] { encode::load_t5(vae_config, opts, false); });
  EXPECT_NE(e.find("gated-silu"), std::string::npos) << e;

  // A truncated shard, then a shard the index lists but that is gone.
  const std::string sharded = copy_of("t5_sharded", tmp);
  const nlohmann::json index = nlohmann::json::parse(test::read_bytes(sharded + "/model.safetensors.index.json"));
  const std::string shard = sharded + "/" + index["weight_map"].begin().value().get<std::string>();
  const std::string bytes = test::read_bytes(shard);
  test::write_bytes(shard, bytes.substr(0, bytes.size() - 100));
  e = error_of([&] { encode::load_t5(sharded, opts, false); });
  EXPECT_NE(e.find(shard), std::string::npos) << e;
  fs::remove(shard);
  e = error_of([&] { encode::load_t5(sharded, opts, false); });
  EXPECT_NE(e.find("which is missing"), std::string::npos) << e;

  // The tokenizer: no spiece.model beside the weights.
  e = error_of([&] { encode::load_t5(ref("t5"), opts, /*with_tokenizer=*/true); });
  EXPECT_NE(e.find("spiece.model"), std::string::npos) << e;
  e = error_of([&] { encode::load_t5(tmp.path(), opts, false); });
  EXPECT_NE(e.find("no config.json here or in text_encoder/"), std::string::npos) << e;
}

// A pipeline folder: text_encoder/ with the weights, tokenizer/ with spiece.model.
TEST(T5Folder, PipelineLayoutFindsTheTokenizer) {
  const char* root = std::getenv("OPENDIT_REF_DIR");
  const std::string spiece = std::string(root) + "/tokenizer/spiece.model";
  if (!fs::exists(spiece)) GTEST_SKIP() << "no tokenizer reference";
  test::TempDir tmp;
  fs::create_directories(tmp.file("pipe/tokenizer"));
  fs::copy(ref("t5"), tmp.file("pipe/text_encoder"), fs::copy_options::recursive);
  fs::copy(spiece, tmp.file("pipe/tokenizer/spiece.model"));
  const encode::LoadedT5 t5 = encode::load_t5(tmp.file("pipe"), at::TensorOptions(), true);
  ASSERT_NE(t5.tokenizer, nullptr);
  EXPECT_EQ(t5.tokenizer->eos_id(), 1);
}

// The GPU runs the same code: float32 (TF32 off) within 1e-4 of transformers' CPU output, bf16 within 3e-2.
TEST(T5Gpu, MatchesTransformersOnTheGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no GPU";
  auto& ctx = at::globalContext();
  const bool blas_tf32 = ctx.allowTF32CuBLAS();
  ctx.setAllowTF32CuBLAS(false);
  const auto io = io_tensors();
  for (at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
    const encode::LoadedT5 t5 = encode::load_t5(ref("t5_sharded"), at::TensorOptions(dt).device(at::kCUDA), false);
    const double tol = dt == at::kFloat ? 1e-4 : 3e-2;
    EXPECT_LE(rel(t5.model->forward(io.at("ids").cuda(), io.at("mask").cuda()).cpu(), io.at("out")), tol) << dt;
  }
  ctx.setAllowTF32CuBLAS(blas_tf32);
}

// Captions end to end (tokenizer -> T5): the valid tokens only, computed on the batch cut to its longest caption,
// equal the full-length run's valid tokens; padded back, they are the models' [N, L, D] with its mask.
TEST(T5Captions, ValidTokensEqualTheFullLengthRun) {
  const char* root = std::getenv("OPENDIT_REF_DIR");
  const std::string spiece = std::string(root) + "/tokenizer/spiece.model";
  const models::t5::Tokenizer tok(spiece);
  // A tiny T5 whose vocabulary covers the tokenizer's (random weights: this is a property of the cut, not parity).
  models::t5::T5Config cfg = load("t5").model->config();
  const std::string mismatch = error_of([&] {
    encode::embed_captions(*load("t5").model, tok, {"a"}, 8, false);
  });
  EXPECT_NE(mismatch.find("tokenizer has 900 ids"), std::string::npos) << mismatch;
  cfg.vocab_size = tok.vocab_size();
  struct {
    std::unique_ptr<models::t5::T5Encoder> model;
  } t5{std::make_unique<models::t5::T5Encoder>(cfg)};
  t5.model->init_random(3, at::TensorOptions());
  std::string longer;
  for (int i = 0; i < 30; ++i) longer += "the quick brown fox jumps over a lazy dog ";
  const std::vector<std::string> captions = {"a red panda eats bamboo in the snow", "", "two cats", longer};
  const encode::CaptionEmbeddings e = encode::embed_captions(*t5.model, tok, captions, 40, /*clean=*/false);
  const models::t5::TokenBatch b = tok(captions, 40);
  ASSERT_EQ(e.lengths.size(0), 4);
  EXPECT_EQ(e.lengths[1].item<int64_t>(), 1);  // an empty caption is its EOS
  EXPECT_TRUE(e.truncated[3]);
  const at::Tensor ids = at::tensor(b.ids).view({4, 40});
  const at::Tensor mask = at::tensor(std::vector<int64_t>(b.mask.begin(), b.mask.end())).view({4, 40});
  const at::Tensor full = t5.model->forward(ids, mask);
  EXPECT_LE(rel(e.tokens, full.index({mask.to(at::kBool)})), 1e-6);
  const auto [padded, m] = encode::pad_embeddings(e, 40);
  EXPECT_TRUE(at::equal(m, mask.to(at::kBool)));
  EXPECT_LE(rel(padded.index({m}), full.index({mask.to(at::kBool)})), 1e-6);
  EXPECT_EQ(padded.index({m.logical_not()}).abs().max().item<float>(), 0.f);
}
