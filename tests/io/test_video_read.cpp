// Reading video inputs through FFmpeg and Open-Sora v1.0's clip preprocessing, against PyAV and torch
// (tests/ref/make_video_ref.py: MPEG-4 and H.264 files made at test time), and the files that must be refused.
// Without FFmpeg at build time the readers must say that video input is off.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>

#include "core/error.hpp"
#include "io/safetensors.hpp"
#include "io/video_read.hpp"
#include "io/video_write.hpp"
#include "support/ref_data.hpp"
#include "support/support.hpp"

using namespace opendit;
using opendit::test::error_of;

namespace {

std::string video_ref(const std::string& name) { return test::ref_path("video", name); }

const std::map<std::string, at::Tensor>& refs() {
  static const auto r = io::load_safetensors(video_ref("ref.safetensors")).tensors;
  return r;
}

}  // namespace

// Decoded frames: the same count and size and, on Debian 12's FFmpeg 5.1 against PyAV 18's bundled FFmpeg, the same
// bytes (odd widths included). The bound leaves 3 levels (mean below 0.5) for other FFmpeg builds' YUV -> RGB rounding.
TEST(VideoRead, MatchesPyAv) {
  if (!io::video_supported()) GTEST_SKIP() << io::ffmpeg_version();
  ASSERT_FALSE(video_ref("").empty()) << "OPENDIT_REF_DIR is not set (run through ctest)";
  for (const char* name : {"mpeg4", "h264"}) {
    SCOPED_TRACE(name);
    const at::Tensor want = refs().at(std::string("frames/") + name);
    const at::Tensor got = io::read_video_rgb(video_ref(std::string("files/") + name + ".mp4"));
    ASSERT_EQ(got.sizes(), want.sizes());
    const at::Tensor d = (got.to(at::kInt) - want.to(at::kInt)).abs();
    std::printf("%s %s: max |diff| %d, mean %.4f levels\n", name, c10::str(got.sizes()).c_str(), d.max().item<int>(),
                d.to(at::kFloat).mean().item<float>());
    EXPECT_LE(d.max().item<int>(), 3);
    EXPECT_LT(d.to(at::kFloat).mean().item<float>(), 0.5f);
    EXPECT_EQ(io::read_video_rgb(video_ref(std::string("files/") + name + ".mp4"), 4).size(0), 4);  // stops early
  }
}

// The clip from PyAV's own frames equals Open-Sora's torch chain (same ATen interpolation), and end to end from
// opendit's frames it stays within the decoding bound (3 levels = 3 / 127.5 in [-1, 1]).
TEST(VideoRead, ClipPreprocessingMatchesOpenSora) {
  for (const char* name : {"mpeg4", "h264"}) {
    for (int64_t size : {32, 24}) {
      SCOPED_TRACE(std::string(name) + " " + std::to_string(size));
      const at::Tensor frames = refs().at(std::string("frames/") + name);
      const at::Tensor want = refs().at("clip" + std::to_string(size) + "/" + name);
      const auto idx = io::clip_frame_indices(frames.size(0), 5, 3);
      const at::Tensor clip = io::preprocess_clip(frames.index_select(0, at::tensor(idx)), size);
      ASSERT_EQ(clip.sizes(), want.sizes());
      EXPECT_LE((clip - want).abs().max().item<float>(), 1e-6);
      if (!io::video_supported()) continue;
      const at::Tensor ours = io::read_video_rgb(video_ref(std::string("files/") + name + ".mp4"));
      const at::Tensor e2e = io::preprocess_clip(ours.index_select(0, at::tensor(idx)), size);
      EXPECT_LE((e2e - want).abs().max().item<float>(), 3.0 / 127.5 + 1e-6);
    }
  }
  // Spans shorter than num_frames x interval spread over what there is (np.linspace, truncated).
  EXPECT_EQ(io::clip_frame_indices(20, 5, 3), (std::vector<int64_t>{0, 3, 7, 10, 14}));
  EXPECT_EQ(io::clip_frame_indices(8, 5, 3), (std::vector<int64_t>{0, 1, 3, 5, 7}));
  EXPECT_EQ(io::clip_frame_indices(100, 16, 3, 10).back(), 57);
  EXPECT_NE(error_of([] { io::clip_frame_indices(5, 4, 2, 5); }).find("0 <= start < frames"), std::string::npos);
}

TEST(VideoRead, DamagedFilesAreErrors) {
  if (!io::video_supported()) {
    EXPECT_NE(error_of([] { io::read_video_rgb("x.mp4"); }).find("video input is off"), std::string::npos);
    return;
  }
  for (const char* file : {"truncated.mp4", "not_a_video.mp4", "nosuch.mp4"}) {
    const std::string path = video_ref(std::string("files/") + file);
    const std::string e = error_of([&] { io::read_video_rgb(path); });
    EXPECT_NE(e.find(path), std::string::npos) << e;
  }
}

// MP4 output read back: the frames' count, the size (odd sizes padded by one edge pixel) and the pixels within the
// codec's loss (PSNR >= 30 dB at CRF 18); the file appears only when complete.
TEST(VideoWrite, Mp4RoundTrip) {
  if (!io::video_supported()) {
    EXPECT_NE(error_of([] { io::write_mp4("x.mp4", at::zeros({1, 2, 2, 3}, at::kByte), 8); }).find("without FFmpeg"),
              std::string::npos);
    return;
  }
  test::TempDir tmp;
  const at::Tensor frames = refs().at("frames/mpeg4").narrow(1, 0, 47).narrow(2, 0, 65).contiguous();  // odd sizes
  const std::string codec = io::write_mp4(tmp.file("v.mp4"), frames, 10);
  EXPECT_FALSE(codec.empty());
  const at::Tensor back = io::read_video_rgb(tmp.file("v.mp4"));
  ASSERT_EQ(back.sizes(), (at::IntArrayRef{frames.size(0), 48, 66, 3}));
  const at::Tensor err = back.narrow(1, 0, 47).narrow(2, 0, 65).to(at::kFloat) - frames.to(at::kFloat);
  const double psnr = 10 * std::log10(255.0 * 255.0 / err.pow(2).mean().item<double>());
  std::printf("MP4 (%s) round trip: PSNR %.1f dB\n", codec.c_str(), psnr);
  EXPECT_GE(psnr, 30.0);
  EXPECT_FALSE(std::ifstream(tmp.file("v.mp4.tmp")).good());
  const std::string e = error_of([&] { io::write_mp4(tmp.file("nodir/v.mp4"), frames, 10); });
  EXPECT_NE(e.find("nodir"), std::string::npos) << e;
  EXPECT_NE(error_of([&] { io::write_mp4(tmp.file("w.mp4"), frames, 0); }).find("must be > 0"), std::string::npos);
}
