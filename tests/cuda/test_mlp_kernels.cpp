// The CUDA kernels of bias+GELU and AdamW+EMA (cuda/bias_gelu.cu, cuda/adamw_ema.cu) against their ATen definitions
// (cuda/reference.cpp) run in float64 on the same inputs. GPU only: every test skips without one.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "cuda/ops.hpp"
#include "support/support.hpp"
#ifdef OPENDIT_WITH_CUDA
#include "cuda/launch.hpp"
#endif

using namespace opendit;

namespace {

// max |got - want| / max |want|, in float64.
double rel(const at::Tensor& got, const at::Tensor& want) {
  const at::Tensor g = got.to(at::kDouble), w = want.to(at::kDouble);
  return ((g - w).abs().max() / w.abs().max().clamp_min(1e-300)).item<double>();
}

double tolerance(at::ScalarType t) { return t == at::kBFloat16 ? 1e-2 : 1e-5; }

bool have_gpu() { return at::hasCUDA(); }

#define SKIP_WITHOUT_GPU()                                    \
  do {                                                        \
    if (!have_gpu()) GTEST_SKIP() << "needs a CUDA GPU";      \
  } while (0)

#ifdef OPENDIT_WITH_CUDA
const auto kCuda = at::TensorOptions().device(at::kCUDA);

// a [..., K] and bias [K] rounded to the dtypes under test; the reference sees the same rounded values in float64.
struct GeluCase {
  std::vector<int64_t> shape;
  at::ScalarType dtype, bias_dtype;
};

std::string describe(const GeluCase& c) {
  return std::string(c10::toString(c.dtype)) + " bias " + c10::toString(c.bias_dtype) + " " +
         c10::str(at::IntArrayRef(c.shape));
}

void check_bias_gelu(const GeluCase& c, int64_t offset = 0) {
  SCOPED_TRACE(describe(c) + " offset " + std::to_string(offset));
  at::manual_seed(7);
  const int64_t K = c.shape.back();
  int64_t numel = 1;
  for (int64_t s : c.shape) numel *= s;
  // offset > 0: a starts `offset` elements into its buffer, so its loads cannot be 16-byte aligned.
  at::Tensor a = (at::randn({numel + offset}, kCuda.dtype(at::kDouble)) * 3)
                     .to(c.dtype)
                     .narrow(0, offset, numel)
                     .view(c.shape);
  at::Tensor bias = at::randn({K}, kCuda.dtype(at::kDouble)).to(c.bias_dtype);
  at::Tensor dg = at::randn(c.shape, kCuda.dtype(at::kDouble)).to(c.dtype);
  const double tol = tolerance(c.dtype);

  at::Tensor g = kernels::cuda_impl::bias_gelu(a, bias);
  ASSERT_EQ(g.scalar_type(), c.dtype);
  ASSERT_EQ(g.sizes(), a.sizes());
  EXPECT_LE(rel(g, kernels::reference::bias_gelu(a.to(at::kDouble), bias.to(at::kDouble))), tol);

  auto got = kernels::cuda_impl::bias_gelu_backward(dg, a, bias);
  auto want = kernels::reference::bias_gelu_backward(dg.to(at::kDouble), a.to(at::kDouble), bias.to(at::kDouble));
  ASSERT_EQ(got.da.scalar_type(), c.dtype);
  ASSERT_EQ(got.dbias.scalar_type(), c.bias_dtype);
  ASSERT_EQ(got.da.sizes(), a.sizes());
  ASSERT_EQ(got.dbias.sizes(), bias.sizes());
  EXPECT_LE(rel(got.da, want.da), tol);
  EXPECT_LE(rel(got.dbias, want.dbias), tolerance(c.bias_dtype));
  EXPECT_FALSE(got.g.defined());
  // with_gelu: the same gradients, and the forward's output from the same pass (bit for bit the forward kernel's).
  auto both = kernels::cuda_impl::bias_gelu_backward(dg, a, bias, /*reuse_dg=*/false, /*with_gelu=*/true);
  EXPECT_TRUE(at::equal(both.da, got.da));
  EXPECT_TRUE(at::equal(both.dbias, got.dbias));
  ASSERT_TRUE(both.g.defined());
  EXPECT_TRUE(at::equal(both.g, g));
}
#endif

}  // namespace

TEST(MlpKernels, BiasGeluMatchesFloat64Definition) {
  SKIP_WITHOUT_GPU();
#ifdef OPENDIT_WITH_CUDA
  const std::vector<std::vector<int64_t>> shapes = {
      {1, 1}, {5}, {2, 3, 33}, {4, 4609}, {3, 7, 1536}, {2, 256, 3072}, {9, 4096}, {2, 10, 4608}, {16384, 4608}};
  for (auto dt : {at::kFloat, at::kBFloat16})
    for (const auto& shape : shapes) check_bias_gelu({shape, dt, dt});
#endif
}

TEST(MlpKernels, BiasGeluTakesAFloat32BiasWithBfloat16Activations) {
  SKIP_WITHOUT_GPU();
#ifdef OPENDIT_WITH_CUDA
  for (const auto& shape : std::vector<std::vector<int64_t>>{{2, 3, 33}, {64, 4608}})
    check_bias_gelu({shape, at::kBFloat16, at::kFloat});
#endif
}

TEST(MlpKernels, BiasGeluUnalignedInputsTakeTheScalarPath) {
  SKIP_WITHOUT_GPU();
#ifdef OPENDIT_WITH_CUDA
  for (auto dt : {at::kFloat, at::kBFloat16}) {
    check_bias_gelu({{3, 5, 4608}, dt, dt}, /*offset=*/1);
    check_bias_gelu({{8, 64}, dt, dt}, /*offset=*/3);
  }
#endif
}

TEST(MlpKernels, BiasGeluBiasGradientIsDeterministic) {
  SKIP_WITHOUT_GPU();
#ifdef OPENDIT_WITH_CUDA
  at::manual_seed(3);
  at::Tensor a = at::randn({4096, 4608}, kCuda), bias = at::randn({4608}, kCuda), dg = at::randn({4096, 4608}, kCuda);
  auto first = kernels::cuda_impl::bias_gelu_backward(dg, a, bias);
  auto second = kernels::cuda_impl::bias_gelu_backward(dg, a, bias);
  EXPECT_TRUE(test::bit_equal(first.dbias, second.dbias));
  EXPECT_TRUE(test::bit_equal(first.da, second.da));
#endif
}

// reuse_dg: da written over dg gives what a separate da gives, bit for bit, on both the packed and the scalar path.
TEST(MlpKernels, BiasGeluBackwardOverDgEqualsSeparateOutput) {
  SKIP_WITHOUT_GPU();
#ifdef OPENDIT_WITH_CUDA
  for (int64_t K : {4608, 33}) {
    for (auto dt : {at::kBFloat16, at::kFloat}) {
      at::manual_seed(4);
      at::Tensor a = at::randn({257, K}, kCuda.dtype(dt)), bias = at::randn({K}, kCuda.dtype(dt));
      at::Tensor dg = at::randn({257, K}, kCuda.dtype(dt));
      auto separate = kernels::cuda_impl::bias_gelu_backward(dg, a, bias);
      at::Tensor scratch = dg.clone();
      auto over = kernels::cuda_impl::bias_gelu_backward(scratch, a, bias, /*reuse_dg=*/true);
      EXPECT_EQ(over.da.data_ptr(), scratch.data_ptr()) << K << " " << dt;
      EXPECT_TRUE(test::bit_equal(over.da, separate.da)) << K << " " << dt;
      EXPECT_TRUE(test::bit_equal(over.dbias, separate.dbias)) << K << " " << dt;
    }
  }
#endif
}

TEST(MlpKernels, BiasGeluEmptyRows) {
  SKIP_WITHOUT_GPU();
#ifdef OPENDIT_WITH_CUDA
  at::Tensor a = at::empty({0, 8}, kCuda), bias = at::randn({8}, kCuda);
  EXPECT_EQ(kernels::cuda_impl::bias_gelu(a, bias).sizes(), a.sizes());
  auto g = kernels::cuda_impl::bias_gelu_backward(a, a, bias);
  EXPECT_EQ(g.da.sizes(), a.sizes());
  EXPECT_EQ(g.dbias.abs().sum().item<float>(), 0.f);
#endif
}

#ifdef OPENDIT_WITH_CUDA
namespace {

// One AdamW configuration: which optional tensors exist, and where every tensor starts in its buffer.
struct AdamWCase {
  int64_t n;
  bool ema, mask;
  at::ScalarType working;  // at::kDouble here means "no working copy"
  bool weight_decay;
  int64_t offset;          // elements into each buffer (the same for all)
  bool mixed_offsets;      // grad starts one element further than the rest: the kernel cannot vectorize
};

std::string describe(const AdamWCase& c) {
  return "n=" + std::to_string(c.n) + " ema=" + std::to_string(c.ema) + " mask=" + std::to_string(c.mask) +
         " working=" + (c.working == at::kDouble ? std::string("none") : c10::toString(c.working)) +
         " wd=" + std::to_string(c.weight_decay) + " offset=" + std::to_string(c.offset) +
         (c.mixed_offsets ? " mixed" : "");
}

// A [n] view `offset` elements into a fresh buffer of dtype dt holding a copy of values.
at::Tensor placed(const at::Tensor& values, at::ScalarType dt, int64_t offset) {
  const int64_t n = values.numel();
  at::Tensor buf = at::zeros({n + offset + 8}, kCuda.dtype(dt));
  at::Tensor v = buf.narrow(0, offset, n);
  v.copy_(values);
  return v;
}

void check_adamw(const AdamWCase& c) {
  SCOPED_TRACE(describe(c));
  at::manual_seed(11);
  const auto f64 = kCuda.dtype(at::kDouble);
  // DiT-like scales: small weights, so that the updates and the decay are visible against max|param|.
  at::Tensor p0 = (at::randn({c.n}, f64) * 0.02).to(at::kFloat).to(at::kDouble);
  at::Tensor m0 = (at::randn({c.n}, f64) * 0.1).to(at::kFloat).to(at::kDouble);
  at::Tensor v0 = (at::rand({c.n}, f64) * 0.01).to(at::kFloat).to(at::kDouble);
  at::Tensor e0 = (p0 + at::randn({c.n}, f64) * 0.01).to(at::kFloat).to(at::kDouble);
  at::Tensor mask = at::rand({c.n}, f64) < 0.7;
  const bool has_working = c.working != at::kDouble;

  // The kernel's float32 state and the reference's float64 state, from the same values.
  const int64_t off = c.offset;
  kernels::AdamWTensors k{placed(p0, at::kFloat, off), {}, placed(m0, at::kFloat, off), placed(v0, at::kFloat, off),
                          c.ema ? placed(e0, at::kFloat, off) : at::Tensor(),
                          c.mask ? placed(mask, at::kBool, off) : at::Tensor(),
                          has_working ? placed(p0, c.working, off) : at::Tensor()};
  kernels::AdamWTensors r{p0.clone(), {}, m0.clone(), v0.clone(), c.ema ? e0.clone() : at::Tensor(),
                          c.mask ? mask.clone() : at::Tensor(), has_working ? p0.clone() : at::Tensor()};

  kernels::AdamWScalars s;
  s.lr = 1e-2, s.beta1 = 0.9, s.beta2 = 0.999, s.eps = 1e-8, s.weight_decay = c.weight_decay ? 0.1 : 0.0;
  s.clip_scale = 0.37, s.ema_decay = 0.99;
  for (int step = 1; step <= 3; ++step) {
    s.step_size = s.lr / (1 - std::pow(s.beta1, step));
    s.bias_correction2_sqrt = std::sqrt(1 - std::pow(s.beta2, step));
    at::Tensor grad = at::randn({c.n}, f64).to(at::kFloat).to(at::kDouble);
    k.grad = placed(grad, at::kFloat, off + (c.mixed_offsets ? 1 : 0));
    r.grad = grad;
    kernels::cuda_impl::adamw_ema(k, s);
    kernels::reference::adamw_ema(r, s);
  }
  EXPECT_LE(rel(k.param, r.param), 1e-5);
  EXPECT_LE(rel(k.exp_avg, r.exp_avg), 1e-5);
  EXPECT_LE(rel(k.exp_avg_sq, r.exp_avg_sq), 1e-5);
  if (c.ema) EXPECT_LE(rel(k.ema, r.ema), 1e-5);
  if (has_working) {
    EXPECT_LE(rel(k.working, r.working), tolerance(c.working));
    // The working copy is the kernel's own param, rounded once.
    EXPECT_TRUE(test::bit_equal(k.working, k.param.to(c.working)));
  }
}

}  // namespace
#endif

TEST(MlpKernels, AdamWEmaMatchesFloat64Definition) {
  SKIP_WITHOUT_GPU();
#ifdef OPENDIT_WITH_CUDA
  for (int64_t n : {1, 17, 1000003})
    for (bool ema : {false, true})
      for (bool mask : {false, true})
        for (auto working : {at::kDouble, at::kBFloat16, at::kFloat})
          for (bool wd : {false, true}) check_adamw({n, ema, mask, working, wd, 0, false});
#endif
}

TEST(MlpKernels, AdamWEmaHandlesAnyOffset) {
  SKIP_WITHOUT_GPU();
#ifdef OPENDIT_WITH_CUDA
  // Same offset everywhere: a scalar head then vectors; different offsets: scalar throughout.
  for (int64_t n : {1, 17, 1000003})
    for (int64_t offset : {1, 3})
      for (bool mixed : {false, true}) check_adamw({n, true, true, at::kBFloat16, true, offset, mixed});
#endif
}

TEST(MlpKernels, AdamWEmaMaskOfFalseMeansNoDecay) {
  SKIP_WITHOUT_GPU();
#ifdef OPENDIT_WITH_CUDA
  // Weight decay with a mask of all false equals no weight decay at all.
  at::manual_seed(5);
  const int64_t n = 4099;
  at::Tensor p = at::randn({n}, kCuda) * 0.02, g = at::randn({n}, kCuda);
  kernels::AdamWTensors a{p.clone(), g, at::zeros({n}, kCuda), at::zeros({n}, kCuda), {},
                          at::zeros({n}, kCuda.dtype(at::kBool)), {}};
  kernels::AdamWTensors b{p.clone(), g, at::zeros({n}, kCuda), at::zeros({n}, kCuda), {}, {}, {}};
  kernels::AdamWScalars with_wd, without_wd;
  with_wd.weight_decay = 0.5, without_wd.weight_decay = 0;
  kernels::cuda_impl::adamw_ema(a, with_wd);
  kernels::cuda_impl::adamw_ema(b, without_wd);
  EXPECT_TRUE(test::bit_equal(a.param, b.param));
  EXPECT_FALSE(test::bit_equal(a.param, p));
#endif
}
