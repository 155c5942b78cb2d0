// Schedules, respacing, q_sample, single DDPM / DDIM steps and the training-loss terms, against diffusers
// (tables, add_noise, DDPMScheduler.step, DDIMScheduler.step) and the IDDPM formulas (VB / NLL): see
// tests/ref/make_diffusion_ref.py.
#include <gtest/gtest.h>

#include <cstdio>
#include <map>

#include "core/error.hpp"
#include "diffusion/gaussian_diffusion.hpp"
#include "diffusion/likelihood.hpp"
#include "diffusion/schedule.hpp"
#include "support/ref_data.hpp"

using namespace opendit::diffusion;
using opendit::test::max_abs_diff;
using opendit::test::max_rel_diff;
using opendit::test::RefData;

namespace {

const RefData& ref() {
  static const RefData data("diffusion");
  return data;
}

std::string respacing_spec(const std::string& tag) { return tag == "full" ? "" : tag; }

std::vector<int64_t> range(int64_t start, int64_t stop, int64_t step) {
  std::vector<int64_t> out;
  for (int64_t i = start; i < stop; i += step) out.push_back(i);
  return out;
}

template <typename F>
void expect_error(F&& f, const std::string& must_contain) {
  try {
    f();
    ADD_FAILURE() << "expected opendit::Error mentioning \"" << must_contain << "\"";
  } catch (const opendit::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(must_contain), std::string::npos) << msg;
    EXPECT_NE(msg.find("expected"), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

// A denoiser that returns a fixed output and records what it was called with.
struct Fixed {
  at::Tensor out;
  at::Tensor seen_x, seen_t;
  Denoiser fn() {
    return [this](const at::Tensor& x, const at::Tensor& t) {
      seen_x = x.clone();
      seen_t = t.clone();
      return out.to(x.scalar_type());
    };
  }
};

}  // namespace

// ---- schedule and respacing ---------------------------------------------------------------------------------------
TEST(DiffusionSchedule, SpaceTimestepsFollowsIddpm) {
  // Hand-worked: sections of 10 with strides 9, 4.5 (14.5 rounds half to even: 14) and 3.
  EXPECT_EQ(space_timesteps(30, "2,3,4"), (std::vector<int64_t>{0, 9, 10, 14, 19, 20, 23, 26, 29}));
  // 32 = 11 + 11 + 10: the first 32 % 3 sections take the extra step.
  EXPECT_EQ(space_timesteps(32, "2,3,4"), (std::vector<int64_t>{0, 10, 11, 16, 21, 22, 25, 28, 31}));
  EXPECT_EQ(space_timesteps(6, "3"), (std::vector<int64_t>{0, 2, 5}));  // 2.5 -> 2
  EXPECT_EQ(space_timesteps(1000, "ddim50"), range(0, 1000, 20));
  EXPECT_EQ(space_timesteps(1000, "ddim7"), range(0, 1000, 143));
  EXPECT_EQ(space_timesteps(1000, ""), range(0, 1000, 1));
  EXPECT_EQ(space_timesteps(1000, "1000"), range(0, 1000, 1));
  EXPECT_EQ(space_timesteps(1000, " 10, 20 ,30").size(), 60u);
  EXPECT_EQ(space_timesteps(1000, "250").size(), 250u);
}

TEST(DiffusionSchedule, Errors) {
  expect_error([] { space_timesteps(1000, "ddim600"); }, "ddim600");
  expect_error([] { space_timesteps(1000, "ddim0"); }, "no stride");
  expect_error([] { space_timesteps(1000, "ddim"); }, "found \"ddim\"");
  expect_error([] { space_timesteps(1000, "ddimx"); }, "ddimx");
  expect_error([] { space_timesteps(1000, "10,600"); }, "found 600");
  expect_error([] { space_timesteps(1000, "1001"); }, "at most 1000");
  expect_error([] { space_timesteps(1000, "abc"); }, "\"abc\"");
  expect_error([] { space_timesteps(1000, "10,,20"); }, "10,,20");
  expect_error([] { space_timesteps(1000, "-5"); }, "-5");
  expect_error([] { space_timesteps(1000, "12x"); }, "12x");
  expect_error([] { space_timesteps(1000, "0"); }, "found none");
  expect_error([] { space_timesteps(0, "250"); }, "found 0");
  expect_error([] { betas_for("linear", 0); }, "found 0");
  expect_error([] { betas_for("linear", 10); }, "found 10");
  expect_error([] { betas_for("quadratic", 1000); }, "\"quadratic\"");
  expect_error([] { GaussianDiffusion(betas_for("linear", 1000), {5}, true); }, "at least 2");
  expect_error([] { GaussianDiffusion(betas_for("linear", 1000), {5, 5}, true); }, "ascending");
  expect_error([] { GaussianDiffusion(betas_for("linear", 1000), {5, 1000}, true); }, "1000");
  expect_error([] { GaussianDiffusion({0.1, 1.5}, {}, true); }, "1.5");
}

TEST(DiffusionSchedule, BetasMatchDiffusersNative) {
  // diffusers' own float32 tables (DDPMScheduler "linear" / "squaredcos_cap_v2").
  for (const std::string sched : {"linear", "cosine"}) {
    const auto betas = betas_for(sched, 1000);
    const GaussianDiffusion d(betas, {}, true);
    const double eb = max_abs_diff(betas, ref().vec("native_" + sched + "_betas"));
    const double ea = max_abs_diff(d.alphas_cumprod(), ref().vec("native_" + sched + "_alphas_cumprod"));
    const double e64 = max_abs_diff(betas, ref().vec(sched + "_betas64"));
    std::printf("[%s] betas vs diffusers float32 %.3g, abar %.3g; betas vs float64 %.3g\n", sched.c_str(), eb, ea, e64);
    EXPECT_LE(eb, 1e-6);
    EXPECT_LE(ea, 1e-6);
    EXPECT_LE(e64, 1e-12);
  }
}

TEST(DiffusionSchedule, TablesMatchDiffusers) {
  for (const std::string sched : {"linear", "cosine"}) {
    for (const std::string tag : {"full", "250", "ddim50"}) {
      const GaussianDiffusion d = make_diffusion(respacing_spec(tag), sched, 1000, true);
      const std::string p = sched + "_" + tag + "_";
      EXPECT_EQ(d.timestep_map(), ref().ivec(p + "timesteps")) << p;
      const std::map<std::string, const std::vector<double>*> tables = {
          {"betas", &d.betas()},
          {"alphas_cumprod", &d.alphas_cumprod()},
          {"alphas_cumprod_prev", &d.alphas_cumprod_prev()},
          {"posterior_variance", &d.posterior_variance()},
          {"posterior_log_variance_clipped", &d.posterior_log_variance_clipped()},
          {"posterior_mean_coef1", &d.posterior_mean_coef1()},
          {"posterior_mean_coef2", &d.posterior_mean_coef2()}};
      double worst = 0;
      for (const auto& [name, table] : tables) {
        const double e = max_abs_diff(*table, ref().vec(p + name));
        EXPECT_LE(e, 1e-6) << p << name;
        EXPECT_LE(e, 1e-10) << p << name << " (float64 tables should agree to rounding)";
        worst = std::max(worst, e);
      }
      std::printf("[%s %s] %zu steps, worst table error %.3g\n", sched.c_str(), tag.c_str(), d.betas().size(), worst);
    }
  }
}

// ---- q_sample -----------------------------------------------------------------------------------------------------
TEST(DiffusionForward, QSampleMatchesAddNoise) {
  for (const std::string tag : {"full", "250"}) {
    const GaussianDiffusion d = make_diffusion(respacing_spec(tag), "linear", 1000, true);
    const at::Tensor t = ref().get("q_" + tag + "_t");
    const at::Tensor want = ref().get("q_" + tag + "_expected");
    for (const auto dtype : {at::kFloat, at::kDouble}) {
      const at::Tensor x0 = ref().get("q_x0").to(dtype), noise = ref().get("q_noise").to(dtype);
      const at::Tensor got = d.q_sample(x0, t, noise);
      EXPECT_EQ(got.scalar_type(), dtype);
      const double e = max_abs_diff(got, want);
      std::printf("[q_sample %s %s] max abs error %.3g\n", tag.c_str(), dtype == at::kFloat ? "f32" : "f64", e);
      EXPECT_LE(e, dtype == at::kFloat ? 1e-6 : 1e-12);
    }
  }
}

// ---- one DDPM step (learned range) and one DDIM step -------------------------------------------------------------
TEST(DiffusionSteps, DdpmLearnedRangeMatchesDiffusers) {
  const int cases = ref().meta().at("ddpm_cases").get<int>();
  ASSERT_GT(cases, 0);
  for (int n = 0; n < cases; ++n) {
    const std::string p = "ddpm" + std::to_string(n) + "_";
    const auto& c = ref().meta().at(p + "case");
    const GaussianDiffusion d =
        make_diffusion(respacing_spec(c.at("respacing")), c.at("schedule").get<std::string>(), 1000, true);
    const int64_t index = c.at("index").get<int64_t>(), original = c.at("timestep").get<int64_t>();
    for (const auto dtype : {at::kFloat, at::kDouble}) {
      Fixed model{ref().get(p + "out")};
      const at::Tensor x = ref().get(p + "x").to(dtype);
      const at::Tensor t = at::full({x.size(0)}, index, at::kLong);
      const StepResult r = d.p_sample(model.fn(), x, t, ref().get(p + "noise").to(dtype));
      EXPECT_TRUE(model.seen_t.eq(original).all().item<bool>()) << p << ": the network sees original timesteps";
      const double e = max_rel_diff(r.sample, ref().get(p + "prev"));
      const double ex = max_rel_diff(r.pred_xstart, ref().get(p + "pred_x0"));
      std::printf("[ddpm %s t=%lld/%s %s] rel error sample %.3g, pred_x0 %.3g\n",
                  c.at("schedule").get<std::string>().c_str(), static_cast<long long>(original),
                  c.at("respacing").get<std::string>().c_str(), dtype == at::kFloat ? "f32" : "f64", e, ex);
      EXPECT_LE(e, dtype == at::kFloat ? 1e-6 : 1e-12) << p;
      EXPECT_LE(ex, dtype == at::kFloat ? 1e-6 : 1e-12) << p;
    }
  }
}

TEST(DiffusionSteps, DdimMatchesDiffusers) {
  const int cases = ref().meta().at("ddim_cases").get<int>();
  ASSERT_GT(cases, 0);
  for (int n = 0; n < cases; ++n) {
    const std::string p = "ddim" + std::to_string(n) + "_";
    const auto& c = ref().meta().at(p + "case");
    const GaussianDiffusion d = make_diffusion(respacing_spec(c.at("respacing")), "linear", 1000, true);
    const int64_t index = c.at("index").get<int64_t>(), original = c.at("timestep").get<int64_t>();
    const double eta = c.at("eta").get<double>();
    for (const auto dtype : {at::kFloat, at::kDouble}) {
      Fixed model{ref().get(p + "out")};
      const at::Tensor x = ref().get(p + "x").to(dtype);
      const at::Tensor t = at::full({x.size(0)}, index, at::kLong);
      const at::Tensor noise = eta > 0 ? ref().get(p + "noise").to(dtype) : at::Tensor();
      const StepResult r = d.ddim_sample(model.fn(), x, t, eta, noise);
      EXPECT_TRUE(model.seen_t.eq(original).all().item<bool>()) << p;
      const double e = max_rel_diff(r.sample, ref().get(p + "prev"));
      const double ex = max_rel_diff(r.pred_xstart, ref().get(p + "pred_x0"));
      std::printf("[ddim t=%lld/%s eta=%g %s] rel error sample %.3g, pred_x0 %.3g\n",
                  static_cast<long long>(original), c.at("respacing").get<std::string>().c_str(), eta,
                  dtype == at::kFloat ? "f32" : "f64", e, ex);
      EXPECT_LE(e, dtype == at::kFloat ? 1e-6 : 1e-12) << p;
      EXPECT_LE(ex, dtype == at::kFloat ? 1e-6 : 1e-12) << p;
    }
  }
}

// ---- training loss ------------------------------------------------------------------------------------------------
TEST(DiffusionLoss, MseAndVbMatchIddpmFormulas) {
  for (const std::string tag : {"full", "250"}) {
    const GaussianDiffusion d = make_diffusion(respacing_spec(tag), "linear", 1000, true);
    const std::string p = "loss_" + tag + "_";
    const at::Tensor t = ref().get(p + "t");
    for (const auto dtype : {at::kFloat, at::kDouble}) {
      Fixed model{ref().get(p + "out")};
      const Losses l = d.training_losses(model.fn(), ref().get(p + "x0").to(dtype), t, ref().get(p + "noise").to(dtype));
      EXPECT_EQ(l.loss.scalar_type(), dtype);
      EXPECT_EQ(l.loss.sizes(), t.sizes());
      const double ext = max_abs_diff(model.seen_x, ref().get(p + "x_t"));
      // float32: errors relative to the largest reference value (the t = 0 NLL terms are ~1.6 bits); float64: absolute.
      const bool f32 = dtype == at::kFloat;
      const auto err = [&](const at::Tensor& got, const std::string& name) {
        return f32 ? max_rel_diff(got, ref().get(p + name)) : max_abs_diff(got, ref().get(p + name));
      };
      const double em = err(l.mse, "mse"), ev = err(l.vb, "vb"), el = err(l.loss, "loss");
      std::printf("[loss %s %s] x_t max abs error %.3g; %s error mse %.3g, vb %.3g, loss %.3g (vb in [%.3g, %.3g])\n",
                  tag.c_str(), f32 ? "f32" : "f64", ext, f32 ? "max rel" : "max abs", em, ev, el,
                  ref().get(p + "vb").min().item<double>(), ref().get(p + "vb").max().item<double>());
      const double tol = f32 ? 1e-6 : 1e-12;
      EXPECT_LE(ext, tol);
      EXPECT_LE(em, tol);
      EXPECT_LE(ev, tol);
      EXPECT_LE(el, tol);
    }
  }
}

TEST(DiffusionLoss, VbTrainsOnlyTheVarianceChannels) {
  const GaussianDiffusion d = make_diffusion("", "linear", 1000, true);
  const std::string p = "loss_full_";
  const at::Tensor out = ref().get(p + "out").to(at::kFloat).set_requires_grad(true);
  const Denoiser fn = [&](const at::Tensor&, const at::Tensor&) { return out; };
  const at::Tensor x0 = ref().get(p + "x0").to(at::kFloat), noise = ref().get(p + "noise").to(at::kFloat);
  const at::Tensor t = ref().get(p + "t");
  const int64_t c = x0.size(1);

  d.training_losses(fn, x0, t, noise).vb.sum().backward();
  EXPECT_EQ(out.grad().narrow(1, 0, c).abs().max().item<double>(), 0.0);
  EXPECT_GT(out.grad().narrow(1, c, c).abs().max().item<double>(), 0.0);
  out.mutable_grad().zero_();
  d.training_losses(fn, x0, t, noise).mse.sum().backward();
  EXPECT_GT(out.grad().narrow(1, 0, c).abs().max().item<double>(), 0.0);
  EXPECT_EQ(out.grad().narrow(1, c, c).abs().max().item<double>(), 0.0);
}

TEST(DiffusionLoss, FixedVarianceIsPlainMse) {
  const GaussianDiffusion d = make_diffusion("", "linear", 1000, false);
  const std::string p = "loss_full_";
  const at::Tensor x0 = ref().get(p + "x0"), noise = ref().get(p + "noise"), t = ref().get(p + "t");
  Fixed model{ref().get(p + "out").narrow(1, 0, x0.size(1))};
  const Losses l = d.training_losses(model.fn(), x0, t, noise);
  EXPECT_LE(max_abs_diff(l.mse, ref().get(p + "mse")), 1e-12);
  EXPECT_TRUE(l.loss.equal(l.mse));
  EXPECT_EQ(l.vb.abs().max().item<double>(), 0.0);
  // DiT's FIXED_LARGE: beta_t, and the posterior variance of t = 1 at t = 0.
  const MeanVariance mv = d.p_mean_variance(model.out, x0, t);
  EXPECT_DOUBLE_EQ(mv.variance[0][0][0][0].item<double>(), d.posterior_variance()[1]);
  EXPECT_DOUBLE_EQ(mv.variance[5][0][0][0].item<double>(), d.betas()[999]);
  // A 2C output is refused without learned sigma, a C output with it.
  Fixed wide{ref().get(p + "out")};
  expect_error([&] { d.training_losses(wide.fn(), x0, t, noise); }, "found [6, 6, 4, 4]");
  const GaussianDiffusion learned = make_diffusion("", "linear", 1000, true);
  expect_error([&] { learned.training_losses(model.fn(), x0, t, noise); }, "found [6, 3, 4, 4]");
}

TEST(DiffusionLoss, LikelihoodEdgeBins) {
  // The outer bins reach to infinity: log P(x = -1) = log CDF(upper edge), log P(x = 1) = log(1 - CDF(lower)).
  const at::Tensor x = at::tensor({-1.0, 1.0, 0.0}, at::kDouble);
  const at::Tensor mean = at::zeros({3}, at::kDouble), log_scale = at::full({3}, std::log(0.5), at::kDouble);
  const at::Tensor ll = discretized_gaussian_log_likelihood(x, mean, log_scale);
  const double up = approx_standard_normal_cdf(at::tensor({(-1.0 + 1.0 / 255) / 0.5}, at::kDouble)).item<double>();
  EXPECT_NEAR(ll[0].item<double>(), std::log(up), 1e-14);
  EXPECT_NEAR(ll[1].item<double>(), std::log(up), 1e-14);  // symmetric
  EXPECT_NEAR(approx_standard_normal_cdf(at::zeros({1}, at::kDouble)).item<double>(), 0.5, 1e-15);
  EXPECT_NEAR(normal_kl(at::ones({1}), at::zeros({1}), at::ones({1}), at::zeros({1})).item<double>(), 0.0, 1e-7);
}
