#include "models/vae/pipeline.hpp"

#include <ATen/Functions.h>

#include <algorithm>
#include <vector>

#include "core/error.hpp"
#include "core/strings.hpp"

namespace opendit::models::vae {

namespace {

// Video [N, C, T, H, W] <-> frames [N T, C, H, W] (the frames of a sample adjacent, as Open-Sora v1.0 orders them).
at::Tensor to_frames(const at::Tensor& v) {
  return v.permute({0, 2, 1, 3, 4}).reshape({v.size(0) * v.size(2), v.size(1), v.size(3), v.size(4)});
}
at::Tensor from_frames(const at::Tensor& f, int64_t n, int64_t t) {
  return f.view({n, t, f.size(1), f.size(2), f.size(3)}).permute({0, 2, 1, 3, 4}).contiguous();
}

void check_micro_batch(int64_t m, const char* what) {
  if (m < 1) throw Error(cat("VAE ", what, ": micro-batch must be >= 1, got ", m));
}

// A linear ramp (0, 1) over n pixels: where two tiles overlap one fades out as the other fades in; the frame's own
// edges keep full weight.
at::Tensor rising(int64_t n, const at::TensorOptions& options) {
  return (at::arange(n, options) + 0.5) / static_cast<double>(n);
}

// Tile starts along an axis of `size` latents: every `tile - overlap`, the last one flush with the end.
std::vector<int64_t> tile_starts(int64_t size, int64_t tile, int64_t overlap) {
  if (size <= tile) return {0};
  std::vector<int64_t> s;
  for (int64_t p = 0;; p += tile - overlap) {
    if (p + tile >= size) {
      s.push_back(size - tile);
      break;
    }
    s.push_back(p);
  }
  return s;
}

at::Tensor decode_tiled(const AutoencoderKL& vae, const at::Tensor& z, const DecodeOptions& o) {
  const int64_t f = vae.config().factor(), h = z.size(2), w = z.size(3);
  const int64_t tile = o.tile, overlap = std::min(o.overlap, tile / 2);
  const auto ys = tile_starts(h, tile, overlap), xs = tile_starts(w, tile, overlap);
  const auto opts = at::TensorOptions(at::kFloat).device(z.device());
  at::Tensor out = at::zeros({z.size(0), vae.config().out_channels, h * f, w * f}, opts);
  at::Tensor weight = at::zeros({h * f, w * f}, opts);
  for (size_t iy = 0; iy < ys.size(); ++iy) {
    for (size_t ix = 0; ix < xs.size(); ++ix) {
      const int64_t th = std::min(tile, h), tw = std::min(tile, w);
      const at::Tensor part = vae.decode(z.narrow(2, ys[iy], th).narrow(3, xs[ix], tw)).to(at::kFloat);
      // A seam's ramp spans the overlap with the neighbour on that side (the last tile may overlap more).
      const int64_t up = iy > 0 ? (ys[iy - 1] + th - ys[iy]) * f : 0;
      const int64_t down = iy + 1 < ys.size() ? (ys[iy] + th - ys[iy + 1]) * f : 0;
      const int64_t left = ix > 0 ? (xs[ix - 1] + tw - xs[ix]) * f : 0;
      const int64_t right = ix + 1 < xs.size() ? (xs[ix] + tw - xs[ix + 1]) * f : 0;
      at::Tensor wy = at::ones({th * f}, opts), wx = at::ones({tw * f}, opts);
      if (up) wy.narrow(0, 0, up).mul_(rising(up, opts));
      if (down) wy.narrow(0, th * f - down, down).mul_(rising(down, opts).flip(0));
      if (left) wx.narrow(0, 0, left).mul_(rising(left, opts));
      if (right) wx.narrow(0, tw * f - right, right).mul_(rising(right, opts).flip(0));
      const at::Tensor wt = wy.unsqueeze(1) * wx.unsqueeze(0);  // [th f, tw f]
      out.narrow(2, ys[iy] * f, th * f).narrow(3, xs[ix] * f, tw * f).add_(part * wt);
      weight.narrow(0, ys[iy] * f, th * f).narrow(1, xs[ix] * f, tw * f).add_(wt);
    }
  }
  return out.div_(weight);
}

}  // namespace

Posterior encode(const AutoencoderKL& vae, const at::Tensor& images, const EncodeOptions& options) {
  check_micro_batch(options.micro_batch, "encode");
  const bool video = images.dim() == 5;
  if (!video && images.dim() != 4)
    throw Error(
        cat("VAE encode: expected images [N, C, H, W] or video [N, C, T, H, W], got ", shape_str(images.sizes())));
  const at::Tensor frames = video ? to_frames(images) : images;
  std::vector<at::Tensor> means, logvars;
  for (int64_t s = 0; s < frames.size(0); s += options.micro_batch) {
    Posterior p = vae.encode(frames.narrow(0, s, std::min(options.micro_batch, frames.size(0) - s)));
    means.push_back(p.mean.to(at::kFloat));
    logvars.push_back(p.logvar.to(at::kFloat));
  }
  at::Tensor mean = at::cat(means), logvar = at::cat(logvars);
  if (video)
    mean = from_frames(mean, images.size(0), images.size(2)),
    logvar = from_frames(logvar, images.size(0), images.size(2));
  return {mean, logvar};
}

at::Tensor scaled_latents(const AutoencoderKL& vae, const Posterior& p, std::optional<at::Generator> generator) {
  at::Tensor z = p.mean.to(at::kFloat);
  if (generator) {
    at::Tensor eps = at::empty_like(z).normal_(0, 1, *generator);
    z = z + at::exp(0.5 * p.logvar.to(at::kFloat)) * eps;
  }
  return (z - vae.config().shift_factor) * vae.config().scaling_factor;
}

at::Tensor decode(const AutoencoderKL& vae, const at::Tensor& latents, const DecodeOptions& options) {
  check_micro_batch(options.micro_batch, "decode");
  if (options.tile < 0 || options.overlap < 0 || (options.tile > 0 && options.tile < 2))
    throw Error(cat("VAE decode: tile must be 0 (off) or >= 2 latents and overlap >= 0, got tile ", options.tile,
                    " overlap ", options.overlap));
  const bool video = latents.dim() == 5;
  if (!video && latents.dim() != 4)
    throw Error(cat("VAE decode: expected latents [N, C, h, w] or [N, C, T, h, w], got ", shape_str(latents.sizes())));
  const at::Tensor frames =
      (video ? to_frames(latents) : latents).to(at::kFloat) / vae.config().scaling_factor + vae.config().shift_factor;
  const bool tiled = options.tile > 0 && (frames.size(2) > options.tile || frames.size(3) > options.tile);
  std::vector<at::Tensor> parts;
  for (int64_t s = 0; s < frames.size(0); s += options.micro_batch) {
    const at::Tensor z = frames.narrow(0, s, std::min(options.micro_batch, frames.size(0) - s));
    parts.push_back(tiled ? decode_tiled(vae, z, options) : vae.decode(z).to(at::kFloat));
  }
  at::Tensor images = at::cat(parts);
  return video ? from_frames(images, latents.size(0), latents.size(2)) : images;
}

}  // namespace opendit::models::vae
