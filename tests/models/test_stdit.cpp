// STDiT (Open-Sora v1.0) against two references made by tests/ref/make_stdit_ref.py:
//   tiny:   a reference written there from torch ops following the published v1.0 code (no third-party STDiT exists
//           that can be installed: Open-Sora is not a package), every path active (temporal, masks, tables, drop);
//   pixart: diffusers' PixArtTransformer2DModel applied per frame, with attn_temp.proj = 0 (STDiT's spatial and
//           caption path is PixArt-alpha's block).
// Forward and backward <= 1e-5 (float32). Plus init, the caption mask, recompute, sizes and bad input.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "core/error.hpp"
#include "io/safetensors.hpp"
#include "models/registry.hpp"
#include "models/stdit/stdit.hpp"
#include "support/support.hpp"

using namespace opendit;
using namespace opendit::models;
using namespace opendit::models::stdit;
using opendit::test::error_of;

namespace {

std::string ref_dir(const std::string& name) {
  const char* d = std::getenv("OPENDIT_REF_DIR");
  return d ? std::string(d) + "/stdit/" + name : "";
}

struct Ref {
  STDiTConfig cfg;
  StateDict weights;                      // official names, with Open-Sora's pos_embed tables
  std::map<std::string, at::Tensor> io;   // x, t, y, mask, out, grad_out, grad.*
};

Ref load_ref(const std::string& name) {
  const std::string dir = ref_dir(name);
  if (dir.empty()) throw std::runtime_error("OPENDIT_REF_DIR is not set (run through ctest)");
  std::ifstream in(dir + "/config.json");
  std::stringstream text;
  text << in.rdbuf();
  Ref r;
  r.cfg = config_from_json(text.str());
  for (auto& [k, v] : io::load_safetensors(dir + "/weights.safetensors").tensors) r.weights[k] = v;
  r.io = io::load_safetensors(dir + "/io.safetensors").tensors;
  return r;
}

Condition caption(const at::Tensor& y, const at::Tensor& mask) {
  Condition c;
  c.text = y;
  c.text_mask = mask.to(at::kBool);
  return c;
}

double rel_error(const at::Tensor& a, const at::Tensor& ref) {
  return ((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item<double>();
}

// Forward, then backward of (out * grad_out).sum(): out and every gradient the reference has, <= 1e-5.
void expect_matches(const std::string& name, int recompute_blocks) {
  Ref r = load_ref(name);
  STDiT model(r.cfg, uint64_t{0});
  model.load_state_dict(model.import_weights(r.weights, name), name);
  model.set_recompute_blocks(recompute_blocks);
  // The recomputed tables equal Open-Sora's (spatial: positions / space_scale in float32; temporal / time_scale).
  const StateDict ours = model.state_dict();
  EXPECT_LE((ours.at("pos_embed") - r.weights.at("pos_embed")).abs().max().item<double>(), 1e-6);
  EXPECT_LE((ours.at("pos_embed_temporal") - r.weights.at("pos_embed_temporal")).abs().max().item<double>(), 1e-6);
  model.set_requires_grad(true);
  at::Tensor x = r.io.at("x").clone().requires_grad_(true);
  at::Tensor out = model.forward(x, r.io.at("t"), caption(r.io.at("y"), r.io.at("mask")));
  ASSERT_EQ(out.sizes(), r.io.at("out").sizes());
  const double err = rel_error(out.detach(), r.io.at("out"));
  EXPECT_LE(err, 1e-5) << name << ": forward";
  (out * r.io.at("grad_out")).sum().backward();
  double worst = rel_error(x.grad(), r.io.at("grad.x"));
  EXPECT_LE(worst, 1e-5) << name << ": grad x";
  int compared = 0;
  for (const Param& p : model.parameters()) {
    auto it = r.io.find("grad." + p.name);
    if (it == r.io.end()) continue;
    ASSERT_TRUE(p.tensor->grad().defined()) << p.name;
    const double e = rel_error(p.tensor->grad(), it->second);
    EXPECT_LE(e, 1e-5) << name << ": grad " << p.name;
    worst = std::max(worst, e), ++compared;
  }
  EXPECT_GE(compared, 40);
  std::printf("[%s, recompute %d] forward %.3g, %d gradients: worst %.3g\n", name.c_str(), recompute_blocks, err,
              compared, worst);
}

STDiTConfig tiny() {
  STDiTConfig c;
  c.depth = 2, c.hidden_size = 64, c.num_heads = 4, c.in_channels = 4;
  c.frames = 3, c.height = 8, c.width = 12, c.caption_channels = 32, c.text_length = 10;
  return c;
}

}  // namespace

TEST(STDiT, MatchesTorchReference) { expect_matches("tiny", 0); }
TEST(STDiT, MatchesTorchReferenceWithRecompute) { expect_matches("tiny", -1); }
TEST(STDiT, SpatialPathMatchesPixArtPerFrame) { expect_matches("pixart", 0); }

TEST(STDiT, CaptionDropUsesTheNullCaptionThroughTheSampleMask) {
  Ref r = load_ref("tiny");
  STDiT model(r.cfg, uint64_t{0});
  model.load_state_dict(model.import_weights(r.weights, "tiny"), "tiny");
  at::NoGradGuard no_grad;
  const Condition c = caption(r.io.at("y"), r.io.at("mask"));
  const Condition dropped = model.drop_condition(c, r.io.at("drop").to(at::kBool));
  const at::Tensor out = model.forward(r.io.at("x"), r.io.at("t"), dropped);
  EXPECT_LE(rel_error(out, r.io.at("out_drop")), 1e-5);
}

TEST(STDiT, TheCaptionMaskTakesEffect) {
  Ref r = load_ref("tiny");
  STDiT model(r.cfg, uint64_t{0});
  model.load_state_dict(model.import_weights(r.weights, "tiny"), "tiny");
  at::NoGradGuard no_grad;
  const at::Tensor x = r.io.at("x"), t = r.io.at("t"), y = r.io.at("y"), mask = r.io.at("mask");
  const at::Tensor base = model.forward(x, t, caption(y, mask));
  // Junk at padded positions changes nothing ...
  at::Tensor junk = y.clone();
  junk.masked_fill_(mask.to(at::kBool).logical_not().unsqueeze(-1), 1e3);
  EXPECT_LE(rel_error(model.forward(x, t, caption(junk, mask)), base), 1e-6);
  // ... and reading the padding as valid changes sample 1 (the test would pass a model that ignored the mask).
  const at::Tensor all = model.forward(x, t, caption(y, at::ones_like(mask)));
  EXPECT_GT(rel_error(all[1], base[1]), 1e-3);
  EXPECT_LE(rel_error(all[0], base[0]), 1e-6) << "sample 0 has no padding";
}

TEST(STDiT, InitIsOpenSoras) {
  STDiT a(tiny(), uint64_t{3}), b(tiny(), uint64_t{3});
  for (const Param& p : a.parameters()) {
    const bool zero = p.tensor->abs().max().item<double>() == 0;
    const bool must_be_zero = p.name.find(".bias") != std::string::npos ||
                              p.name.find("cross_attn.proj") != std::string::npos ||
                              p.name.find("attn_temp.proj") != std::string::npos ||
                              p.name.rfind("final_layer.linear", 0) == 0;
    EXPECT_EQ(zero, must_be_zero) << p.name;
    EXPECT_TRUE(at::equal(*p.tensor, b.state_dict().at(p.name))) << p.name;
    EXPECT_EQ(p.trainable, p.name.rfind("pos_embed", 0) != 0 && p.name != "y_embedder.y_embedding") << p.name;
  }
  at::NoGradGuard no_grad;
  Condition c = caption(at::randn({2, 10, 32}), at::ones({2, 10}, at::kBool));
  EXPECT_EQ(a.forward(at::randn({2, 4, 3, 8, 12}), at::tensor({1.0f, 900.0f}), c).abs().max().item<double>(), 0.0);
}

TEST(STDiT, XL2HasOpenSorasSizeAndCost) {
  // Open-Sora reports 724 M parameters for STDiT-XL/2 (in units of 2^20: 759,620,768 trainable); the null caption
  // and the tables at 16x512^2 add 1,689,600. A training sample at 16x512^2 costs 3 x 24.4 TFLOP.
  STDiTConfig c = preset("STDiT-XL/2");
  c.frames = 16, c.height = c.width = 64;
  const STDiT meta(c, std::nullopt);
  EXPECT_EQ(meta.num_parameters(), 759'620'768 + 1'689'600);
  EXPECT_EQ(c.num_parameters(), meta.num_parameters());
  EXPECT_NEAR(meta.forward_flops(meta.sample_shape()) / 1e12, 24.39, 0.01);
}

TEST(STDiT, BadInputIsOneClearError) {
  STDiT model(tiny(), uint64_t{0});
  // A caption longer than the model's tokens, a mask without a valid token, captions of another width.
  auto msg = error_of([&] { model.check_condition(caption(at::randn({1, 11, 32}), at::ones({1, 11}))); });
  EXPECT_NE(msg.find("exceed this model's 10"), std::string::npos) << msg;
  msg = error_of([&] { model.check_condition(caption(at::randn({2, 10, 32}), at::zeros({2, 10}))); });
  EXPECT_NE(msg.find("no valid token"), std::string::npos) << msg;
  msg = error_of([&] { model.check_condition(caption(at::randn({1, 10, 16}), at::ones({1, 10}))); });
  EXPECT_NE(msg.find("[N, L, 32]"), std::string::npos) << msg;
  // Weights of another preset: the mismatch names what they look like.
  STDiTConfig deeper = tiny();
  deeper.depth = 3;
  msg = error_of([&] { model.load_state_dict(STDiT(deeper, uint64_t{0}).state_dict(), "deeper.safetensors"); });
  EXPECT_NE(msg.find("deeper.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("custom STDiT: depth 3"), std::string::npos) << msg;
  // The null caption is required (it cannot be recomputed); the tables are not.
  StateDict sd = model.state_dict();
  sd.erase("pos_embed"), sd.erase("pos_embed_temporal");
  model.load_state_dict(sd, "no-tables");
  sd.erase("y_embedder.y_embedding");
  msg = error_of([&] { model.load_state_dict(sd, "no-null"); });
  EXPECT_NE(msg.find("y_embedder.y_embedding"), std::string::npos) << msg;
  // DiT weights are not STDiT weights, and the registry tells them apart.
  EXPECT_EQ(&model_type_of(model.state_dict(), "w"), &model_type("stdit"));
}

TEST(STDiT, DecksAndRecordsBuildIt) {
  config::Deck d(deck_schema());
  for (const char* s : {"model.type=stdit", "model.preset=STDiT-S/2", "model.num_frames=4", "model.input_size=8",
                        "model.input_width=6", "model.caption_channels=32", "model.text_length=7"})
    d.set(s);
  auto m = make_model(d, std::nullopt);
  EXPECT_EQ(m->type(), "stdit");
  EXPECT_EQ(m->sample_shape(), (std::vector<int64_t>{4, 4, 8, 6}));
  EXPECT_EQ(m->out_channels(), 8);
  EXPECT_EQ(m->depth(), 12);
  EXPECT_EQ(m->condition_spec().kind, ConditionKind::Text);
  EXPECT_EQ(m->condition_spec().text_length, 7);
  EXPECT_EQ(m->condition_spec().text_dim, 32);
  // space_scale 0 = input_size / 64; the JSON round trip keeps every size.
  auto& st = dynamic_cast<STDiT&>(*m);
  EXPECT_DOUBLE_EQ(st.config().space_scale, 8 / 64.0);
  auto again = model_from_config_json(m->config_json(), std::nullopt);
  EXPECT_EQ(again->config_json(), m->config_json());
  // The default preset of an stdit deck is STDiT-XL/2; a DiT preset is refused by name.
  config::Deck xl(deck_schema());
  xl.set("model.type=stdit");
  EXPECT_EQ(make_model(xl, std::nullopt)->depth(), 28);
  xl.set("model.preset=DiT-S/2");
  auto msg = error_of([&] { make_model(xl, std::nullopt); });
  EXPECT_NE(msg.find("not an STDiT preset"), std::string::npos) << msg;
  // A deck that contradicts a recorded STDiT names the key.
  config::Deck other(deck_schema());
  other.set("model.num_frames=8");
  msg = error_of([&] { model_from_record(other, m->config_json(), "w.safetensors", std::nullopt); });
  EXPECT_NE(msg.find("model.num_frames = 8"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("model.num_frames = 4"), std::string::npos) << msg;
  // ... and only the keys that differ: the deck that built the weights loads them (learn_sigma, mlp_ratio too).
  d.set("model.learn_sigma=true");
  d.set("model.mlp_ratio=4.0");
  EXPECT_EQ(model_from_record(d, m->config_json(), "w.safetensors", std::nullopt)->config_json(), m->config_json());
  d.set("model.learn_sigma=false");
  msg = error_of([&] { model_from_record(d, m->config_json(), "w.safetensors", std::nullopt); });
  EXPECT_NE(msg.find("model.learn_sigma = false"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("model.depth"), std::string::npos) << msg;
}

// The GPU path (fused CUDA kernels, cuDNN / flash / efficient SDPA with the caption mask) against the CPU one, fp32
// and bf16, forward and backward, with every weight non-zero (the torch reference's tiny case).
TEST(STDiT, GpuForwardAndBackwardMatchCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no GPU";
  at::globalContext().setAllowTF32CuBLAS(false);
  at::globalContext().setAllowTF32CuDNN(false);
  Ref r = load_ref("tiny");
  auto run = [&](const at::TensorOptions& o, int recompute) {
    STDiT m(r.cfg, uint64_t{0});
    m.load_state_dict(m.import_weights(r.weights, "tiny"), "tiny");
    m.to(o);
    m.set_requires_grad(true);
    m.set_recompute_blocks(recompute);
    const at::Tensor out = m.forward(r.io.at("x").to(o), r.io.at("t").to(o.device()),
                                     caption(r.io.at("y").to(o), r.io.at("mask").to(o.device())));
    (out.to(at::kFloat) * r.io.at("grad_out").to(o.device())).sum().backward();
    std::map<std::string, at::Tensor> g;
    for (const Param& p : m.parameters())
      if (p.trainable) g[p.name] = p.tensor->grad().to(at::kCPU, at::kFloat);
    return std::make_pair(out.detach().to(at::kCPU, at::kFloat), g);
  };
  auto [out_c, g_c] = run(at::TensorOptions(at::kFloat), 0);
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    const bool bf = dtype == at::kBFloat16;
    auto [out_g, g_g] = run(at::TensorOptions(dtype).device(at::kCUDA), bf ? -1 : 0);
    // fp32: the DiT oracle's GPU tolerance (cuBLAS and SDPA sum in other orders than the CPU).
    EXPECT_LT(rel_error(out_g, out_c), bf ? 3e-2 : 1e-4) << dtype;
    for (const auto& [name, g] : g_c) EXPECT_LT(rel_error(g_g.at(name), g), bf ? 6e-2 : 1e-4) << name << " " << dtype;
  }
}
