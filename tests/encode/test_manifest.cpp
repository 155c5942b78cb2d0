// encode's inputs: CSV and JSONL manifests (quoting, relative paths, blank lines) and ImageNet-style folders (the
// label order of torchvision's ImageFolder: class folders sorted, files sorted by folder then name), and every
// mistake in them as one error with its file and line. torchvision is not installed here: the order is checked against
// its documented rule, not against the library.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.hpp"
#include "encode/manifest.hpp"
#include "support/support.hpp"

using namespace opendit;
using opendit::test::error_of;
namespace fs = std::filesystem;

namespace {
void touch(const fs::path& p) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << "x";
}
void write(const fs::path& p, const std::string& text) { std::ofstream(p, std::ios::binary) << text; }
}  // namespace

TEST(Manifest, CsvWithQuotesRelativePathsAndLabels) {
  test::TempDir tmp;
  touch(fs::path(tmp.path()) / "v/a.mp4");
  touch(fs::path(tmp.path()) / "v/b c.mp4");
  write(tmp.file("m.csv"), "label,path,caption,extra\r\n3,v/a.mp4,\"a cat, on a mat\",x\r\n\r\n"
                           "0,v/b c.mp4,\"she said \"\"hi\"\"\nand left\",y\n");
  const encode::InputList l = encode::read_manifest(tmp.file("m.csv"));
  ASSERT_EQ(l.items.size(), 2u);
  EXPECT_TRUE(l.has_captions && l.has_labels);
  EXPECT_EQ(l.items[0].path, tmp.file("v/a.mp4"));
  EXPECT_EQ(l.items[0].caption, "a cat, on a mat");
  EXPECT_EQ(l.items[0].label, 3);
  EXPECT_EQ(l.items[1].caption, "she said \"hi\"\nand left");
  EXPECT_EQ(l.items[1].line, 4);
}

TEST(Manifest, JsonLines) {
  test::TempDir tmp;
  touch(fs::path(tmp.path()) / "x.jpg");
  write(tmp.file("m.jsonl"), "{\"path\": \"x.jpg\", \"caption\": \"caf\\u00e9\"}\n\n{\"path\": \"" + tmp.file("x.jpg") +
                                 "\", \"caption\": \"two\"}\n");
  const encode::InputList l = encode::read_manifest(tmp.file("m.jsonl"));
  ASSERT_EQ(l.items.size(), 2u);
  EXPECT_TRUE(l.has_captions);
  EXPECT_FALSE(l.has_labels);
  EXPECT_EQ(l.items[0].caption, "caf\xc3\xa9");
  EXPECT_EQ(l.items[1].line, 3);
}

TEST(Manifest, EveryMistakeNamesItsLine) {
  test::TempDir tmp;
  touch(fs::path(tmp.path()) / "a.jpg");
  const std::vector<std::pair<std::string, std::string>> csv = {
      {"path,caption\na.jpg,ok\nmissing.jpg,x\n", "m.csv:3: " + tmp.file("missing.jpg") + " does not exist"},
      {"path,caption\na.jpg,ok,extra\n", "m.csv:2: 3 fields, the header has 2"},
      {"file,caption\na.jpg,x\n", "m.csv:1: the header has no \"path\" column (it names: file, caption)"},
      {"path\na.jpg\n", "neither a \"caption\" nor a \"label\""},
      {"path,label\na.jpg,cat\n", "m.csv:2: label \"cat\" is not a non-negative integer"},
      {"path,caption\na.jpg,\"never closed\n", "m.csv:2: a quoted field is never closed"},
      {"path,caption\n", "lists no files"},
      {"", "empty manifest"}};
  for (const auto& [text, want] : csv) {
    write(tmp.file("m.csv"), text);
    const std::string e = error_of([&] { encode::read_manifest(tmp.file("m.csv")); });
    EXPECT_NE(e.find(want), std::string::npos) << e;
  }
  const std::vector<std::pair<std::string, std::string>> jsonl = {
      {"{\"path\": \"a.jpg\", \"label\": 1}\n{\"path\": \"a.jpg\", \"label\": 2\n", "m.jsonl:2: not a JSON object"},
      {"{\"caption\": \"x\"}\n", "m.jsonl:1: no \"path\" string"},
      {"{\"path\": \"a.jpg\", \"label\": 1}\n{\"path\": \"a.jpg\", \"caption\": \"x\"}\n", "m.jsonl:2: has a caption"},
      {"{\"path\": \"a.jpg\", \"label\": -2}\n", "m.jsonl:1: \"label\" is not a non-negative integer"}};
  for (const auto& [text, want] : jsonl) {
    write(tmp.file("m.jsonl"), text);
    const std::string e = error_of([&] { encode::read_manifest(tmp.file("m.jsonl")); });
    EXPECT_NE(e.find(want), std::string::npos) << e;
  }
  EXPECT_NE(error_of([&] { encode::read_manifest(tmp.file("none.csv")); }).find("cannot be read"), std::string::npos);
  write(tmp.file("m.txt"), "x");
  EXPECT_NE(error_of([&] { encode::read_manifest(tmp.file("m.txt")); }).find("NAME.csv or NAME.jsonl"),
            std::string::npos);
}

TEST(Manifest, ImageFolderInTorchvisionOrder) {
  test::TempDir tmp;
  const fs::path r(tmp.path());
  for (const char* f : {"n02/b.JPEG", "n02/a.png", "n01/z.jpg", "n01/sub/a.jpg", "n01/sub c/a.jpg", "n01/notes.txt",
                        "n03/x.jpeg"})
    touch(r / f);
  const encode::InputList l = encode::scan_image_folder(tmp.path());
  EXPECT_EQ(l.class_names, (std::vector<std::string>{"n01", "n02", "n03"}));
  std::vector<std::string> rel;
  for (const auto& it : l.items) rel.push_back(fs::relative(it.path, r).string() + ":" + std::to_string(it.label));
  // Folders compare as the strings os.walk yields ("n01/sub" before "n01/sub c": a prefix first), then file names.
  EXPECT_EQ(rel, (std::vector<std::string>{"n01/z.jpg:0", "n01/sub/a.jpg:0", "n01/sub c/a.jpg:0", "n02/a.png:1",
                                           "n02/b.JPEG:1", "n03/x.jpeg:2"}));
  EXPECT_EQ(l.skipped_files, 1);
  EXPECT_NE(error_of([&] { encode::scan_image_folder(tmp.file("n01/z.jpg")); }).find("not a folder"),
            std::string::npos);
  fs::create_directories(tmp.file("empty/c1"));
  EXPECT_NE(error_of([&] { encode::scan_image_folder(tmp.file("empty")); }).find("no .jpg"), std::string::npos);
}
