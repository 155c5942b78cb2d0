// The ATen definitions of the fused operations (cuda/reference.cpp) against the plain composition they replace and
// its autograd gradients, in float64 on the CPU; and the shape checks of cuda/ops.hpp.
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include "cuda/ops.hpp"

using namespace opendit;

namespace {

auto f64 = at::TensorOptions().dtype(at::kDouble);

double rel(const at::Tensor& a, const at::Tensor& b) {
  return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item<double>();
}

at::Tensor grad_of(const at::Tensor& out, const at::Tensor& dout, const at::Tensor& wrt) {
  return torch::autograd::grad({out}, {wrt}, {dout}, /*retain_graph=*/true)[0];
}

struct Shape {
  int64_t N, T, D;
};
const Shape kShapes[] = {{1, 1, 1}, {2, 5, 7}, {3, 16, 24}, {4, 9, 33}};

}  // namespace

TEST(ReferenceOps, NormModulateMatchesLayerNormAndAutograd) {
  for (auto s : kShapes) {
    at::manual_seed(1);
    at::Tensor x = (at::randn({s.N, s.T, s.D}, f64) * 3 + 1).requires_grad_();
    at::Tensor ada = at::randn({s.N, 3 * s.D}, f64).requires_grad_();  // strided rows, as adaLN chunks are
    at::Tensor shift = ada.narrow(1, 0, s.D), scale = ada.narrow(1, s.D, s.D);
    at::Tensor plain = at::layer_norm(x, {s.D}, {}, {}, 1e-6) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1);
    auto got = kernels::norm_modulate(x.detach(), shift.detach(), scale.detach(), 1e-6);
    EXPECT_LT(rel(got.y, plain), 1e-12) << s.N << " " << s.T << " " << s.D;
    at::Tensor dy = at::randn_like(plain);
    auto g = kernels::norm_modulate_backward(dy, x.detach(), got.mean, got.rstd, scale.detach());
    if (s.D > 1) EXPECT_LT(rel(g.dx, grad_of(plain, dy, x)), 1e-10);
    at::Tensor dada = grad_of(plain, dy, ada);
    EXPECT_LT(rel(g.dshift, dada.narrow(1, 0, s.D)), 1e-12);
    if (s.D > 1) EXPECT_LT(rel(g.dscale, dada.narrow(1, s.D, s.D)), 1e-10);
    // x also feeding a residual path: dres (that path's gradient) joins dx, as autograd's sum of the two would.
    at::Tensor both = plain + 2 * x;
    at::Tensor dres = 2 * dy;
    auto gr = kernels::norm_modulate_backward(dy, x.detach(), got.mean, got.rstd, scale.detach(), dres);
    EXPECT_LT(rel(gr.dx, grad_of(both, dy, x)), 1e-10);
    EXPECT_TRUE(at::equal(gr.dshift, g.dshift));
    // With the shift, the forward's output again from the saved statistics; the gradients unchanged.
    auto gh = kernels::norm_modulate_backward(dy, x.detach(), got.mean, got.rstd, scale.detach(), dres, shift.detach());
    EXPECT_LT(rel(gh.h, plain), 1e-12);
    EXPECT_TRUE(at::equal(gh.dx, gr.dx));
    EXPECT_FALSE(gr.h.defined());
  }
}

TEST(ReferenceOps, GatedResidualMatchesAutograd) {
  for (auto s : kShapes) {
    at::Tensor x = at::randn({s.N, s.T, s.D}, f64), y = at::randn({s.N, s.T, s.D}, f64).requires_grad_();
    at::Tensor gate = at::randn({s.N, s.D}, f64).requires_grad_();
    at::Tensor plain = x + gate.unsqueeze(1) * y;
    EXPECT_LT(rel(kernels::gated_residual(x, y.detach(), gate.detach()), plain), 1e-14);
    at::Tensor dout = at::randn_like(plain);
    auto g = kernels::gated_residual_backward(dout, y.detach(), gate.detach());
    EXPECT_LT(rel(g.dy, grad_of(plain, dout, y)), 1e-14);
    EXPECT_LT(rel(g.dgate, grad_of(plain, dout, gate)), 1e-12);
    EXPECT_FALSE(g.dbias.defined());
    // With the projection's bias: x + gate * (y + bias).
    at::Tensor bias = at::randn({s.D}, f64).requires_grad_();
    at::Tensor biased = x + gate.unsqueeze(1) * (y + bias);
    EXPECT_LT(rel(kernels::gated_residual(x, y.detach(), gate.detach(), bias.detach()), biased), 1e-14);
    auto gb = kernels::gated_residual_backward(dout, y.detach(), gate.detach(), bias.detach());
    EXPECT_LT(rel(gb.dy, grad_of(biased, dout, y)), 1e-14);
    EXPECT_LT(rel(gb.dgate, grad_of(biased, dout, gate)), 1e-12);
    EXPECT_LT(rel(gb.dbias, grad_of(biased, dout, bias)), 1e-12);
  }
}

TEST(ReferenceOps, BiasGeluMatchesTorchGeluAndAutograd) {
  for (auto s : kShapes) {
    at::Tensor a = (at::randn({s.N, s.T, s.D}, f64) * 3).requires_grad_();
    at::Tensor bias = at::randn({s.D}, f64).requires_grad_();
    at::Tensor plain = at::gelu(a + bias, "tanh");
    EXPECT_LT(rel(kernels::bias_gelu(a.detach(), bias.detach()), plain), 1e-14);
    at::Tensor dg = at::randn_like(plain);
    auto g = kernels::bias_gelu_backward(dg, a.detach(), bias.detach());
    EXPECT_LT(rel(g.da, grad_of(plain, dg, a)), 1e-12);
    EXPECT_LT(rel(g.dbias, grad_of(plain, dg, bias)), 1e-12);
    EXPECT_FALSE(g.g.defined());
    auto both = kernels::bias_gelu_backward(dg, a.detach(), bias.detach(), false, /*with_gelu=*/true);
    EXPECT_TRUE(at::equal(both.da, g.da));
    EXPECT_LT(rel(both.g, plain), 1e-14);
  }
}

TEST(ReferenceOps, LowPrecisionIsComputedInFloat32AndRoundedOnce) {
  at::Tensor x = at::randn({2, 8, 40}), shift = at::randn({2, 40}), scale = at::randn({2, 40});
  auto bf = kernels::norm_modulate(x.to(at::kBFloat16), shift.to(at::kBFloat16), scale.to(at::kBFloat16), 1e-6);
  auto f32 = kernels::norm_modulate(x.to(at::kBFloat16).to(at::kFloat), shift.to(at::kBFloat16).to(at::kFloat),
                                    scale.to(at::kBFloat16).to(at::kFloat), 1e-6);
  EXPECT_EQ(bf.y.scalar_type(), at::kBFloat16);
  EXPECT_EQ(bf.mean.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(bf.y, f32.y.to(at::kBFloat16)));
}

TEST(ReferenceOps, ShapeChecksNameTheProblem) {
  at::Tensor x = at::randn({2, 4, 8});
  auto msg = [](auto&& fn) {
    try {
      fn();
    } catch (const c10::Error& e) {
      return std::string(e.what_without_backtrace());
    }
    return std::string("no error");
  };
  EXPECT_NE(msg([&] { kernels::norm_modulate(x, at::randn({2, 7}), at::randn({2, 8}), 1e-6); }).find("shift"),
            std::string::npos);
  EXPECT_NE(msg([&] { kernels::gated_residual(x, x.transpose(1, 2).contiguous(), at::randn({2, 8})); }).find("y"),
            std::string::npos);
  EXPECT_NE(msg([&] { kernels::bias_gelu(x, at::randn({7})); }).find("bias"), std::string::npos);
  EXPECT_NE(msg([&] { kernels::gated_residual(x, x, at::randn({2, 8}), at::randn({7})); }).find("bias"),
            std::string::npos);
  EXPECT_NE(msg([&] {
              auto nm = kernels::norm_modulate(x, at::randn({2, 8}), at::randn({2, 8}), 1e-6);
              kernels::norm_modulate_backward(x, x, nm.mean, nm.rstd, at::randn({2, 8}), at::randn({2, 4, 7}));
            }).find("dres"),
            std::string::npos);
  EXPECT_NE(msg([&] {
              auto nm = kernels::norm_modulate(x, at::randn({2, 8}), at::randn({2, 8}), 1e-6);
              kernels::norm_modulate_backward(x, x, nm.mean, nm.rstd, at::randn({2, 8}), {}, at::randn({2, 7}));
            }).find("norm_modulate_backward: shift"),
            std::string::npos);
  EXPECT_NE(msg([&] { kernels::norm_modulate(x.transpose(1, 2), at::randn({2, 4}), at::randn({2, 4}), 1e-6); })
                .find("contiguous"),
            std::string::npos);
}
