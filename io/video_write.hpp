// Writing videos: frames -> an MP4 file through libavcodec/libavformat (H.264 through libx264 when the FFmpeg build
// has it, else MPEG-4 Part 2), yuv420p, written to PATH.tmp and renamed (no half-written file under PATH).
#pragma once
#include <ATen/ATen.h>

#include <string>

namespace opendit::io {

// frames uint8 [T, H, W, 3] (odd sizes are padded by one edge pixel: yuv420p needs even ones). opendit::Error naming
// the path when FFmpeg is not built in, no encoder is available or a write fails. Returns the codec used.
std::string write_mp4(const std::string& path, const at::Tensor& frames, double fps);

// images in [-1, 1]: [3, T, H, W] float -> uint8 [T, H, W, 3] (rounded as the PNG writer rounds).
at::Tensor video_to_uint8(const at::Tensor& video);

}  // namespace opendit::io
