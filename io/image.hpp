// Image output: a grid of samples as an 8-bit PNG (libpng).
#pragma once
#include <ATen/ATen.h>

#include <string>

namespace opendit::io {

// images [N, C, H, W] with values in [-1, 1] (C = 1 or 3) -> uint8 [rows*(H+pad)+pad, cols*(W+pad)+pad, C], in
// row-major order of the samples (`cols` per row), with `pad` pixels of white between and around them.
at::Tensor image_grid(const at::Tensor& images, int64_t cols, int64_t pad = 2);

// One sample as a picture: an image [3, H, W] as it is, a video [3, T, H, W] as its frames side by side (a strip),
// values in [-1, 1] -> uint8 [H', W', 3].
at::Tensor sample_picture(const at::Tensor& sample);

// "000042": file names of numbered samples that sort in row order.
std::string numbered(int64_t row);

// Whether this build writes PNG files (it was built with libpng).
bool png_supported();

// Writes uint8 [H, W, C] (C = 1 grey, 3 RGB) atomically (PATH.tmp, then rename). Errors name the path.
void write_png(const std::string& path, const at::Tensor& hwc_uint8);

}  // namespace opendit::io
