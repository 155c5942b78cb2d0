// Reading video inputs for `opendit encode` through FFmpeg's libraries (libavformat, libavcodec, libswscale), and
// Open-Sora v1.0's preprocessing of a clip:
//   frames: the video stream's frames in presentation order, converted to 8-bit RGB (swscale, bilinear), as
//           torchvision.io.read_video (PyAV) returns them;
//   clip:   num_frames frames at a frame_interval stride (np.linspace over the span, truncated to integers), the short
//           side resized to `size` by bilinear interpolation with that scale factor (align_corners false, no
//           antialias: torch.nn.functional.interpolate as UCFCenterCropVideo calls it), the centre size x size crop,
//           normalised to [-1, 1].
// A build without FFmpeg has no video input: video_supported() is false and the readers throw saying so.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace opendit::io {

bool video_supported();
std::string ffmpeg_version();  // "libavformat 59.27.100, libavcodec 59.37.100, libswscale 6.7.100" or "not built"

// Frames [T, H, W, 3] uint8 of the first video stream; max_frames >= 0 stops after that many. opendit::Error naming
// the path for a missing, unreadable, truncated-beyond-use or stream-less file.
at::Tensor read_video_rgb(const std::string& path, int64_t max_frames = -1);

// The frame indices of a clip of num_frames at stride frame_interval starting at `start`, within `total` frames:
// linspace(start, start + span - 1, num_frames) truncated, span = min(num_frames * frame_interval, total - start).
std::vector<int64_t> clip_frame_indices(int64_t total, int64_t num_frames, int64_t frame_interval, int64_t start = 0);

// frames [T, H, W, 3] uint8 -> float32 [3, T, size, size] in [-1, 1] (resize of the short side, centre crop).
at::Tensor preprocess_clip(const at::Tensor& frames, int64_t size);

}  // namespace opendit::io
