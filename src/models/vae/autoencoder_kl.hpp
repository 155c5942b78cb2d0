// diffusers' AutoencoderKL (the SD VAE) in ATen, parameter names as diffusers saves them. Images [N, C, H, W] in
// [-1, 1] -> the diagonal Gaussian posterior of the latents [N, lc, H/f, W/f] (encode), latents -> images (decode).
// Batching, video frames, tiles and the latent scaling are in vae/pipeline.hpp; this class runs one batch as given.
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <string>

#include "models/tensor_set.hpp"
#include "models/vae/config.hpp"

namespace opendit::models::vae {

struct Posterior {
  at::Tensor mean, logvar;  // [N, lc, h, w] each; logvar clamped to [-30, 20] as diffusers does
};

class AutoencoderKL {
 public:
  // Tensors declared from the config, on the meta device until load() or init_random().
  explicit AutoencoderKL(const VaeConfig& config);

  const VaeConfig& config() const { return config_; }
  TensorSet& weights() { return w_; }
  const TensorSet& weights() const { return w_; }
  // State dict in diffusers' names (the old attention names query/key/value/proj_attn are read too) -> the model.
  void load(const std::map<std::string, at::Tensor>& sd, const std::string& origin, const at::TensorOptions& options);
  // After the weights change (load() does it; call it after weights().init_random): convolution kernels
  // channels-last, as the activations are, and each attention's q|k|v one matrix (one GEMM, no copy per call).
  void prepare();

  Posterior encode(const at::Tensor& images) const;    // [N, in, H, W], H and W multiples of factor()
  at::Tensor decode(const at::Tensor& latents) const;  // unscaled z [N, lc, h, w] -> [N, out, f h, f w]

  // Multiply-adds x 2 per image of H x W pixels.
  double encode_flops(int64_t height, int64_t width) const;
  double decode_flops(int64_t height, int64_t width) const;

 private:
  at::Tensor conv(const at::Tensor& x, const std::string& p, int64_t stride = 1, int64_t pad = 1) const;
  at::Tensor norm(const at::Tensor& x, const std::string& p, bool silu) const;
  at::Tensor resnet(const at::Tensor& x, const std::string& p) const;
  at::Tensor attention(const at::Tensor& x, const std::string& p) const;
  at::Tensor mid_block(at::Tensor x, const std::string& p) const;
  double flops(int64_t height, int64_t width, bool decoder) const;

  VaeConfig config_;
  TensorSet w_;
  struct Fused {
    at::Tensor w, b;  // [3 C, C], [3 C]: q, then k, then v
  };
  std::map<std::string, Fused> qkv_;  // by attention prefix
};

}  // namespace opendit::models::vae
