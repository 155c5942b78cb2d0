// Reading images for `opendit encode`: JPEG (libjpeg-turbo's TurboJPEG API) and PNG (libpng), to 8-bit RGB as
// PIL's Image.open(path).convert("RGB") gives them (the preprocessing of DiT and Open-Sora starts there):
//   grey -> RGB by copying; palettes expanded; alpha and transparency dropped (not composited); 16-bit PNG samples
//   keep their high byte. Accurate IDCT and fancy upsampling for JPEG (libjpeg's and PIL's defaults).
// A truncated or corrupt file, an unknown format or a CMYK JPEG is an opendit::Error naming the path.
#pragma once
#include <ATen/ATen.h>

#include <string>

namespace opendit::io {

at::Tensor read_image_rgb(const std::string& path);  // uint8 [H, W, 3]
at::Tensor decode_image_rgb(const std::string& bytes, const std::string& origin);

}  // namespace opendit::io
