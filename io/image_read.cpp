#include "io/image_read.hpp"

#include <turbojpeg.h>

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <vector>

#include "core/error.hpp"

#ifdef OPENDIT_HAVE_PNG
#include <png.h>
#endif

namespace opendit::io {

namespace {

at::Tensor decode_jpeg(const std::string& bytes, const std::string& origin) {
  std::unique_ptr<void, int (*)(tjhandle)> tj(tjInitDecompress(), tjDestroy);
  if (!tj) throw Error(cat(origin, ": cannot start the JPEG decoder"));
  auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
  const auto size = static_cast<unsigned long>(bytes.size());
  int w = 0, h = 0, subsamp = 0, colorspace = 0;
  if (tjDecompressHeader3(tj.get(), data, size, &w, &h, &subsamp, &colorspace) != 0)
    throw Error(cat(origin, ": not a readable JPEG (", tjGetErrorStr2(tj.get()), ")"));
  if (colorspace == TJCS_CMYK || colorspace == TJCS_YCCK)
    throw Error(cat(origin, ": a CMYK JPEG (opendit reads RGB and greyscale JPEGs)"));
  at::Tensor out = at::empty({h, w, 3}, at::kByte);
  // Accurate IDCT and fancy upsampling are TurboJPEG's decompression defaults (and libjpeg's, which PIL uses); a
  // warning (a truncated file) is an error, as PIL refuses truncated images.
  if (tjDecompress2(tj.get(), data, size, out.data_ptr<uint8_t>(), w, 0, h, TJPF_RGB, TJFLAG_STOPONWARNING) != 0)
    throw Error(cat(origin, ": the JPEG data is damaged or truncated (", tjGetErrorStr2(tj.get()), ")"));
  return out;
}

#ifdef OPENDIT_HAVE_PNG
struct PngReader {
  const std::string* bytes;
  size_t pos = 8;  // after the signature, which the caller checked
};

void png_read_mem(png_structp png, png_bytep out, png_size_t n) {
  auto* r = static_cast<PngReader*>(png_get_io_ptr(png));
  if (r->pos + n > r->bytes->size()) png_error(png, "the file ends early (truncated)");
  std::memcpy(out, r->bytes->data() + r->pos, n);
  r->pos += n;
}

at::Tensor decode_png(const std::string& bytes, const std::string& origin) {
  char message[256] = "unknown libpng error";
  png_structp png = png_create_read_struct(
      PNG_LIBPNG_VER_STRING, message,
      [](png_structp p, png_const_charp msg) {
        std::snprintf(static_cast<char*>(png_get_error_ptr(p)), 256, "%s", msg);
        png_longjmp(p, 1);
      },
      [](png_structp, png_const_charp) {});
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info) {
    png_destroy_read_struct(&png, &info, nullptr);
    throw Error(cat(origin, ": cannot start the PNG decoder"));
  }
  PngReader reader{&bytes};
  // libpng reports errors by longjmp to the setjmp below: locals changed after it would be indeterminate there, so
  // the tensor and row pointers live behind a pointer that is set before it and never changed.
  struct Rows {
    at::Tensor out;
    std::vector<png_bytep> rows;
  };
  const auto state = std::make_unique<Rows>();
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    throw Error(cat(origin, ": not a readable PNG (", message, ")"));
  }
  png_set_read_fn(png, &reader, png_read_mem);
  png_set_sig_bytes(png, 8);
  png_read_info(png, info);
  const png_byte type = png_get_color_type(png, info);
  // PIL's convert("RGB"): palettes expanded, grey copied into R, G, B, alpha dropped, 16-bit samples' high byte.
  if (type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (type == PNG_COLOR_TYPE_GRAY && png_get_bit_depth(png, info) < 8) png_set_expand_gray_1_2_4_to_8(png);
  png_set_strip_16(png);
  if (type & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(png);
  if (type == PNG_COLOR_TYPE_GRAY || type == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  if (png_get_rowbytes(png, info) != size_t(w) * 3) png_error(png, "unexpected row layout after conversion to RGB");
  state->out = at::empty({int64_t(h), int64_t(w), 3}, at::kByte);
  state->rows.resize(h);
  for (png_uint_32 y = 0; y < h; ++y) state->rows[y] = state->out.data_ptr<uint8_t>() + size_t(y) * w * 3;
  png_read_image(png, state->rows.data());
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  return state->out;
}
#endif

}  // namespace

at::Tensor decode_image_rgb(const std::string& bytes, const std::string& origin) {
  const auto b = [&](size_t i) { return i < bytes.size() ? static_cast<unsigned char>(bytes[i]) : 0u; };
  if (b(0) == 0xFF && b(1) == 0xD8 && b(2) == 0xFF) return decode_jpeg(bytes, origin);
  if (bytes.size() >= 8 && std::memcmp(bytes.data(), "\x89PNG\r\n\x1a\n", 8) == 0) {
#ifdef OPENDIT_HAVE_PNG
    return decode_png(bytes, origin);
#else
    throw Error(cat(origin, ": a PNG, and this opendit was built without libpng"));
#endif
  }
  throw Error(cat(origin, bytes.empty() ? ": an empty file" : ": not a JPEG or PNG image"));
}

at::Tensor read_image_rgb(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(cat(path, ": cannot be read"));
  std::ostringstream s;
  s << f.rdbuf();
  return decode_image_rgb(s.str(), path);
}

}  // namespace opendit::io
