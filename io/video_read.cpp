#include "io/video_read.hpp"

#include <ATen/Functions.h>

#include <algorithm>
#include <cmath>
#include <memory>

#include "core/error.hpp"

#ifdef OPENDIT_HAVE_FFMPEG
extern "C" {
#include <libavutil/imgutils.h>
#include <libavutil/pixdesc.h>
}
#include "io/ffmpeg_detail.hpp"
#endif

namespace opendit::io {

#ifdef OPENDIT_HAVE_FFMPEG
using namespace ffmpeg;

namespace {
struct FormatCloser {  // an input file (an output one is closed otherwise: io/video_write.cpp)
  void operator()(AVFormatContext* f) const { avformat_close_input(&f); }
};
}  // namespace

bool video_supported() { return true; }

std::string ffmpeg_version() {
  auto v = [](unsigned x) { return cat(x >> 16, ".", (x >> 8) & 0xff, ".", x & 0xff); };
  return cat("libavformat ", v(avformat_version()), ", libavcodec ", v(avcodec_version()), ", libswscale ",
             v(swscale_version()));
}

at::Tensor read_video_rgb(const std::string& path, int64_t max_frames) {
  quiet_logs();
  AVFormatContext* raw = nullptr;
  if (int e = avformat_open_input(&raw, path.c_str(), nullptr, nullptr); e < 0)
    throw Error(cat(path, ": cannot be opened as a video (", error_text(e), ")"));
  std::unique_ptr<AVFormatContext, FormatCloser> fmt(raw);
  if (int e = avformat_find_stream_info(fmt.get(), nullptr); e < 0)
    throw Error(cat(path, ": no stream information (", error_text(e), ")"));
  const int stream = av_find_best_stream(fmt.get(), AVMEDIA_TYPE_VIDEO, -1, -1, nullptr, 0);
  if (stream < 0) throw Error(cat(path, ": no video stream"));
  const AVCodecParameters* par = fmt->streams[stream]->codecpar;
  const AVCodec* codec = avcodec_find_decoder(par->codec_id);
  if (!codec) throw Error(cat(path, ": no decoder for its video codec (", avcodec_get_name(par->codec_id), ")"));
  Codec dec(avcodec_alloc_context3(codec));
  if (!dec || avcodec_parameters_to_context(dec.get(), par) < 0 || avcodec_open2(dec.get(), codec, nullptr) < 0)
    throw Error(cat(path, ": cannot open the ", codec->name, " decoder"));
  Frame frame(av_frame_alloc());
  Packet packet(av_packet_alloc());
  Sws sws;
  std::vector<at::Tensor> frames;
  bool broken = false;
  std::string why;
  auto take = [&]() -> bool {  // drains the decoder; false when enough frames are there
    for (;;) {
      const int r = avcodec_receive_frame(dec.get(), frame.get());
      if (r == AVERROR(EAGAIN) || r == AVERROR_EOF) return true;
      if (r < 0) {
        broken = true, why = error_text(r);
        return false;
      }
      const int w = frame->width, h = frame->height;
      // FFmpeg 5's x86 YUV -> RGB fast path leaves the last columns of a row whose width is not a multiple of 8
      // unconverted. Decoders pad their rows, so the conversion runs over the padded width (16) and the extra
      // columns are dropped: each output pixel depends only on its own luma and chroma samples there.
      const int wp = (w + 15) & ~15;
      const AVPixFmtDescriptor* desc = av_pix_fmt_desc_get(static_cast<AVPixelFormat>(frame->format));
      bool pad = wp != w && desc && (desc->flags & AV_PIX_FMT_FLAG_PLANAR) && desc->comp[0].depth == 8 &&
                 frame->linesize[0] >= wp;
      for (int p = 1; pad && p < 3 && frame->data[p]; ++p)
        pad = frame->linesize[p] >= AV_CEIL_RSHIFT(wp, desc->log2_chroma_w);
      const int cw = pad ? wp : w;
      sws.reset(sws_getCachedContext(sws.release(), cw, h, static_cast<AVPixelFormat>(frame->format), cw, h,
                                     AV_PIX_FMT_RGB24, SWS_BILINEAR, nullptr, nullptr, nullptr));
      if (!sws) throw Error(cat(path, ": cannot convert its frames to RGB"));
      at::Tensor rgb = at::empty({h, cw, 3}, at::kByte);
      uint8_t* dst[4] = {rgb.data_ptr<uint8_t>(), nullptr, nullptr, nullptr};
      const int stride[4] = {3 * cw, 0, 0, 0};
      sws_scale(sws.get(), frame->data, frame->linesize, 0, h, dst, stride);
      if (cw != w) rgb = rgb.narrow(1, 0, w).contiguous();
      av_frame_unref(frame.get());
      frames.push_back(rgb);
      if (max_frames >= 0 && static_cast<int64_t>(frames.size()) >= max_frames) return false;
    }
  };
  bool more = max_frames != 0;
  while (more && av_read_frame(fmt.get(), packet.get()) >= 0) {
    if (packet->stream_index == stream && avcodec_send_packet(dec.get(), packet.get()) >= 0) more = take();
    av_packet_unref(packet.get());
  }
  if (more) {  // flush the frames the decoder still holds
    avcodec_send_packet(dec.get(), nullptr);
    take();
  }
  if (frames.empty())
    throw Error(cat(path, ": no frame could be decoded", broken ? cat(" (", why, ")") : std::string()));
  return at::stack(frames);
}

#else

bool video_supported() { return false; }
std::string ffmpeg_version() { return "not built (no FFmpeg development files at build time): no video input"; }
at::Tensor read_video_rgb(const std::string& path, int64_t) {
  throw Error(cat(path, ": this opendit was built without FFmpeg (libavformat-dev, libavcodec-dev, libswscale-dev): "
                        "video input is off"));
}

#endif

std::vector<int64_t> clip_frame_indices(int64_t total, int64_t num_frames, int64_t frame_interval, int64_t start) {
  if (num_frames < 1 || frame_interval < 1 || start < 0 || start >= total)
    throw Error(cat("clip of ", num_frames, " frames at interval ", frame_interval, " from frame ", start, " of ", total,
                    ": needs num_frames, frame_interval >= 1 and 0 <= start < frames"));
  const int64_t span = std::min(num_frames * frame_interval, total - start);
  std::vector<int64_t> idx;
  // np.linspace(start, start + span - 1, num_frames, dtype=int): evenly spaced, truncated toward zero.
  for (int64_t i = 0; i < num_frames; ++i) {
    const double v = num_frames == 1 ? static_cast<double>(start)
                                     : start + (static_cast<double>(span - 1) * i) / (num_frames - 1);
    idx.push_back(static_cast<int64_t>(v));
  }
  return idx;
}

at::Tensor preprocess_clip(const at::Tensor& frames, int64_t size) {
  if (frames.dim() != 4 || frames.size(3) != 3 || frames.scalar_type() != at::kByte)
    throw Error(cat("preprocess_clip: expected uint8 frames [T, H, W, 3], got ", frames.sizes()));
  const at::Tensor x = frames.permute({0, 3, 1, 2}).to(at::kFloat) / 255.0;  // [T, 3, H, W] in [0, 1]
  const int64_t H = x.size(2), W = x.size(3);
  const double scale = static_cast<double>(size) / static_cast<double>(std::min(H, W));
  // interpolate(scale_factor=s): output floor(side * s), coordinates mapped with s itself.
  const auto oh = static_cast<int64_t>(std::floor(H * scale)), ow = static_cast<int64_t>(std::floor(W * scale));
  const at::Tensor r = at::upsample_bilinear2d(x, {oh, ow}, false, scale, scale);
  // The crop's corner as torchvision's video center_crop rounds it (Python's round: ties to even).
  const auto top = static_cast<int64_t>(std::nearbyint((oh - size) / 2.0));
  const auto left = static_cast<int64_t>(std::nearbyint((ow - size) / 2.0));
  const at::Tensor c = r.narrow(2, top, size).narrow(3, left, size);
  return ((c - 0.5) / 0.5).permute({1, 0, 2, 3}).contiguous();  // [3, T, size, size]
}

}  // namespace opendit::io
