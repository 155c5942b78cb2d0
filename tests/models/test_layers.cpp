// The shared layers (models/layers/) against plain compositions written here: attention (self, and cross-attention
// to padded keys), the timestep and patch embeddings, the final layer and unpatchify, activation recompute, and the
// choice of the attention kernel.
#include <ATen/Context.h>
#include <ATen/SDPBackend.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <cmath>

#include "core/error.hpp"
#include "models/layers/attention.hpp"
#include "models/layers/embed.hpp"
#include "models/layers/final_layer.hpp"
#include "models/layers/recompute.hpp"

using namespace opendit::models::layers;

namespace {

const auto f64 = at::TensorOptions().dtype(at::kDouble);

double rel(const at::Tensor& a, const at::Tensor& b) {
  return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item<double>();
}

// softmax(q k^T / sqrt(hd) + mask) v per head, q [N, T, D], k, v [N, L, D], mask [N, L] (true = attend) or none.
at::Tensor plain_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t heads,
                           const at::Tensor& mask = {}) {
  const int64_t N = q.size(0), T = q.size(1), L = k.size(1), D = q.size(2), hd = D / heads;
  auto split = [&](const at::Tensor& x, int64_t n) { return x.view({N, n, heads, hd}).transpose(1, 2); };
  at::Tensor s = at::matmul(split(q, T), split(k, L).transpose(-1, -2)) / std::sqrt(double(hd));  // [N, H, T, L]
  if (mask.defined()) s = s.masked_fill(mask.logical_not().view({N, 1, 1, L}), -INFINITY);
  return at::matmul(at::softmax(s, -1), split(v, L)).transpose(1, 2).reshape({N, T, D});
}

}  // namespace

TEST(Layers, SelfAttentionOfAPackedQkvIsPerHeadSoftmaxAttention) {
  at::manual_seed(1);
  const int64_t N = 2, T = 7, D = 12, H = 3;
  at::Tensor qkv = at::randn({N, T, 3 * D}, f64);
  auto parts = qkv.chunk(3, -1);
  EXPECT_LT(rel(self_attention(qkv, H), plain_attention(parts[0], parts[1], parts[2], H)), 1e-12);
}

TEST(Layers, CrossAttentionHidesEachSamplesPadding) {
  at::manual_seed(2);
  const int64_t N = 3, T = 5, L = 6, D = 8, H = 2;
  at::Tensor q = at::randn({N, T, D}, f64).requires_grad_(), kv = at::randn({N, L, 2 * D}, f64).requires_grad_();
  // Sample 0 sees every token, sample 1 the first 4, sample 2 only the first.
  at::Tensor mask = at::arange(L).view({1, L}) < at::tensor({L, int64_t{4}, int64_t{1}}).view({N, 1});
  auto k_v = kv.chunk(2, -1);
  at::Tensor got = cross_attention(q, kv, mask, H), want = plain_attention(q, k_v[0], k_v[1], H, mask);
  EXPECT_LT(rel(got, want), 1e-12);
  // Padded keys and values do not matter...
  at::Tensor noisy = kv.detach().clone();
  noisy.narrow(1, 4, 2).narrow(0, 1, 2).normal_();
  EXPECT_LT(rel(cross_attention(q.detach(), noisy, mask, H).narrow(0, 1, 2), got.detach().narrow(0, 1, 2)), 1e-12);
  // ... and get no gradient; the rest of the gradient is the plain composition's.
  at::Tensor w = at::randn_like(want);
  auto g = torch::autograd::grad({(got * w).sum()}, {q, kv}, {}, true);
  auto g_want = torch::autograd::grad({(want * w).sum()}, {q, kv});
  EXPECT_LT(rel(g[0], g_want[0]), 1e-10);
  EXPECT_LT(rel(g[1], g_want[1]), 1e-10);
  EXPECT_EQ(g[1].narrow(0, 2, 1).narrow(1, 1, L - 1).abs().max().item<double>(), 0.0);
  // A full mask is plain attention.
  at::Tensor all = at::ones({N, L}, at::kBool);
  EXPECT_LT(rel(cross_attention(q.detach(), kv.detach(), all, H), plain_attention(q, k_v[0], k_v[1], H).detach()),
            1e-12);
  // Queries split into groups (STDiT's frames) give the same values and gradients.
  at::Tensor q10 = at::randn({N, 10, D}, f64).requires_grad_();
  at::Tensor one = cross_attention(q10, kv, mask, H), five = cross_attention(q10, kv, mask, H, 5);
  EXPECT_LT(rel(five, one), 1e-12);
  at::Tensor w10 = at::randn_like(one);
  auto g1 = torch::autograd::grad({(one * w10).sum()}, {q10, kv}), g5 = torch::autograd::grad({(five * w10).sum()}, {q10, kv});
  EXPECT_LT(rel(g5[0], g1[0]), 1e-12);
  EXPECT_LT(rel(g5[1], g1[1]), 1e-12);
}

TEST(Layers, TimestepFeaturesAreCosThenSin) {
  at::Tensor t = at::tensor({0.0, 1.0, 250.5});
  at::Tensor f = timestep_features(t, 8);  // half = 4: f_k = 10000^(-k/4)
  ASSERT_EQ(f.sizes(), at::IntArrayRef({3, 8}));
  for (int k = 0; k < 4; ++k) {
    const double freq = std::exp(-std::log(10000.0) * k / 4);
    EXPECT_NEAR(f[2][k].item<double>(), std::cos(250.5 * freq), 1e-4);
    EXPECT_NEAR(f[2][4 + k].item<double>(), std::sin(250.5 * freq), 1e-4);
  }
  EXPECT_EQ(timestep_features(t, 7).size(1), 7);  // an odd width is zero-padded
}

TEST(Layers, PatchEmbeddingTokensAreRowMajorAndUnpatchifyInvertsIt) {
  at::manual_seed(3);
  const int64_t C = 2, D = 5, p = 2, g = 3;
  PatchEmbed2d embed(C, D, p);
  embed.w.normal_(), embed.b.normal_();
  at::Tensor x = at::randn({1, C, g * p, g * p});
  at::Tensor tokens = embed(x);  // [1, 9, D]
  ASSERT_EQ(tokens.sizes(), at::IntArrayRef({1, g * g, D}));
  // Token (row 1, column 2) is the patch x[:, :, 2:4, 4:6] through the conv's weights.
  at::Tensor patch = x.narrow(2, 2, 2).narrow(3, 4, 2);
  at::Tensor want = (embed.w * patch).sum({1, 2, 3}) + embed.b;
  EXPECT_LT(rel(tokens[0][1 * g + 2], want), 1e-5);
  // unpatchify of tokens laid out (p_row, p_col, channel) gives the image back.
  at::Tensor patches = x.view({1, C, g, p, g, p}).permute({0, 2, 4, 3, 5, 1}).reshape({1, g * g, p * p * C});
  EXPECT_TRUE(at::equal(unpatchify_2d(patches, g, g, p, C), x));
  EXPECT_EQ(embed.slots("x_embedder").front().first, "x_embedder.proj.weight");
}

TEST(Layers, AdaLNFinalLayerIsModulatedLayerNormThenLinear) {
  at::manual_seed(4);
  const int64_t N = 2, T = 5, D = 6, O = 4;
  AdaLNFinalLayer layer(D, O);
  for (Linear* l : {&layer.ada, &layer.linear}) l->w = l->w.to(at::kDouble).normal_(), l->b = l->b.to(at::kDouble).normal_();
  at::Tensor x = at::randn({N, T, D}, f64), c = at::randn({N, D}, f64);
  auto mod = at::linear(c, layer.ada.w, layer.ada.b).unsqueeze(1).chunk(2, -1);  // shift first
  at::Tensor want = at::linear(at::layer_norm(x, {D}, {}, {}, 1e-6) * (1 + mod[1]) + mod[0], layer.linear.w,
                               layer.linear.b);
  EXPECT_LT(rel(layer(x, c), want), 1e-12);
  auto slots = layer.slots("final_layer");
  ASSERT_EQ(slots.size(), 4u);
  EXPECT_EQ(slots[0].first, "final_layer.linear.weight");  // the official order: linear, then adaLN_modulation
  EXPECT_EQ(slots[2].first, "final_layer.adaLN_modulation.1.weight");
}

TEST(Layers, RecomputeGivesTheSameValuesAndGradients) {
  at::Tensor x = at::randn({3, 4}, f64).requires_grad_(), w = at::randn({4, 4}, f64).requires_grad_();
  auto fn = [](const std::vector<at::Tensor>& in) { return at::tanh(at::matmul(in[0], in[1])).square(); };
  at::Tensor direct = fn({x, w}), again = recomputed(fn, {x, w});
  EXPECT_TRUE(at::equal(direct, again));
  auto g1 = torch::autograd::grad({direct.sum()}, {x, w});
  auto g2 = torch::autograd::grad({again.sum()}, {x, w});
  EXPECT_TRUE(at::allclose(g1[0], g2[0])) << "input gradient";
  EXPECT_TRUE(at::allclose(g1[1], g2[1])) << "parameter gradient";
}

TEST(Layers, AttentionBackendChoiceSetsTorchsPriorityOrder) {
  set_attention_backend("flash");
  EXPECT_EQ(at::globalContext().sDPPriorityOrder()[0], at::SDPBackend::flash_attention);
  EXPECT_EQ(at::globalContext().sDPPriorityOrder()[1], at::SDPBackend::cudnn_attention);  // the rest: auto's order
  set_attention_backend("auto");
  EXPECT_EQ(at::globalContext().sDPPriorityOrder()[0], at::SDPBackend::cudnn_attention);
  EXPECT_THROW(set_attention_backend("fastest"), opendit::Error);
}
