// DiT against diffusers' DiTTransformer2DModel (tests/ref/make_dit_ref.py), plus init, weights I/O and bad input.
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

#include "core/error.hpp"
#include "io/safetensors.hpp"
#include "io/weights.hpp"
#include "models/dit/weights.hpp"
#include "models/dit_oracle.hpp"
#include "support/support.hpp"

using namespace opendit;
using namespace opendit::models;
using namespace opendit::models::dit;
using opendit::test::error_of;
using opendit::test::labels_of;

namespace {

std::string ref_dir(const std::string& name) {
  const char* d = std::getenv("OPENDIT_REF_DIR");
  if (!d) return "";
  return std::string(d) + "/dit/" + name;
}

DiTConfig tiny_config() {
  DiTConfig c;
  c.depth = 2, c.hidden_size = 64, c.num_heads = 4, c.patch_size = 2;
  c.in_channels = 3, c.input_size = 8, c.num_classes = 10, c.learn_sigma = false;
  return c;
}

DiTConfig s2_config() {
  DiTConfig c = preset("DiT-S/2");  // in 4, input 32, 1000 classes, learn_sigma: the defaults
  return c;
}

// A weights file as `opendit sample` and `convert` read it: either layout, official names out.
StateDict load_weights(const DiT& model, const std::string& path) {
  const io::WeightsFile f = io::read_weights(path);
  return model.import_weights(f.tensors, f.path);
}

void save_weights(const DiT& model, const std::string& path, const StateDict& sd, const std::string& layout) {
  io::write_weights(path, model.export_weights(sd, layout),
                    layout == "opendit" ? model.weight_metadata() : std::map<std::string, std::string>{});
}

double max_rel_error(const at::Tensor& a, const at::Tensor& ref) {
  return ((a - ref).abs().max() / ref.abs().max()).item<double>();
}

void expect_matches_diffusers(const std::string& name, const DiTConfig& cfg) {
  std::string dir = ref_dir(name);
  ASSERT_FALSE(dir.empty()) << "OPENDIT_REF_DIR is not set (run through ctest)";
  DiT model(cfg, uint64_t{0});
  model.load_state_dict(load_weights(model, dir + "/weights.safetensors"), dir);
  auto io = io::load_safetensors(dir + "/io.safetensors").tensors;
  EXPECT_EQ(cfg.num_parameters(), io.at("num_params").item<int64_t>()) << "parameter count vs diffusers";
  at::NoGradGuard no_grad;
  at::Tensor out = model.forward(io.at("x"), io.at("t"), labels_of(io.at("y")));
  ASSERT_EQ(out.sizes(), io.at("out").sizes());
  double err = max_rel_error(out, io.at("out"));
  EXPECT_LE(err, 1e-5) << name << ": max relative error vs diffusers " << err;
  std::printf("[%s] forward vs diffusers: max relative error %.3g (output max |x| %.3g)\n", name.c_str(), err,
              io.at("out").abs().max().item<double>());
}


}  // namespace

TEST(DiT, TinyMatchesDiffusers) { expect_matches_diffusers("tiny", tiny_config()); }
TEST(DiT, S2WithLearnedSigmaMatchesDiffusers) { expect_matches_diffusers("s2", s2_config()); }

TEST(DiT, InitIsAdaLNZeroAndDeterministic) {
  DiT a(tiny_config(), uint64_t{7}), b(tiny_config(), uint64_t{7}), c(tiny_config(), uint64_t{8});
  int64_t n = 0;
  for (const Param& p : a.parameters()) {
    const std::string& name = p.name;
    const at::Tensor* t = p.tensor;
    n += t->numel();
    bool zero = t->abs().max().item<double>() == 0;
    bool must_be_zero = name.find("adaLN_modulation") != std::string::npos ||
                        name.rfind("final_layer.linear", 0) == 0 || name.find(".bias") != std::string::npos;
    EXPECT_EQ(zero, must_be_zero) << name;
    EXPECT_TRUE(at::equal(*t, b.state_dict().at(name))) << name;
  }
  EXPECT_EQ(n, tiny_config().num_parameters());
  EXPECT_FALSE(at::equal(a.state_dict().at("blocks.0.attn.qkv.weight"), c.state_dict().at("blocks.0.attn.qkv.weight")));
  // xavier on the fused [3D, D] qkv: bound sqrt(6 / (D + 3D))
  double bound = std::sqrt(6.0 / (64 + 192));
  double m = a.state_dict().at("blocks.0.attn.qkv.weight").abs().max().item<double>();
  EXPECT_LE(m, bound);
  EXPECT_GT(m, 0.9 * bound);
  at::Tensor x = at::randn({2, 3, 8, 8});
  at::Tensor out = a.forward(x, at::tensor({1.0, 500.0}), labels_of(at::tensor({int64_t{0}, int64_t{10}})));
  EXPECT_EQ(out.abs().max().item<double>(), 0.0) << "adaLN-Zero: the model outputs zeros at init";
}

TEST(DiT, PosEmbedIsFrozenAndColumnFirst) {
  DiT m(tiny_config(), uint64_t{0});
  m.set_requires_grad(true);
  for (const Param& p : m.parameters()) {
    EXPECT_EQ(p.tensor->requires_grad(), p.name != "pos_embed") << p.name;
    EXPECT_EQ(p.trainable, p.name != "pos_embed") << p.name;
  }
  at::Tensor pe = layers::pos_embed_2d(8, 2);  // [1, 4, 8]; tokens (row, col) = (0,0) (0,1) (1,0) (1,1)
  // First half encodes the column: tokens 0 and 2 share column 0; second half the row.
  EXPECT_TRUE(at::allclose(pe[0][0].slice(0, 0, 4), pe[0][2].slice(0, 0, 4)));
  EXPECT_TRUE(at::allclose(pe[0][0].slice(0, 4, 8), pe[0][1].slice(0, 4, 8)));
  EXPECT_FLOAT_EQ(pe[0][1][2].item<float>(), 1.0f * std::cos(1.0f));  // [sin, cos] with omega_0 = 1
}

TEST(DiT, PresetsHaveThePublishedSizes) {
  // Parameters (millions) and forward GFLOP at 256^2 from the DiT paper.
  struct Row {
    const char* name;
    double mparams, gflops;
  } rows[] = {{"DiT-S/2", 33, 12.1}, {"DiT-B/2", 130, 46.0}, {"DiT-L/2", 458, 161.4}, {"DiT-XL/2", 675, 237.3}};
  for (const auto& r : rows) {
    DiTConfig c = preset(r.name);
    EXPECT_NEAR(c.num_parameters() / 1e6, r.mparams, 0.01 * r.mparams) << r.name;
    EXPECT_NEAR(c.forward_flops() / 1e9, r.gflops, 0.01 * r.gflops) << r.name;
  }
  EXPECT_THROW(preset("DiT-M/2"), Error);
}

TEST(DiT, WeightsRoundTripThroughBothLayouts) {
  auto tmp = std::filesystem::temp_directory_path() / ("opendit_test_weights_" + std::to_string(::getpid()));
  std::filesystem::create_directories(tmp);
  DiT a(tiny_config(), uint64_t{3});
  // Give the zero-initialised tensors values, so that a swapped name would show.
  for (const Param& p : a.parameters()) p.tensor->copy_(at::randn(p.tensor->sizes()));
  EXPECT_EQ(a.layouts(), (std::vector<std::string>{"opendit", "diffusers"}));
  for (const std::string layout : {"opendit", "diffusers"}) {
    std::string path = (tmp / (layout == "opendit" ? "o.safetensors" : "d.safetensors")).string();
    save_weights(a, path, a.state_dict(), layout);
    DiT b(tiny_config(), uint64_t{99});
    b.load_state_dict(load_weights(b, path), path);
    for (const auto& [name, t] : a.state_dict())
      if (name != "pos_embed" || layout == "opendit") EXPECT_TRUE(at::equal(t, b.state_dict().at(name))) << name;
  }
  EXPECT_THROW(a.export_weights(a.state_dict(), "pixart"), Error);
  auto meta = io::load_safetensors((tmp / "o.safetensors").string()).metadata;
  EXPECT_EQ(meta.at("format"), "opendit.dit");
  EXPECT_NE(meta.at("config").find("\"hidden_size\":64"), std::string::npos);
  std::filesystem::remove_all(tmp);
}

TEST(DiT, MismatchedWeightsNameTheProblemsAndThePreset) {
  std::string dir = ref_dir("s2");
  ASSERT_FALSE(dir.empty());
  DiT tiny(tiny_config(), uint64_t{0});
  auto sd = load_weights(tiny, dir + "/weights.safetensors");
  auto msg = error_of([&] { tiny.load_state_dict(sd, "s2.safetensors"); });
  EXPECT_NE(msg.find("s2.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("wrong shape"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unexpected: blocks.10."), std::string::npos) << msg;  // map order: blocks.10 < blocks.2
  EXPECT_NE(msg.find("look like DiT-S/2"), std::string::npos) << msg;

  DiTConfig deeper = tiny_config();
  deeper.depth = 3;
  DiT d3(deeper, uint64_t{0});
  auto small = DiT(tiny_config(), uint64_t{0}).state_dict();
  msg = error_of([&] { d3.load_state_dict(small, "tiny"); });
  EXPECT_NE(msg.find("missing: blocks.2.attn.qkv.weight"), std::string::npos) << msg;

  small["blocks.1.mlp.fc1.weight"][0][0] = std::nan("");
  msg = error_of([&] { DiT(tiny_config(), uint64_t{0}).load_state_dict(small, "nan.safetensors"); });
  EXPECT_NE(msg.find("blocks.1.mlp.fc1.weight holds non-finite"), std::string::npos) << msg;
}

TEST(DiT, DiffusersEmbedderCopiesMustAgree) {
  DiT a(tiny_config(), uint64_t{3});
  auto d = official_to_diffusers(a.state_dict());
  auto& bias = d["transformer_blocks.1.norm1.emb.timestep_embedder.linear_1.bias"];
  bias = bias + 1;  // a new tensor: the copies share block 0's storage
  auto msg = error_of([&] { diffusers_to_official(d, "bad.safetensors"); });
  EXPECT_NE(msg.find("differs from block 0's copy"), std::string::npos) << msg;
  d.erase("proj_out_2.weight");
  msg = error_of([&] { diffusers_to_official(d, "bad.safetensors"); });
  EXPECT_NE(msg.find("lack 'proj_out_2.weight'"), std::string::npos) << msg;
  msg = error_of([&] { detect_layout({{"foo", at::zeros({1})}}, "x.safetensors"); });
  EXPECT_NE(msg.find("not DiT weights"), std::string::npos) << msg;
}

TEST(DiT, ConfigValidation) {
  DiTConfig c = tiny_config();
  c.num_heads = 5;
  EXPECT_THROW(c.validate(), Error);
  c = tiny_config();
  c.input_size = 9;
  EXPECT_THROW(c.validate(), Error);
  EXPECT_THROW(DiT(c, uint64_t{0}), Error);
}

TEST(DiT, ActivationCheckpointingGivesTheSameGradients) {
  DiTConfig cfg = tiny_config();
  cfg.learn_sigma = true;
  DiT model(cfg, uint64_t{5});
  for (const Param& p : model.parameters())
    if (p.trainable) p.tensor->copy_(0.1 * at::randn(p.tensor->sizes()));
  model.set_requires_grad(true);
  at::Tensor x = at::randn({3, 3, 8, 8}), t = at::tensor({3.0, 400.0, 999.0});
  at::Tensor y = at::tensor({int64_t{1}, int64_t{10}, int64_t{4}});
  auto grads = [&](bool ckpt) {
    model.set_recompute_blocks(ckpt ? -1 : 0);
    for (const Param& p : model.parameters())
      if (p.tensor->grad().defined()) p.tensor->mutable_grad() = at::Tensor();
    at::Tensor loss =
        (model.forward(x, t, labels_of(y)) * at::linspace(-1, 1, 6).view({1, 6, 1, 1})).pow(2).sum();
    loss.backward();
    std::map<std::string, at::Tensor> g;
    for (const Param& p : model.parameters())
      if (p.tensor->grad().defined()) g[p.name] = p.tensor->grad().clone();
    return std::make_pair(loss.item<double>(), g);
  };
  auto [loss_plain, plain] = grads(false);
  auto [loss_ckpt, ckpt] = grads(true);
  EXPECT_EQ(loss_plain, loss_ckpt);
  ASSERT_EQ(plain.size(), ckpt.size());
  EXPECT_EQ(plain.count("pos_embed"), 0u);
  for (const auto& [name, g] : plain) {
    double err = (g - ckpt.at(name)).abs().max().item<double>() / (g.abs().max().item<double>() + 1e-30);
    EXPECT_LE(err, 1e-6) << name;
  }
}
