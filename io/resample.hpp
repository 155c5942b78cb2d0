// Image resizing as PIL's Image.resize does it (src/libImaging/Resample.c: separable convolution, horizontal pass
// then vertical, 8-bit intermediate, 22-bit fixed-point coefficients), so that preprocessing in C++ gives the
// pixels the Python pipelines give; and DiT's ImageNet preprocessing (center_crop_arr of its train.py).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

namespace opendit::io {

enum class Filter { Box, Bilinear, Bicubic };

// uint8 [H, W, C] -> uint8 [out_h, out_w, C].
at::Tensor resize_like_pil(const at::Tensor& hwc, int64_t out_h, int64_t out_w, Filter filter);

// DiT: halve with a box filter while the short side is >= 2 size, bicubic-resize the short side to `size` (the long
// side to round(side * scale), Python's round: ties to even), then crop the centre size x size. uint8 [H, W, 3].
at::Tensor center_crop_arr(const at::Tensor& hwc, int64_t size);

// uint8 [H, W, C] -> float32 [C, H, W] in [-1, 1] (ToTensor then Normalize(0.5, 0.5)).
at::Tensor to_unit_range(const at::Tensor& hwc);

}  // namespace opendit::io
