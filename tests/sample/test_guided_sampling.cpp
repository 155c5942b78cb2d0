// Sampling loops with classifier-free guidance (sample/guidance.hpp) on a closed-form toy network, against the same
// network driven by diffusers' DDIMScheduler / DDPMScheduler (tests/ref/make_diffusion_ref.py, make_loops), and the
// semantics of guidance.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cstdio>

#include "core/error.hpp"
#include "diffusion/gaussian_diffusion.hpp"
#include "sample/guidance.hpp"
#include "support/ref_data.hpp"

using namespace opendit::diffusion;
using namespace opendit::sample;
using opendit::models::Condition;
using opendit::test::max_abs_diff;
using opendit::test::RefData;

namespace {

const RefData& ref() {
  static const RefData data("diffusion");
  return data;
}

constexpr int64_t kC = 4;

// The toy class-conditional network of make_diffusion_ref.py (toy_net there), term for term:
// eps_c = 0.9 x_c + 0.1 tanh(a_c x_c + 0.2 x_{c+1 mod C} + b_c t/1000 + e(y, c)), v_c = tanh(0.3 x_c - 0.5 t/1000 + 0.5 e(y, c)),
// a_c = 0.5 + 0.1c, b_c = 0.3 - 0.2c, e(y, c) = 0.4 sin(1.7y + 0.9c).
at::Tensor toy_net(const at::Tensor& x, const at::Tensor& t, const at::Tensor& y) {
  const auto dt = x.scalar_type();
  const at::Tensor c = at::arange(kC, at::kDouble);
  const at::Tensor a = (0.5 + 0.1 * c).view({1, kC, 1, 1}).to(dt);
  const at::Tensor b = (0.3 - 0.2 * c).view({1, kC, 1, 1}).to(dt);
  const at::Tensor emb =
      (0.4 * at::sin(1.7 * y.to(at::kDouble).view({-1, 1}) + 0.9 * c.view({1, -1}))).view({-1, kC, 1, 1}).to(dt);
  const at::Tensor tt = (t.to(at::kDouble) / 1000).view({-1, 1, 1, 1}).to(dt);
  const at::Tensor eps = 0.9 * x + 0.1 * at::tanh(a * x + 0.2 * at::roll(x, {-1}, {1}) + b * tt + emb);
  const at::Tensor var = at::tanh(0.3 * x - 0.5 * tt + 0.5 * emb);
  return at::cat({eps, var}, 1);
}

// The toy network as a conditional denoiser, and labels as conditions.
const ConditionalDenoiser toy = [](const at::Tensor& x, const at::Tensor& t, const Condition& c) {
  return toy_net(x, t, c.labels);
};
Condition labels_of(const at::Tensor& y) {
  Condition c;
  c.labels = y;
  return c;
}
Condition null_of(const at::Tensor& y) {
  return labels_of(at::full_like(y, ref().meta().at("loop_null_label").get<int64_t>()));
}
Denoiser guide(const ConditionalDenoiser& net, const at::Tensor& labels, const GuidanceOptions& opt) {
  return classifier_free_guidance(net, labels_of(labels), null_of(labels), opt);
}

Denoiser guided(bool first3, double scale = 4.0) {
  GuidanceOptions opt;
  opt.scale = scale;
  opt.guide_first_channels_only3 = first3;
  return guide(toy, ref().get("loop_labels"), opt);
}

at::Generator seeded(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

}  // namespace

TEST(DiffusionSampling, Ddim20WithGuidanceMatchesDiffusers) {
  const GaussianDiffusion d = make_diffusion("ddim20", "linear", 1000, true);
  ASSERT_EQ(d.num_timesteps(), 20);
  ASSERT_DOUBLE_EQ(ref().meta().at("loop_scale").get<double>(), 4.0);
  for (const bool first3 : {false, true}) {
    const at::Tensor want = ref().get(std::string("loop_ddim20_eta0") + (first3 ? "_first3" : ""));
    for (const auto dtype : {at::kFloat, at::kDouble}) {
      int calls = 0, last_step = 0, last_total = 0;
      const StepCallback progress = [&](int step, int total) {
        ++calls;
        last_step = step;
        last_total = total;
      };
      const at::Tensor x = d.ddim_sample_loop(guided(first3), ref().get("loop_noise").to(dtype), 0.0, {}, progress);
      EXPECT_EQ(x.scalar_type(), dtype);
      EXPECT_EQ(calls, 20);
      EXPECT_EQ(last_step, 20);
      EXPECT_EQ(last_total, 20);
      const double e = max_abs_diff(x, want);
      std::printf("[ddim20 cfg=4%s %s] max abs error %.3g (|x| up to %.3g)\n", first3 ? " first-3-channels" : "",
                  dtype == at::kFloat ? "f32" : "f64", e, want.abs().max().item<double>());
      EXPECT_LE(e, dtype == at::kFloat ? 1e-4 : 1e-9);
    }
  }
  // The two guidance variants really differ (channel 3 is unguided in the DiT quirk).
  EXPECT_GT(max_abs_diff(ref().get("loop_ddim20_eta0"), ref().get("loop_ddim20_eta0_first3")), 1e-3);
}

TEST(DiffusionSampling, SeededLoopsMatchDiffusersGenerator) {
  // diffusers draws each step's noise with torch.randn(float32) from a seeded CPU generator; so does the loop.
  const at::Tensor noise = ref().get("loop_noise").to(at::kFloat);
  const GaussianDiffusion ddim = make_diffusion("ddim20", "linear", 1000, true);
  const int64_t ddim_seed = ref().meta().at("loop_ddim_seed").get<int64_t>();
  const at::Tensor x1 = ddim.ddim_sample_loop(guided(false), noise, 1.0, seeded(ddim_seed));
  const double e1 = max_abs_diff(x1, ref().get("loop_ddim20_eta1_seed7"));
  std::printf("[ddim20 eta=1 seed %lld f32] max abs error %.3g\n", static_cast<long long>(ddim_seed), e1);
  EXPECT_LE(e1, 1e-4);

  const GaussianDiffusion ddpm = make_diffusion("10", "linear", 1000, true);
  EXPECT_EQ(ddpm.timestep_map(), ref().ivec("loop_ddpm10_timesteps"));
  const int64_t ddpm_seed = ref().meta().at("loop_ddpm_seed").get<int64_t>();
  const at::Tensor x2 = ddpm.p_sample_loop(guided(false), noise, seeded(ddpm_seed));
  const double e2 = max_abs_diff(x2, ref().get("loop_ddpm10_seed11"));
  std::printf("[ddpm \"10\" learned range seed %lld f32] max abs error %.3g\n", static_cast<long long>(ddpm_seed), e2);
  EXPECT_LE(e2, 1e-4);

  // One seed, one sample; another seed, another sample.
  EXPECT_TRUE(ddpm.p_sample_loop(guided(false), noise, seeded(ddpm_seed)).equal(x2));
  EXPECT_GT(max_abs_diff(ddpm.p_sample_loop(guided(false), noise, seeded(ddpm_seed + 1)), x2), 1e-3);
}

TEST(Guidance, Semantics) {
  const at::Tensor labels = ref().get("loop_labels");
  const int64_t n = labels.size(0), null_label = ref().meta().at("loop_null_label").get<int64_t>();
  const at::Tensor x = ref().get("loop_noise").to(at::kFloat);
  const at::Tensor t = at::full({n}, 321, at::kLong);
  const at::Tensor cond = toy_net(x, t, labels);
  const at::Tensor uncond = toy_net(x, t, at::full_like(labels, null_label));

  // One forward on the doubled batch with [y; null].
  at::Tensor seen_y;
  int forwards = 0;
  const ConditionalDenoiser spy = [&](const at::Tensor& xx, const at::Tensor& tt, const Condition& yy) {
    ++forwards;
    seen_y = yy.labels;
    return toy_net(xx, tt, yy.labels);
  };
  GuidanceOptions opt;
  opt.scale = 2.5;
  const at::Tensor out = guide(spy, labels, opt)(x, t);
  EXPECT_EQ(forwards, 1);
  EXPECT_TRUE(seen_y.equal(at::cat({labels, at::full_like(labels, null_label)})));
  const at::Tensor eps_u = uncond.narrow(1, 0, kC), eps_c = cond.narrow(1, 0, kC);
  EXPECT_LE(max_abs_diff(out.narrow(1, 0, kC), eps_u + 2.5 * (eps_c - eps_u)), 1e-6);
  EXPECT_TRUE(out.narrow(1, kC, kC).equal(cond.narrow(1, kC, kC)));  // variance from the conditional half

  // The DiT quirk: channels 0..2 guided; channel 3 and the variance pass through from the conditional half.
  opt.guide_first_channels_only3 = true;
  const at::Tensor quirk = guide(toy, labels, opt)(x, t);
  EXPECT_LE(max_abs_diff(quirk.narrow(1, 0, 3), out.narrow(1, 0, 3)), 0.0);
  EXPECT_TRUE(quirk.narrow(1, 3, 1 + kC).equal(cond.narrow(1, 3, 1 + kC)));

  // Scale 1 is the conditional prediction, scale 0 the unconditional eps.
  opt.guide_first_channels_only3 = false;
  opt.scale = 1.0;
  EXPECT_LE(max_abs_diff(guide(toy, labels, opt)(x, t), cond), 1e-6);
  opt.scale = 0.0;
  EXPECT_LE(max_abs_diff(guide(toy, labels, opt)(x, t).narrow(1, 0, kC), eps_u), 0.0);
}

TEST(Guidance, Errors) {
  const at::Tensor labels = ref().get("loop_labels");
  GuidanceOptions opt;
  opt.scale = -0.5;
  try {
    guide(toy, labels, opt);
    ADD_FAILURE() << "a negative guidance scale was accepted";
  } catch (const opendit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("found -0.5"), std::string::npos) << e.what();
  }
  opt.scale = 4.0;
  const Denoiser fn = guide(toy, labels, opt);
  const at::Tensor x = at::zeros({labels.size(0) + 1, kC, 2, 2});
  EXPECT_THROW(fn(x, at::zeros({x.size(0)}, at::kLong)), opendit::Error);
  EXPECT_THROW(guide(toy, labels.to(at::kFloat), opt), opendit::Error);
  EXPECT_THROW(classifier_free_guidance(toy, labels_of(labels), labels_of(labels.narrow(0, 0, 1)), opt),
               opendit::Error);  // a null condition of another batch
  // DDIM eta must be >= 0.
  const GaussianDiffusion d = make_diffusion("ddim20", "linear", 1000, true);
  EXPECT_THROW(d.ddim_sample_loop(fn, at::zeros({labels.size(0), kC, 2, 2}), -1.0), opendit::Error);
}
