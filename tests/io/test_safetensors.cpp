// io/safetensors: reading files the `safetensors` package wrote (tests/ref/make_safetensors_ref.py), writing files
// it reads (tests/ref/check_safetensors_written.py checks the file CppWritesForPython leaves), C++ round trips of
// every dtype, and one clear opendit::Error for every way a file can be malformed.
#include <ftw.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "support/support.hpp"
#include "io/safetensors.hpp"

using opendit::Error;
using opendit::io::load_safetensors;
using opendit::io::save_safetensors;
using TensorMap = std::map<std::string, at::Tensor>;
using opendit::test::bit_equal;
using opendit::test::error_of;
using opendit::test::read_bytes;
using opendit::test::write_bytes;

namespace {

const std::map<std::string, at::ScalarType> kDtypes = {
    {"F64", at::kDouble}, {"F32", at::kFloat}, {"F16", at::kHalf}, {"BF16", at::kBFloat16}, {"I64", at::kLong},
    {"I32", at::kInt},    {"I16", at::kShort}, {"I8", at::kChar},  {"U8", at::kByte},        {"BOOL", at::kBool}};

std::string le64(std::uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(n >> (8 * i));
  return s;
}

// A safetensors file from its parts: length, header text, data.
std::string file_bytes(const std::string& header, const std::string& data) {
  return le64(header.size()) + header + data;
}

// The bytes of a tensor in C order (NaN payloads and -0.0 included).
std::string tensor_bytes(const at::Tensor& t) {
  const at::Tensor c = t.cpu().contiguous();
  return {static_cast<const char*>(c.data_ptr()), c.nbytes()};
}


// The error is one line and names every word given.
void expect_message(const std::string& message, const std::vector<std::string>& words) {
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  for (const std::string& w : words) EXPECT_NE(message.find(w), std::string::npos) << message << "\n  lacks: " << w;
}

bool exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

// A fresh directory per test, removed afterwards. POSIX calls, not std::filesystem: libtorch.so exports its own
// std::filesystem symbols, and the dynamic linker binds ours to them (remove_all then jumps to address 0).
class Safetensors : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = opendit::cat(tmp && *tmp ? tmp : "/tmp", "/opendit_safetensors_XXXXXX");
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr) << pattern;
    dir_ = pattern;
  }
  void TearDown() override {
    auto remove = [](const char* p, const struct stat*, int, struct FTW*) { return std::remove(p); };
    if (!dir_.empty()) ::nftw(dir_.c_str(), remove, 16, FTW_DEPTH | FTW_PHYS);
  }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  std::string dir_;
};

std::string ref_dir() {
  const char* ref = std::getenv("OPENDIT_REF_DIR");
  return ref ? std::string(ref) + "/safetensors" : "";
}

// One tensor of every supported dtype in several layouts: odd, 0-d, empty and non-contiguous.
TensorMap every_dtype() {
  at::manual_seed(7);
  TensorMap out;
  for (const auto& [name, type] : kDtypes) {
    auto make = [type = type](at::IntArrayRef shape) {
      if (at::isFloatingType(type)) return at::randn(shape, at::kDouble).mul(100).to(type);
      if (type == at::kBool) return at::randint(0, 2, shape, at::kLong).to(at::kBool);
      if (type == at::kByte) return at::randint(0, 256, shape, at::kLong).to(type);
      return at::randint(-128, 128, shape, at::kLong).to(type);
    };
    out[name + ".odd"] = make({3, 5, 7});
    out[name + ".scalar"] = make({});
    out[name + ".empty"] = make({0, 3});
    out[name + ".strided"] = make({6, 8}).t().slice(0, 1, 8, 3);  // shape [3, 6], strides [1, 24]
  }
  out["F32.specials"] = at::tensor({NAN, INFINITY, -INFINITY, -0.0f, 1e-40f});
  if (at::hasCUDA()) out["F32.cuda"] = at::randn({4, 5}, at::kFloat).to(at::kCUDA);
  return out;
}

}  // namespace

// ---- against the reference library ---------------------------------------------------------------

TEST_F(Safetensors, ReadsReferenceFileBitExactly) {
  const std::string ref = ref_dir();
  if (ref.empty()) GTEST_SKIP() << "OPENDIT_REF_DIR is not set (run under ctest)";
  const auto file = load_safetensors(ref + "/reference.safetensors");
  const auto index = nlohmann::json::parse(read_bytes(ref + "/expected/index.json"));

  EXPECT_EQ(file.metadata, index["metadata"].get<decltype(file.metadata)>());
  ASSERT_EQ(file.tensors.size(), index["tensors"].size());
  for (const auto& [name, want] : index["tensors"].items()) {
    SCOPED_TRACE(name);
    ASSERT_EQ(file.tensors.count(name), 1u);
    const at::Tensor& t = file.tensors.at(name);
    EXPECT_TRUE(t.is_contiguous());
    EXPECT_EQ(t.device(), at::kCPU);
    EXPECT_EQ(t.scalar_type(), kDtypes.at(want["dtype"]));
    EXPECT_EQ(t.sizes().vec(), want["shape"].get<std::vector<std::int64_t>>());
    EXPECT_EQ(tensor_bytes(t), read_bytes(ref + "/expected/" + want["file"].get<std::string>()));
  }
  // A few values known without the .bin files.
  EXPECT_EQ(file.tensors.at("scalar.f64").dim(), 0);
  EXPECT_EQ(file.tensors.at("scalar.f64").item<double>(), 3.25);
  EXPECT_EQ(file.tensors.at("scalar.i32").item<int>(), -7);
  EXPECT_EQ(file.tensors.at("i64.range")[0].item<std::int64_t>(), -5'000'000'000'000'000);
  EXPECT_TRUE(std::isnan(file.tensors.at("f32.matrix")[0][0].item<float>()));
  EXPECT_EQ(file.tensors.at("empty.f32").sizes(), at::IntArrayRef({0, 4}));
}

// Leaves $OPENDIT_SAFETENSORS_OUT for the ctest check_safetensors_written, which reads it with the reference library.
TEST_F(Safetensors, CppWritesForPython) {
  const std::string ref = ref_dir();
  const char* out = std::getenv("OPENDIT_SAFETENSORS_OUT");
  if (ref.empty() || !out) GTEST_SKIP() << "OPENDIT_REF_DIR / OPENDIT_SAFETENSORS_OUT not set (run under ctest)";
  std::remove(out);
  auto file = load_safetensors(ref + "/reference.safetensors");
  file.tensors["extra.transposed"] = at::arange(12, at::kLong).reshape({3, 4}).t();
  file.metadata["writer"] = "opendit";
  save_safetensors(out, file.tensors, file.metadata);
  EXPECT_FALSE(exists(std::string(out) + ".tmp"));
  const auto back = load_safetensors(out);
  EXPECT_EQ(back.metadata, file.metadata);
  for (const auto& [name, t] : file.tensors) EXPECT_TRUE(bit_equal(back.tensors.at(name), t)) << name;
}

// ---- C++ round trip --------------------------------------------------------------------------------

TEST_F(Safetensors, RoundTripEveryDtype) {
  const TensorMap tensors = every_dtype();
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"step", "1200"}, {"\u00fc", "\u2713"}};
  save_safetensors(path("rt.safetensors"), tensors, metadata);
  EXPECT_FALSE(exists(path("rt.safetensors.tmp")));

  const auto back = load_safetensors(path("rt.safetensors"));
  EXPECT_EQ(back.metadata, metadata);
  ASSERT_EQ(back.tensors.size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    ASSERT_EQ(back.tensors.count(name), 1u) << name;
    const at::Tensor& b = back.tensors.at(name);
    EXPECT_TRUE(bit_equal(b, t)) << name;
    EXPECT_TRUE(b.is_contiguous()) << name;
    EXPECT_EQ(b.storage().nbytes(), b.nbytes()) << name << ": owns exactly its own memory";
  }

  // Layout: header padded to 8 bytes, names sorted, data packed in that order.
  const std::string bytes = read_bytes(path("rt.safetensors"));
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ(n % 8, 0u);
  const auto header = nlohmann::ordered_json::parse(bytes.substr(8, n));
  std::uint64_t end = 0;
  std::string previous;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    EXPECT_LT(previous, name);
    EXPECT_EQ(entry["data_offsets"][0].get<std::uint64_t>(), end) << name;
    end = entry["data_offsets"][1].get<std::uint64_t>();
    previous = name;
  }
  EXPECT_EQ(8 + n + end, bytes.size());

  // Saving again replaces the file; no tensors and no metadata is a valid file too.
  save_safetensors(path("rt.safetensors"), {});
  const auto empty = load_safetensors(path("rt.safetensors"));
  EXPECT_TRUE(empty.tensors.empty());
  EXPECT_TRUE(empty.metadata.empty());
}

// ---- malformed files -------------------------------------------------------------------------------

// a: F32 [2, 3] at [0, 24); b: I16 [4] at [24, 32); 32 data bytes. Each case changes one thing.
const std::string kHeader =
    R"({"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
    R"("b":{"dtype":"I16","shape":[4],"data_offsets":[24,32]}})";

std::string replaced(std::string s, const std::string& from, const std::string& to) {
  const auto at = s.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  return s.replace(at, from.size(), to);
}

TEST_F(Safetensors, MalformedHeadersAreClearErrors) {
  const std::string data(32, '\0');
  write_bytes(path("ok.safetensors"), file_bytes(kHeader, data));
  ASSERT_EQ(load_safetensors(path("ok.safetensors")).tensors.size(), 2u);

  struct Case {
    std::string header;
    std::vector<std::string> words;
  };
  const std::vector<Case> cases = {
      {"{\"a\":", {"not valid JSON"}},
      {"{\"a\xff\":{}}", {"not valid JSON", "UTF-8"}},
      {"[1, 2]", {"must be a JSON object", "array"}},
      {R"({"a":5})", {"\"a\"", "object", "number"}},
      {R"({"a\nb":5})", {"\"a\\nb\"", "object"}},  // the name escaped: the message stays one line
      {replaced(kHeader, R"("dtype":"F32",)", ""), {"\"a\"", "lacks \"dtype\""}},
      {replaced(kHeader, R"("shape":[2,3],)", ""), {"\"a\"", "lacks \"shape\""}},
      {replaced(kHeader, R"(,"data_offsets":[0,24])", ""), {"\"a\"", "lacks \"data_offsets\""}},
      {replaced(kHeader, R"("F32")", "5"), {"\"a\"", "\"dtype\" must be a string", "5"}},
      {replaced(kHeader, R"("F32")", R"("F8_E4M3")"), {"\"a\"", "unsupported dtype", "F8_E4M3"}},
      {replaced(kHeader, "[2,3]", R"("2x3")"), {"\"a\"", "\"shape\" must be an array"}},
      {replaced(kHeader, "[2,3]", R"([2,"3"])"), {"\"a\"", "shape dimension", "non-negative integer", "\"3\""}},
      {replaced(kHeader, "[2,3]", "[-2,3]"), {"\"a\"", "shape dimension", "-2"}},
      {replaced(kHeader, "[2,3]", "[2.5,3]"), {"\"a\"", "shape dimension", "2.5"}},
      {replaced(kHeader, "[2,3]", "[4294967296,4294967296,16]"), {"\"a\"", "overflows"}},
      {replaced(replaced(kHeader, "[2,3]", "[0,4611686018427387904,4611686018427387904]"), "[0,24]", "[0,0]"),
       {"\"a\"", "overflows"}},  // empty, but torch's strides would overflow
      {replaced(kHeader, "[2,3]", "[2305843009213693952,2]"), {"\"a\"", "overflows"}},  // numel fits, bytes do not
      {replaced(kHeader, "[0,24]", "[0]"), {"\"a\"", "\"data_offsets\" must be [begin, end]"}},
      {replaced(kHeader, "[0,24]", R"(["0","24"])"), {"\"a\"", "data_offsets begin", "non-negative integer"}},
      {replaced(kHeader, "[0,24]", "[0,-24]"), {"\"a\"", "data_offsets end", "-24"}},
      {replaced(kHeader, "[0,24]", "[24,0]"), {"\"a\"", "[24, 0]", "begin > end"}},
      {replaced(kHeader, "[0,24]", "[0,20]"), {"\"a\"", "span 20 bytes", "F32 [2, 3] needs 24"}},
      {replaced(replaced(kHeader, "[4]", "[8]"), "[24,32]", "[24,40]"), {"\"b\"", "end 40", "32 bytes"}},
      {replaced(kHeader, "[24,32]", "[16,24]"), {"\"a\"", "\"b\"", "[16, 24]", "overlap"}},
      {replaced(kHeader, R"({"k":"v"})", R"("v")"), {"__metadata__", "must be an object", "string"}},
      {replaced(kHeader, R"({"k":"v"})", R"({"k":1})"), {"__metadata__", "\"k\"", "must be a string", "1"}},
      {replaced(kHeader, R"("b":)", R"("a":)"), {"\"a\"", "twice"}},
  };
  for (std::size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].header);
    const std::string p = path(opendit::cat("bad", i, ".safetensors"));
    write_bytes(p, file_bytes(cases[i].header, data));
    std::vector<std::string> words = cases[i].words;
    words.push_back(p);
    expect_message(error_of([&] { load_safetensors(p); }), words);
  }
}

TEST_F(Safetensors, DamagedBytesAreClearErrors) {
  const std::string good = file_bytes(kHeader, std::string(32, '\0'));
  const std::string p = path("bad.safetensors");
  auto expect = [&](const std::string& bytes, std::vector<std::string> words) {
    write_bytes(p, bytes);
    words.push_back(p);
    expect_message(error_of([&] { load_safetensors(p); }), words);
  };
  expect(good.substr(0, 5), {"5 bytes", "8-byte header length"});
  expect("", {"0 bytes"});
  expect(le64(0) + good.substr(8), {"header length is 0"});
  expect(le64(good.size()) + good.substr(8), {"header length", "truncated"});
  expect(le64(1ull << 40) + good.substr(8), {"100 MiB"});
  expect(le64(~0ull) + good.substr(8), {"100 MiB"});
  expect(replaced(good, "{", "x"), {"not valid JSON"});
  expect(good.substr(0, good.size() - 3), {"\"b\"", "past the data buffer of 29 bytes", "truncated"});
  expect(file_bytes(R"({"m":{"dtype":"BOOL","shape":[4],"data_offsets":[0,4]}})", std::string("\1\0\2\1", 4)),
         {"\"m\"", "BOOL element 2", "byte 2"});

  // Not a file at all.
  expect_message(error_of([&] { load_safetensors(path("missing.safetensors")); }),
                 {path("missing.safetensors"), "No such file or directory"});
  expect_message(error_of([&] { load_safetensors(dir_); }), {dir_, "not a regular file"});
}

// Random damage to a valid file: loading either succeeds or throws opendit::Error, never anything else.
TEST_F(Safetensors, RandomDamageNeverEscapesAsAnotherError) {
  const std::string good = file_bytes(kHeader, std::string(32, '\0'));
  const std::string p = path("fuzz.safetensors");
  std::mt19937 rng(2024);
  int errors = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::string bytes = good;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int i = 0; i < flips; ++i) bytes[rng() % bytes.size()] = static_cast<char>(rng() % 256);
    if (trial % 5 == 0) bytes.resize(rng() % bytes.size());
    write_bytes(p, bytes);
    try {
      load_safetensors(p);
    } catch (const Error&) {
      ++errors;
    } catch (const std::exception& e) {
      FAIL() << "trial " << trial << ": not an opendit::Error: " << e.what();
    }
  }
  EXPECT_GT(errors, 2000);  // most damage is caught (a flipped data byte or metadata letter is not)
}

// ---- saving errors ---------------------------------------------------------------------------------

TEST_F(Safetensors, SaveErrorsNameThePathAndReason) {
  const TensorMap one = {{"w", at::ones({2, 2})}};
  const std::string no_dir = path("no_such_dir/out.safetensors");
  expect_message(error_of([&] { save_safetensors(no_dir, one); }), {no_dir, "No such file or directory"});
  write_bytes(path("plain_file"), "x");
  const std::string under_file = path("plain_file/out.safetensors");
  expect_message(error_of([&] { save_safetensors(under_file, one); }), {under_file, "Not a directory"});

  // A failed save leaves an existing file as it was.
  const std::string p = path("keep.safetensors");
  save_safetensors(p, one);
  expect_message(error_of([&] { save_safetensors(p, {{"z", at::ones({2}, at::kComplexFloat)}}); }),
                 {p, "'z'", "unsupported dtype", "ComplexFloat"});
  expect_message(error_of([&] { save_safetensors(p, {{"__metadata__", at::ones({2})}}); }), {p, "reserved"});
  expect_message(error_of([&] { save_safetensors(p, {{"u", at::Tensor()}}); }), {p, "'u'", "undefined"});
  expect_message(error_of([&] { save_safetensors(p, one, {{"k", "\xff"}}); }), {p, "UTF-8"});
  EXPECT_TRUE(bit_equal(load_safetensors(p).tensors.at("w"), one.at("w")));
  EXPECT_FALSE(exists(p + ".tmp"));
}
