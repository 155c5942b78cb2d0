// Latte against diffusers' LatteTransformer3DModel (tests/ref/make_latte_ref.py: a small random config, every
// weight non-zero), forward and backward <= 1e-5 in float32, with and without the caption mask; its weights load
// under diffusers' own names; sizes, registry and bad input.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "core/error.hpp"
#include "io/safetensors.hpp"
#include "models/latte/latte.hpp"
#include "models/registry.hpp"
#include "support/support.hpp"

using namespace opendit;
using namespace opendit::models;
using namespace opendit::models::latte;
using opendit::test::error_of;

namespace {

struct Ref {
  std::string config_json;
  StateDict weights;
  std::map<std::string, at::Tensor> io;
};

Ref load_ref() {
  const char* d = std::getenv("OPENDIT_REF_DIR");
  if (!d) throw std::runtime_error("OPENDIT_REF_DIR is not set (run through ctest)");
  const std::string dir = std::string(d) + "/latte/tiny";
  std::ifstream in(dir + "/config.json");
  std::stringstream text;
  text << in.rdbuf();
  Ref r;
  r.config_json = text.str();
  for (auto& [k, v] : io::load_safetensors(dir + "/weights.safetensors").tensors) r.weights[k] = v;
  r.io = io::load_safetensors(dir + "/io.safetensors").tensors;
  return r;
}

Condition caption(const at::Tensor& y, const at::Tensor& mask) {
  Condition c;
  c.text = y;
  if (mask.defined()) c.text_mask = mask.to(at::kBool);
  return c;
}

double rel_error(const at::Tensor& a, const at::Tensor& ref) {
  return ((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item<double>();
}

void expect_matches(int recompute) {
  Ref r = load_ref();
  // The model from diffusers' config.json, the weights under diffusers' names (no table buffers in the file).
  auto model = model_type("latte").from_weights(r.weights, r.config_json, "tiny");
  EXPECT_EQ(&model_type_of(r.weights, "tiny"), &model_type("latte"));
  model->load_state_dict(model->import_weights(r.weights, "tiny"), "tiny");
  EXPECT_EQ(model->num_parameters() - model->state_dict().at("pos_embed").numel() -
                model->state_dict().at("temp_pos_embed").numel(),
            r.io.at("num_params").item<int64_t>());
  model->set_recompute_blocks(recompute);
  model->set_requires_grad(true);
  at::Tensor x = r.io.at("x").clone().requires_grad_(true);
  at::Tensor out = model->forward(x, r.io.at("t"), caption(r.io.at("y"), r.io.at("mask")));
  ASSERT_EQ(out.sizes(), r.io.at("out").sizes());
  const double err = rel_error(out.detach(), r.io.at("out"));
  EXPECT_LE(err, 1e-5) << "forward";
  (out * r.io.at("grad_out")).sum().backward();
  double worst = rel_error(x.grad(), r.io.at("grad.x"));
  EXPECT_LE(worst, 1e-5) << "grad x";
  int compared = 0;
  for (const Param& p : model->parameters()) {
    auto it = r.io.find("grad." + p.name);
    if (it == r.io.end()) continue;
    // The key biases' true gradient is 0 (softmax ignores a bias added to every key of a query): both sides hold
    // rounding noise, compared in absolute terms against the scale of the other gradients (>= 0.1 here).
    const bool key_bias = p.name.size() > 10 && p.name.substr(p.name.size() - 10) == ".to_k.bias";
    const double e = key_bias ? (p.tensor->grad() - it->second).abs().max().item<double>()
                              : rel_error(p.tensor->grad(), it->second);
    EXPECT_LE(e, 1e-5) << p.name;
    worst = std::max(worst, e), ++compared;
  }
  EXPECT_EQ(compared, int(r.weights.size()));
  at::NoGradGuard no_grad;
  const at::Tensor all = model->forward(r.io.at("x"), r.io.at("t"), caption(r.io.at("y"), at::Tensor()));
  EXPECT_LE(rel_error(all, r.io.at("out_nomask")), 1e-5) << "without a mask";
  std::printf("[latte, recompute %d] forward %.3g, %d gradients: worst %.3g\n", recompute, err, compared, worst);
}

}  // namespace

TEST(Latte, MatchesDiffusers) { expect_matches(0); }
TEST(Latte, MatchesDiffusersWithRecompute) { expect_matches(-1); }

TEST(Latte, DeckPresetSizesAndBadInput) {
  config::Deck d(deck_schema());
  d.set("model.type=latte");
  d.set("model.input_size=64");
  auto m = make_model(d, std::nullopt);  // Latte-XL/2 at 16 x 512^2
  EXPECT_EQ(m->type(), "latte");
  EXPECT_EQ(m->sample_shape(), (std::vector<int64_t>{4, 16, 64, 64}));
  EXPECT_EQ(m->out_channels(), 8);
  // Latte-1's transformer: 1,057,246,880 parameters as diffusers counts them (the two tables are buffers).
  EXPECT_EQ(m->num_parameters() - 1024 * 1152 - 16 * 1152, 1'057'246'880);
  EXPECT_TRUE(m->condition_spec().null_is_text);
  auto msg = error_of([&] { m->null_condition(Condition{}); });
  EXPECT_NE(msg.find("negative prompt"), std::string::npos) << msg;
  d.set("model.preset=STDiT-XL/2");
  msg = error_of([&] { make_model(d, std::nullopt); });
  EXPECT_NE(msg.find("not a Latte preset"), std::string::npos) << msg;
  auto again = model_from_config_json(m->config_json(), std::nullopt);
  EXPECT_EQ(again->config_json(), m->config_json());
}
