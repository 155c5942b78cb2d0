// Shared by the FFmpeg readers and writers (io/video_read.cpp, io/video_write.cpp); only built with FFmpeg: its
// headers, error text, owners of its objects, and its logging kept to errors (the callers report failures
// themselves, as opendit::Error naming the file).
#pragma once
#ifdef OPENDIT_HAVE_FFMPEG
extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/log.h>
#include <libswscale/swscale.h>
}

#include <memory>
#include <string>

namespace opendit::io::ffmpeg {

inline std::string error_text(int err) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
  av_strerror(err, buf, sizeof buf);
  return buf;
}

// libav's own log lines (encoder statistics, decoder warnings, its error lines) stay quiet: every failure is reported
// by our own error, with libav's error text, once and with the file name (an encode job skips broken files).
inline void quiet_logs() { av_log_set_level(AV_LOG_FATAL); }

struct CodecCloser {
  void operator()(AVCodecContext* c) const { avcodec_free_context(&c); }
};
struct FrameCloser {
  void operator()(AVFrame* f) const { av_frame_free(&f); }
};
struct PacketCloser {
  void operator()(AVPacket* p) const { av_packet_free(&p); }
};
struct SwsCloser {
  void operator()(SwsContext* s) const { sws_freeContext(s); }
};
using Codec = std::unique_ptr<AVCodecContext, CodecCloser>;
using Frame = std::unique_ptr<AVFrame, FrameCloser>;
using Packet = std::unique_ptr<AVPacket, PacketCloser>;
using Sws = std::unique_ptr<SwsContext, SwsCloser>;

}  // namespace opendit::io::ffmpeg
#endif
