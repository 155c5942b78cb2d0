#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "config/deck.hpp"
#include "models/registry.hpp"
#include "core/error.hpp"
#include "support/support.hpp"

using namespace opendit;
using namespace opendit::config;
using opendit::test::error_of;

namespace {

// A schema with one key of every type, so each parsing and validation path is exercised.
const Schema& test_schema() {
  static const Schema s = [] {
    Schema s;
    s.sections = {{"train", "t"}, {"model", "m"}};
    s.options = {
        {"train.steps", Type::Int, int64_t{10}, "steps", 1, 1000, {}},
        {"train.lr", Type::Float, 1e-4, "lr", 0, 1, {}},
        {"train.ema", Type::Bool, true, "ema", -1e300, 1e300, {}},
        {"model.name", Type::String, std::string("DiT"), "name", -1e300, 1e300, {}},
        {"model.precision", Type::Choice, std::string("bf16"), "precision", -1e300, 1e300, {"bf16", "fp32"}},
    };
    return s;
  }();
  return s;
}


bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST(Deck, DefaultsAndFile) {
  Deck d(test_schema());
  EXPECT_EQ(d.get_int("train.steps"), 10);
  EXPECT_EQ(d.origin("train.steps"), "default");
  Deck f = Deck::from_toml("[train]\nsteps = 20\nlr = 1   # an integer is a fine float\n[model]\nprecision = \"fp32\"\n",
                           "deck.toml", test_schema());
  EXPECT_EQ(f.get_int("train.steps"), 20);
  EXPECT_DOUBLE_EQ(f.get_float("train.lr"), 1.0);
  EXPECT_EQ(f.get_string("model.precision"), "fp32");
  EXPECT_EQ(f.get_string("model.name"), "DiT");
  EXPECT_EQ(f.origin("train.steps"), "deck.toml:2");
}

TEST(Deck, UnknownKeyNamesFileLineAndClosestKey) {
  auto msg = error_of([] { Deck::from_toml("[train]\nsteps = 2\nlearning = 0.1\n", "a.toml", test_schema()); });
  EXPECT_TRUE(contains(msg, "a.toml:3")) << msg;
  EXPECT_TRUE(contains(msg, "unknown key 'train.learning'")) << msg;
  EXPECT_TRUE(contains(msg, "did you mean 'train.lr'")) << msg;
  msg = error_of([] { Deck::from_toml("[trian]\nsteps = 2\n", "a.toml", test_schema()); });
  EXPECT_TRUE(contains(msg, "'trian.steps'") && contains(msg, "'train.steps'")) << msg;
  msg = error_of([] { Deck::from_toml("steps = 2\n", "a.toml", test_schema()); });
  EXPECT_TRUE(contains(msg, "a.toml:1") && contains(msg, "did you mean 'train.steps'")) << msg;
}

TEST(Deck, WrongTypeOrRangeSaysExpectedVsFound) {
  auto msg = error_of([] { Deck::from_toml("[train]\nsteps = 2.5\n", "a.toml", test_schema()); });
  EXPECT_TRUE(contains(msg, "a.toml:2") && contains(msg, "expects integer in [1, 1000], found 2.5")) << msg;
  msg = error_of([] { Deck::from_toml("[train]\nsteps = 0\n", "a.toml", test_schema()); });
  EXPECT_TRUE(contains(msg, "found 0")) << msg;
  msg = error_of([] { Deck::from_toml("[train]\nema = \"yes\"\n", "a.toml", test_schema()); });
  EXPECT_TRUE(contains(msg, "expects boolean, found \"yes\"")) << msg;
  msg = error_of([] { Deck::from_toml("[model]\nprecision = \"fp61\"\n", "a.toml", test_schema()); });
  EXPECT_TRUE(contains(msg, "one of bf16, fp32") && contains(msg, "closest: \"fp32\"")) << msg;
  msg = error_of([] { Deck::from_toml("[train]\nsteps = [1, 2]\n", "a.toml", test_schema()); });
  EXPECT_TRUE(contains(msg, "found array")) << msg;
  msg = error_of([] { Deck::from_toml("[train]\nlr = nan\n", "a.toml", test_schema()); });
  EXPECT_TRUE(contains(msg, "train.lr expects number in [0, 1]")) << msg;
}

TEST(Deck, SyntaxErrorNamesLine) {
  auto msg = error_of([] { Deck::from_toml("[train]\nsteps = \n", "bad.toml", test_schema()); });
  EXPECT_TRUE(contains(msg, "bad.toml:2") && contains(msg, "TOML syntax error")) << msg;
}

TEST(Deck, SetOverrides) {
  Deck d(test_schema());
  d.set("train.steps=30");
  d.set("train.lr = 2e-3");
  d.set("train.ema=false");
  d.set("model.name=\"XL\"");
  d.set("model.precision=fp32");
  EXPECT_EQ(d.get_int("train.steps"), 30);
  EXPECT_DOUBLE_EQ(d.get_float("train.lr"), 2e-3);
  EXPECT_FALSE(d.get_bool("train.ema"));
  EXPECT_EQ(d.get_string("model.name"), "XL");
  EXPECT_EQ(d.get_string("model.precision"), "fp32");
  EXPECT_EQ(d.origin("train.steps"), "--set");
}

TEST(Deck, SetErrors) {
  Deck d(test_schema());
  EXPECT_TRUE(contains(error_of([&] { d.set("train.steps"); }), "expected section.key=value"));
  auto msg = error_of([&] { d.set("train.stpes=3"); });
  EXPECT_TRUE(contains(msg, "did you mean 'train.steps'")) << msg;
  msg = error_of([&] { d.set("train.steps=abc"); });
  EXPECT_TRUE(contains(msg, "expects integer in [1, 1000], found 'abc'")) << msg;
  msg = error_of([&] { d.set("train.steps=5000"); });
  EXPECT_TRUE(contains(msg, "found 5000")) << msg;
  msg = error_of([&] { d.set("train.ema=1"); });
  EXPECT_TRUE(contains(msg, "expects boolean")) << msg;
  EXPECT_EQ(d.get_int("train.steps"), 10);  // failed sets change nothing
}

TEST(Deck, ResolvedTomlRoundTrips) {
  Deck d(test_schema());
  d.set("train.lr=0.25");
  d.set("model.name=quote\"me");
  Deck back = Deck::from_toml(d.to_toml(true), "resolved", test_schema());
  EXPECT_DOUBLE_EQ(back.get_float("train.lr"), 0.25);
  EXPECT_EQ(back.get_string("model.name"), "quote\"me");
  EXPECT_EQ(back.to_toml(), d.to_toml());
  EXPECT_EQ(d.to_json(),
            R"({"train":{"steps":10,"lr":0.25,"ema":true},"model":{"name":"quote\"me","precision":"bf16"}})");
}

// Floats print as written: the shortest text that reads back as the same double, still a TOML float.
TEST(Deck, FloatsPrintAsWritten) {
  Deck d(test_schema());
  d.set("train.lr=1e-4");
  EXPECT_TRUE(contains(d.to_toml(), "lr = 1e-4\n")) << d.to_toml();
  EXPECT_TRUE(contains(d.to_json(), "\"lr\":0.0001")) << d.to_json();
  d.set("train.lr=0.1");
  EXPECT_TRUE(contains(d.to_toml(), "lr = 0.1\n")) << d.to_toml();
  d.set("train.lr=1");
  EXPECT_TRUE(contains(d.to_toml(), "lr = 1.0\n")) << d.to_toml();  // a float, not the integer 1
  d.set("train.lr=0.30000000000000004");
  Deck back = Deck::from_toml(d.to_toml(), "resolved", test_schema());
  EXPECT_EQ(back.get_float("train.lr"), 0.1 + 0.2);
}

TEST(Deck, ConfigDocIsUpToDate) {
  std::ifstream f(std::string(OPENDIT_SOURCE_DIR) + "/docs/CONFIG.md");
  ASSERT_TRUE(f) << "docs/CONFIG.md is missing";
  std::stringstream ss;
  ss << f.rdbuf();
  EXPECT_EQ(ss.str(), schema_markdown(opendit::models::deck_schema()))
      << "docs/CONFIG.md is out of date: run `build/bin/opendit info --config-doc > docs/CONFIG.md`";
}

TEST(Deck, EveryShippedDeckIsValid) {
  for (const char* name : {"inputs/example.toml", "inputs/dit_digits.toml", "inputs/dit_xl2_imagenet256.toml"}) {
    std::ifstream f(std::string(OPENDIT_SOURCE_DIR) + "/" + name);
    ASSERT_TRUE(f) << name;
    std::stringstream ss;
    ss << f.rdbuf();
    EXPECT_NO_THROW(Deck::from_toml(ss.str(), name, opendit::models::deck_schema())) << name;
  }
}
