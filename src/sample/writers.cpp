#include "sample/writers.hpp"

#include <filesystem>

#include "core/error.hpp"
#include "core/strings.hpp"
#include "io/files.hpp"
#include "io/image.hpp"
#include "io/safetensors.hpp"

namespace opendit::sample {

OutputKind output_kind(const std::string& path, bool pixel_space, int64_t channels) {
  const bool png = ends_with(path, ".png");
  if (!pixel_space && png)
    throw Error(cat("--out ", path, ": a latent model's samples are latents; write them to a .safetensors file "
                                    "(or give --vae DIR to decode them to a PNG grid)"));
  if (!png && !ends_with(path, ".safetensors"))
    throw Error(cat("--out ", path, ": expected NAME.safetensors (the samples)", pixel_space ? " or NAME.png (a grid)" : ""));
  if (png && channels != 1 && channels != 3) throw Error(cat("a PNG needs 1 or 3 channels; the model has ", channels));
  return png ? OutputKind::Png : OutputKind::Safetensors;
}

bool check_output(const std::string& path, OutputKind kind, const std::vector<std::string>& inputs) {
  if (kind == OutputKind::Png && !io::png_supported())
    throw Error(cat("--out ", path, ": this opendit was built without libpng; write NAME.safetensors instead"));
  const bool exists = io::check_can_write(path, "--out");
  for (const std::string& in : inputs) {
    std::error_code ec;
    if (exists && !in.empty() && std::filesystem::equivalent(path, in, ec))
      throw Error(cat("--out ", path, " is ", in, ", an input of this run: the samples would replace it"));
  }
  return exists;
}

void write_samples(const std::string& path, OutputKind kind, const at::Tensor& samples, const models::Condition& cond,
                   int64_t per_row, const std::map<std::string, std::string>& metadata) {
  if (kind == OutputKind::Png) {
    io::write_png(path, io::image_grid(samples.clamp(-1, 1), per_row));
    return;
  }
  std::map<std::string, at::Tensor> tensors = {{"samples", samples}};
  if (cond.labels.defined()) tensors["labels"] = cond.labels.to(at::kCPU);
  std::map<std::string, std::string> meta = metadata;
  meta["format"] = "opendit.samples";
  meta["version"] = "1";
  io::save_safetensors(path, tensors, meta);
}

}  // namespace opendit::sample
