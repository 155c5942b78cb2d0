#include "models/vae/autoencoder_kl.hpp"

#include <ATen/Functions.h>

#include <cmath>

#include "core/error.hpp"
#include "core/strings.hpp"
#include "cuda/ops.hpp"

namespace opendit::models::vae {

namespace {
constexpr double kEps = 1e-6;  // every GroupNorm of the SD VAE

// Activations and convolution weights are kept channels-last (NHWC in memory): cuDNN's fastest bf16 convolutions
// read and write it, and the fused GroupNorm works on it without a copy.
at::Tensor channels_last(const at::Tensor& t) { return t.contiguous(at::MemoryFormat::ChannelsLast); }

void declare_conv(TensorSet& w, const std::string& p, int64_t cin, int64_t cout, int64_t k) {
  w.declare(p + ".weight", {cout, cin, k, k});
  w.declare(p + ".bias", {cout});
}
void declare_norm(TensorSet& w, const std::string& p, int64_t c) {
  w.declare(p + ".weight", {c});
  w.declare(p + ".bias", {c});
}
void declare_resnet(TensorSet& w, const std::string& p, int64_t cin, int64_t cout) {
  declare_norm(w, p + ".norm1", cin);
  declare_conv(w, p + ".conv1", cin, cout, 3);
  declare_norm(w, p + ".norm2", cout);
  declare_conv(w, p + ".conv2", cout, cout, 3);
  if (cin != cout) declare_conv(w, p + ".conv_shortcut", cin, cout, 1);
}
void declare_mid(TensorSet& w, const std::string& p, int64_t c, bool attention) {
  declare_resnet(w, p + ".resnets.0", c, c);
  if (attention) {
    const std::string a = p + ".attentions.0";
    declare_norm(w, a + ".group_norm", c);
    for (const char* l : {".to_q", ".to_k", ".to_v", ".to_out.0"}) {
      w.declare(a + l + ".weight", {c, c});
      w.declare(a + l + ".bias", {c});
    }
  }
  declare_resnet(w, p + ".resnets.1", c, c);
}
}  // namespace

AutoencoderKL::AutoencoderKL(const VaeConfig& config) : config_(config) {
  config_.validate("AutoencoderKL");
  const auto& ch = config_.block_out_channels;
  const int64_t levels = static_cast<int64_t>(ch.size()), lc = config_.latent_channels;
  // Encoder: conv_in, down blocks (a stride-2 conv after each but the last), mid block, norm, conv_out to 2 lc.
  declare_conv(w_, "encoder.conv_in", config_.in_channels, ch[0], 3);
  for (int64_t i = 0; i < levels; ++i) {
    const std::string b = cat("encoder.down_blocks.", i);
    for (int64_t j = 0; j < config_.layers_per_block; ++j)
      declare_resnet(w_, cat(b, ".resnets.", j), j == 0 ? ch[std::max<int64_t>(i - 1, 0)] : ch[i], ch[i]);
    if (i + 1 < levels) declare_conv(w_, b + ".downsamplers.0.conv", ch[i], ch[i], 3);
  }
  declare_mid(w_, "encoder.mid_block", ch.back(), config_.mid_block_add_attention);
  declare_norm(w_, "encoder.conv_norm_out", ch.back());
  declare_conv(w_, "encoder.conv_out", ch.back(), 2 * lc, 3);
  // Decoder: the widths reversed, one resnet more per block, nearest x2 + conv after each block but the last.
  declare_conv(w_, "decoder.conv_in", lc, ch.back(), 3);
  declare_mid(w_, "decoder.mid_block", ch.back(), config_.mid_block_add_attention);
  for (int64_t i = 0; i < levels; ++i) {
    const std::string b = cat("decoder.up_blocks.", i);
    const int64_t cout = ch[levels - 1 - i], cin = ch[levels - 1 - std::max<int64_t>(i - 1, 0)];
    for (int64_t j = 0; j <= config_.layers_per_block; ++j)
      declare_resnet(w_, cat(b, ".resnets.", j), j ? cout : cin, cout);
    if (i + 1 < levels) declare_conv(w_, b + ".upsamplers.0.conv", cout, cout, 3);
  }
  declare_norm(w_, "decoder.conv_norm_out", ch[0]);
  declare_conv(w_, "decoder.conv_out", ch[0], config_.out_channels, 3);
  if (config_.use_quant_conv) declare_conv(w_, "quant_conv", 2 * lc, 2 * lc, 1);
  if (config_.use_post_quant_conv) declare_conv(w_, "post_quant_conv", lc, lc, 1);
}

void AutoencoderKL::load(const std::map<std::string, at::Tensor>& sd, const std::string& origin,
                         const at::TensorOptions& options) {
  // Files saved before diffusers 0.14 (the published sd-vae-ft-* among them) name the mid-block attention
  // query/key/value/proj_attn; they are the same tensors as to_q/to_k/to_v/to_out.0.
  std::map<std::string, at::Tensor> renamed;
  for (const auto& [name, t] : sd) {
    std::string n = name;
    for (const auto& [old_name, now] :
         {std::pair<std::string, std::string>{".attentions.0.query.", ".attentions.0.to_q."},
          {".attentions.0.key.", ".attentions.0.to_k."},
          {".attentions.0.value.", ".attentions.0.to_v."},
          {".attentions.0.proj_attn.", ".attentions.0.to_out.0."}}) {
      const size_t at = n.find(old_name);
      if (at != std::string::npos) n = n.substr(0, at) + now + n.substr(at + old_name.size());
    }
    // Old files also store the attention projections as 1x1 convolutions [C, C, 1, 1].
    renamed[n] = (n.find(".attentions.0.to_") != std::string::npos && t.dim() == 4) ? t.flatten(1) : t;
  }
  w_.load(renamed, origin, options);
  prepare();
}

void AutoencoderKL::prepare() {
  for (const std::string& n : w_.names())
    if (w_.shape(n).size() == 4 && !w_[n].is_meta()) w_.set(n, channels_last(w_[n]));
  qkv_.clear();
  if (!config_.mid_block_add_attention) return;
  for (const char* p : {"encoder.mid_block.attentions.0", "decoder.mid_block.attentions.0"}) {
    const std::string a = p;
    const int64_t c = config_.block_out_channels.back();
    Fused& f = qkv_[a];
    f.w = at::cat({w_[a + ".to_q.weight"], w_[a + ".to_k.weight"], w_[a + ".to_v.weight"]});  // [3 C, C]
    f.b = at::cat({w_[a + ".to_q.bias"], w_[a + ".to_k.bias"], w_[a + ".to_v.bias"]});
    const char* m[] = {".to_q", ".to_k", ".to_v"};
    for (int j = 0; j < 3; ++j) {  // the named tensors become views of the fused ones: no second copy
      w_.set(a + m[j] + ".weight", f.w.narrow(0, j * c, c));
      w_.set(a + m[j] + ".bias", f.b.narrow(0, j * c, c));
    }
  }
}

at::Tensor AutoencoderKL::conv(const at::Tensor& x, const std::string& p, int64_t stride, int64_t pad) const {
  return at::conv2d(x, w_[p + ".weight"], w_[p + ".bias"], stride, pad);
}

at::Tensor AutoencoderKL::norm(const at::Tensor& x, const std::string& p, bool silu) const {
  return kernels::group_norm_silu(x, config_.norm_num_groups, w_[p + ".weight"], w_[p + ".bias"], kEps, silu);
}

// x + conv2(silu(norm2(conv1(silu(norm1(x)))))), x through a 1x1 conv where the width changes.
at::Tensor AutoencoderKL::resnet(const at::Tensor& x, const std::string& p) const {
  at::Tensor h = conv(norm(x, p + ".norm1", true), p + ".conv1");
  h = conv(norm(h, p + ".norm2", true), p + ".conv2");
  return h.add_(w_.has(p + ".conv_shortcut.weight") ? conv(x, p + ".conv_shortcut", 1, 0) : x);
}

// One-head self-attention over the H W positions, width C, with a residual. Channels-last activations are [N, HW, C]
// in memory already: the token view and its inverse are free.
at::Tensor AutoencoderKL::attention(const at::Tensor& x, const std::string& p) const {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const at::Tensor t = norm(x, p + ".group_norm", false).permute({0, 2, 3, 1}).reshape({N, H * W, C});
  const Fused& f = qkv_.at(p);
  auto qkv = at::linear(t, f.w, f.b).view({N, H * W, 3, 1, C}).unbind(2);  // 3 x [N, HW, 1, C]
  at::Tensor a = at::scaled_dot_product_attention(qkv[0].transpose(1, 2), qkv[1].transpose(1, 2),
                                                  qkv[2].transpose(1, 2));                        // [N, 1, HW, C]
  at::Tensor o = at::linear(a.squeeze(1), w_[p + ".to_out.0.weight"], w_[p + ".to_out.0.bias"]);  // [N, HW, C]
  return o.view({N, H, W, C}).permute({0, 3, 1, 2}).add_(x);  // channels-last [N, C, H, W]
}

at::Tensor AutoencoderKL::mid_block(at::Tensor x, const std::string& p) const {
  x = resnet(x, p + ".resnets.0");
  if (config_.mid_block_add_attention) x = attention(x, p + ".attentions.0");
  return resnet(x, p + ".resnets.1");
}

Posterior AutoencoderKL::encode(const at::Tensor& images) const {
  const int64_t f = config_.factor(), lc = config_.latent_channels;
  if (images.dim() != 4 || images.size(1) != config_.in_channels || images.size(2) % f || images.size(3) % f)
    throw Error(cat("VAE encode: images must be [N, ", config_.in_channels, ", H, W] with H and W multiples of ", f,
                    ", got ", shape_str(images.sizes())));
  at::Tensor h = conv(channels_last(images.to(w_.dtype())), "encoder.conv_in");
  const int64_t levels = static_cast<int64_t>(config_.block_out_channels.size());
  for (int64_t i = 0; i < levels; ++i) {
    const std::string b = cat("encoder.down_blocks.", i);
    for (int64_t j = 0; j < config_.layers_per_block; ++j) h = resnet(h, cat(b, ".resnets.", j));
    // Stride-2 conv with zero padding on the bottom and right only.
    if (i + 1 < levels)
      h = conv(channels_last(at::constant_pad_nd(h, {0, 1, 0, 1}, 0)), b + ".downsamplers.0.conv", 2, 0);
  }
  h = mid_block(h, "encoder.mid_block");
  h = conv(norm(h, "encoder.conv_norm_out", true), "encoder.conv_out");  // [N, 2 lc, h, w]
  if (config_.use_quant_conv) h = conv(h, "quant_conv", 1, 0);
  return {h.narrow(1, 0, lc).contiguous(), h.narrow(1, lc, lc).clamp(-30.0, 20.0).contiguous()};
}

at::Tensor AutoencoderKL::decode(const at::Tensor& latents) const {
  if (latents.dim() != 4 || latents.size(1) != config_.latent_channels)
    throw Error(
        cat("VAE decode: latents must be [N, ", config_.latent_channels, ", h, w], got ", shape_str(latents.sizes())));
  at::Tensor h = channels_last(latents.to(w_.dtype()));
  if (config_.use_post_quant_conv) h = conv(h, "post_quant_conv", 1, 0);
  h = mid_block(conv(h, "decoder.conv_in"), "decoder.mid_block");
  const int64_t levels = static_cast<int64_t>(config_.block_out_channels.size());
  for (int64_t i = 0; i < levels; ++i) {
    const std::string b = cat("decoder.up_blocks.", i);
    for (int64_t j = 0; j <= config_.layers_per_block; ++j) h = resnet(h, cat(b, ".resnets.", j));
    if (i + 1 < levels)
      h = conv(channels_last(at::upsample_nearest2d(h, {2 * h.size(2), 2 * h.size(3)})), b + ".upsamplers.0.conv");
  }
  return conv(norm(h, "decoder.conv_norm_out", true), "decoder.conv_out").contiguous();
}

// Convolutions dominate: 2 x k^2 x cin x cout per output pixel; the attention's 4 C^2 + 2 (HW) C per position.
double AutoencoderKL::flops(int64_t height, int64_t width, bool decoder) const {
  const auto& ch = config_.block_out_channels;
  const int64_t levels = static_cast<int64_t>(ch.size());
  double macs = 0;
  auto conv_macs = [&](double pixels, int64_t cin, int64_t cout, int64_t k) { macs += pixels * k * k * cin * cout; };
  auto resnet_macs = [&](double pixels, int64_t cin, int64_t cout) {
    conv_macs(pixels, cin, cout, 3);
    conv_macs(pixels, cout, cout, 3);
    if (cin != cout) conv_macs(pixels, cin, cout, 1);
  };
  const double full = static_cast<double>(height) * width;
  const double low = full / std::pow(4.0, levels - 1);
  auto mid_macs = [&] {
    resnet_macs(low, ch.back(), ch.back());
    resnet_macs(low, ch.back(), ch.back());
    if (config_.mid_block_add_attention) macs += low * (4.0 * ch.back() * ch.back() + 2.0 * low * ch.back());
  };
  const int64_t lc = config_.latent_channels;
  if (!decoder) {
    conv_macs(full, config_.in_channels, ch[0], 3);
    double px = full;
    for (int64_t i = 0; i < levels; ++i) {
      for (int64_t j = 0; j < config_.layers_per_block; ++j)
        resnet_macs(px, j == 0 ? ch[std::max<int64_t>(i - 1, 0)] : ch[i], ch[i]);
      if (i + 1 < levels) px /= 4, conv_macs(px, ch[i], ch[i], 3);
    }
    mid_macs();
    conv_macs(low, ch.back(), 2 * lc, 3);
  } else {
    conv_macs(low, lc, ch.back(), 3);
    mid_macs();
    double px = low;
    for (int64_t i = 0; i < levels; ++i) {
      const int64_t cout = ch[levels - 1 - i], cin = ch[levels - 1 - std::max<int64_t>(i - 1, 0)];
      for (int64_t j = 0; j <= config_.layers_per_block; ++j) resnet_macs(px, j ? cout : cin, cout);
      if (i + 1 < levels) px *= 4, conv_macs(px, cout, cout, 3);
    }
    conv_macs(full, ch[0], config_.out_channels, 3);
  }
  return 2 * macs;
}

double AutoencoderKL::encode_flops(int64_t height, int64_t width) const { return flops(height, width, false); }
double AutoencoderKL::decode_flops(int64_t height, int64_t width) const { return flops(height, width, true); }

}  // namespace opendit::models::vae
