// One input file -> the tensor the VAE encodes, as DiT and Open-Sora v1.0 prepare them, or why it cannot be used:
//   image (.jpg, .jpeg, .png): DiT's center_crop_arr to image_size, [-1, 1], [3, S, S]
//   video (.mp4, .mov, .avi, .mkv, .webm): num_frames frames at frame_interval from the first frame, the short side
//         to image_size and the centre crop, [-1, 1], [3, T, S, S]
// A file that cannot be read or decoded is not an exception: `error` says why, so that a batch job skips it, lists it
// and goes on (io errors of the machine itself still throw).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <string>

namespace opendit::encode {

struct PrepareSettings {
  int64_t image_size = 256;
  int64_t num_frames = 16, frame_interval = 3;  // Open-Sora v1.0
};

enum class MediaKind { Image, Video, Unknown };
MediaKind media_kind(const std::string& path);  // by extension, case-insensitive

struct PreparedItem {
  at::Tensor pixels;  // [3, S, S] or [3, T, S, S] float32 in [-1, 1]; undefined on failure
  std::string error;  // "" on success
};

PreparedItem prepare_item(const std::string& path, const PrepareSettings& s);

}  // namespace opendit::encode
