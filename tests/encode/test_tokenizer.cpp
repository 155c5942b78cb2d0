// T5 tokenizer and Open-Sora caption cleaning against the Python references of tests/ref/make_tokenizer_ref.py
// ($OPENDIT_REF_DIR/tokenizer: a tiny spiece.model, tokens.json from sentencepiece + transformers, clean.json from
// diffusers' _clean_caption as Open-Sora applies it).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "models/t5/caption_clean.hpp"
#include "models/t5/tokenizer.hpp"

namespace fs = std::filesystem;
using nlohmann::json;
using opendit::models::t5::Tokenizer;

namespace {

std::string ref_dir() {
  const char* d = std::getenv("OPENDIT_REF_DIR");
  return d ? std::string(d) + "/tokenizer" : std::string();
}

json read_json(const std::string& name) {
  std::ifstream f(ref_dir() + "/" + name);
  if (!f) throw std::runtime_error("cannot read " + ref_dir() + "/" + name);
  return json::parse(f);
}

#define NEED_REF()                                                     \
  if (ref_dir().empty()) GTEST_SKIP() << "OPENDIT_REF_DIR is not set"; \
  ASSERT_TRUE(fs::exists(ref_dir() + "/STAMP")) << "no reference data in " << ref_dir()

// A fresh empty folder under the temp dir.
fs::path temp_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("opendit_tok_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

// Runs f, expects opendit::Error whose message holds every one of parts.
template <typename F>
void expect_error(F f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no opendit::Error thrown";
  } catch (const opendit::Error& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(T5Tokenizer, MatchesSentencePieceAndTransformers) {
  NEED_REF();
  const Tokenizer tok(ref_dir() + "/spiece.model");
  const json ref = read_json("tokens.json");
  EXPECT_EQ(tok.vocab_size(), ref["vocab_size"].get<int64_t>());
  EXPECT_EQ(tok.pad_id(), 0);
  EXPECT_EQ(tok.eos_id(), 1);
  int checked = 0;
  for (const auto& c : ref["cases"]) {
    const std::string caption = c["caption"];
    const int64_t max_length = c["max_length"];
    SCOPED_TRACE("caption \"" + caption + "\", max_length " + std::to_string(max_length));
    const std::vector<int64_t> ids = tok.encode(caption);
    // Where Python's sentencepiece had a tie of equal scores and ours broke it the other way, the reference ids are
    // those of that other segmentation (the library versions differ; see the report in tokenizer.cpp).
    bool tie = false;
    for (const auto& t : c["tied_ids"]) tie = tie || ids == t.get<std::vector<int64_t>>();
    if (tie) std::cout << "[ NOTE     ] tie broken differently by this sentencepiece: \"" << caption << "\"\n";
    if (!c["sp_ids"].is_null() && !tie) EXPECT_EQ(ids, c["sp_ids"].get<std::vector<int64_t>>());
    const auto b = tok({caption, "", caption}, max_length);  // the caption among others: rows are independent
    ASSERT_EQ(b.batch, 3);
    ASSERT_EQ(b.length, max_length);
    ASSERT_EQ(b.ids.size(), size_t(3 * max_length));
    const auto hf_ids = c["hf_ids"].get<std::vector<int64_t>>();
    const auto hf_mask = c["hf_mask"].get<std::vector<int64_t>>();
    for (int row : tie ? std::vector<int>{} : std::vector<int>{0, 2}) {
      EXPECT_EQ(std::vector<int64_t>(b.ids.begin() + row * max_length, b.ids.begin() + (row + 1) * max_length), hf_ids);
      EXPECT_EQ(std::vector<int64_t>(b.mask.begin() + row * max_length, b.mask.begin() + (row + 1) * max_length),
                hf_mask);
    }
    int64_t valid = 0;
    for (auto m : hf_mask) valid += m;
    EXPECT_EQ(b.lengths[0], valid);
    if (tie)
      EXPECT_EQ(std::vector<int64_t>(b.ids.begin(), b.ids.begin() + valid - 1),
                std::vector<int64_t>(ids.begin(), ids.begin() + valid - 1));
    EXPECT_EQ(b.truncated[0], int64_t(ids.size()) > max_length);
    EXPECT_EQ(b.ids[valid - 1], tok.eos_id());  // EOS kept by truncation
    EXPECT_EQ(b.lengths[1], 1);                 // "" is just EOS
    EXPECT_FALSE(b.truncated[1]);
    ++checked;
  }
  EXPECT_GT(checked, 50);
}

TEST(T5Tokenizer, ExtraIdsAndBadMaxLength) {
  NEED_REF();
  const Tokenizer tok(ref_dir() + "/spiece.model");
  EXPECT_EQ(tok.extra_id(0), tok.vocab_size() - 1);
  EXPECT_EQ(tok.extra_id(99), tok.vocab_size() - 100);
  EXPECT_EQ(tok.encode("<extra_id_7>"), (std::vector<int64_t>{tok.extra_id(7), tok.eos_id()}));
  EXPECT_THROW(tok({"a"}, 0), opendit::Error);
  expect_error([&] { tok({"a"}, -3); }, {"max_length", "-3"});
  EXPECT_EQ(tok.path(), ref_dir() + "/spiece.model");
}

// The cleaning option runs each caption through clean_caption before the pieces.
TEST(T5Tokenizer, CleaningOption) {
  NEED_REF();
  const Tokenizer tok(ref_dir() + "/spiece.model");
  const std::string caption = "A <b>Cat</b> on https://example.com/x.jpg -- sitting!!";
  const opendit::models::t5::TokenBatch plain = tok({caption}, 32), cleaned = tok({caption}, 32, /*clean=*/true);
  std::vector<int64_t> want = tok.encode(opendit::models::t5::clean_caption(caption));
  want.resize(32, tok.pad_id());
  EXPECT_EQ(cleaned.ids, want);
  EXPECT_NE(plain.ids, cleaned.ids);
}

TEST(T5Tokenizer, LoadErrors) {
  NEED_REF();
  const fs::path dir = temp_dir("load");
  const std::string missing = (dir / "nothere" / "spiece.model").string();
  expect_error([&] { Tokenizer t(missing); }, {missing, "no such file"});
  expect_error([&] { Tokenizer t(dir.string()); }, {dir.string()});  // a folder is not a model file

  const std::string junk = (dir / "junk.model").string();
  {
    std::ofstream f(junk, std::ios::binary);
    for (int i = 0; i < 4096; ++i) f.put(char((i * 2654435761u) >> 13));
  }
  expect_error([&] { Tokenizer t(junk); }, {junk, "not a valid SentencePiece model"});

  const std::string cut = (dir / "cut.model").string();
  {
    std::ifstream in(ref_dir() + "/spiece.model", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(cut, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  }
  expect_error([&] { Tokenizer t(cut); }, {cut, "not a valid SentencePiece model"});
  fs::remove_all(dir);
}

TEST(T5Tokenizer, FindSpieceModel) {
  NEED_REF();
  using opendit::models::t5::find_spiece_model;
  const fs::path dir = temp_dir("find");
  expect_error([&] { find_spiece_model(dir.string()); },
               {(dir / "spiece.model").string(), (dir / "tokenizer/spiece.model").string()});
  fs::create_directories(dir / "tokenizer");
  fs::copy_file(ref_dir() + "/spiece.model", dir / "tokenizer/spiece.model");
  EXPECT_EQ(find_spiece_model(dir.string()), (dir / "tokenizer/spiece.model").string());
  fs::copy_file(ref_dir() + "/spiece.model", dir / "spiece.model");
  EXPECT_EQ(find_spiece_model(dir.string()), (dir / "spiece.model").string());
  EXPECT_EQ(find_spiece_model((dir / "spiece.model").string()), (dir / "spiece.model").string());
  fs::remove_all(dir);
}

TEST(CleanCaption, MatchesOpenSora) {
  NEED_REF();
  int checked = 0, skipped = 0;
  for (const auto& c : read_json("clean.json")) {
    const std::string in = c["input"], expected = c["expected"];
    if (c.contains("known_difference")) {
      ++skipped;
      std::cout << "[ SKIPPED  ] clean_caption(\"" << in << "\"): " << c["known_difference"].get<std::string>() << "\n";
      continue;
    }
    EXPECT_EQ(opendit::models::t5::clean_caption(in), expected) << "input: \"" << in << "\"";
    ++checked;
  }
  EXPECT_GT(checked, 40);
  EXPECT_LE(skipped, 5);
}

TEST(CleanCaption, LongCaptionAndInvalidUtf8) {
  std::string longer;
  for (int i = 0; i < 3000; ++i) longer += "\"a cat on a mat ";
  EXPECT_FALSE(opendit::models::t5::clean_caption(longer).empty());
  EXPECT_EQ(opendit::models::t5::clean_caption("caf\xc3 ok"), "caf\xef\xbf\xbd ok");
}
