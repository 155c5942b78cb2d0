// `opendit decode`: latents (a safetensors file of samples or latents, or an opendit.latents HDF5 file) -> pictures
// through the VAE: a PNG per sample in a folder, or one PNG grid. Video latents [N, C, T, h, w] give a strip of frames
// per sample.
#include <cstdio>
#include <filesystem>

#include "cli/app.hpp"
#include "core/error.hpp"
#include "core/progress.hpp"
#include "core/strings.hpp"
#include "encode/encoders.hpp"
#include "io/files.hpp"
#include "io/image.hpp"
#include "io/latent_dataset.hpp"
#include "io/safetensors.hpp"
#include "io/video_read.hpp"
#include "io/video_write.hpp"
#include "models/vae/pipeline.hpp"

namespace opendit::cli {

namespace {

namespace fs = std::filesystem;

struct DecodeArgs {
  std::string vae, input, out, key, rows, dtype = "fp32", device = "auto";
  int64_t micro_batch = 8, tile = 0, overlap = 8, per_row = 8;
  double fps = 8;
  bool overwrite = false;
};

// "START:END" (either side may be empty) of `count` rows -> [start, end).
std::pair<int64_t, int64_t> parse_rows(const std::string& text, int64_t count) {
  if (text.empty()) return {0, count};
  const auto colon = text.find(':');
  try {
    const int64_t start = colon == 0 ? 0 : std::stoll(text.substr(0, colon));
    const int64_t end = colon == std::string::npos ? start + 1
                        : colon + 1 == text.size() ? count
                                                   : std::stoll(text.substr(colon + 1));
    if (start < 0 || end > count || start >= end) throw std::out_of_range("");
    return {start, end};
  } catch (const std::exception&) {
    throw Error(cat("--rows ", text, ": expected START:END with 0 <= START < END <= ", count, " (the file's rows)"));
  }
}

// The latents to decode, scaled as the VAE's scaling_factor expects: [n, C, h, w] or [n, C, T, h, w], float32.
struct Source {
  at::Tensor latents;  // all rows asked for (safetensors), or undefined (HDF5: read in chunks)
  std::unique_ptr<io::LatentDataset> dataset;
  int64_t start = 0, end = 0;
  double rescale = 1;  // the file's scale -> the VAE's
  std::string what;    // for messages
};

Source open_source(const DecodeArgs& a, const models::vae::VaeConfig& vae) {
  Source s;
  if (ends_with(a.input, ".safetensors")) {
    io::SafetensorsFile f = io::load_safetensors(a.input);
    std::string key = a.key;
    if (key.empty()) {
      for (const char* k : {"samples", "latents"})
        if (f.tensors.count(k)) key = k;
      if (key.empty()) {
        std::vector<std::string> names;
        for (const auto& [n, t] : f.tensors)
          if (t.is_floating_point() && (t.dim() == 4 || t.dim() == 5)) names.push_back(n);
        if (names.size() != 1)
          throw Error(cat(a.input, ": no tensor 'samples' or 'latents' and ", names.size(),
                          " other 4-D or 5-D float tensors; name one with --key"));
        key = names.front();
      }
    }
    auto it = f.tensors.find(key);
    if (it == f.tensors.end()) throw Error(cat(a.input, ": no tensor '", key, "'"));
    s.latents = it->second.to(at::kFloat);
    s.what = cat(a.input, ":", key);
    std::tie(s.start, s.end) = parse_rows(a.rows, s.latents.size(0));
    s.latents = s.latents.narrow(0, s.start, s.end - s.start);
  } else {
    s.dataset = std::make_unique<io::LatentDataset>(a.input);
    if (s.dataset->space() != "latent")
      throw Error(cat(a.input, ": holds ", s.dataset->space(), " data, not VAE latents: nothing to decode"));
    s.rescale = vae.scaling_factor / s.dataset->scale_factor();
    s.what = a.input;
    std::tie(s.start, s.end) = parse_rows(a.rows, s.dataset->size());
    for (int64_t r = s.start; r < s.end; ++r)  // a v2 file may hold several shapes: decode one at a time
      if (s.dataset->bucket_of(r) != s.dataset->bucket_of(s.start))
        throw Error(cat(a.input, ": rows ", s.start, " and ", r, " have different shapes (buckets ",
                        s.dataset->bucket_of(s.start), " and ", s.dataset->bucket_of(r),
                        "); give --rows of one shape (/samples/bucket lists each row's)"));
  }
  const std::vector<int64_t> shape = s.dataset
                                         ? s.dataset->buckets().at(s.dataset->bucket_of(s.start)).shape
                                         : std::vector<int64_t>(s.latents.sizes().begin() + 1, s.latents.sizes().end());
  if ((shape.size() != 3 && shape.size() != 4) || shape.front() != vae.latent_channels)
    throw Error(cat(s.what, ": samples of ", shape_str(shape), "; the VAE decodes [", vae.latent_channels,
                    ", h, w] or [", vae.latent_channels, ", T, h, w]"));
  return s;
}

void run_decode(const DecodeArgs& a, MpiRuntime& mpi) {
  require_one_process(mpi, "decode");
  if (a.micro_batch < 1 || a.per_row < 1) throw Error("--micro-batch and --per-row must be >= 1");
  if (!(a.fps > 0)) throw Error(cat("--fps ", a.fps, ": must be > 0"));
  const bool grid = ends_with(a.out, ".png"), mp4 = ends_with(a.out, ".mp4");
  if (!io::png_supported()) throw Error("this opendit was built without libpng: decode writes PNG files");
  // Everything checked before the work: the VAE folder (headers only), the input, the output.
  const at::ScalarType dtype = encode::parse_dtype(a.dtype, "--dtype");
  const encode::LoadedVae described = encode::load_vae(a.vae, at::TensorOptions(dtype).device(at::kMeta));
  Source src = open_source(a, described.model->config());
  const bool video = src.dataset ? src.dataset->buckets().at(src.dataset->bucket_of(src.start)).shape.size() == 4
                                 : src.latents.dim() == 5;
  if (mp4) {
    if (!video) throw Error(cat("--out ", a.out, ": these latents are images; write NAME.png or a folder"));
    if (src.end - src.start != 1)
      throw Error(cat("--out ", a.out, ": one MP4 holds one video and ", src.end - src.start, " rows are asked for; "
                      "give a folder (one NNNNNN.mp4 each) or --rows K:K+1"));
    if (!io::video_supported()) throw Error(cat("--out ", a.out, ": ", io::ffmpeg_version()));
  }
  // Video samples in a folder: an MP4 each, or where FFmpeg is not built in, a PNG strip of their frames.
  const bool folder_mp4 = video && !grid && !mp4 && io::video_supported();
  if (grid || mp4) {
    io::check_can_write(a.out, "--out");
  } else {
    if (fs::exists(a.out) && !fs::is_directory(a.out)) throw Error(cat("--out ", a.out, ": a file, not a folder"));
    if (fs::exists(a.out) && !fs::is_empty(a.out) && !a.overwrite)
      throw Error(cat("--out ", a.out, ": the folder is not empty (give --overwrite to replace its files)"));
    io::make_dirs(a.out, "--out");
  }
  const bool gpu = pick_gpu(a.device);
  const at::Device device = gpu ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  const encode::LoadedVae vae = encode::load_vae(a.vae, at::TensorOptions(dtype).device(device));
  models::vae::DecodeOptions opts;
  opts.micro_batch = a.micro_batch, opts.tile = a.tile, opts.overlap = a.overlap;

  const int64_t n = src.end - src.start;
  std::fprintf(stderr, "decoding %lld samples of %s with %s (%s, %s on %s)\n", (long long)n, src.what.c_str(),
               vae.folder.c_str(), vae.model->config().describe().c_str(), a.dtype.c_str(), gpu ? "GPU" : "CPU");
  std::vector<at::Tensor> all;  // grid: every picture, kept until the end
  Progress progress("decode", n);
  for (int64_t s = 0; s < n; s += a.micro_batch) {
    const int64_t k = std::min(a.micro_batch, n - s);
    at::Tensor z;
    if (src.dataset) {
      std::vector<int64_t> idx(static_cast<size_t>(k));
      for (int64_t i = 0; i < k; ++i) idx[size_t(i)] = src.start + s + i;
      z = src.dataset->read(idx).latents * src.rescale;
    } else {
      z = src.latents.narrow(0, s, k);
    }
    const at::Tensor images = models::vae::decode(*vae.model, z.to(device), opts).to(at::kCPU);
    if (!at::isfinite(images).all().item<bool>())
      throw Error(cat("rows ", src.start + s, "..", src.start + s + k - 1, " of ", src.what,
                      " decode to NaN or Inf (the latents hold such values or are far outside the VAE's range)"));
    for (int64_t i = 0; i < k; ++i) {
      const std::string stem = cat(a.out, "/", io::numbered(src.start + s + i));
      if (grid)
        all.push_back(images[i]);
      else if (mp4)
        io::write_mp4(a.out, io::video_to_uint8(images[i]), a.fps);
      else if (folder_mp4)
        io::write_mp4(stem + ".mp4", io::video_to_uint8(images[i]), a.fps);
      else
        io::write_png(stem + ".png", io::sample_picture(images[i]));
    }
    progress.update(s + k);
  }
  progress.finish();
  if (grid) {
    const at::Tensor images = at::stack(all);
    io::write_png(a.out, images.dim() == 4 ? io::image_grid(images, a.per_row)
                                           : io::image_grid(images.transpose(1, 2).flatten(0, 1), images.size(2)));
  }
  std::printf("wrote %s (%lld %s)\n", a.out.c_str(), (long long)n,
              grid ? "samples in one grid" : mp4 ? "video" : folder_mp4 ? "MP4 files" : "PNG files");
}

}  // namespace

void add_decode(CLI::App& app, MpiRuntime& mpi) {
  auto a = std::make_shared<DecodeArgs>();
  auto* cmd = app.add_subcommand("decode",
                                 "Decode latents (safetensors samples or an opendit.latents HDF5 file) to "
                                 "PNG pictures through the VAE");
  cmd->add_option("latents", a->input,
                  "NAME.safetensors (tensor 'samples' or 'latents', or --key) or an "
                  "opendit.latents .h5 file")
      ->required();
  cmd->add_option("--vae", a->vae, "The VAE: a diffusers AutoencoderKL folder (or a pipeline folder with vae/)")
      ->required();
  cmd->add_option("--out", a->out, "A folder (NNNNNN.png per image; NNNNNN.mp4 per video, PNG strips without FFmpeg), "
                                   "NAME.png (one grid) or NAME.mp4 (one video)")->required();
  cmd->add_option("--fps", a->fps, "Frames per second of MP4 output")->default_val(8);
  cmd->add_option("--key", a->key, "The tensor of a safetensors file (default: samples, latents, or the only one)");
  cmd->add_option("--rows", a->rows, "Rows START:END of the input (default: all)");
  cmd->add_option("--per-row", a->per_row, "Images per grid row (NAME.png; videos: one sample per row)")
      ->default_val(8);
  cmd->add_option("--dtype", a->dtype, "VAE precision: fp32 or bf16")->default_val("fp32");
  cmd->add_option("--device", a->device, "auto, cpu or cuda")->default_val("auto");
  cmd->add_option("--micro-batch", a->micro_batch, "Frames per decoder pass (bounds memory)")->default_val(8);
  cmd->add_option("--tile", a->tile, "Decode frames larger than TILE latents on a side in overlapping tiles (0: off)")
      ->default_val(0);
  cmd->add_option("--overlap", a->overlap, "Tile overlap in latents (seams blended)")->default_val(8);
  cmd->add_flag("--overwrite", a->overwrite, "Write into a folder that already holds files");
  cmd->callback([a, &mpi] { run_decode(*a, mpi); });
}

}  // namespace opendit::cli
