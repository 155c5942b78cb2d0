#include "io/video_write.hpp"

#include <ATen/Functions.h>

#include <cmath>
#include <memory>

#include "core/error.hpp"
#include "io/atomic_file.hpp"

#ifdef OPENDIT_HAVE_FFMPEG
extern "C" {
#include <libavutil/opt.h>
}
#include "io/ffmpeg_detail.hpp"
#endif

namespace opendit::io {

at::Tensor video_to_uint8(const at::Tensor& video) {
  if (video.dim() != 4 || video.size(0) != 3)
    throw Error(cat("video_to_uint8: expected [3, T, H, W], got ", video.sizes()));
  return ((video.detach().to(at::kCPU, at::kFloat) + 1) * 127.5 + 0.5)
      .clamp(0, 255)
      .to(at::kByte)
      .permute({1, 2, 3, 0})
      .contiguous();
}

#ifdef OPENDIT_HAVE_FFMPEG

using namespace ffmpeg;

std::string write_mp4(const std::string& path, const at::Tensor& frames_in, double fps) {
  if (frames_in.dim() != 4 || frames_in.size(3) != 3 || frames_in.scalar_type() != at::kByte || frames_in.size(0) < 1)
    throw Error(cat(path, ": expected uint8 frames [T, H, W, 3], got ", frames_in.sizes()));
  if (!(fps > 0)) throw Error(cat(path, ": frames per second must be > 0, got ", fps));
  // yuv420p needs even sizes: repeat the last row / column where one is odd.
  at::Tensor frames = frames_in.contiguous();
  if (frames.size(1) % 2) frames = at::cat({frames, frames.narrow(1, frames.size(1) - 1, 1)}, 1);
  if (frames.size(2) % 2) frames = at::cat({frames, frames.narrow(2, frames.size(2) - 1, 1)}, 2);
  frames = frames.contiguous();
  const int T = static_cast<int>(frames.size(0)), H = static_cast<int>(frames.size(1)),
            W = static_cast<int>(frames.size(2));

  quiet_logs();
  AtomicFile out(path);
  AVFormatContext* oc = nullptr;
  if (avformat_alloc_output_context2(&oc, nullptr, "mp4", out.tmp_path().c_str()) < 0 || !oc)
    throw Error(cat(path, ": cannot start an MP4 container"));
  std::unique_ptr<AVFormatContext, void (*)(AVFormatContext*)> own_oc(oc, [](AVFormatContext* c) {
    if (c->pb) avio_closep(&c->pb);
    avformat_free_context(c);
  });
  const AVCodec* codec = avcodec_find_encoder_by_name("libx264");
  if (!codec) codec = avcodec_find_encoder(AV_CODEC_ID_MPEG4);
  if (!codec) throw Error(cat(path, ": this FFmpeg has neither an H.264 (libx264) nor an MPEG-4 encoder"));
  AVStream* st = avformat_new_stream(oc, nullptr);
  Codec enc(avcodec_alloc_context3(codec));
  if (!st || !enc) throw Error(cat(path, ": out of memory starting the encoder"));
  const AVRational rate = av_d2q(fps, 100000);
  enc->width = W, enc->height = H, enc->pix_fmt = AV_PIX_FMT_YUV420P;
  enc->time_base = av_inv_q(rate), enc->framerate = rate;
  if (oc->oformat->flags & AVFMT_GLOBALHEADER) enc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  if (codec->id == AV_CODEC_ID_H264) {
    av_opt_set(enc->priv_data, "crf", "18", 0);  // visually lossless for samples
    av_opt_set(enc->priv_data, "preset", "medium", 0);
  } else {
    enc->flags |= AV_CODEC_FLAG_QSCALE;
    enc->global_quality = FF_QP2LAMBDA * 2;
  }
  if (int e = avcodec_open2(enc.get(), codec, nullptr); e < 0)
    throw Error(cat(path, ": cannot open the ", codec->name, " encoder (", error_text(e), ")"));
  avcodec_parameters_from_context(st->codecpar, enc.get());
  st->time_base = enc->time_base;
  st->avg_frame_rate = rate;
  if (int e = avio_open(&oc->pb, out.tmp_path().c_str(), AVIO_FLAG_WRITE); e < 0)
    throw Error(cat(out.tmp_path(), ": cannot be written (", error_text(e), ")"));
  if (int e = avformat_write_header(oc, nullptr); e < 0)
    throw Error(cat(path, ": cannot write the MP4 header (", error_text(e), ")"));

  Frame yuv(av_frame_alloc());
  Packet pkt(av_packet_alloc());
  yuv->format = AV_PIX_FMT_YUV420P, yuv->width = W, yuv->height = H;
  if (av_frame_get_buffer(yuv.get(), 0) < 0) throw Error(cat(path, ": out of memory for a frame"));
  Sws sws(sws_getContext(W, H, AV_PIX_FMT_RGB24, W, H, AV_PIX_FMT_YUV420P, SWS_BILINEAR, nullptr, nullptr, nullptr));
  if (!sws) throw Error(cat(path, ": cannot convert RGB to YUV"));
  auto drain = [&](bool flush) {
    for (;;) {
      const int r = avcodec_receive_packet(enc.get(), pkt.get());
      if (r == AVERROR(EAGAIN) || r == AVERROR_EOF) return;
      if (r < 0) throw Error(cat(path, ": encoding failed (", error_text(r), ")"));
      if (pkt->duration == 0) pkt->duration = 1;  // one frame, in the encoder's time base (1 / fps)
      av_packet_rescale_ts(pkt.get(), enc->time_base, st->time_base);
      pkt->stream_index = st->index;
      if (int e = av_interleaved_write_frame(oc, pkt.get()); e < 0)
        throw Error(cat(path, ": write failed (", error_text(e), ")"));
    }
    (void)flush;
  };
  for (int t = 0; t < T; ++t) {
    if (av_frame_make_writable(yuv.get()) < 0) throw Error(cat(path, ": frame buffer busy"));
    const uint8_t* src[4] = {frames[t].data_ptr<uint8_t>(), nullptr, nullptr, nullptr};
    const int stride[4] = {3 * W, 0, 0, 0};
    sws_scale(sws.get(), src, stride, 0, H, yuv->data, yuv->linesize);
    yuv->pts = t;
    if (int e = avcodec_send_frame(enc.get(), yuv.get()); e < 0)
      throw Error(cat(path, ": encoding failed (", error_text(e), ")"));
    drain(false);
  }
  avcodec_send_frame(enc.get(), nullptr);
  drain(true);
  if (int e = av_write_trailer(oc); e < 0) throw Error(cat(path, ": cannot finish the MP4 (", error_text(e), ")"));
  avio_closep(&oc->pb);
  out.commit();
  return codec->name;
}

#else

std::string write_mp4(const std::string& path, const at::Tensor&, double) {
  throw Error(cat(path, ": this opendit was built without FFmpeg: no MP4 output (write PNG frames instead)"));
}

#endif

}  // namespace opendit::io
