#include "encode/prepare.hpp"

#include <algorithm>
#include <cctype>

#include "core/error.hpp"
#include "io/image_read.hpp"
#include "io/resample.hpp"
#include "io/video_read.hpp"

namespace opendit::encode {

MediaKind media_kind(const std::string& path) {
  const size_t dot = path.find_last_of('.');
  if (dot == std::string::npos || path.find('/', dot) != std::string::npos) return MediaKind::Unknown;
  std::string ext = path.substr(dot + 1);
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  if (ext == "jpg" || ext == "jpeg" || ext == "png") return MediaKind::Image;
  if (ext == "mp4" || ext == "mov" || ext == "avi" || ext == "mkv" || ext == "webm") return MediaKind::Video;
  return MediaKind::Unknown;
}

PreparedItem prepare_item(const std::string& path, const PrepareSettings& s) {
  if (s.image_size < 1 || s.num_frames < 1 || s.frame_interval < 1)
    throw Error(cat("image_size, num_frames and frame_interval must be >= 1, got ", s.image_size, ", ", s.num_frames,
                    ", ", s.frame_interval));
  PreparedItem out;
  try {
    switch (media_kind(path)) {
      case MediaKind::Image:
        out.pixels = io::to_unit_range(io::center_crop_arr(io::read_image_rgb(path), s.image_size));
        break;
      case MediaKind::Video: {
        // Only the frames the clip needs are decoded: the span from the first frame.
        const at::Tensor frames = io::read_video_rgb(path, s.num_frames * s.frame_interval);
        const auto idx = io::clip_frame_indices(frames.size(0), s.num_frames, s.frame_interval);
        out.pixels = io::preprocess_clip(frames.index_select(0, at::tensor(idx)), s.image_size);
        break;
      }
      case MediaKind::Unknown:
        out.error = cat(path, ": not an image (.jpg, .jpeg, .png) or video (.mp4, .mov, .avi, .mkv, .webm) file");
        break;
    }
  } catch (const Error& e) {
    out.pixels = at::Tensor();
    out.error = e.what();
  }
  return out;
}

}  // namespace opendit::encode
