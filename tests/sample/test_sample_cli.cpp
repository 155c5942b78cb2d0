// `opendit sample` end to end: DDIM + CFG on a tiny DiT vs a diffusers-driven loop (tests/ref/make_sample_ref.py),
// determinism, the PNG path, and every bad input rejected before work starts.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "io/safetensors.hpp"
#include "io/weights.hpp"
#include "models/dit/dit.hpp"

namespace fs = std::filesystem;
using namespace opendit;

namespace {

struct CliRun {
  int rc;
  std::string output;
};

// Runs `opendit ARGS` (one process, no mpirun) and captures stdout+stderr; `shell` runs first in the same shell
// (a ulimit).
CliRun run_opendit(const std::string& args, const std::string& shell = "") {
  // One log per test process: two test runs on one machine (two checkouts) must not read each other's output.
  fs::path log = fs::temp_directory_path() / ("opendit_sample_test_" + std::to_string(::getpid()) + ".log");
  int rc = std::system(("(" + shell + std::string(OPENDIT_BIN) + " " + args + ") > " + log.string() + " 2>&1").c_str());
  std::ifstream f(log);
  std::stringstream ss;
  ss << f.rdbuf();
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, ss.str()};
}

class SampleCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir = fs::temp_directory_path() / ("opendit_sample_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    const char* ref = std::getenv("OPENDIT_REF_DIR");
    ASSERT_NE(ref, nullptr) << "run through ctest";
    refdir = std::string(ref) + "/sample";
    std::ofstream(dir / "tiny.toml") << "[model]\npreset = \"custom\"\ndepth = 2\nhidden_size = 64\nnum_heads = 4\n"
                                        "patch_size = 2\nin_channels = 4\ninput_size = 8\nnum_classes = 10\n";
  }
  void TearDown() override { fs::remove_all(dir); }
  std::string deck() const { return "--config " + (dir / "tiny.toml").string(); }
  std::string weights() const { return " --checkpoint " + refdir + "/weights.safetensors"; }
  fs::path dir;
  std::string refdir;
};

}  // namespace

TEST_F(SampleCli, Ddim20WithGuidanceMatchesDiffusers) {
  std::string out = (dir / "s.safetensors").string();
  CliRun r = run_opendit("sample " + deck() + weights() + " --init-noise " + refdir +
                  "/noise.safetensors --steps ddim20 --cfg 4 --classes 1,3,7 --per-class 2 --out " + out);
  ASSERT_EQ(r.rc, 0) << r.output;
  auto got = io::load_safetensors(out).tensors;
  auto want = io::load_safetensors(refdir + "/expected.safetensors").tensors;
  EXPECT_TRUE(at::equal(got.at("labels"), want.at("labels")));
  double err = ((got.at("samples") - want.at("samples")).abs().max() / want.at("samples").abs().max()).item<double>();
  EXPECT_LE(err, 1e-4) << "max relative error vs diffusers DDIM loop: " << err;
  std::printf("ddim20 + cfg 4 vs diffusers: max relative error %.3g\n", err);
}

TEST_F(SampleCli, SameSeedSameSamplesOtherSeedOthers) {
  auto run = [&](const std::string& name, int seed) {
    std::string out = (dir / name).string();
    CliRun r = run_opendit("sample " + deck() + weights() + " --steps 10 --classes 2 --per-class 2 --seed " +
                    std::to_string(seed) + " --out " + out);
    EXPECT_EQ(r.rc, 0) << r.output;
    return io::load_safetensors(out).tensors.at("samples");
  };
  at::Tensor a = run("a.safetensors", 5), b = run("b.safetensors", 5), c = run("c.safetensors", 6);
  EXPECT_TRUE(at::equal(a, b));
  EXPECT_FALSE(at::equal(a, c));
}

// On a GPU the default replays a CUDA graph of each step; --no-graph and sample.cuda_graph = false run eagerly.
// All three give the same DDPM samples (same seed, same per-step noise); on the CPU they run the same code.
TEST_F(SampleCli, CudaGraphAndEagerGiveTheSameSamples) {
  auto run = [&](const std::string& name, const std::string& extra) {
    std::string out = (dir / name).string();
    CliRun r = run_opendit("sample " + deck() + weights() + " --steps 20 --cfg 4 --classes 1,3,7 --seed 3 --out " +
                           out + extra);
    EXPECT_EQ(r.rc, 0) << r.output;
    EXPECT_EQ(r.output.find("warning"), std::string::npos) << r.output;
    return io::load_safetensors(out).tensors.at("samples");
  };
  at::Tensor graphed = run("g.safetensors", ""), eager = run("e.safetensors", " --no-graph");
  at::Tensor deck_off = run("d.safetensors", " --set sample.cuda_graph=false");
  double err = (graphed - eager).abs().max().item<double>();
  std::printf("DDPM 20 + cfg 4: default (graph on a GPU) vs --no-graph: max abs difference %.3g\n", err);
  EXPECT_LE(err, 1e-6);
  EXPECT_TRUE(at::equal(eager, deck_off));
}

// sample.precision = "bf16": the network in bf16, the sampler in fp32. DDIM 20 with guidance from the same noise
// stays close to the fp32 samples (bf16 keeps 8 bits of mantissa; 20 steps accumulate its rounding).
TEST_F(SampleCli, Bf16NetworkStaysCloseToFp32) {
  auto run = [&](const std::string& name, const std::string& extra) {
    std::string out = (dir / name).string();
    CliRun r = run_opendit("sample " + deck() + weights() + " --init-noise " + refdir +
                           "/noise.safetensors --steps ddim20 --cfg 4 --classes 1,3,7 --per-class 2 --out " + out +
                           extra);
    EXPECT_EQ(r.rc, 0) << r.output;
    return std::make_pair(io::load_safetensors(out).tensors.at("samples"), r.output);
  };
  auto [f32, log32] = run("f.safetensors", "");
  auto [bf, log16] = run("b.safetensors", " --set sample.precision=bf16");
  EXPECT_NE(log16.find(", bf16, on"), std::string::npos) << log16;
  EXPECT_EQ(bf.scalar_type(), at::kFloat);
  const double err = ((bf - f32).norm() / f32.norm()).item<double>();
  std::printf("DDIM 20 + cfg 4, bf16 network vs fp32: relative difference %.3g\n", err);
  EXPECT_GT(err, 0.0);  // it did run in bf16
  EXPECT_LT(err, 5e-2);
}

TEST_F(SampleCli, PixelModelWritesAPngGrid) {
  models::dit::DiTConfig cfg;
  cfg.depth = 1, cfg.hidden_size = 32, cfg.num_heads = 2, cfg.patch_size = 2;
  cfg.in_channels = 3, cfg.input_size = 8, cfg.num_classes = 4, cfg.learn_sigma = false;
  models::dit::DiT model(cfg, uint64_t{1});
  for (const models::Param& p : model.parameters())
    if (p.trainable) p.tensor->copy_(0.05 * at::randn(p.tensor->sizes()));
  std::string w = (dir / "pix.safetensors").string(), png = (dir / "grid.png").string();
  io::write_weights(w, model.state_dict(), model.weight_metadata());
  std::ofstream(dir / "pix.toml") << "[model]\npreset = \"custom\"\ndepth = 1\nhidden_size = 32\nnum_heads = 2\n"
                                     "patch_size = 2\nin_channels = 3\ninput_size = 8\nnum_classes = 4\n"
                                     "learn_sigma = false\nspace = \"pixel\"\n";
  CliRun r = run_opendit("sample --config " + (dir / "pix.toml").string() + " --checkpoint " + w +
                  " --steps ddim5 --per-class 3 --out " + png);
  ASSERT_EQ(r.rc, 0) << r.output;
  std::ifstream f(png, std::ios::binary);
  char sig[8] = {};
  f.read(sig, 8);
  EXPECT_EQ(std::string(sig + 1, 3), "PNG");
  // IHDR: width and height big-endian at bytes 16..23: 3 columns and 4 rows of 8 px with 2 px padding.
  unsigned char ihdr[16] = {};
  f.read(reinterpret_cast<char*>(ihdr), 16);
  auto be = [&](int i) { return (ihdr[i] << 24) | (ihdr[i + 1] << 16) | (ihdr[i + 2] << 8) | ihdr[i + 3]; };
  EXPECT_EQ(be(8), 3 * 10 + 2);
  EXPECT_EQ(be(12), 4 * 10 + 2);
}

TEST_F(SampleCli, BadInputIsRejectedBeforeAnyWork) {
  std::string out = " --out " + (dir / "x.safetensors").string();
  struct Case {
    std::string args, message;
  } cases[] = {
      {" --classes 1,12", "class 12 is outside [0, 9]"},
      {" --classes 1,x", "'x' is not a class id"},
      {" --cfg -1", "guidance scale must be >= 0"},
      {" --steps 0", "0"},
      {" --steps ddim7x", "ddim7x"},
      {" --per-class 0", "--per-class 0"},
      {" --classes 1 --init-noise " + refdir + "/noise.safetensors", "expected [1, 4, 8, 8]"},
  };
  for (const auto& c : cases) {
    CliRun r = run_opendit("sample " + deck() + weights() + c.args + out);
    EXPECT_NE(r.rc, 0) << c.args;
    EXPECT_NE(r.output.find(c.message), std::string::npos) << c.args << "\n" << r.output;
    EXPECT_EQ(r.output.find("sampling "), std::string::npos) << "work started for" << c.args;
  }
  CliRun png = run_opendit("sample " + deck() + weights() + " --out " + (dir / "x.png").string());
  EXPECT_NE(png.output.find("latent model's samples are latents"), std::string::npos) << png.output;
  CliRun wrong = run_opendit("sample --set model.preset=DiT-S/2 --classes 1" + weights() + out);
  EXPECT_NE(wrong.output.find("look like a custom DiT: depth 2, hidden 64"), std::string::npos) << wrong.output;
  CliRun missing = run_opendit("sample " + deck() + " --checkpoint " + (dir / "none.safetensors").string() + out);
  EXPECT_NE(missing.rc, 0);
  EXPECT_NE(missing.output.find("none.safetensors"), std::string::npos) << missing.output;
}

// opendit's weights record their model (safetensors metadata "config"): sample needs no model keys, a key that
// agrees is fine, and one that contradicts the record is an error naming both, before any work.
TEST_F(SampleCli, WeightsRecordTheirModel) {
  models::dit::DiTConfig cfg;
  cfg.depth = 1, cfg.hidden_size = 32, cfg.num_heads = 2, cfg.patch_size = 2;
  cfg.in_channels = 1, cfg.input_size = 4, cfg.num_classes = 3, cfg.learn_sigma = false;
  models::dit::DiT model(cfg, uint64_t{1});
  const std::string w = (dir / "rec.safetensors").string(), out = " --out " + (dir / "g.png").string();
  io::write_weights(w, model.state_dict(), model.weight_metadata());
  const std::string base = "sample --set model.space=pixel --steps ddim2 --checkpoint " + w;
  CliRun r = run_opendit(base + out);
  EXPECT_EQ(r.rc, 0) << r.output;
  EXPECT_NE(r.output.find("DiT depth 1, hidden 32, heads 2"), std::string::npos) << r.output;
  r = run_opendit(base + " --set model.depth=1 --set model.preset=custom" + out);
  EXPECT_EQ(r.rc, 0) << r.output;
  r = run_opendit(base + " --set model.depth=3 --set model.learn_sigma=true" + out);
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.output.find("rec.safetensors: the deck contradicts the model these weights record"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("model.depth = 3 (--set) but they record depth 1"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("model.learn_sigma = true (--set) but they record learn_sigma false"), std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("sampling "), std::string::npos) << r.output;
}

// A sample that comes out NaN or Inf is named by its row: class, which of its class, and its noise.
TEST_F(SampleCli, NonFiniteSampleIsNamedByItsRow) {
  at::Tensor noise = io::load_safetensors(refdir + "/noise.safetensors").tensors.at("noise").clone();  // [6, ...]
  noise[3].fill_(3e38f);  // finite, but the network overflows on it
  const std::string huge = (dir / "huge.safetensors").string(), out = " --out " + (dir / "x.safetensors").string();
  io::save_safetensors(huge, {{"noise", noise}}, {});
  CliRun r = run_opendit("sample " + deck() + weights() + " --steps ddim3 --classes 1,3,7 --per-class 2 --init-noise " +
                         huge + out);
  EXPECT_NE(r.rc, 0);
  const std::string row3 = "sample 3 (class 3, number 2 of 2 for that class; noise row 3 of " + huge + ")";
  EXPECT_NE(r.output.find(row3 + " came out NaN or Inf; nothing written"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "x.safetensors"));
  // A NaN in the given noise is named up front.
  noise[3].fill_(NAN);
  io::save_safetensors(huge, {{"noise", noise}}, {});
  r = run_opendit("sample " + deck() + weights() + " --classes 1,3,7 --per-class 2 --init-noise " + huge + out);
  EXPECT_NE(r.output.find(huge + ": noise row 3 (for " + row3 + ") holds NaN or Inf"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("sampling "), std::string::npos) << r.output;
}

// Where the samples go is checked before the weights are loaded: the folder, a folder in the way, the inputs.
TEST_F(SampleCli, OutputIsCheckedBeforeAnyWork) {
  fs::create_directories(dir / "taken.safetensors");
  fs::copy_file(refdir + "/weights.safetensors", dir / "w.safetensors");
  const std::string w = (dir / "w.safetensors").string();
  struct Case {
    std::string args, message;
  } cases[] = {
      {weights() + " --out " + (dir / "nope" / "x.safetensors").string(), "nope' does not exist"},
      {weights() + " --out " + (dir / "taken.safetensors").string(), "is a folder"},
      {" --checkpoint " + w + " --out " + w, "an input of this run"},
  };
  for (const auto& c : cases) {
    CliRun r = run_opendit("sample " + deck() + " --classes 1" + c.args);
    EXPECT_NE(r.rc, 0) << c.args;
    EXPECT_NE(r.output.find(c.message), std::string::npos) << c.args << "\n" << r.output;
    EXPECT_EQ(r.output.find("sampling "), std::string::npos) << "work started for" << c.args;
  }
  std::ofstream(dir / "old.safetensors") << "old";
  CliRun r = run_opendit("sample " + deck() + weights() + " --classes 1 --steps 2 --out " +
                         (dir / "old.safetensors").string());
  EXPECT_EQ(r.rc, 0) << r.output;
  EXPECT_NE(r.output.find("replaces " + (dir / "old.safetensors").string()), std::string::npos) << r.output;
}

// Two million samples in one loop do not fit in 6 GB of address space (the program itself starts in about 4): one
// error that names the allocator's refusal and the option that would fit, not torch's allocator message alone.
TEST_F(SampleCli, OutOfMemoryIsOneClearError) {
  const std::string out = (dir / "big.safetensors").string();
  CliRun r = run_opendit("sample " + deck() + weights() + " --steps ddim2 --classes 1 --per-class 2000000 --out " + out,
                         "ulimit -v 6000000; CUDA_VISIBLE_DEVICES= ");  // CUDA's start alone would pass the limit
  EXPECT_EQ(r.rc, 1) << r.output;
  EXPECT_NE(r.output.find("opendit: error: out of memory while sampling: host memory: an allocation of "),
            std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--batch N (now all of them in one loop)"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out));
}
