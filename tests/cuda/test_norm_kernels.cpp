// The CUDA kernels of ops a and b (cuda/norm_modulate.cu, cuda/gated_residual.cu) against their ATen definitions
// (cuda/reference.cpp) evaluated in float64 on the same inputs. GPU only: every test skips without one.
// Error measure: max |kernel - definition| / max |definition|; float32 within 1e-5, bfloat16 within 1e-2.
#include <gtest/gtest.h>

#include <sstream>
#include <string>

#include "cuda/ops.hpp"
#ifdef OPENDIT_WITH_CUDA
#include "cuda/launch.hpp"
#endif

using namespace opendit;

namespace {

#ifdef OPENDIT_WITH_CUDA
#define REQUIRE_GPU() \
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a GPU"
#else
#define REQUIRE_GPU() GTEST_SKIP() << "built without CUDA"
#endif

#ifdef OPENDIT_WITH_CUDA
namespace fused = kernels::cuda_impl;
namespace ref = kernels::reference;

double rel(const at::Tensor& got, const at::Tensor& want) {
  at::Tensor a = got.to(at::kDouble), b = want.to(at::kDouble);
  return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item<double>();
}

double tolerance(at::ScalarType t) { return t == at::kBFloat16 ? 1e-2 : 1e-5; }

struct Shape {
  int64_t N, T, D;
};
// Tiny, odd D (scalar path), DiT-XL's D = 1152 (16-byte packs) at batch 3 and 64, and 1155 = 1152 + 3.
const Shape kShapes[] = {{1, 1, 1}, {2, 5, 7}, {3, 256, 1152}, {4, 17, 33}, {8, 256, 1155}, {64, 256, 1152}};

std::string describe(const Shape& s, at::ScalarType t) {
  std::ostringstream o;
  o << "N=" << s.N << " T=" << s.T << " D=" << s.D << " " << t;
  return o.str();
}

at::TensorOptions on_gpu(at::ScalarType t = at::kFloat) { return at::TensorOptions().device(at::kCUDA).dtype(t); }

// Tokens x [N, T, D] (mean 1, std 3) and the adaLN output [N, 6D] whose column chunks 0, 1, 2 serve as shift, scale
// and gate: rows strided by 6D, as in the model; bias [D] (a projection's bias for gated_residual) is chunk 3 of row 0.
struct Inputs {
  at::Tensor x, ada, shift, scale, gate, bias;
};
Inputs make_inputs(const Shape& s, at::ScalarType act, at::ScalarType par, uint64_t seed) {
  at::manual_seed(seed);
  Inputs in;
  in.x = (at::randn({s.N, s.T, s.D}, on_gpu()) * 3 + 1).to(act);
  in.ada = (at::randn({s.N, 6 * s.D}, on_gpu()) * 0.5).to(par);
  in.shift = in.ada.narrow(1, 0, s.D);
  in.scale = in.ada.narrow(1, s.D, s.D);
  in.gate = in.ada.narrow(1, 2 * s.D, s.D);
  in.bias = in.ada.select(0, 0).narrow(0, 3 * s.D, s.D);
  return in;
}

at::Tensor f64(const at::Tensor& t) { return t.to(at::kDouble); }

constexpr double kEps = 1e-6;

// Forward and backward of norm_modulate on `in`, against the definition in float64.
void check_norm_modulate(const Inputs& in, double tol) {
  auto got = fused::norm_modulate(in.x, in.shift, in.scale, kEps);
  auto want = ref::norm_modulate(f64(in.x), f64(in.shift), f64(in.scale), kEps);
  ASSERT_EQ(got.y.scalar_type(), in.x.scalar_type());
  ASSERT_EQ(got.mean.scalar_type(), at::kFloat);
  ASSERT_EQ(got.rstd.sizes(), want.rstd.sizes());
  EXPECT_LE(rel(got.y, want.y), tol);
  EXPECT_LE(rel(got.mean, want.mean), 1e-5);  // float32 statistics of the same (possibly bf16) values
  EXPECT_LE(rel(got.rstd, want.rstd), 1e-5);

  at::Tensor dy = at::randn(in.x.sizes(), on_gpu()).to(in.x.scalar_type());
  // Without and with a residual gradient added to dx.
  for (const at::Tensor& dres : {at::Tensor(), at::randn(in.x.sizes(), on_gpu()).to(in.x.scalar_type())}) {
    SCOPED_TRACE(dres.defined() ? "with dres" : "without dres");
    // With dres, also h (the forward's output from the saved statistics): the forward kernel's bits.
    const at::Tensor shift = dres.defined() ? in.shift : at::Tensor();
    auto g = fused::norm_modulate_backward(dy, in.x, got.mean, got.rstd, in.scale, dres, shift);
    auto gw = ref::norm_modulate_backward(f64(dy), f64(in.x), want.mean, want.rstd, f64(in.scale),
                                          dres.defined() ? f64(dres) : dres, shift.defined() ? f64(shift) : shift);
    ASSERT_EQ(g.h.defined(), shift.defined());
    if (shift.defined()) {
      EXPECT_TRUE(at::equal(g.h, got.y)) << "h differs from the forward's y by " << rel(g.h, got.y);
      EXPECT_LE(rel(g.h, gw.h), tol);
    }
    ASSERT_EQ(g.dx.scalar_type(), in.x.scalar_type());
    ASSERT_EQ(g.dshift.scalar_type(), in.scale.scalar_type());
    ASSERT_EQ(g.dscale.sizes(), in.scale.sizes());
    EXPECT_LE(rel(g.dx, gw.dx), tol);
    EXPECT_LE(rel(g.dshift, gw.dshift), tol);
    EXPECT_LE(rel(g.dscale, gw.dscale), tol);
  }
}

// Without and with the projection's bias.
void check_gated_residual(const Inputs& in, double tol) {
  at::Tensor y = at::randn(in.x.sizes(), on_gpu()).to(in.x.scalar_type());
  at::Tensor dout = at::randn(in.x.sizes(), on_gpu()).to(in.x.scalar_type());
  for (const at::Tensor& bias : {at::Tensor(), in.bias}) {
    SCOPED_TRACE(bias.defined() ? "with bias" : "without bias");
    const at::Tensor bias64 = bias.defined() ? f64(bias) : bias;
    at::Tensor out = fused::gated_residual(in.x, y, in.gate, bias);
    ASSERT_EQ(out.scalar_type(), in.x.scalar_type());
    EXPECT_LE(rel(out, ref::gated_residual(f64(in.x), f64(y), f64(in.gate), bias64)), tol);

    auto g = fused::gated_residual_backward(dout, y, in.gate, bias);
    auto gw = ref::gated_residual_backward(f64(dout), f64(y), f64(in.gate), bias64);
    ASSERT_EQ(g.dy.scalar_type(), in.x.scalar_type());
    ASSERT_EQ(g.dgate.scalar_type(), in.gate.scalar_type());
    ASSERT_EQ(g.dgate.sizes(), in.gate.sizes());
    EXPECT_LE(rel(g.dy, gw.dy), tol);
    EXPECT_LE(rel(g.dgate, gw.dgate), tol);
    ASSERT_EQ(g.dbias.defined(), bias.defined());
    if (bias.defined()) {
      ASSERT_EQ(g.dbias.scalar_type(), at::kFloat);
      ASSERT_EQ(g.dbias.sizes(), bias.sizes());
      EXPECT_LE(rel(g.dbias, gw.dbias), tol);
    }
  }
}
#endif

}  // namespace

TEST(NormKernels, NormModulateMatchesDefinition) {
  REQUIRE_GPU();
#ifdef OPENDIT_WITH_CUDA
  for (auto t : {at::kFloat, at::kBFloat16})
    for (const Shape& s : kShapes) {
      SCOPED_TRACE(describe(s, t));
      check_norm_modulate(make_inputs(s, t, t, 1), tolerance(t));
    }
#endif
}

TEST(NormKernels, GatedResidualMatchesDefinition) {
  REQUIRE_GPU();
#ifdef OPENDIT_WITH_CUDA
  for (auto t : {at::kFloat, at::kBFloat16})
    for (const Shape& s : kShapes) {
      SCOPED_TRACE(describe(s, t));
      check_gated_residual(make_inputs(s, t, t, 2), tolerance(t));
    }
#endif
}

// bfloat16 tokens with float32 adaLN vectors (kept in float32, gradients returned in float32).
TEST(NormKernels, MixedDtypesMatchDefinition) {
  REQUIRE_GPU();
#ifdef OPENDIT_WITH_CUDA
  for (const Shape& s : {Shape{3, 64, 1152}, Shape{2, 9, 33}}) {
    SCOPED_TRACE(describe(s, at::kBFloat16));
    const Inputs in = make_inputs(s, at::kBFloat16, at::kFloat, 3);
    check_norm_modulate(in, 1e-2);
    check_gated_residual(in, 1e-2);
  }
#endif
}

// Tokens and vectors that start 1 element past a 16-byte boundary take the scalar path; D = 1152 would be packed.
TEST(NormKernels, MisalignedTensorsMatchDefinition) {
  REQUIRE_GPU();
#ifdef OPENDIT_WITH_CUDA
  for (auto t : {at::kFloat, at::kBFloat16}) {
    const Shape s{4, 33, 1152};
    SCOPED_TRACE(describe(s, t));
    Inputs in = make_inputs(s, t, t, 4);
    in.x = at::cat({at::zeros({1}, on_gpu(t)), in.x.flatten()}).narrow(0, 1, in.x.numel()).view(in.x.sizes());
    in.ada = at::randn({s.N, 6 * s.D + 1}, on_gpu()).to(t);
    in.shift = in.ada.narrow(1, 1, s.D);
    in.scale = in.ada.narrow(1, 1 + s.D, s.D);
    in.gate = in.ada.narrow(1, 1 + 2 * s.D, s.D);
    in.bias = in.ada.select(0, 0).narrow(0, 1 + 3 * s.D, s.D);
    ASSERT_NE(reinterpret_cast<uintptr_t>(in.x.data_ptr()) % 16, 0u);
    check_norm_modulate(in, tolerance(t));
    check_gated_residual(in, tolerance(t));
  }
#endif
}

// Rows wider than the kernels hold in registers (D > 8192 here) run the definition: still correct.
TEST(NormKernels, WideRowsMatchDefinition) {
  REQUIRE_GPU();
#ifdef OPENDIT_WITH_CUDA
  for (const Shape& s : {Shape{2, 3, 8191}, Shape{2, 3, 20000}}) {
    SCOPED_TRACE(describe(s, at::kFloat));
    const Inputs in = make_inputs(s, at::kFloat, at::kFloat, 5);
    check_norm_modulate(in, 1e-5);
    check_gated_residual(in, 1e-5);
  }
#endif
}

// The sums over tokens (dshift, dscale, dgate) are per sample: samples whose sizes differ by 10^6 must each match
// their own definition to float32 precision, which a sum over the whole batch (or a chunk across samples) breaks.
TEST(NormKernels, TokenSumsArePerSample) {
  REQUIRE_GPU();
#ifdef OPENDIT_WITH_CUDA
  const Shape s{4, 2048, 256};
  at::manual_seed(6);
  const at::Tensor size = at::tensor({1e-3, 1.0, 1e3, -7.0}, on_gpu()).view({4, 1, 1});
  const at::Tensor grad_size = at::tensor({1e3, 1e-3, 1.0, 5.0}, on_gpu()).view({4, 1, 1});
  at::Tensor x = at::randn({s.N, s.T, s.D}, on_gpu()) * size + size;
  at::Tensor dy = at::randn({s.N, s.T, s.D}, on_gpu()) * grad_size;
  at::Tensor ada = at::randn({s.N, 6 * s.D}, on_gpu());
  at::Tensor shift = ada.narrow(1, 0, s.D), scale = ada.narrow(1, s.D, s.D), gate = ada.narrow(1, 2 * s.D, s.D);

  auto f = fused::norm_modulate(x, shift, scale, kEps);
  auto g = fused::norm_modulate_backward(dy, x, f.mean, f.rstd, scale, {}, {});
  auto w = ref::norm_modulate(f64(x), f64(shift), f64(scale), kEps);
  auto gw = ref::norm_modulate_backward(f64(dy), f64(x), w.mean, w.rstd, f64(scale), {}, {});
  auto r = fused::gated_residual_backward(dy, x, gate, {});
  auto rw = ref::gated_residual_backward(f64(dy), f64(x), f64(gate), {});
  for (int64_t n = 0; n < s.N; ++n) {
    SCOPED_TRACE("sample " + std::to_string(n));
    EXPECT_LE(rel(g.dshift[n], gw.dshift[n]), 1e-5);
    EXPECT_LE(rel(g.dscale[n], gw.dscale[n]), 1e-5);
    EXPECT_LE(rel(g.dx[n], gw.dx[n]), 1e-5);
    EXPECT_LE(rel(r.dgate[n], rw.dgate[n]), 1e-5);
  }
#endif
}
