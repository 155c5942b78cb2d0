// Using the VAE as DiT and Open-Sora do: the latent scaling, images and video frames in micro-batches, and decoding
// in bounded memory (tiles with blended seams for large frames).
//   images [N, C, H, W]  or video [N, C, T, H, W] (frames through the image VAE, Open-Sora v1.0's layout)
//   latents [N, lc, h, w] or [N, lc, T, h, w], scaled: (z - shift_factor) * scaling_factor
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

#include "models/vae/autoencoder_kl.hpp"

namespace opendit::models::vae {

struct EncodeOptions {
  int64_t micro_batch = 16;  // frames (images) per encoder pass
};

struct DecodeOptions {
  int64_t micro_batch = 8;  // frames per decoder pass
  // Tiled decoding: frames whose latent exceeds `tile` on a side are decoded in tiles of tile x tile latents that
  // overlap by `overlap` latents; the seams are blended with linear ramps. 0: never tiled. Tiles see only their part
  // of the frame (GroupNorm statistics and the receptive field are local), so tiled output differs slightly.
  int64_t tile = 0, overlap = 8;
};

// The posterior of each image (or frame), unscaled, in the layout of the input (video: [N, lc, T, h, w]).
Posterior encode(const AutoencoderKL& vae, const at::Tensor& images, const EncodeOptions& options = {});
// A draw of scaled latents from the posterior: (mean + exp(logvar / 2) eps - shift) * scaling; without a generator
// the mean (the mode) is taken. Float32.
at::Tensor scaled_latents(const AutoencoderKL& vae, const Posterior& posterior,
                          std::optional<at::Generator> generator = std::nullopt);
// Scaled latents -> images in about [-1, 1] (not clamped), float32, on the latents' device.
at::Tensor decode(const AutoencoderKL& vae, const at::Tensor& latents, const DecodeOptions& options = {});

}  // namespace opendit::models::vae
