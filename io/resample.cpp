#include "io/resample.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.hpp"

namespace opendit::io {

namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // 8 bits of result, 2 of headroom for negative lobes and overshoot

double box(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }
double bilinear(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}
double bicubic(double x) {  // a = -0.5
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// One output pixel's taps: the first input index and the fixed-point weights.
struct Taps {
  int first = 0;
  std::vector<int32_t> w;
};

// The taps of every output pixel along an axis of in_size -> out_size, computed in double in PIL's order and
// rounded to 22-bit fixed point as PIL rounds them (half away from zero).
std::vector<Taps> taps(int in_size, int out_size, Filter f) {
  double (*fn)(double) = f == Filter::Box ? box : f == Filter::Bilinear ? bilinear : bicubic;
  const double support_1 = f == Filter::Box ? 0.5 : f == Filter::Bilinear ? 1.0 : 2.0;
  const double scale = static_cast<double>(static_cast<float>(in_size) - 0.0f) / out_size;
  const double filterscale = std::max(scale, 1.0), support = support_1 * filterscale, ss = 1.0 / filterscale;
  std::vector<Taps> out(static_cast<size_t>(out_size));
  std::vector<double> k;
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    k.assign(static_cast<size_t>(std::max(xmax, 0)), 0.0);
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      k[size_t(x)] = fn((x + xmin - center + 0.5) * ss);
      ww += k[size_t(x)];
    }
    Taps& t = out[size_t(xx)];
    t.first = xmin;
    for (int x = 0; x < xmax; ++x) {
      const double v = (ww != 0.0 ? k[size_t(x)] / ww : k[size_t(x)]) * (1 << kPrecisionBits);
      t.w.push_back(static_cast<int32_t>(v < 0 ? v - 0.5 : v + 0.5));
    }
  }
  return out;
}

uint8_t clip8(int32_t acc) {
  const int32_t v = acc >> kPrecisionBits;  // arithmetic shift, as PIL's lookup index
  return static_cast<uint8_t>(std::clamp(v, 0, 255));
}

// One pass along `axis` (1 = width, 0 = height) of an [H, W, C] uint8 tensor.
at::Tensor pass(const at::Tensor& in, int axis, int out_size, Filter f) {
  const int64_t H = in.size(0), W = in.size(1), C = in.size(2);
  const int in_size = static_cast<int>(axis == 1 ? W : H);
  const std::vector<Taps> tp = taps(in_size, out_size, f);
  at::Tensor out = at::empty({axis == 1 ? H : out_size, axis == 1 ? out_size : W, C}, at::kByte);
  const uint8_t* src = in.data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  const int64_t OW = out.size(1);
  for (int64_t y = 0; y < out.size(0); ++y)
    for (int64_t x = 0; x < OW; ++x) {
      const Taps& t = tp[size_t(axis == 1 ? x : y)];
      for (int64_t c = 0; c < C; ++c) {
        int32_t acc = 1 << (kPrecisionBits - 1);
        for (size_t i = 0; i < t.w.size(); ++i) {
          const int64_t p = t.first + static_cast<int64_t>(i);
          acc += static_cast<int32_t>(src[(axis == 1 ? y * W + p : p * W + x) * C + c]) * t.w[i];
        }
        dst[(y * OW + x) * C + c] = clip8(acc);
      }
    }
  return out;
}

}  // namespace

at::Tensor resize_like_pil(const at::Tensor& hwc, int64_t out_h, int64_t out_w, Filter filter) {
  if (hwc.dim() != 3 || hwc.scalar_type() != at::kByte)
    throw Error(cat("resize: expected uint8 [H, W, C], got ", hwc.sizes(), " ", hwc.scalar_type()));
  if (out_h < 1 || out_w < 1) throw Error(cat("resize: target ", out_h, " x ", out_w, " must be at least 1 x 1"));
  at::Tensor img = hwc.contiguous();
  // Like PIL: a pass only along an axis whose size changes, horizontal first.
  if (out_w != img.size(1)) img = pass(img, 1, static_cast<int>(out_w), filter);
  if (out_h != img.size(0)) img = pass(img, 0, static_cast<int>(out_h), filter);
  return img;
}

at::Tensor center_crop_arr(const at::Tensor& hwc, int64_t size) {
  if (size < 1) throw Error(cat("center_crop_arr: size must be >= 1, got ", size));
  at::Tensor img = hwc;
  while (std::min(img.size(0), img.size(1)) >= 2 * size)
    img = resize_like_pil(img, img.size(0) / 2, img.size(1) / 2, Filter::Box);
  const double scale = static_cast<double>(size) / static_cast<double>(std::min(img.size(0), img.size(1)));
  const auto h = static_cast<int64_t>(std::nearbyint(img.size(0) * scale));  // ties to even, as Python's round
  const auto w = static_cast<int64_t>(std::nearbyint(img.size(1) * scale));
  img = resize_like_pil(img, h, w, Filter::Bicubic);
  const int64_t top = (img.size(0) - size) / 2, left = (img.size(1) - size) / 2;
  return img.narrow(0, top, size).narrow(1, left, size).contiguous();
}

at::Tensor to_unit_range(const at::Tensor& hwc) {
  return (hwc.permute({2, 0, 1}).to(at::kFloat) / 255.0 - 0.5) / 0.5;
}

}  // namespace opendit::io
