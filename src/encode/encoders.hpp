// Loading the encoders from the files they are published in (no download: the user's folders):
//   VAE: a diffusers AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors), or a pipeline folder
//        with it under vae/ (stabilityai/sd-vae-ft-ema, -mse; a Stable Diffusion or PixArt pipeline).
//   T5:  a transformers folder (config.json + model.safetensors, or model.safetensors.index.json and its shards), or
//        a pipeline folder with it under text_encoder/; spiece.model beside it or in the pipeline's tokenizer/.
// Every name and shape is checked against config.json; each problem is one opendit::Error naming the file.
#pragma once
#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "models/t5/encoder.hpp"
#include "models/t5/tokenizer.hpp"
#include "models/vae/autoencoder_kl.hpp"

namespace opendit::encode {

struct LoadedVae {
  std::unique_ptr<models::vae::AutoencoderKL> model;
  std::string folder;                      // the folder config.json and the weights were read from
  std::string config_json;                 // its config.json, as read
  std::vector<std::string> weight_files;   // read, in order
  at::ScalarType file_dtype = at::kFloat;  // what the file stores
};

struct LoadedT5 {
  std::unique_ptr<models::t5::T5Encoder> model;
  std::unique_ptr<models::t5::Tokenizer> tokenizer;  // null when load_t5(..., with_tokenizer = false)
  std::string folder;
  std::string config_json;  // its config.json, as read
  std::vector<std::string> weight_files;
  std::vector<std::string> skipped;  // tensors of a whole T5 that the encoder does not use (decoder.*, lm_head)
  at::ScalarType file_dtype = at::kFloat;
};

// `options`: the device and dtype (float32 or bfloat16) to run in. On the meta device only the files' headers are read:
// every check of names, shapes and configs without loading the data (`opendit info`).
LoadedVae load_vae(const std::string& path, const at::TensorOptions& options);
LoadedT5 load_t5(const std::string& path, const at::TensorOptions& options, bool with_tokenizer = true);

// The folder of a component: `path` itself when it has config.json, else path/<sub> when that has one; throws
// opendit::Error saying what `path` holds instead.
std::string component_folder(const std::string& path, const std::string& sub, const std::string& what);

// "bf16" | "fp32" (also "bfloat16", "float32") -> dtype; throws opendit::Error naming `flag`.
at::ScalarType parse_dtype(const std::string& text, const std::string& flag);

}  // namespace opendit::encode
