// short_attention (cuda/ops.hpp section j) and layers::frame_attention. On the CPU: the ATen definition against
// at::scaled_dot_product_attention on the frames transposed into sequences and autograd, in float64, with and
// without hidden keys; frame_attention against the transpose-then-self_attention path it replaces; the argument
// checks. On a GPU: the kernel against the definition evaluated in float32 on the same inputs (float32 <= 1e-5,
// bfloat16 <= 1e-2; error: max |kernel - definition| / max |definition|), repeatability, CUDA graph capture, and the
// model layers' use of it. GPU tests skip without one. No third-party implementation takes this layout; the
// reference is torch's SDPA on the transposed frames.
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <optional>
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

// q, k or v of qkv [B, T, S, 3, H, hd] as SDPA's [B, S, H, T, hd].
at::Tensor part(const at::Tensor& qkv, int64_t i) { return qkv.select(3, i).permute({0, 2, 3, 1, 4}); }

// SDPA over the middle axis, keys >= valid hidden -> [B, T, S, H, hd].
at::Tensor sdpa_over_frames(const at::Tensor& qkv, int64_t valid) {
  const int64_t T = qkv.size(1);
  std::optional<at::Tensor> mask;
  if (valid >= 0 && valid < T) mask = at::arange(T, qkv.options().dtype(at::kLong)) < valid;
  return at::scaled_dot_product_attention(part(qkv, 0), part(qkv, 1), part(qkv, 2), mask).permute({0, 3, 1, 2, 4});
}

// Whether out's autograd node is the short-attention op's (through any view).
bool runs_short(const at::Tensor& out) {
  for (auto fn = out.grad_fn(); fn; fn = fn->next_edges().empty() ? nullptr : fn->next_edges()[0].function)
    if (fn->name().find("ShortAttentionFn") != std::string::npos) return true;
  return false;
}

}  // namespace

TEST(ShortAttention, DefinitionIsSdpaOverFramesAndItsBackwardIsAutogradsGradient) {
  at::manual_seed(5);
  const int64_t B = 2, T = 6, S = 3, H = 2, hd = 8;
  for (int64_t valid : {int64_t(-1), int64_t(4)}) {
    SCOPED_TRACE("valid " + std::to_string(valid));
    at::Tensor qkv = at::randn({B, T, S, 3, H, hd}, f64).requires_grad_();
    at::Tensor want = sdpa_over_frames(qkv, valid);
    auto got = kernels::short_attention(qkv.detach(), valid);
    EXPECT_EQ(got.out.sizes(), at::IntArrayRef({B, T, S, H, hd}));
    EXPECT_TRUE(got.out.is_contiguous());
    EXPECT_LT(test::max_rel_error(got.out, want.detach()), 1e-10);
    // stats: logsumexp over the visible keys of the scaled scores, [B, S, H, T].
    at::Tensor sc = at::matmul(part(qkv, 0), part(qkv, 1).transpose(-2, -1)) / std::sqrt(double(hd));
    if (valid >= 0) sc = sc.narrow(-1, 0, valid);
    EXPECT_EQ(got.stats.sizes(), at::IntArrayRef({B, S, H, T}));
    EXPECT_LT(test::max_rel_error(got.stats, at::logsumexp(sc, -1).detach()), 1e-10);

    at::Tensor dout = at::randn({B, T, S, H, hd}, f64);
    at::Tensor g_want = torch::autograd::grad({(want * dout).sum()}, {qkv})[0];
    at::Tensor g = kernels::short_attention_backward(dout, qkv.detach(), got.out, got.stats, valid);
    EXPECT_EQ(g.sizes(), qkv.sizes());
    EXPECT_TRUE(g.is_contiguous());
    EXPECT_LT(test::max_rel_error(g, g_want), 1e-10);
    if (valid >= 0) {  // hidden keys get no gradient
      EXPECT_EQ(g.narrow(1, valid, T - valid).select(3, 1).abs().max().item<double>(), 0.0);
      EXPECT_EQ(g.narrow(1, valid, T - valid).select(3, 2).abs().max().item<double>(), 0.0);
    }
  }
}

// The model layer: frames attended in place equal the frames transposed into sequences for self_attention.
TEST(ShortAttention, FrameAttentionEqualsSelfAttentionOnTransposedFrames) {
  at::manual_seed(6);
  const int64_t N = 2, T = 5, S = 4, H = 3, hd = 4, D = H * hd;
  at::Tensor qkv = at::randn({N, T * S, 3 * D}, f64).requires_grad_();
  at::Tensor w = at::randn({N, T * S, D}, f64);
  for (int64_t valid : {int64_t(-1), int64_t(3)}) {
    at::Tensor got = models::layers::frame_attention(qkv, T, H, valid);
    EXPECT_TRUE(runs_short(got));
    at::Tensor seq = qkv.view({N, T, S, 3 * D}).transpose(1, 2).reshape({N * S, T, 3 * D});
    at::Tensor want = models::layers::self_attention(seq, H, valid).view({N, S, T, D}).transpose(1, 2)
                          .reshape({N, T * S, D});
    EXPECT_LT(test::max_rel_error(got, want), 1e-12) << "valid " << valid;
    at::Tensor g = torch::autograd::grad({(got * w).sum()}, {qkv})[0];
    at::Tensor g_want = torch::autograd::grad({(want * w).sum()}, {qkv})[0];
    EXPECT_LT(test::max_rel_error(g, g_want), 1e-12) << "valid " << valid;
  }
}

TEST(ShortAttention, RejectsMalformedArguments) {
  at::Tensor qkv = at::randn({2, 5, 3, 3, 2, 8});
  auto r = kernels::short_attention(qkv);
  at::Tensor dout = at::randn({2, 5, 3, 2, 8});
  test::expect_c10_error([&] { kernels::short_attention(at::randn({2, 5, 3, 2, 8})); }, "qkv must be [B, T, S, 3, H, hd]");
  test::expect_c10_error([&] { kernels::short_attention(at::randn({2, 5, 3, 4, 2, 8})); }, "q, k, v third");
  test::expect_c10_error([&] { kernels::short_attention(qkv.transpose(4, 5)); }, "qkv must be contiguous");
  test::expect_c10_error([&] { kernels::short_attention(qkv.to(at::kLong)); }, "floating point");
  test::expect_c10_error([&] { kernels::short_attention(qkv, 0); }, "valid must be -1 or in [1, 5], got 0");
  test::expect_c10_error([&] { kernels::short_attention(qkv, 6); }, "valid must be -1 or in [1, 5], got 6");
  test::expect_c10_error([&] { kernels::short_attention_backward(dout.to(at::kDouble), qkv, r.out, r.stats); },
               "dout and qkv differ in dtype");
  test::expect_c10_error([&] { kernels::short_attention_backward(dout.narrow(1, 0, 4), qkv, r.out, r.stats); },
               "dout must be [2, 5, 3, 2, 8]");
  test::expect_c10_error([&] { kernels::short_attention_backward(dout, qkv, r.out, r.stats.transpose(1, 2)); },
               "stats must be a contiguous");
  test::expect_c10_error([&] { kernels::short_attention_backward(dout, qkv, r.out.to(at::kDouble), r.stats); },
               "out and qkv differ in dtype");
  test::expect_c10_error([&] { models::layers::frame_attention(at::randn({2, 7, 48}), 2, 4); },
               "frame_attention: qkv must be [N, 2 S, 3 D]");
  EXPECT_FALSE(kernels::short_attention_fused(qkv));  // the CPU runs the definition
}

#ifdef OPENDIT_WITH_CUDA

namespace {

#define REQUIRE_GPU() \
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a GPU"

struct Case {
  int64_t B, T, S, H, hd, valid;
};
// STDiT-XL/2's heads at 16 frames (fewer positions); an odd T with hidden keys and hd 20 (one-element loads in
// bf16); hd 13 (one-element loads in both dtypes, partial column tiles); the largest T and hd the kernel takes;
// one position (ordinary self-attention). In bfloat16, T = 16 takes the tensor-core kernels: also with hidden keys
// and a head dim that is not a multiple of 16 (zero-padded MMA columns), at hd 64, and at hd 128 (fewer warps a block).
// (With one visible key dq and dk are exactly zero, which a relative error cannot compare: hence 3.)
const Case kCases[] = {{2, 16, 40, 16, 72, -1}, {3, 7, 5, 3, 20, 5},  {2, 5, 7, 3, 13, 4},   {1, 64, 3, 2, 128, 50},
                       {4, 33, 1, 4, 64, -1},   {1, 16, 9, 4, 40, 11}, {2, 16, 5, 2, 64, -1}, {1, 16, 3, 2, 128, 3}};

std::string describe(const Case& c, at::ScalarType t) {
  std::ostringstream o;
  o << "B=" << c.B << " T=" << c.T << " S=" << c.S << " H=" << c.H << " hd=" << c.hd << " valid=" << c.valid << " "
    << t;
  return o.str();
}

at::TensorOptions on_gpu(at::ScalarType t = at::kFloat) { return at::TensorOptions().device(at::kCUDA).dtype(t); }

}  // namespace

TEST(ShortAttentionGpu, KernelMatchesTheDefinition) {
  REQUIRE_GPU();
  for (at::ScalarType t : {at::kFloat, at::kBFloat16}) {
    const double tol = t == at::kFloat ? 1e-5 : 1e-2;
    for (const Case& c : kCases) {
      SCOPED_TRACE(describe(c, t));
      at::manual_seed(21);
      const at::Tensor qkv = at::randn({c.B, c.T, c.S, 3, c.H, c.hd}, on_gpu()).to(t);
      if (!kernels::short_attention_fused(qkv)) {  // e.g. an A100's 163 KB cannot hold 64 x 128's 198 KB
        EXPECT_GT(c.T * c.hd, 64 * 72) << "only the largest tiles may exceed a device's shared memory";
        continue;
      }
      auto got = kernels::short_attention(qkv, c.valid);
      auto want = kernels::reference::short_attention(qkv.to(at::kFloat), c.valid);
      EXPECT_EQ(got.out.scalar_type(), t);
      EXPECT_EQ(got.stats.scalar_type(), at::kFloat);
      EXPECT_LT(test::max_rel_error(got.out, want.out), tol);
      EXPECT_LT(test::max_rel_error(got.stats, want.stats), 1e-5);

      const at::Tensor dout = at::randn({c.B, c.T, c.S, c.H, c.hd}, on_gpu()).to(t);
      at::Tensor g = kernels::short_attention_backward(dout, qkv, got.out, got.stats, c.valid);
      at::Tensor g_want = kernels::reference::short_attention_backward(dout.to(at::kFloat), qkv.to(at::kFloat),
                                                                       got.out.to(at::kFloat), want.stats, c.valid);
      EXPECT_EQ(g.scalar_type(), t);
      EXPECT_TRUE(g.is_contiguous());
      const char* names[] = {"dq", "dk", "dv"};
      for (int64_t i = 0; i < 3; ++i) EXPECT_LT(test::max_rel_error(g.select(3, i), g_want.select(3, i)), tol) << names[i];

      // No atomics: a second call repeats every bit.
      EXPECT_TRUE(at::equal(kernels::short_attention(qkv, c.valid).out, got.out));
      EXPECT_TRUE(at::equal(kernels::short_attention_backward(dout, qkv, got.out, got.stats, c.valid), g));
      // Tensors one element off 16-byte alignment take one-element loads: the same values, bit for bit.
      auto shifted = [](const at::Tensor& t) {
        return at::empty({t.numel() + 1}, t.options()).narrow(0, 1, t.numel()).view(t.sizes()).copy_(t);
      };
      const at::Tensor qkv_s = shifted(qkv), dout_s = shifted(dout);
      ASSERT_NE(reinterpret_cast<uintptr_t>(qkv_s.data_ptr()) % 16, 0u);
      auto got_s = kernels::short_attention(qkv_s, c.valid);
      EXPECT_TRUE(at::equal(got_s.out, got.out));
      EXPECT_TRUE(at::equal(kernels::short_attention_backward(dout_s, qkv_s, shifted(got.out), got.stats, c.valid), g));
    }
  }
}

TEST(ShortAttentionGpu, CapturedForwardAndBackwardReplayLikeEager) {
  REQUIRE_GPU();
  const Case c = kCases[0];
  const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(false, 0);
  const c10::cuda::CUDAStreamGuard on_side(side);
  at::Tensor qkv = at::randn({c.B, c.T, c.S, 3, c.H, c.hd}, on_gpu(at::kBFloat16));
  at::Tensor dout = at::randn({c.B, c.T, c.S, c.H, c.hd}, on_gpu(at::kBFloat16));
  kernels::ShortAttention fwd;
  at::Tensor dqkv;
  CapturedGraph graph;
  ASSERT_EQ(graph.capture([&] {
    fwd = kernels::short_attention(qkv);
    dqkv = kernels::short_attention_backward(dout, qkv, fwd.out, fwd.stats);
  }), "");
  for (int i = 0; i < 2; ++i) {
    qkv.normal_();
    dout.normal_();
    graph.replay();
    auto eager = kernels::short_attention(qkv);
    at::Tensor g = kernels::short_attention_backward(dout, qkv, eager.out, eager.stats);
    side.synchronize();
    EXPECT_TRUE(at::equal(fwd.out, eager.out));
    EXPECT_TRUE(at::equal(fwd.stats, eager.stats));
    EXPECT_TRUE(at::equal(dqkv, g));
  }
}

// The layers on a GPU: frame_attention and short self_attention train through the kernel with the values and
// gradients of the cuDNN path over transposed frames; the attention setting "cudnn" keeps cuDNN.
TEST(ShortAttentionGpu, LayersTrainThroughTheKernel) {
  REQUIRE_GPU();
  using models::layers::frame_attention;
  using models::layers::self_attention;
  using models::layers::set_attention_backend;
  set_attention_backend("auto");
  const int64_t N = 2, T = 16, S = 64, H = 16, hd = 72, D = H * hd;
  at::manual_seed(22);
  at::Tensor qkv = at::randn({N, T * S, 3 * D}, on_gpu()).to(at::kBFloat16).requires_grad_();
  at::Tensor w = at::randn({N, T * S, D}, on_gpu());
  at::Tensor got = frame_attention(qkv, T, H);
  ASSERT_TRUE(runs_short(got));
  at::Tensor g = torch::autograd::grad({(got.to(at::kFloat) * w).sum()}, {qkv})[0];

  set_attention_backend("cudnn");
  EXPECT_FALSE(runs_short(frame_attention(qkv, T, H)));
  at::Tensor seq = qkv.view({N, T, S, 3 * D}).transpose(1, 2).reshape({N * S, T, 3 * D});
  EXPECT_FALSE(runs_short(self_attention(seq, H)));
  at::Tensor want = self_attention(seq, H).view({N, S, T, D}).transpose(1, 2).reshape({N, T * S, D});
  at::Tensor g_want = torch::autograd::grad({(want.to(at::kFloat) * w).sum()}, {qkv})[0];
  EXPECT_LT(test::max_rel_error(got, want), 1e-2);
  EXPECT_LT(test::max_rel_error(g, g_want), 1e-2);

  set_attention_backend("auto");
  EXPECT_TRUE(runs_short(self_attention(seq, H)));
  EXPECT_TRUE(runs_short(self_attention(seq, H, T - 3)));  // padding keys too
  EXPECT_FALSE(runs_short(self_attention(at::randn({2, 65, 3 * D}, on_gpu(at::kBFloat16)), H)));
}

#endif  // OPENDIT_WITH_CUDA
