// The model interface and the registry: decks, checkpoints' config JSON and bare weights all reach the right model;
// a model described without a seed holds no memory; conditions and their dropout.
#include <gtest/gtest.h>

#include "core/error.hpp"
#include "models/dit/weights.hpp"
#include "models/dit_oracle.hpp"
#include "models/registry.hpp"
#include "support/support.hpp"

using namespace opendit;
using namespace opendit::models;
using opendit::test::error_of;

namespace {

config::Deck tiny_deck() {
  config::Deck d(deck_schema());
  for (const char* s : {"model.preset=custom", "model.depth=2", "model.hidden_size=32", "model.num_heads=4",
                        "model.patch_size=2", "model.in_channels=3", "model.input_size=8", "model.num_classes=5"})
    d.set(s);
  return d;
}

}  // namespace

TEST(Registry, DecksPickTheModelByType) {
  ASSERT_FALSE(model_types().empty());
  EXPECT_EQ(model_types().front().name, "dit");
  auto m = make_model(tiny_deck(), uint64_t{1});
  EXPECT_EQ(m->type(), "dit");
  EXPECT_EQ(m->sample_shape(), (std::vector<int64_t>{3, 8, 8}));
  EXPECT_EQ(m->out_channels(), 6);
  EXPECT_TRUE(m->learn_sigma());
  EXPECT_EQ(m->condition_spec().kind, ConditionKind::Labels);
  EXPECT_EQ(m->condition_spec().num_classes, 5);
  EXPECT_DOUBLE_EQ(m->condition_spec().dropout, 0.1);
  auto msg = error_of([] { model_type("stdit-xl"); });
  EXPECT_NE(msg.find("no such model (known: dit, stdit, latte)"), std::string::npos) << msg;
  // The deck schema: model.type first, each type's keys, then the keys of every deck.
  const config::Schema& s = deck_schema();
  EXPECT_EQ(s.options.front().key, "model.type");
  EXPECT_NE(s.find("model.preset"), nullptr);
  EXPECT_NE(s.find("train.lr"), nullptr);
  EXPECT_EQ(config::base_schema().find("model.preset"), nullptr) << "DiT's keys belong to DiT";
}

TEST(Registry, ADescribedModelHoldsNoMemory) {
  config::Deck xl(deck_schema());  // the default: DiT-XL/2
  auto m = make_model(xl, std::nullopt);
  EXPECT_NEAR(m->num_parameters() / 1e6, 675, 7);
  EXPECT_NEAR(m->forward_flops(m->sample_shape()) / 1e9, 237.3, 2.4);
  for (const Param& p : m->parameters()) EXPECT_TRUE(p.tensor->is_meta()) << p.name;
  EXPECT_NE(m->describe().find("depth 28"), std::string::npos);
}

TEST(Registry, CheckpointJsonAndBareWeightsFindTheirModel) {
  auto m = make_model(tiny_deck(), uint64_t{1});
  // A checkpoint's JSON (without "type": written before the registry) gives the same model back.
  auto back = model_from_config_json(m->config_json(), uint64_t{1});
  EXPECT_EQ(back->config_json(), m->config_json());
  EXPECT_EQ(m->config_json().find("\"type\""), std::string::npos) << "DiT's JSON stays as checkpoints hold it";
  EXPECT_NE(error_of([] { model_from_config_json(R"({"type": "nope"})", std::nullopt); }).find("no such model"),
            std::string::npos);
  // Weights in either layout are recognised as DiT's.
  const StateDict sd = m->state_dict();
  EXPECT_EQ(&model_type_of(sd, "w"), &model_type("dit"));
  EXPECT_EQ(&model_type_of(dit::official_to_diffusers(sd), "w"), &model_type("dit"));
  auto msg = error_of([] { model_type_of({{"foo", at::zeros({1})}}, "x.safetensors"); });
  EXPECT_NE(msg.find("x.safetensors: not DiT weights"), std::string::npos) << msg;
  // Bare weights: heads and input size from a diffusers config.json beside them.
  auto inferred = model_type("dit").from_weights(dit::official_to_diffusers(sd),
                                                 R"({"sample_size": 8, "num_attention_heads": 4})", "folder");
  EXPECT_EQ(inferred->config_json(), m->config_json());
  msg = error_of([&] { model_type("dit").from_weights(dit::official_to_diffusers(sd), "", "folder"); });
  EXPECT_NE(msg.find("folder: the weights do not tell the"), std::string::npos) << msg;
}

TEST(Conditions, JoinSliceCheckAndDrop) {
  auto m = make_model(tiny_deck(), uint64_t{1});
  Condition c;
  c.labels = at::tensor({int64_t{0}, int64_t{3}, int64_t{4}});
  EXPECT_EQ(c.batch(), 3);
  const Condition null = m->null_condition(c);
  EXPECT_TRUE(at::equal(null.labels, at::full({3}, 5, at::kLong)));
  const Condition both = Condition::cat(c, null);
  EXPECT_EQ(both.batch(), 6);
  EXPECT_TRUE(at::equal(both.rows(3, 3).labels, null.labels));
  const Condition dropped = m->drop_condition(c, at::tensor({1, 0, 1}).to(at::kBool));
  EXPECT_TRUE(at::equal(dropped.labels, at::tensor({int64_t{5}, int64_t{3}, int64_t{5}})));
  // Bad conditions are named before any work.
  Condition floats;
  floats.labels = at::zeros({2});
  EXPECT_NE(error_of([&] { floats.check("guidance"); }).find("guidance: labels must be int64"), std::string::npos);
  Condition out_of_range;
  out_of_range.labels = at::tensor({int64_t{6}});
  EXPECT_NE(error_of([&] { m->check_condition(out_of_range); }).find("label 6 is outside [0, 5]"), std::string::npos);
  Condition text;
  text.text = at::zeros({2, 4, 8});
  text.text_mask = at::ones({2, 3});
  EXPECT_NE(error_of([&] { text.check("t"); }).find("text_mask must be [2, L]"), std::string::npos);
  EXPECT_THROW(Condition::cat(c, text), Error);
}
