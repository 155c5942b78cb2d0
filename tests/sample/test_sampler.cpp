// The sampling layer without the command line: Sampler (DDIM + guidance on a tiny DiT) against the diffusers-driven
// loop of tests/ref/make_sample_ref.py, batching, step counts, and the plan's checks.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cstdlib>

#include "core/error.hpp"
#include "io/safetensors.hpp"
#include "io/weights.hpp"
#include "models/registry.hpp"
#include "sample/plan.hpp"
#include "sample/sampler.hpp"
#include "support/support.hpp"

using namespace opendit;
using opendit::test::error_of;

namespace {

std::string ref_dir() {
  const char* d = std::getenv("OPENDIT_REF_DIR");
  return d ? std::string(d) + "/sample" : "";
}

// The tiny DiT of make_sample_ref.py, loaded from its (diffusers-layout) weights.
config::Deck tiny_deck() {
  config::Deck d(models::deck_schema());
  for (const char* s : {"model.preset=custom", "model.depth=2", "model.hidden_size=64", "model.num_heads=4",
                        "model.patch_size=2", "model.in_channels=4", "model.input_size=8", "model.num_classes=10"})
    d.set(s);
  return d;
}

std::unique_ptr<models::Model> tiny_model(const config::Deck& deck) {
  auto m = models::make_model(deck, uint64_t{0});
  const io::WeightsFile w = io::read_weights(ref_dir() + "/weights.safetensors");
  m->load_state_dict(m->import_weights(w.tensors, w.path), w.path);
  return m;
}

models::Condition labels() {
  models::Condition c;
  c.labels = at::tensor(std::vector<int64_t>{1, 1, 3, 3, 7, 7});  // CLASSES x PER_CLASS of the reference
  return c;
}

at::Generator seeded(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

}  // namespace

TEST(Sampler, Ddim20WithGuidanceMatchesDiffusersInBatchesToo) {
  ASSERT_FALSE(ref_dir().empty()) << "OPENDIT_REF_DIR is not set (run through ctest)";
  const config::Deck deck = tiny_deck();
  const at::Tensor noise = io::load_safetensors(ref_dir() + "/noise.safetensors").tensors.at("noise");
  const at::Tensor want = io::load_safetensors(ref_dir() + "/expected.safetensors").tensors.at("samples");
  sample::SampleOptions o;
  o.steps = "ddim20", o.cfg = 4.0;
  for (int64_t batch : {0, 4}) {  // all at once; batches of 4 and 2
    o.batch = batch;
    const sample::SamplePlan plan = sample::make_plan(deck, o);
    auto model = tiny_model(deck);
    sample::Sampler sampler(*model, plan, at::kCPU);
    int calls = 0, last = 0, total = 0;
    const at::Tensor got = sampler.run(noise, labels(), seeded(0), [&](int done, int all) {
      ++calls, last = done, total = all;
    });
    EXPECT_EQ(got.sizes(), want.sizes());
    const double err = ((got - want).abs().max() / want.abs().max()).item<double>();
    EXPECT_LE(err, 1e-4) << "batch " << batch << ": max relative error vs diffusers " << err;
    const int64_t steps = batch == 0 ? 20 : 40;
    EXPECT_EQ(calls, steps);
    EXPECT_EQ(last, steps);
    EXPECT_EQ(total, steps);
    EXPECT_EQ(sampler.total_steps(6), steps);
    EXPECT_EQ(sampler.graph_state(), "off");  // the CPU has no CUDA graph
  }
}

TEST(Sampler, SameSeedSameSamplesAndConditionsMustMatchTheNoise) {
  const config::Deck deck = tiny_deck();
  sample::SampleOptions o;
  o.steps = "5";  // DDPM: per-step noise from the generator
  const sample::SamplePlan plan = sample::make_plan(deck, o);
  auto model = tiny_model(deck);
  sample::Sampler sampler(*model, plan, at::kCPU);
  const at::Tensor noise = at::randn({6, 4, 8, 8}, seeded(1));
  const at::Tensor a = sampler.run(noise, labels(), seeded(2)), b = sampler.run(noise, labels(), seeded(2));
  EXPECT_TRUE(at::equal(a, b));
  EXPECT_FALSE(at::equal(a, sampler.run(noise, labels(), seeded(3))));
  EXPECT_NE(error_of([&] { sampler.run(noise.narrow(0, 0, 5), labels(), seeded(2)); })
                .find("5 starting noises for 6 conditions"),
            std::string::npos);
}

TEST(SamplePlan, ReadsTheDeckAndChecksTheOverrides) {
  config::Deck deck = tiny_deck();
  deck.set("sample.precision=bf16");
  deck.set("sample.cfg_channels=first3");
  sample::SamplePlan p = sample::make_plan(deck, {});
  EXPECT_EQ(p.steps, "250");
  EXPECT_FALSE(p.ddim);
  EXPECT_EQ(p.dtype, at::kBFloat16);
  EXPECT_TRUE(p.guide_first3);
  EXPECT_TRUE(p.cuda_graph);
  sample::SampleOptions o;
  o.steps = "ddim50", o.no_graph = true, o.precision = "fp32";
  p = sample::make_plan(deck, o);
  EXPECT_TRUE(p.ddim);
  EXPECT_FALSE(p.cuda_graph);
  EXPECT_EQ(p.dtype, at::kFloat);
  auto fails = [&](sample::SampleOptions bad, const std::string& message) {
    const std::string msg = error_of([&] { sample::make_plan(deck, bad); });
    EXPECT_NE(msg.find(message), std::string::npos) << msg;
  };
  sample::SampleOptions bad;
  bad.cfg = -1.0;
  fails(bad, "--cfg -1: the guidance scale must be >= 0");
  bad = {}, bad.eta = 1.5;
  fails(bad, "--eta 1.5: expected a value in [0, 1]");
  bad = {}, bad.steps = "ddim7x";
  fails(bad, "ddim7x");
  EXPECT_EQ(sample::parse_classes("", 10).size(), 10u);
  EXPECT_NE(error_of([] { sample::parse_classes("", 1000); }).find("--classes is required"), std::string::npos);
  EXPECT_NE(error_of([] { sample::parse_classes("3,x", 10); }).find("'x' is not a class id"), std::string::npos);
}
