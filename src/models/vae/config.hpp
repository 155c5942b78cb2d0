// The hyper-parameters of diffusers' AutoencoderKL (the SD VAE of DiT and Open-Sora v1.0) as its config.json gives
// them, checked: another architecture's config (a T5, a temporal VAE, a VQ model) is refused by name.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace opendit::models::vae {

struct VaeConfig {
  int64_t in_channels = 3, out_channels = 3, latent_channels = 4;
  std::vector<int64_t> block_out_channels = {128, 256, 512, 512};  // one down (and up) block each
  int64_t layers_per_block = 2;                                    // resnets per down block; up blocks have one more
  int64_t norm_num_groups = 32;                                    // GroupNorm groups (eps 1e-6)
  int64_t sample_size = 256;                                       // the training image size; diffusers' tile size
  double scaling_factor = 0.18215, shift_factor = 0;               // latents = (z - shift) * scaling
  bool use_quant_conv = true, use_post_quant_conv = true, mid_block_add_attention = true;

  int64_t factor() const { return int64_t{1} << (block_out_channels.size() - 1); }  // pixels per latent (8)
  void validate(const std::string& origin) const;  // throws opendit::Error naming origin and the key
  std::string to_json() const;                     // a diffusers config.json (the keys above)
  std::string describe() const;                    // "AutoencoderKL 4 latent channels, factor 8, blocks 128-..."
};

// The SD VAE (stabilityai/sd-vae-ft-ema and -mse): what benchmarks and tests build without a file.
VaeConfig sd_vae_config();
// A config.json's text -> config. Throws opendit::Error naming `origin` for bad JSON, another class, unsupported
// block types or activations, or values that do not fit together.
VaeConfig vae_config_from_json(const std::string& json, const std::string& origin);

}  // namespace opendit::models::vae
