// Where samples go: a safetensors file (the samples and their labels, for latent and pixel models alike) or a PNG
// grid (pixel models with 1 or 3 channels, a row per class). Decoding latents to pictures needs the VAE.
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <string>
#include <vector>

#include "models/model.hpp"

namespace opendit::sample {

enum class OutputKind { Safetensors, Png };

// The output `path` asks for, checked against what the model makes before any work (throws opendit::Error naming
// --out): NAME.safetensors, or NAME.png for a pixel model of 1 or 3 channels.
OutputKind output_kind(const std::string& path, bool pixel_space, int64_t channels);

// Before any work: --out can be written (its folder exists and takes a file; not a folder), is none of `inputs`
// (files the run reads: sampling must not replace them) and, for a PNG, this build writes PNGs. Throws
// opendit::Error naming --out; returns whether it replaces an existing file.
bool check_output(const std::string& path, OutputKind kind, const std::vector<std::string>& inputs);

// samples [N, C, H, W] float32 (CPU); cond: their conditions (labels are written beside the samples); per_row: images
// per grid row (PNG); metadata: safetensors metadata besides format and version.
void write_samples(const std::string& path, OutputKind kind, const at::Tensor& samples, const models::Condition& cond,
                   int64_t per_row, const std::map<std::string, std::string>& metadata);

}  // namespace opendit::sample
