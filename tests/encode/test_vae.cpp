// The SD VAE against diffusers' AutoencoderKL (tests/ref/make_vae_ref.py: random weights, small images), the
// micro-batched, video and tiled paths against the whole-batch one, and every way a VAE folder can be wrong.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

#include "core/error.hpp"
#include "encode/encode_test_util.hpp"
#include "encode/encoders.hpp"
#include "io/safetensors.hpp"
#include "models/vae/pipeline.hpp"
#include "support/support.hpp"

using namespace opendit;
using namespace opendit::models::vae;
using opendit::test::error_of;
using opendit::test::rel;
namespace fs = std::filesystem;

namespace {

std::string ref(const std::string& name) { return test::ref_path("vae", name); }

encode::LoadedVae load(const std::string& name, at::ScalarType dt = at::kFloat) {
  return encode::load_vae(ref(name), at::TensorOptions(dt));
}

// Every output of diffusers within 1e-5 of its scale, float32.
void expect_matches_diffusers(const std::string& name) {
  ASSERT_FALSE(ref(name).empty()) << "OPENDIT_REF_DIR is not set (run through ctest)";
  if (!fs::exists(ref(name))) GTEST_SKIP() << "no reference for " << name << " (this diffusers lacks the option)";
  const encode::LoadedVae vae = load(name);
  const auto io = io::load_safetensors(ref(name) + "/io.safetensors").tensors;
  EXPECT_EQ(vae.model->weights().numel(), io.at("num_params").item<int64_t>());
  const Posterior p = vae.model->encode(io.at("x"));
  EXPECT_LE(rel(p.mean, io.at("mean")), 1e-5) << name;
  EXPECT_LE(rel(p.logvar, io.at("logvar")), 1e-5) << name;
  EXPECT_LE(rel(vae.model->decode(io.at("z")), io.at("dec")), 1e-5) << name;
  if (io.count("z2")) EXPECT_LE(rel(vae.model->decode(io.at("z2")), io.at("dec2")), 1e-5) << name;
}

std::string copy_of(const std::string& name, const test::TempDir& tmp) { return test::copy_folder(ref(name), tmp); }

void rewrite_weights(const std::string& dir, const std::function<void(std::map<std::string, at::Tensor>&)>& edit) {
  test::rewrite_safetensors(dir + "/diffusion_pytorch_model.safetensors", edit);
}

}  // namespace

TEST(VaeDiffusers, Tiny) { expect_matches_diffusers("tiny"); }
TEST(VaeDiffusers, ThreeLevelsThreeLatentChannels) { expect_matches_diffusers("tiny3"); }
TEST(VaeDiffusers, WithoutQuantConvs) { expect_matches_diffusers("noquant"); }
TEST(VaeDiffusers, SdVaeLayout) {
  expect_matches_diffusers("sd");
  // The file's config is the SD VAE's own.
  const encode::LoadedVae vae = load("sd");
  EXPECT_EQ(vae.model->config().block_out_channels, sd_vae_config().block_out_channels);
  EXPECT_EQ(vae.model->config().factor(), 8);
  EXPECT_DOUBLE_EQ(vae.model->config().scaling_factor, 0.18215);
}

// The pipeline's micro-batches and video layout change nothing: each frame is the image VAE on that frame.
TEST(VaePipeline, MicroBatchesAndVideoFramesEqualWholeBatch) {
  const encode::LoadedVae vae = load("tiny3");
  at::manual_seed(3);
  const at::Tensor video = at::rand({2, 3, 5, 16, 24}) * 2 - 1;  // [N, C, T, H, W]
  const Posterior pv = models::vae::encode(*vae.model, video, {/*micro_batch=*/3});
  ASSERT_EQ(pv.mean.sizes(), (at::IntArrayRef{2, 3, 5, 4, 6}));
  for (int64_t t : {0, 4}) {
    const Posterior pf = vae.model->encode(video.select(2, t));
    EXPECT_LE(rel(pv.mean.select(2, t), pf.mean), 1e-5);  // float32 rounding: other batch sizes, other blocking
    EXPECT_LE(rel(pv.logvar.select(2, t), pf.logvar), 1e-5);
  }
  const at::Tensor latents = scaled_latents(*vae.model, pv);
  EXPECT_TRUE(at::allclose(latents, pv.mean * 0.18215));
  const at::Tensor whole = decode(*vae.model, latents, {/*micro_batch=*/100});
  const at::Tensor micro = decode(*vae.model, latents, {/*micro_batch=*/4});
  ASSERT_EQ(micro.sizes(), video.sizes());
  EXPECT_LE(rel(micro, whole), 1e-5);
  EXPECT_LE(rel(whole.select(2, 2), vae.model->decode(pv.mean.select(2, 2))), 1e-5);
}

TEST(VaePipeline, SampledLatentsFollowThePosterior) {
  const encode::LoadedVae vae = load("tiny");
  Posterior p{at::zeros({4, 4, 16, 16}), at::full({4, 4, 16, 16}, std::log(4.0))};  // std 2
  at::Generator g = at::detail::getDefaultCPUGenerator().clone();
  g.set_current_seed(7);
  const at::Tensor z = scaled_latents(*vae.model, p, g);
  EXPECT_NEAR(z.std().item<double>(), 2 * 0.18215, 0.02);
  g.set_current_seed(7);
  EXPECT_TRUE(at::equal(z, scaled_latents(*vae.model, p, g)));  // seeded: the same draw
}

// Tiles see only their part of the frame (GroupNorm statistics, the receptive field), so a tiled decode is not the
// whole decode; with random weights the difference is large for any tiling. The bound: no farther from the whole
// decode than diffusers' own tiled decoding of the same latents with tiles of the same size and overlap
// (make_vae_ref.py); a tile as large as the frame is the whole decode.
TEST(VaePipeline, TiledDecodingIsNoWorseThanDiffusersTiling) {
  const encode::LoadedVae vae = load("tiny3");
  const auto io = io::load_safetensors(ref("tiny3") + "/io.safetensors").tensors;
  const at::Tensor latents = io.at("zt") * 0.18215, whole = io.at("dec_t");
  DecodeOptions o;
  o.tile = 8, o.overlap = 2;  // diffusers: 8-latent tiles, overlap 8 x 0.25
  const at::Tensor tiled = decode(*vae.model, latents, o);
  ASSERT_EQ(tiled.sizes(), whole.sizes());
  EXPECT_TRUE(at::isfinite(tiled).all().item<bool>());
  auto err = [&](const at::Tensor& t) {
    return (t - whole).abs().mean().item<double>() / whole.abs().mean().item<double>();
  };
  std::printf("tiled vs whole decoding, mean |error| / mean |output|: opendit %.3f, diffusers %.3f\n", err(tiled),
              err(io.at("dec_tiled")));
  EXPECT_LE(err(tiled), err(io.at("dec_tiled")));
  o.tile = 20;
  EXPECT_LE(rel(decode(*vae.model, latents, o), whole), 1e-5);
  o.tile = 1;
  EXPECT_NE(error_of([&] { decode(*vae.model, latents, o); }).find("tile must be 0"), std::string::npos);
}

TEST(VaePipeline, Bfloat16StaysNearFloat32) {
  const encode::LoadedVae f32 = load("tiny3"), b16 = load("tiny3", at::kBFloat16);
  at::manual_seed(9);
  const at::Tensor x = at::rand({2, 3, 16, 16}) * 2 - 1;
  EXPECT_LE(rel(b16.model->encode(x).mean, f32.model->encode(x).mean), 0.05);
  const at::Tensor z = at::randn({2, 3, 4, 4});
  EXPECT_LE(rel(b16.model->decode(z), f32.model->decode(z)), 0.05);
}

TEST(VaeInputs, WrongImagesAreErrors) {
  const encode::LoadedVae vae = load("tiny3");
  EXPECT_NE(error_of([&] { vae.model->encode(at::zeros({1, 3, 10, 16})); }).find("multiples of 4"), std::string::npos);
  EXPECT_NE(error_of([&] { vae.model->encode(at::zeros({1, 4, 16, 16})); }).find("[N, 3, H, W]"), std::string::npos);
  EXPECT_NE(error_of([&] { vae.model->decode(at::zeros({1, 4, 4, 4})); }).find("[N, 3, h, w]"), std::string::npos);
}

TEST(VaeFolder, EveryDamageIsOneClearError) {
  test::TempDir tmp;
  const std::string missing = copy_of("tiny", tmp);
  rewrite_weights(missing, [](auto& sd) { sd.erase("decoder.conv_out.weight"); });
  std::string e = error_of([&] { encode::load_vae(missing, at::TensorOptions()); });
  EXPECT_NE(e.find("1 missing: decoder.conv_out.weight"), std::string::npos) << e;

  fs::rename(missing, tmp.file("extra"));
  rewrite_weights(tmp.file("extra"), [](auto& sd) {
    sd["decoder.conv_out.weight"] = at::zeros({3, 32, 3, 3});
    sd["encoder.something_else"] = at::zeros({2});
  });
  e = error_of([&] { encode::load_vae(tmp.file("extra"), at::TensorOptions()); });
  EXPECT_NE(e.find("1 unexpected: encoder.something_else"), std::string::npos) << e;

  const std::string shape = copy_of("tiny", tmp);
  rewrite_weights(shape, [](auto& sd) { sd["encoder.conv_in.weight"] = at::zeros({32, 3, 5, 5}); });
  e = error_of([&] { encode::load_vae(shape, at::TensorOptions()); });
  EXPECT_NE(e.find("encoder.conv_in.weight is [32, 3, 5, 5] (expected [32, 3, 3, 3])"), std::string::npos) << e;

  const std::string other = tmp.file("t5config");
  fs::create_directories(other);
  test::write_bytes(other + "/config.json", R"({"model_type": "t5", "d_model": 64})");
  e = error_of([&] { encode::load_vae(other, at::TensorOptions()); });
  EXPECT_NE(e.find("a t5 model's config"), std::string::npos) << e;
  test::write_bytes(other + "/config.json", R"({"_class_name": "AutoencoderKLTemporalDecoder"})");
  e = error_of([&] { encode::load_vae(other, at::TensorOptions()); });
  EXPECT_NE(e.find("a AutoencoderKLTemporalDecoder config"), std::string::npos) << e;

  const std::string cut = copy_of("tiny", tmp);
  const std::string file = cut + "/diffusion_pytorch_model.safetensors";
  const std::string bytes = test::read_bytes(file);
  test::write_bytes(file, bytes.substr(0, bytes.size() / 2));
  e = error_of([&] { encode::load_vae(cut, at::TensorOptions()); });
  EXPECT_NE(e.find(file), std::string::npos) << e;

  fs::remove(file);
  e = error_of([&] { encode::load_vae(cut, at::TensorOptions()); });
  EXPECT_NE(e.find("no diffusion_pytorch_model.safetensors"), std::string::npos) << e;
  e = error_of([&] { encode::load_vae(tmp.file("nowhere"), at::TensorOptions()); });
  EXPECT_NE(e.find("no such file or folder"), std::string::npos) << e;
  e = error_of([&] { encode::load_vae(tmp.path(), at::TensorOptions()); });
  EXPECT_NE(e.find("no config.json here or in vae/"), std::string::npos) << e;
  e = error_of([&] { encode::load_vae(ref("tiny"), at::TensorOptions(at::kHalf)); });
  EXPECT_NE(e.find("float32 or bfloat16"), std::string::npos) << e;
}

// A pipeline folder (vae/ inside) and the old attention names of the published sd-vae-ft-* files load too.
TEST(VaeFolder, PipelineFolderAndOldAttentionNames) {
  test::TempDir tmp;
  fs::create_directories(tmp.file("pipe"));
  fs::copy(ref("tiny"), tmp.file("pipe/vae"), fs::copy_options::recursive);
  rewrite_weights(tmp.file("pipe/vae"), [](auto& sd) {
    std::map<std::string, at::Tensor> old;
    for (auto& [n, t] : sd) {
      std::string m = n;
      for (auto [a, b] : {std::pair<std::string, std::string>{"to_q.", "query."},
                          {"to_k.", "key."},
                          {"to_v.", "value."},
                          {"to_out.0.", "proj_attn."}}) {
        const size_t at = m.find(a);
        if (at != std::string::npos) m = m.substr(0, at) + b + m.substr(at + a.size());
      }
      old[m] = m.find("query.weight") != std::string::npos ? t.view({t.size(0), t.size(1), 1, 1}) : t;
    }
    sd = old;
  });
  const encode::LoadedVae vae = encode::load_vae(tmp.file("pipe"), at::TensorOptions());
  EXPECT_EQ(vae.folder, tmp.file("pipe/vae"));
  const auto io = io::load_safetensors(ref("tiny") + "/io.safetensors").tensors;
  EXPECT_LE(rel(vae.model->decode(io.at("z")), io.at("dec")), 1e-5);
}

// The GPU runs the same code: float32 (TF32 off) within 1e-4 of diffusers' CPU output, bf16 within 3e-2.
TEST(VaeGpu, MatchesDiffusersOnTheGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no GPU";
  auto& ctx = at::globalContext();
  const bool cudnn_tf32 = ctx.allowTF32CuDNN(), blas_tf32 = ctx.allowTF32CuBLAS();
  ctx.setAllowTF32CuDNN(false);
  ctx.setAllowTF32CuBLAS(false);
  const auto io = io::load_safetensors(ref("sd") + "/io.safetensors").tensors;
  for (at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
    const encode::LoadedVae vae = encode::load_vae(ref("sd"), at::TensorOptions(dt).device(at::kCUDA));
    const double tol = dt == at::kFloat ? 1e-4 : 3e-2;
    const Posterior p = vae.model->encode(io.at("x").cuda());
    EXPECT_LE(rel(p.mean.cpu(), io.at("mean")), tol) << dt;
    EXPECT_LE(rel(vae.model->decode(io.at("z").cuda()).cpu(), io.at("dec")), tol) << dt;
  }
  ctx.setAllowTF32CuDNN(cudnn_tf32);
  ctx.setAllowTF32CuBLAS(blas_tf32);
}
