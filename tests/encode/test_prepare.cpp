// encode's per-file preparation: images as DiT prepares them and video clips as Open-Sora v1.0 does, against the PIL
// and PyAV/torch references of tests/io (make_images_ref.py, make_video_ref.py); broken files become a reason, not an
// exception; the prefetch pipeline gives the sequential results.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "encode/prefetch.hpp"
#include "encode/prepare.hpp"
#include "io/resample.hpp"
#include "io/safetensors.hpp"
#include "io/video_read.hpp"
#include "support/ref_data.hpp"

using namespace opendit;

namespace {
std::string refdir(const std::string& area) { return test::ref_path(area, ""); }
}  // namespace

TEST(Prepare, ImagesAndVideosAsTheReferences) {
  ASSERT_FALSE(refdir("").empty()) << "OPENDIT_REF_DIR is not set (run through ctest)";
  const auto img = io::load_safetensors(refdir("images") + "ref.safetensors").tensors;
  encode::PrepareSettings s;
  s.image_size = 32;
  for (const char* name : {"rgb420.jpg", "big.jpg", "palette_png.png"}) {
    const encode::PreparedItem p = encode::prepare_item(refdir("images") + "files/" + name, s);
    ASSERT_TRUE(p.error.empty()) << p.error;
    const std::string stem = std::string(name).substr(0, std::string(name).find('.'));
    EXPECT_TRUE(at::equal(p.pixels, io::to_unit_range(img.at("crop32/" + stem)))) << name;
  }
  if (!io::video_supported()) GTEST_SKIP() << io::ffmpeg_version();
  const auto vid = io::load_safetensors(refdir("video") + "ref.safetensors").tensors;
  s.num_frames = 5, s.frame_interval = 3;
  for (const char* name : {"mpeg4", "h264"}) {
    const encode::PreparedItem p = encode::prepare_item(refdir("video") + "files/" + name + ".mp4", s);
    ASSERT_TRUE(p.error.empty()) << p.error;
    EXPECT_LE((p.pixels - vid.at(std::string("clip32/") + name)).abs().max().item<float>(), 1e-6) << name;
  }
}

TEST(Prepare, BrokenFilesAreReasonsNotExceptions) {
  encode::PrepareSettings s;
  s.image_size = 16;
  for (const std::string& f : {refdir("images") + "files/truncated.jpg", refdir("images") + "files/cmyk.jpg",
                               refdir("video") + "files/not_a_video.mp4", refdir("images") + "files/nosuch.png",
                               refdir("images") + "ref.safetensors"}) {
    const encode::PreparedItem p = encode::prepare_item(f, s);
    EXPECT_FALSE(p.pixels.defined()) << f;
    EXPECT_NE(p.error.find(f), std::string::npos) << p.error;
  }
  EXPECT_EQ(encode::media_kind("a/B.JPEG"), encode::MediaKind::Image);
  EXPECT_EQ(encode::media_kind("clip.MkV"), encode::MediaKind::Video);
  EXPECT_EQ(encode::media_kind("dir.mp4/readme"), encode::MediaKind::Unknown);
  s.image_size = 0;
  EXPECT_THROW(encode::prepare_item("x.jpg", s), Error);
}

TEST(Prepare, PrefetchedEqualsSequential) {
  std::vector<std::string> files;
  for (const char* f : {"rgb420.jpg", "grey_png.png", "truncated.jpg", "rgba_png.png", "big.jpg", "grey_jpeg.jpg"})
    files.push_back(refdir("images") + "files/" + f);
  encode::PrepareSettings s;
  s.image_size = 24;
  encode::OrderedPrefetch<encode::PreparedItem> p(static_cast<int64_t>(files.size()), 3, 2,
                                                  [&](int64_t i) { return encode::prepare_item(files[size_t(i)], s); });
  for (const std::string& f : files) {
    const auto got = p.next();
    ASSERT_TRUE(got.has_value());
    const encode::PreparedItem want = encode::prepare_item(f, s);
    EXPECT_EQ(got->error, want.error);
    if (want.pixels.defined()) EXPECT_TRUE(at::equal(got->pixels, want.pixels)) << f;
  }
  EXPECT_FALSE(p.next().has_value());
}
