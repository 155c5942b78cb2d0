// The encoders' fused operations (cuda/ops.hpp e-g): their ATen definitions against plain formulas on the CPU, and the
// CUDA kernels (cuda/encoder_kernels.cu) against the definitions run in float64 on the same rounded inputs (GPU).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cuda/ops.hpp"
#include "support/ref_data.hpp"

using namespace opendit;

namespace {

double rel(const at::Tensor& got, const at::Tensor& want) { return test::max_rel_diff(got.cpu(), want.cpu()); }

double tolerance(at::ScalarType t) { return t == at::kBFloat16 ? 1e-2 : 1e-5; }

// GroupNorm by its formula, float64: per sample and group, over the group's channels and every position.
at::Tensor group_norm_formula(const at::Tensor& x, int64_t G, const at::Tensor& w, const at::Tensor& b, double eps) {
  const at::Tensor xd = x.to(at::kDouble).contiguous();
  const int64_t N = x.size(0), C = x.size(1);
  const at::Tensor g = xd.view({N, G, -1});
  const at::Tensor mean = g.mean(-1, true), var = g.var(-1, /*unbiased=*/false, true);
  const at::Tensor y = ((g - mean) / (var + eps).sqrt()).view(x.sizes());
  return y * w.to(at::kDouble).view({1, C, 1, 1}) + b.to(at::kDouble).view({1, C, 1, 1});
}

}  // namespace

TEST(EncoderOps, DefinitionsMatchTheirFormulas) {
  at::manual_seed(1);
  const at::Tensor x = (at::randn({2, 32, 5, 7}) + 3).contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor w = at::randn({32}), b = at::randn({32});
  const at::Tensor y = kernels::group_norm_silu(x, 8, w, b, 1e-6, true);
  EXPECT_TRUE(y.is_contiguous(at::MemoryFormat::ChannelsLast));
  EXPECT_LE(rel(y, at::silu(group_norm_formula(x, 8, w, b, 1e-6))), 1e-5);
  EXPECT_LE(rel(kernels::group_norm_silu(x.contiguous(), 8, w, b, 1e-6, false), group_norm_formula(x, 8, w, b, 1e-6)),
            1e-5);

  at::Tensor r = at::randn({3, 4, 16}), d = at::randn({3, 4, 16});
  const at::Tensor want_x = r + d;
  const at::Tensor want = want_x / (want_x.pow(2).mean(-1, true) + 1e-6).sqrt() * 0.5;
  const at::Tensor got = kernels::add_rms_norm(r, d, at::full({16}, 0.5), 1e-6, at::kFloat);
  EXPECT_TRUE(at::allclose(r, want_x));  // x updated in place
  EXPECT_LE(rel(got, want), 1e-6);

  const at::Tensor ab = at::randn({3, 2, 10});
  EXPECT_LE(rel(kernels::gated_gelu(ab), at::gelu(ab.narrow(-1, 0, 5), "tanh") * ab.narrow(-1, 5, 5)), 1e-6);
}

TEST(EncoderKernels, GroupNormSiluMatchesItsDefinition) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA GPU";
  struct Case {
    int64_t n, c, h, w, groups;
    double offset;
  };
  // SD-VAE widths (4, 8, 16 channels a group), odd sizes, a tiny width, a large mean (the shifted sums), a width the
  // kernel does not tile (the definition runs).
  const std::vector<Case> cases = {{2, 128, 16, 16, 32, 0}, {1, 256, 7, 9, 32, 0},     {3, 512, 4, 4, 32, 0},
                                   {2, 16, 5, 3, 16, 0},    {1, 128, 33, 17, 32, 100}, {2, 96, 4, 4, 32, 0}};
  for (at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
    for (const Case& c : cases) {
      for (bool silu : {true, false}) {
        SCOPED_TRACE(std::string(c10::toString(dt)) + " C " + std::to_string(c.c) + " HW " + std::to_string(c.h) + "x" +
                     std::to_string(c.w) + " offset " + std::to_string(c.offset) + (silu ? " silu" : ""));
        at::manual_seed(3);
        const auto cuda = at::TensorOptions().device(at::kCUDA);
        const at::Tensor x =
            (at::randn({c.n, c.c, c.h, c.w}, cuda) * 2 + c.offset).to(dt).contiguous(at::MemoryFormat::ChannelsLast);
        const at::Tensor w = at::randn({c.c}, cuda).to(dt), b = at::randn({c.c}, cuda).to(dt);
        const at::Tensor y = kernels::group_norm_silu(x, c.groups, w, b, 1e-6, silu);
        const at::Tensor ref = kernels::reference::group_norm_silu(x.to(at::kDouble), c.groups, w.to(at::kDouble),
                                                                   b.to(at::kDouble), 1e-6, silu);
        EXPECT_EQ(y.scalar_type(), dt);
        EXPECT_TRUE(y.is_contiguous(at::MemoryFormat::ChannelsLast));
        EXPECT_LE(rel(y, ref), tolerance(dt));
      }
    }
  }
}

TEST(EncoderKernels, AddRmsNormAndGatedGeluMatchTheirDefinitions) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA GPU";
  const auto cuda = at::TensorOptions().device(at::kCUDA);
  for (at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
    for (int64_t cols : {64, 4096, 1000}) {
      SCOPED_TRACE(std::string(c10::toString(dt)) + " cols " + std::to_string(cols));
      at::manual_seed(5);
      at::Tensor x = at::randn({3, 7, cols}, cuda);
      at::Tensor x_ref = x.to(at::kDouble);
      const at::Tensor delta = at::randn({3, 7, cols}, cuda).to(dt), w = (at::randn({cols}, cuda) + 1).to(dt);
      const at::Tensor out = kernels::add_rms_norm(x, delta, w, 1e-6, dt);
      const at::Tensor ref =
          kernels::reference::add_rms_norm(x_ref, delta.to(at::kDouble), w.to(at::kDouble), 1e-6, at::kDouble);
      EXPECT_LE(rel(x, x_ref), 1e-6);
      EXPECT_LE(rel(out, ref), tolerance(dt));
      at::Tensor x2 = x.clone(), x2_ref = x.to(at::kDouble);
      EXPECT_LE(rel(kernels::add_rms_norm(x2, {}, w, 1e-6, at::kFloat),
                    kernels::reference::add_rms_norm(x2_ref, {}, w.to(at::kDouble), 1e-6, at::kDouble)),
                1e-5);
    }
    for (int64_t f : {96, 10240, 6}) {
      SCOPED_TRACE(std::string(c10::toString(dt)) + " F " + std::to_string(f));
      const at::Tensor ab = at::randn({5, 3, 2 * f}, cuda).to(dt);
      const at::Tensor g = kernels::gated_gelu(ab);
      EXPECT_EQ(g.sizes(), (at::IntArrayRef{5, 3, f}));
      EXPECT_LE(rel(g, kernels::reference::gated_gelu(ab.to(at::kDouble))), tolerance(dt));
    }
  }
}
