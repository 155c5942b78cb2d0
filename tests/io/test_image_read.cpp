// Reading JPEG and PNG inputs and DiT's preprocessing against PIL (tests/ref/make_images_ref.py): decoded pixels,
// PIL-compatible resizing (box, bilinear, bicubic; down and up) and center_crop_arr, and the files that must be
// refused.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <string>

#include "core/error.hpp"
#include "io/image_read.hpp"
#include "io/resample.hpp"
#include "io/safetensors.hpp"
#include "support/ref_data.hpp"
#include "support/support.hpp"

using namespace opendit;
using opendit::test::error_of;

namespace {

std::string image_ref(const std::string& name) { return test::ref_path("images", name); }

int max_diff(const at::Tensor& a, const at::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  if (a.sizes() != b.sizes()) return 999;
  return (a.to(at::kInt) - b.to(at::kInt)).abs().max().item<int>();
}

const std::map<std::string, at::Tensor>& refs() {
  static const auto r = io::load_safetensors(image_ref("ref.safetensors")).tensors;
  return r;
}

std::string file_of(const std::string& name) {
  for (const char* ext : {".jpg", ".png"}) {
    const std::string p = image_ref("files/" + name + ext);
    if (std::ifstream(p)) return p;
  }
  return "";
}

}  // namespace

// PNG pixels are exact; JPEG pixels too (libjpeg-turbo on both sides, accurate IDCT, fancy upsampling) - the bound
// allows one level for a different libjpeg-turbo build's rounding and prints the largest difference.
TEST(ImageRead, MatchesPil) {
  ASSERT_FALSE(image_ref("").empty()) << "OPENDIT_REF_DIR is not set (run through ctest)";
  int checked = 0;
  for (const auto& [key, want] : refs()) {
    if (key.rfind("decode/", 0) != 0) continue;
    const std::string name = key.substr(7), path = file_of(name);
    SCOPED_TRACE(path);
    const at::Tensor got = io::read_image_rgb(path);
    const int d = max_diff(got, want);
    std::printf("%-22s %s max |diff| %d\n", name.c_str(), c10::str(got.sizes()).c_str(), d);
    EXPECT_LE(d, path.size() > 4 && path.substr(path.size() - 4) == ".png" ? 0 : 1);
    ++checked;
  }
  EXPECT_GE(checked, 9);
}

// Every resize of the reference set, from PIL's own decoded pixels: identical bytes.
TEST(Resample, IdenticalToPilResize) {
  int checked = 0;
  for (const auto& [key, want] : refs()) {
    if (key.rfind("resize/", 0) != 0) continue;
    // resize/<name>/<filter>/<h>x<w>
    const size_t a = key.find('/', 7), b = key.find('/', a + 1), x = key.find('x', b + 1);
    const std::string name = key.substr(7, a - 7), filter = key.substr(a + 1, b - a - 1);
    const int64_t h = std::stoll(key.substr(b + 1, x - b - 1)), w = std::stoll(key.substr(x + 1));
    const io::Filter f = filter == "box" ? io::Filter::Box : filter == "bilinear" ? io::Filter::Bilinear
                                                                                     : io::Filter::Bicubic;
    SCOPED_TRACE(key);
    EXPECT_EQ(max_diff(io::resize_like_pil(refs().at("decode/" + name), h, w, f), want), 0);
    ++checked;
  }
  EXPECT_GE(checked, 100);
}

TEST(Resample, DitCenterCropIdenticalToPil) {
  int checked = 0;
  for (const auto& [key, want] : refs()) {
    if (key.rfind("crop", 0) != 0) continue;
    const size_t slash = key.find('/');
    const int64_t size = std::stoll(key.substr(4, slash - 4));
    SCOPED_TRACE(key);
    EXPECT_EQ(max_diff(io::center_crop_arr(refs().at("decode/" + key.substr(slash + 1)), size), want), 0);
    ++checked;
  }
  EXPECT_GE(checked, 18);
  const at::Tensor unit = io::to_unit_range(refs().at("crop32/rgb420"));
  EXPECT_EQ(unit.sizes(), (at::IntArrayRef{3, 32, 32}));
  EXPECT_GE(unit.min().item<float>(), -1.f);
  EXPECT_LE(unit.max().item<float>(), 1.f);
}

TEST(ImageRead, DamagedAndUnsupportedFilesAreErrors) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"truncated.jpg", "damaged or truncated"}, {"truncated.png", "not a readable PNG"},
      {"noise.jpg", "not a JPEG or PNG"},        {"empty.png", "an empty file"},
      {"cmyk.jpg", "a CMYK JPEG"},               {"nosuch.jpg", "cannot be read"}};
  for (const auto& [file, what] : cases) {
    const std::string path = image_ref("files/" + file);
    const std::string e = error_of([&] { io::read_image_rgb(path); });
    EXPECT_NE(e.find(path), std::string::npos) << e;
    EXPECT_NE(e.find(what), std::string::npos) << e;
  }
  EXPECT_NE(error_of([&] { io::resize_like_pil(at::zeros({4, 4, 3}, at::kByte), 0, 3, io::Filter::Box); }).find("at least 1"),
            std::string::npos);
}
