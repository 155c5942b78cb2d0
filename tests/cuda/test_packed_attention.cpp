// packed_attention (cuda/ops.hpp section i): on the CPU its ATen definition against at::scaled_dot_product_attention
// and autograd in float64, and its argument checks; on a GPU the cuDNN path against the definition evaluated in
// float32 on the same 16-bit inputs (error: max |cuDNN - definition| / max |definition|), under CUDA graph capture,
// and self_attention's training path against the at::scaled_dot_product_attention one. GPU tests skip without one.
#include <ATen/Context.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>

#include <cmath>
#include <functional>
#include <sstream>
#include <string>

#include "cuda/ops.hpp"
#include "support/support.hpp"
#include "models/layers/attention.hpp"
#ifdef OPENDIT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "core/cuda_graph.hpp"
#endif

using namespace opendit;

namespace {

const auto f64 = at::TensorOptions().dtype(at::kDouble);

// q, k or v [N, H, T, hd] of a packed qkv [N, T, 3, H, hd].
at::Tensor part(const at::Tensor& qkv, int64_t i) { return qkv.select(2, i).transpose(1, 2); }

}  // namespace

TEST(PackedAttention, DefinitionIsSdpaAndItsBackwardIsAutogradsGradient) {
  at::manual_seed(3);
  const int64_t N = 2, T = 5, H = 2, hd = 8;
  at::Tensor qkv = at::randn({N, T, 3, H, hd}, f64).requires_grad_();
  at::Tensor want = at::scaled_dot_product_attention(part(qkv, 0), part(qkv, 1), part(qkv, 2)).transpose(1, 2);
  auto got = kernels::packed_attention(qkv.detach());
  EXPECT_EQ(got.out.sizes(), at::IntArrayRef({N, T, H, hd}));
  EXPECT_TRUE(got.out.is_contiguous());
  EXPECT_EQ(got.out.scalar_type(), at::kDouble);
  EXPECT_LT(test::max_rel_error(got.out, want.detach()), 1e-10);
  // stats: the logsumexp over keys of the scaled scores, [N, H, T].
  at::Tensor scores = at::matmul(part(qkv, 0), part(qkv, 1).transpose(-2, -1)) / std::sqrt(double(hd));
  EXPECT_EQ(got.stats.sizes(), at::IntArrayRef({N, H, T}));
  EXPECT_LT(test::max_rel_error(got.stats, at::logsumexp(scores, -1).detach()), 1e-10);

  at::Tensor dout = at::randn({N, T, H, hd}, f64);
  at::Tensor g_want = torch::autograd::grad({(want * dout).sum()}, {qkv})[0];
  at::Tensor g = kernels::packed_attention_backward(dout, qkv.detach(), got.out, got.stats);
  EXPECT_EQ(g.sizes(), qkv.sizes());
  EXPECT_TRUE(g.is_contiguous());
  EXPECT_LT(test::max_rel_error(g, g_want), 1e-10);
  // A strided dout is taken too (made contiguous).
  at::Tensor dout_t = dout.transpose(1, 2).contiguous().transpose(1, 2);
  EXPECT_LT(test::max_rel_error(kernels::packed_attention_backward(dout_t, qkv.detach(), got.out, got.stats), g_want), 1e-10);
  EXPECT_FALSE(kernels::packed_attention_uses_cudnn(qkv.detach()));  // the CPU runs the definition
}

TEST(PackedAttention, RejectsMalformedArguments) {
  at::Tensor qkv = at::randn({2, 5, 3, 2, 8});
  auto r = kernels::packed_attention(qkv);
  at::Tensor dout = at::randn({2, 5, 2, 8});
  test::expect_c10_error([&] { kernels::packed_attention(at::randn({2, 5, 48})); }, "qkv must be [N, T, 3, H, hd] (5-D)");
  test::expect_c10_error([&] { kernels::packed_attention(at::randn({2, 5, 4, 2, 8})); }, "third dimension must be 3");
  test::expect_c10_error([&] { kernels::packed_attention(qkv.transpose(3, 4)); }, "qkv must be contiguous");
  test::expect_c10_error([&] { kernels::packed_attention(qkv.to(at::kLong)); }, "floating point");
  test::expect_c10_error([&] { kernels::packed_attention_backward(dout.to(at::kDouble), qkv, r.out, r.stats); },
               "dout and qkv differ in dtype");
  test::expect_c10_error([&] { kernels::packed_attention_backward(dout.narrow(1, 0, 4), qkv, r.out, r.stats); },
               "dout must be [2, 5, 2, 8]");
  test::expect_c10_error([&] { kernels::packed_attention_backward(dout, qkv, r.out, r.stats.to(at::kDouble)); },
               "stats must be a contiguous");
  test::expect_c10_error([&] { kernels::packed_attention_backward(dout, qkv, r.out.to(at::kDouble), r.stats); },
               "out and qkv differ in dtype");
}

#ifdef OPENDIT_WITH_CUDA

namespace {

#define REQUIRE_GPU() \
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a GPU"

struct Case {
  int64_t N, T, H, hd;
};
// DiT-XL/2 (hd 72), an odd token count, the largest head dim.
const Case kCases[] = {{2, 256, 16, 72}, {3, 77, 4, 64}, {1, 64, 2, 128}};

std::string describe(const Case& c, at::ScalarType t) {
  std::ostringstream o;
  o << "N=" << c.N << " T=" << c.T << " H=" << c.H << " hd=" << c.hd << " " << t;
  return o.str();
}

at::TensorOptions on_gpu(at::ScalarType t = at::kFloat) { return at::TensorOptions().device(at::kCUDA).dtype(t); }

at::Tensor random_qkv(const Case& c, at::ScalarType t, uint64_t seed) {
  at::manual_seed(seed);
  return at::randn({c.N, c.T, 3, c.H, c.hd}, on_gpu()).to(t);
}

// Sets torch's deterministic-algorithms flag for a scope (the cuDNN backward then uses its deterministic variant).
struct Deterministic {
  bool before = at::globalContext().deterministicAlgorithms();
  bool warn = at::globalContext().deterministicAlgorithmsWarnOnly();
  explicit Deterministic(bool on) { at::globalContext().setDeterministicAlgorithms(on, warn); }
  ~Deterministic() { at::globalContext().setDeterministicAlgorithms(before, warn); }
};

}  // namespace

TEST(PackedAttentionGpu, CudnnMatchesTheDefinition) {
  REQUIRE_GPU();
  for (at::ScalarType t : {at::kBFloat16, at::kHalf}) {
    for (const Case& c : kCases) {
      SCOPED_TRACE(describe(c, t));
      const at::Tensor qkv = random_qkv(c, t, 11);
      ASSERT_TRUE(kernels::packed_attention_uses_cudnn(qkv));
      auto got = kernels::packed_attention(qkv);
      auto want = kernels::reference::packed_attention(qkv.to(at::kFloat));
      EXPECT_EQ(got.out.scalar_type(), t);
      EXPECT_TRUE(got.out.is_contiguous());
      EXPECT_EQ(got.stats.scalar_type(), at::kFloat);
      EXPECT_EQ(got.stats.sizes(), at::IntArrayRef({c.N, c.H, c.T}));
      EXPECT_LT(test::max_rel_error(got.out, want.out), 1e-2);
      EXPECT_LT(test::max_rel_error(got.stats, want.stats), 1e-3);

      at::manual_seed(12);
      const at::Tensor dout = at::randn({c.N, c.T, c.H, c.hd}, on_gpu()).to(t);
      at::Tensor g = kernels::packed_attention_backward(dout, qkv, got.out, got.stats);
      at::Tensor g_want = kernels::reference::packed_attention_backward(dout.to(at::kFloat), qkv.to(at::kFloat),
                                                                        want.out, want.stats);
      EXPECT_EQ(g.scalar_type(), t);
      EXPECT_EQ(g.sizes(), qkv.sizes());
      EXPECT_TRUE(g.is_contiguous());
      const char* names[] = {"dq", "dk", "dv"};
      for (int64_t i = 0; i < 3; ++i) EXPECT_LT(test::max_rel_error(g.select(2, i), g_want.select(2, i)), 1e-2) << names[i];

      // The cached graphs again: the forward repeats bit for bit, the (non-deterministic) backward within rounding.
      auto again = kernels::packed_attention(qkv);
      EXPECT_TRUE(at::equal(again.out, got.out));
      EXPECT_TRUE(at::equal(again.stats, got.stats));
      EXPECT_LT(test::max_rel_error(kernels::packed_attention_backward(dout, qkv, got.out, got.stats), g), 1e-2);
    }
  }
}

TEST(PackedAttentionGpu, DeterministicBackwardRepeatsBitForBit) {
  REQUIRE_GPU();
  const Deterministic on(true);
  const Case c = kCases[0];
  const at::Tensor qkv = random_qkv(c, at::kBFloat16, 13);
  ASSERT_TRUE(kernels::packed_attention_uses_cudnn(qkv));
  auto r = kernels::packed_attention(qkv);
  const at::Tensor dout = at::randn({c.N, c.T, c.H, c.hd}, on_gpu()).to(at::kBFloat16);
  at::Tensor g1 = kernels::packed_attention_backward(dout, qkv, r.out, r.stats);
  at::Tensor g2 = kernels::packed_attention_backward(dout, qkv, r.out, r.stats);
  EXPECT_TRUE(at::equal(g1, g2));
}

// Captured after one eager call, the forward and backward replay on new inputs as eager calls compute them.
TEST(PackedAttentionGpu, CapturedForwardAndBackwardReplayLikeEager) {
  REQUIRE_GPU();
  const Case c = kCases[0];
  const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(false, 0);
  const c10::cuda::CUDAStreamGuard on_side(side);
  at::Tensor qkv = random_qkv(c, at::kBFloat16, 14);
  at::Tensor dout = at::randn({c.N, c.T, c.H, c.hd}, on_gpu()).to(at::kBFloat16);
  ASSERT_TRUE(kernels::packed_attention_uses_cudnn(qkv));
  auto warm = kernels::packed_attention(qkv);
  kernels::packed_attention_backward(dout, qkv, warm.out, warm.stats);

  kernels::PackedAttention fwd;
  at::Tensor dqkv;
  CapturedGraph graph;
  ASSERT_EQ(graph.capture([&] {
    fwd = kernels::packed_attention(qkv);
    dqkv = kernels::packed_attention_backward(dout, qkv, fwd.out, fwd.stats);
  }), "");
  for (uint64_t seed : {15, 16}) {
    qkv.copy_(random_qkv(c, at::kBFloat16, seed));
    dout.normal_();
    graph.replay();
    auto eager = kernels::packed_attention(qkv);
    at::Tensor g = kernels::packed_attention_backward(dout, qkv, eager.out, eager.stats);
    side.synchronize();
    EXPECT_TRUE(at::equal(fwd.out, eager.out)) << "seed " << seed;
    EXPECT_TRUE(at::equal(fwd.stats, eager.stats)) << "seed " << seed;
    EXPECT_LT(test::max_rel_error(dqkv, g), 1e-2) << "seed " << seed;  // the backward's accumulation order may differ
  }
}

// self_attention trains through the packed op on the GPU, with the values and gradients of the
// at::scaled_dot_product_attention path it replaces; a mask or another backend keeps that path.
TEST(PackedAttentionGpu, SelfAttentionTrainsThroughThePackedOp) {
  REQUIRE_GPU();
  using models::layers::self_attention;
  using models::layers::set_attention_backend;
  set_attention_backend("auto");
  const int64_t N = 2, T = 256, H = 16, hd = 72, D = H * hd;
  at::manual_seed(17);
  at::Tensor qkv = at::randn({N, T, 3 * D}, on_gpu()).to(at::kBFloat16).requires_grad_();
  at::Tensor w = at::randn({N, T, D}, on_gpu());
  auto runs_packed = [](const at::Tensor& out) {
    const auto& next = out.grad_fn()->next_edges();
    return !next.empty() && next[0].function && next[0].function->name().find("PackedAttentionFn") != std::string::npos;
  };

  at::Tensor out = self_attention(qkv, H);
  ASSERT_TRUE(runs_packed(out));
  at::Tensor g = torch::autograd::grad({(out.to(at::kFloat) * w).sum()}, {qkv})[0];

  auto q_k_v = qkv.view({N, T, 3, H, hd}).unbind(2);  // the at::scaled_dot_product_attention path
  at::Tensor old = at::scaled_dot_product_attention(q_k_v[0].transpose(1, 2), q_k_v[1].transpose(1, 2),
                                                    q_k_v[2].transpose(1, 2)).transpose(1, 2).reshape({N, T, D});
  at::Tensor g_old = torch::autograd::grad({(old.to(at::kFloat) * w).sum()}, {qkv})[0];
  EXPECT_EQ(g.sizes(), qkv.sizes());
  EXPECT_LT(test::max_rel_error(out, old), 1e-2);
  EXPECT_LT(test::max_rel_error(g, g_old), 1e-2);

  EXPECT_FALSE(runs_packed(self_attention(qkv, H, T - 3)));  // padding keys: the masked path
  set_attention_backend("flash");
  EXPECT_FALSE(runs_packed(self_attention(qkv, H)));
  set_attention_backend("cudnn");
  EXPECT_TRUE(runs_packed(self_attention(qkv, H)));
  set_attention_backend("auto");
}

#endif  // OPENDIT_WITH_CUDA
