#include "io/image.hpp"

#ifdef OPENDIT_HAVE_PNG
#include <png.h>
#endif

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "core/error.hpp"
#include "io/atomic_file.hpp"

namespace opendit::io {

at::Tensor image_grid(const at::Tensor& images, int64_t cols, int64_t pad) {
  TORCH_CHECK(images.dim() == 4 && (images.size(1) == 1 || images.size(1) == 3),
              "image_grid expects [N, 1|3, H, W], got ", images.sizes());
  const int64_t N = images.size(0), C = images.size(1), H = images.size(2), W = images.size(3);
  cols = std::max<int64_t>(1, std::min(cols, N));
  const int64_t rows = (N + cols - 1) / cols;
  // [-1, 1] -> [0, 255], rounded as torchvision's save_image does (x * 255 + 0.5, clamped).
  at::Tensor pixels = ((images.detach().to(at::kCPU, at::kFloat) + 1) * 127.5 + 0.5).clamp(0, 255).to(at::kByte);
  at::Tensor grid = at::full({rows * (H + pad) + pad, cols * (W + pad) + pad, C}, 255, at::kByte);
  for (int64_t i = 0; i < N; ++i) {
    int64_t r = i / cols, c = i % cols;
    grid.narrow(0, pad + r * (H + pad), H).narrow(1, pad + c * (W + pad), W).copy_(pixels[i].permute({1, 2, 0}));
  }
  return grid;
}

bool png_supported() {
#ifdef OPENDIT_HAVE_PNG
  return true;
#else
  return false;
#endif
}

void write_png(const std::string& path, const at::Tensor& hwc) {
  TORCH_CHECK(hwc.dim() == 3 && hwc.scalar_type() == at::kByte && (hwc.size(2) == 1 || hwc.size(2) == 3),
              "write_png expects uint8 [H, W, 1|3], got ", hwc.sizes(), " ", hwc.scalar_type());
#ifndef OPENDIT_HAVE_PNG
  throw Error(cat(path, ": this opendit was built without libpng (install libpng-dev and rebuild)"));
#else
  at::Tensor img = hwc.to(at::kCPU).contiguous();
  const int H = static_cast<int>(img.size(0)), W = static_cast<int>(img.size(1)), C = static_cast<int>(img.size(2));
  AtomicFile file(path);
  FILE* f = std::fopen(file.tmp_path().c_str(), "wb");
  if (!f) throw Error(cat(path, ": cannot write the image: ", std::strerror(errno)));
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info || setjmp(png_jmpbuf(png))) {  // libpng reports errors by longjmp
    png_destroy_write_struct(&png, &info);
    std::fclose(f);
    throw Error(cat(path, ": libpng failed to write the image"));
  }
  png_init_io(png, f);
  png_set_IHDR(png, info, W, H, 8, C == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  const uint8_t* data = img.data_ptr<uint8_t>();
  for (int y = 0; y < H; ++y) png_write_row(png, const_cast<uint8_t*>(data + size_t(y) * W * C));
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  bool ok = std::fflush(f) == 0;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) throw Error(cat(path, ": cannot write the image: ", std::strerror(errno)));
  file.commit();
#endif
}

at::Tensor sample_picture(const at::Tensor& sample) {
  if (sample.dim() == 3) return image_grid(sample.unsqueeze(0), 1, 0);
  return image_grid(sample.transpose(0, 1), sample.size(1), 2);
}

std::string numbered(int64_t row) {
  const std::string s = std::to_string(row);
  return std::string(s.size() < 6 ? 6 - s.size() : 0, '0') + s;
}

}  // namespace opendit::io
