// The GEMMs with fused epilogues (cuda/ops.hpp, h; cuda/gemm_epilogue.cpp): their definitions against torch's
// linear, GELU and autograd in float64 on the CPU, the shape checks, the autograd function layers::linear and the
// gradient sinks, and on a GPU the cuBLASLt calls against the float64 definitions (bf16 <= 1e-2, fp32 <= 1e-5;
// float32 gradients written from bf16 inputs <= 1e-5) with the fast path taken at the DiT-XL/2 shapes (those skip
// without a GPU).
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <string>
#include <vector>

#include "cuda/ops.hpp"
#include "support/support.hpp"
#include "models/layers/grad_sink.hpp"
#include "models/layers/linear.hpp"
#include "models/layers/modulated.hpp"
#ifdef OPENDIT_WITH_CUDA
#include "cuda/launch.hpp"
#endif

using namespace opendit;

namespace {

const auto f64 = at::TensorOptions().dtype(at::kDouble);

at::Tensor grad_of(const at::Tensor& out, const at::Tensor& dout, const at::Tensor& wrt) {
  return torch::autograd::grad({out}, {wrt}, {dout}, /*retain_graph=*/true)[0];
}

struct Dims {
  int64_t M, K, O;
};
const Dims kSmall[] = {{1, 1, 1}, {5, 7, 3}, {16, 24, 40}, {9, 33, 17}};

}  // namespace

TEST(GemmEpilogue, LinearGeluDefinitionIsTorchLinearThenTanhGelu) {
  for (auto d : kSmall) {
    at::manual_seed(3);
    at::Tensor x = at::randn({d.M, d.K}, f64), w = at::randn({d.O, d.K}, f64), b = at::randn({d.O}, f64);
    auto got = kernels::linear_gelu(x, w, b);
    const at::Tensor pre = at::linear(x, w, b);
    EXPECT_LT(test::max_rel_error(got.pre, pre), 1e-14) << d.M << " " << d.K << " " << d.O;
    EXPECT_LT(test::max_rel_error(got.out, at::gelu(pre, "tanh")), 1e-14);
    EXPECT_EQ(got.out.sizes(), (std::vector<int64_t>{d.M, d.O}));
  }
}

TEST(GemmEpilogue, WgradDefinitionsAreTheAutogradGradients) {
  for (auto d : kSmall) {
    at::manual_seed(4);
    at::Tensor x = at::randn({d.M, d.K}, f64), w = at::randn({d.O, d.K}, f64).requires_grad_();
    at::Tensor b = at::randn({d.O}, f64).requires_grad_();
    at::Tensor y = at::linear(x, w, b), dy = at::randn_like(y);
    auto g = kernels::linear_wgrad(dy, x, true);
    EXPECT_LT(test::max_rel_error(g.dw, grad_of(y, dy, w)), 1e-12) << d.M << " " << d.K << " " << d.O;
    EXPECT_LT(test::max_rel_error(g.db, grad_of(y, dy, b)), 1e-12);
    EXPECT_FALSE(kernels::linear_wgrad(dy, x, false).db.defined());
    // Into float32 buffers: written, then accumulated.
    at::Tensor dw = at::full({d.O, d.K}, 7.0), db = at::full({d.O}, 7.0);
    kernels::linear_wgrad_into(dy, x, dw, db, /*accumulate=*/false);
    EXPECT_LT(test::max_rel_error(dw, g.dw), 1e-6);
    EXPECT_LT(test::max_rel_error(db, g.db), 1e-6);
    kernels::linear_wgrad_into(dy, x, dw, db, /*accumulate=*/true);
    EXPECT_LT(test::max_rel_error(dw, 2 * g.dw), 1e-6);
    EXPECT_LT(test::max_rel_error(db, 2 * g.db), 1e-6);
  }
}

TEST(GemmEpilogue, GradSinksReceiveLinearGradientsInsteadOfAutograd) {
  at::manual_seed(6);
  at::Tensor w = at::randn({5, 7}).requires_grad_(), b = at::randn({5}).requires_grad_();
  at::Tensor x = at::randn({2, 3, 7});
  at::Tensor dw = at::full({5, 7}, 3.0), db = at::full({5}, 3.0);  // stale values: the first arrival overwrites
  char fresh_w = 1, fresh_b = 1;
  models::layers::set_grad_sink(w, {dw, &fresh_w});
  models::layers::set_grad_sink(b, {db, &fresh_b});
  for (int micro = 0; micro < 2; ++micro) models::layers::linear(x, w, b).square().sum().backward();
  models::layers::remove_grad_sink(w);
  models::layers::remove_grad_sink(b);
  EXPECT_FALSE(w.grad().defined());  // nothing went through autograd's accumulation
  EXPECT_FALSE(b.grad().defined());
  EXPECT_EQ(fresh_w, 0);
  EXPECT_EQ(fresh_b, 0);
  at::Tensor w2 = w.detach().clone().requires_grad_(), b2 = b.detach().clone().requires_grad_();
  (at::linear(x, w2, b2).square().sum() * 2).backward();  // two micro-batches' worth
  EXPECT_LT(test::max_rel_error(dw, w2.grad()), 1e-6);
  EXPECT_LT(test::max_rel_error(db, b2.grad()), 1e-6);
  // Without sinks the gradients come back through autograd as before.
  models::layers::linear(x, w, b).square().sum().backward();
  EXPECT_LT(test::max_rel_error(w.grad() * 2, w2.grad()), 1e-6);
}

// The layout of a DiT block's fused pieces: a bias-less linear whose bias the gated residual adds, the residual
// stream passed through the modulated projection. Its value and every gradient equal the plain composition's; the
// weight and bias gradients land in their sinks (two micro-batches, the bias from the gated residual's sums), and
// the pass-through is x's own storage.
TEST(GemmEpilogue, BiasInGatedResidualAndResidualPassThroughMatchThePlainBlock) {
  at::manual_seed(8);
  const auto f64o = at::TensorOptions().dtype(at::kDouble);
  at::Tensor x = at::randn({2, 3, 6}, f64o).requires_grad_(), ada = at::randn({2, 18}, f64o).requires_grad_();
  at::Tensor w = at::randn({6, 6}, f64o).requires_grad_(), b = at::randn({6}, f64o).requires_grad_();
  at::Tensor qw = at::randn({6, 6}, f64o).requires_grad_(), qb = at::randn({6}, f64o).requires_grad_();
  auto chunk = [&](int k) { return ada.narrow(1, 6 * k, 6); };
  auto fused = [&] {
    models::layers::Branch br = models::layers::norm_modulate_linear_res(x, chunk(0), chunk(1), qw, qb, 1e-6);
    EXPECT_EQ(br.res.data_ptr(), x.data_ptr());
    return models::layers::gated_residual(br.res, models::layers::linear(br.out, w, {}), chunk(2), b);
  };
  auto plain = [&] {
    at::Tensor h = at::layer_norm(x, {6}, {}, {}, 1e-6) * (1 + chunk(1).unsqueeze(1)) + chunk(0).unsqueeze(1);
    return x + chunk(2).unsqueeze(1) * at::linear(at::linear(h, qw, qb), w, b);
  };
  at::Tensor out = fused(), want = plain();
  EXPECT_LT(test::max_rel_error(out, want), 1e-12);
  at::Tensor dout = at::randn_like(want);
  const std::vector<at::Tensor> wrt = {x, ada, w, b, qw, qb};
  auto got = torch::autograd::grad({out}, wrt, {dout});
  auto ref = torch::autograd::grad({want}, wrt, {dout});
  for (size_t i = 0; i < wrt.size(); ++i) EXPECT_LT(test::max_rel_error(got[i], ref[i]), 1e-10) << "gradient " << i;
  // With sinks: nothing through autograd, two micro-batches accumulated in float32.
  at::Tensor dw = at::full({6, 6}, 3.0), db = at::full({6}, 3.0);
  char fresh_w = 1, fresh_b = 1;
  models::layers::set_grad_sink(w, {dw, &fresh_w});
  models::layers::set_grad_sink(b, {db, &fresh_b});
  for (int micro = 0; micro < 2; ++micro) (fused() * dout).sum().backward();
  models::layers::remove_grad_sink(w);
  models::layers::remove_grad_sink(b);
  EXPECT_FALSE(w.grad().defined());
  EXPECT_FALSE(b.grad().defined());
  EXPECT_LT(test::max_rel_error(dw, ref[2] * 2), 1e-6);
  EXPECT_LT(test::max_rel_error(db, ref[3] * 2), 1e-6);
}

TEST(GemmEpilogue, ShapeChecksNameTheArgument) {
  const at::Tensor x = at::randn({4, 8}), w = at::randn({6, 8}), b = at::randn({6});
  auto message = [](auto&& call) {
    try {
      call();
    } catch (const c10::Error& e) {
      return std::string(e.what_without_backtrace());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([&] { kernels::linear_gelu(x, at::randn({6, 9}), b); }).find("linear_gelu: w must be [O, 8]"),
            std::string::npos);
  EXPECT_NE(message([&] { kernels::linear_gelu(x, w, at::randn({5})); }).find("linear_gelu: b must be"),
            std::string::npos);
  EXPECT_NE(message([&] { kernels::linear_gelu(x.t(), w, b); }).find("(not contiguous)"), std::string::npos);
  EXPECT_NE(message([&] { kernels::linear_gelu(x, w.to(at::kDouble), b); }).find("linear_gelu: w must be Float"),
            std::string::npos);
  EXPECT_NE(message([&] { kernels::linear_wgrad_into(at::randn({4, 6}), x, at::zeros({6, 8}, f64), {}, false); })
                .find("linear_wgrad_into: dw must be a contiguous float32 [6, 8]"),
            std::string::npos);
  EXPECT_NE(message([&] { kernels::linear_wgrad(at::randn({3, 6}), x, true); }).find("differ in M"),
            std::string::npos);
}

TEST(GemmEpilogue, LayersLinearHasTorchLinearsValueAndGradients) {
  at::manual_seed(5);
  at::Tensor x = at::randn({2, 3, 7}, f64).requires_grad_();
  at::Tensor w = at::randn({5, 7}, f64).requires_grad_(), b = at::randn({5}, f64).requires_grad_();
  at::Tensor got = models::layers::linear(x, w, b), want = at::linear(x, w, b);
  EXPECT_LT(test::max_rel_error(got, want), 1e-15);
  at::Tensor dy = at::randn_like(want);
  for (const at::Tensor& p : {x, w, b}) EXPECT_LT(test::max_rel_error(grad_of(got, dy, p), grad_of(want, dy, p)), 1e-13);
  // No bias, and an input that needs no gradient.
  at::Tensor x2 = at::randn({4, 7}, f64);
  at::Tensor got2 = models::layers::linear(x2, w, at::Tensor());
  EXPECT_LT(test::max_rel_error(grad_of(got2, at::ones_like(got2), w), grad_of(at::linear(x2, w), at::ones_like(got2), w)), 1e-14);
}

#ifdef OPENDIT_WITH_CUDA
namespace {

const auto kCuda = at::TensorOptions().device(at::kCUDA);

double tolerance(at::ScalarType t) { return t == at::kBFloat16 ? 1e-2 : 1e-5; }

// Inputs rounded to the dtype under test; the definition sees the same values in float64. offset > 0 starts x that
// many elements into its buffer (not 16-byte aligned).
void check_epilogues(const Dims& d, at::ScalarType dtype, int64_t offset = 0) {
  SCOPED_TRACE(std::string(c10::toString(dtype)) + " M " + std::to_string(d.M) + " K " + std::to_string(d.K) +
               " O " + std::to_string(d.O) + " offset " + std::to_string(offset));
  at::manual_seed(11);
  auto make = [&](std::vector<int64_t> shape, double scale) {
    return (at::randn(shape, kCuda.dtype(at::kDouble)) * scale).to(dtype);
  };
  at::Tensor x = make({d.M * d.K + offset}, 1).narrow(0, offset, d.M * d.K).view({d.M, d.K});
  at::Tensor w1 = make({d.O, d.K}, 0.05), b1 = make({d.O}, 1), dy = make({d.M, d.K}, 1);
  auto f = [](const at::Tensor& t) { return t.to(at::kDouble); };
  const double tol = tolerance(dtype);

  auto fwd = kernels::linear_gelu(x, w1, b1);
  auto fwd64 = kernels::reference::linear_gelu(f(x), f(w1), f(b1));
  ASSERT_EQ(fwd.out.scalar_type(), dtype);
  EXPECT_LE(test::max_rel_error(fwd.pre, fwd64.pre), tol);
  EXPECT_LE(test::max_rel_error(fwd.out, fwd64.out), tol);

  auto wg = kernels::linear_wgrad(dy, fwd.out, true);
  auto wg64 = kernels::reference::linear_wgrad(f(dy), f(fwd.out), true);
  EXPECT_LE(test::max_rel_error(wg.dw, wg64.dw), tol);
  EXPECT_LE(test::max_rel_error(wg.db, wg64.db), tol);

  // float32 straight from the GEMM into a buffer, then accumulated (beta = 1; the bias through a temporary).
  at::Tensor dw = at::full({d.K, d.O}, 5.0, kCuda.dtype(at::kFloat)), db = at::full({d.K}, 5.0, kCuda.dtype(at::kFloat));
  kernels::linear_wgrad_into(dy, fwd.out, dw, db, /*accumulate=*/false);
  EXPECT_LE(test::max_rel_error(dw, wg64.dw), 1e-5);  // no bfloat16 rounding of the gradient on the way
  EXPECT_LE(test::max_rel_error(db, wg64.db), 1e-5);
  kernels::linear_wgrad_into(dy, fwd.out, dw, db, /*accumulate=*/true);
  EXPECT_LE(test::max_rel_error(dw, 2 * wg64.dw), 1e-5);
  EXPECT_LE(test::max_rel_error(db, 2 * wg64.db), 1e-5);
  kernels::linear_wgrad_into(dy, fwd.out, dw, at::Tensor(), /*accumulate=*/true);
  EXPECT_LE(test::max_rel_error(dw, 3 * wg64.dw), 1e-5);
}

}  // namespace

TEST(GemmEpilogue, CublasLtMatchesFloat64DefinitionAtDiTShapes) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA GPU";
  const int64_t before = kernels::gemm_epilogue_fallbacks();
  for (auto dtype : {at::kBFloat16, at::kFloat}) check_epilogues({1024, 1152, 4608}, dtype);  // DiT-XL/2's MLP
  EXPECT_EQ(kernels::gemm_epilogue_fallbacks(), before) << "cuBLASLt ran no fused epilogue at the DiT shapes";
}

TEST(GemmEpilogue, OddAndMisalignedShapesStayCorrect) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA GPU";
  for (auto dtype : {at::kBFloat16, at::kFloat}) {
    for (Dims d : {Dims{1, 8, 8}, Dims{37, 72, 24}, Dims{33, 40, 17}, Dims{5, 7, 9}}) check_epilogues(d, dtype);
    check_epilogues({64, 96, 128}, dtype, /*offset=*/1);
  }
}
#endif
