#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "core/error.hpp"
#include "core/progress.hpp"
#include "io/image.hpp"

using namespace opendit;

TEST(Image, GridPlacesSamplesRowMajorWithPadding) {
  // 5 grey 2x3 images with values -1 (black) .. 1 (white); 2 columns -> 3 rows, 1 px padding.
  at::Tensor imgs = at::linspace(-1, 1, 5).view({5, 1, 1, 1}).expand({5, 1, 2, 3}).contiguous();
  at::Tensor g = io::image_grid(imgs, 2, 1);
  ASSERT_EQ(g.sizes(), at::IntArrayRef({3 * 3 + 1, 2 * 4 + 1, 1}));
  EXPECT_EQ(g[1][1][0].item<uint8_t>(), 0);     // sample 0 (-1) at row 0, col 0
  EXPECT_EQ(g[1][5][0].item<uint8_t>(), 64);    // sample 1 (-0.5): 0.5 * 127.5 + 0.5 = 64.25 -> 64
  EXPECT_EQ(g[4][1][0].item<uint8_t>(), 128);   // sample 2 (0) at row 1, col 0
  EXPECT_EQ(g[7][1][0].item<uint8_t>(), 255);   // sample 4 (1) at row 2, col 0
  EXPECT_EQ(g[7][5][0].item<uint8_t>(), 255);   // the empty cell stays white
  EXPECT_EQ(g[0][0][0].item<uint8_t>(), 255);   // padding
  EXPECT_THROW(io::image_grid(at::zeros({2, 2, 4, 4}), 2), c10::Error);  // 2 channels: not an image
}

TEST(Image, WritePngAndUnwritablePath) {
  char dir[] = "/tmp/opendit_png_XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  std::string path = std::string(dir) + "/g.png";
  io::write_png(path, io::image_grid(at::zeros({4, 3, 5, 5}), 2));
  std::ifstream f(path, std::ios::binary);
  char sig[8];
  f.read(sig, 8);
  EXPECT_EQ(std::string(sig + 1, 3), "PNG");
  try {
    io::write_png(std::string(dir) + "/no/such/dir/g.png", at::zeros({2, 2, 3}, at::kByte));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no/such/dir/g.png: cannot write the image"), std::string::npos) << e.what();
  }
  std::remove(path.c_str());
  rmdir(dir);
}

TEST(Progress, Durations) {
  EXPECT_EQ(format_duration(0.2), "0s");
  EXPECT_EQ(format_duration(59.6), "1m00s");
  EXPECT_EQ(format_duration(185), "3m05s");
  EXPECT_EQ(format_duration(7620), "2h07m");
}
