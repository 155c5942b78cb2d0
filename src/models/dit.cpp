#include "models/dit.hpp"

#include <cmath>
#include <sstream>

#include <ATen/CPUGeneratorImpl.h>

#include "core/error.hpp"
#include "core/strings.hpp"
#include "cuda/ops.hpp"
#include "models/checkpoint.hpp"
#include "models/dit_ops.hpp"

namespace opendit::models {

at::Tensor timestep_embedding(const at::Tensor& t, int64_t dim) {
  const int64_t half = dim / 2;
  auto f32 = t.options().dtype(at::kFloat);
  at::Tensor freqs = at::exp(-std::log(10000.0) * at::arange(half, f32) / static_cast<double>(half));  // [half]
  at::Tensor args = t.to(at::kFloat).unsqueeze(1) * freqs.unsqueeze(0);                              // [N, half]
  at::Tensor emb = at::cat({at::cos(args), at::sin(args)}, -1);                                       // [N, 2 half]
  if (dim % 2) emb = at::cat({emb, at::zeros_like(emb.narrow(1, 0, 1))}, -1);
  return emb;
}

at::Tensor pos_embed_2d(int64_t dim, int64_t grid) {
  auto f64 = at::TensorOptions().dtype(at::kDouble);
  const int64_t quarter = dim / 4;
  at::Tensor omega = 1.0 / at::pow(10000.0, at::arange(quarter, f64) / static_cast<double>(quarter));  // [D/4]
  at::Tensor pos = at::arange(grid, f64);
  at::Tensor row = pos.repeat_interleave(grid), col = pos.repeat({grid});                              // [T]
  auto sincos = [&](const at::Tensor& p) {
    at::Tensor out = p.unsqueeze(1) * omega.unsqueeze(0);                                              // [T, D/4]
    return at::cat({at::sin(out), at::cos(out)}, 1);                                                   // [T, D/2]
  };
  return at::cat({sincos(col), sincos(row)}, 1).to(at::kFloat).unsqueeze(0);                           // [1, T, D]
}

DiT::DiT(const DiTConfig& cfg, uint64_t seed) : cfg_(cfg) {
  cfg_.validate();
  const int64_t D = cfg_.hidden_size, p = cfg_.patch_size, M = cfg_.mlp_hidden(), C = cfg_.in_channels;
  auto z = [](at::IntArrayRef shape) { return at::zeros(shape, at::kFloat); };
  pos_embed_ = pos_embed_2d(D, cfg_.grid());
  x_w_ = z({D, C, p, p}), x_b_ = z({D});
  t_w0_ = z({D, 256}), t_b0_ = z({D}), t_w2_ = z({D, D}), t_b2_ = z({D});
  y_table_ = z({cfg_.num_classes + 1, D});
  blocks_.resize(cfg_.depth);
  for (auto& b : blocks_) {
    b.qkv_w = z({3 * D, D}), b.qkv_b = z({3 * D}), b.proj_w = z({D, D}), b.proj_b = z({D});
    b.fc1_w = z({M, D}), b.fc1_b = z({M}), b.fc2_w = z({D, M}), b.fc2_b = z({D});
    b.ada_w = z({6 * D, D}), b.ada_b = z({6 * D});
  }
  final_ada_w_ = z({2 * D, D}), final_ada_b_ = z({2 * D});
  final_w_ = z({p * p * cfg_.out_channels(), D}), final_b_ = z({p * p * cfg_.out_channels()});
  register_all();
  init_weights(seed);
}

void DiT::register_all() {
  slots_ = {{"pos_embed", &pos_embed_},
            {"x_embedder.proj.weight", &x_w_},
            {"x_embedder.proj.bias", &x_b_},
            {"t_embedder.mlp.0.weight", &t_w0_},
            {"t_embedder.mlp.0.bias", &t_b0_},
            {"t_embedder.mlp.2.weight", &t_w2_},
            {"t_embedder.mlp.2.bias", &t_b2_},
            {"y_embedder.embedding_table.weight", &y_table_}};
  for (size_t i = 0; i < blocks_.size(); ++i) {
    std::string b = "blocks." + std::to_string(i) + ".";
    Block& k = blocks_[i];
    for (auto [name, slot] : std::initializer_list<std::pair<const char*, at::Tensor*>>{
             {"attn.qkv.weight", &k.qkv_w}, {"attn.qkv.bias", &k.qkv_b}, {"attn.proj.weight", &k.proj_w},
             {"attn.proj.bias", &k.proj_b}, {"mlp.fc1.weight", &k.fc1_w}, {"mlp.fc1.bias", &k.fc1_b},
             {"mlp.fc2.weight", &k.fc2_w}, {"mlp.fc2.bias", &k.fc2_b}, {"adaLN_modulation.1.weight", &k.ada_w},
             {"adaLN_modulation.1.bias", &k.ada_b}})
      slots_.push_back({b + name, slot});
  }
  slots_.push_back({"final_layer.linear.weight", &final_w_});
  slots_.push_back({"final_layer.linear.bias", &final_b_});
  slots_.push_back({"final_layer.adaLN_modulation.1.weight", &final_ada_w_});
  slots_.push_back({"final_layer.adaLN_modulation.1.bias", &final_ada_b_});
}

void DiT::init_weights(uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  at::NoGradGuard no_grad;
  // xavier_uniform on a [fan_out, fan_in] view; biases stay 0.
  auto xavier = [&](at::Tensor& w) {
    int64_t fan_out = w.size(0), fan_in = w.numel() / w.size(0);
    double a = std::sqrt(6.0 / double(fan_in + fan_out));
    w.uniform_(-a, a, gen);
  };
  xavier(x_w_);  // the patch conv viewed as [D, C p p]
  for (auto& b : blocks_) {
    xavier(b.qkv_w);  // one [3D, D] matrix, as the official init does
    xavier(b.proj_w);
    xavier(b.fc1_w);
    xavier(b.fc2_w);
    // adaLN_modulation stays zero: every block starts as the identity (adaLN-Zero).
  }
  y_table_.normal_(0.0, 0.02, gen);
  t_w0_.normal_(0.0, 0.02, gen);
  t_w2_.normal_(0.0, 0.02, gen);
  // final_layer adaLN and linear stay zero: the model outputs zeros at init.
}

at::Tensor DiT::block_forward(const Block& b, const at::Tensor& x, const at::Tensor& silu_c) const {
  const int64_t N = x.size(0), T = x.size(1), D = cfg_.hidden_size, H = cfg_.num_heads, hd = cfg_.head_dim();
  // (shift, scale, gate) for attention then for the MLP, each [N, 1, D].
  auto mod = at::linear(silu_c, b.ada_w, b.ada_b).unsqueeze(1).chunk(6, -1);
  auto modulate = [&](const at::Tensor& h, const at::Tensor& shift, const at::Tensor& scale) {
    return at::layer_norm(h, {D}, {}, {}, 1e-6) * (1 + scale) + shift;                     // [N, T, D]
  };
  at::Tensor h = modulate(x, mod[0], mod[1]);
  at::Tensor qkv = at::linear(h, b.qkv_w, b.qkv_b).view({N, T, 3, H, hd}).permute({2, 0, 3, 1, 4});  // [3,N,H,T,hd]
  at::Tensor a = at::scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]);                  // [N, H, T, hd]
  a = at::linear(a.transpose(1, 2).reshape({N, T, D}), b.proj_w, b.proj_b);                 // [N, T, D]
  at::Tensor out = x + mod[2] * a;
  h = modulate(out, mod[3], mod[4]);
  h = at::linear(at::gelu(at::linear(h, b.fc1_w, b.fc1_b), "tanh"), b.fc2_w, b.fc2_b);      // [N, T, D]
  return out + mod[5] * h;
}

bool DiT::use_fused(const at::Tensor& x) const {
  return ops_ == Ops::Fused || (ops_ == Ops::Auto && kernels::fused_available(x));
}

// The same block on the fused functions: adaLN chunks stay [N, D] views of one [N, 6D] tensor.
at::Tensor DiT::fused_block_forward(const Block& b, const at::Tensor& x, const at::Tensor& silu_c) const {
  const int64_t N = x.size(0), T = x.size(1), D = cfg_.hidden_size, H = cfg_.num_heads, hd = cfg_.head_dim();
  auto mod = at::linear(silu_c, b.ada_w, b.ada_b).chunk(6, 1);                              // 6 x [N, D]
  // unbind (not indexing): its backward stacks dq, dk, dv straight into one contiguous [N, T, 3, H, hd] gradient,
  // where three index backwards would each zero-fill and copy a full-size buffer and then be summed.
  auto qkv = ops::norm_modulate_linear(x, mod[0], mod[1], b.qkv_w, b.qkv_b, 1e-6)          // [N, T, 3D]
                 .view({N, T, 3, H, hd})
                 .unbind(2);                                                                // 3 x [N, T, H, hd]
  at::Tensor a = at::scaled_dot_product_attention(qkv[0].transpose(1, 2), qkv[1].transpose(1, 2),
                                                  qkv[2].transpose(1, 2));                  // [N, H, T, hd]
  a = at::linear(a.transpose(1, 2).reshape({N, T, D}), b.proj_w, b.proj_b);                 // [N, T, D]
  at::Tensor out = ops::gated_residual(x, a, mod[2]);
  at::Tensor m = ops::norm_modulate_mlp(out, mod[3], mod[4], b.fc1_w, b.fc1_b, b.fc2_w, b.fc2_b, 1e-6);
  return ops::gated_residual(out, m, mod[5]);
}

at::Tensor DiT::forward(const at::Tensor& x, const at::Tensor& t, const at::Tensor& y) const {
  const int64_t N = x.size(0), p = cfg_.patch_size, g = cfg_.grid(), D = cfg_.hidden_size, Co = cfg_.out_channels();
  TORCH_CHECK(x.dim() == 4 && x.size(1) == cfg_.in_channels && x.size(2) == cfg_.input_size &&
                  x.size(3) == cfg_.input_size,
              "DiT expects x [N, ", cfg_.in_channels, ", ", cfg_.input_size, ", ", cfg_.input_size, "], got ",
              x.sizes());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == N && y.dim() == 1 && y.size(0) == N, "DiT expects t and y of shape [",
              N, "], got ", t.sizes(), " and ", y.sizes());
  at::Tensor h = at::conv2d(x, x_w_, x_b_, {p, p});                                         // [N, D, g, g]
  h = (h.flatten(2).transpose(1, 2) + pos_embed_).contiguous();                            // [N, T, D]
  at::Tensor temb = timestep_embedding(t, 256).to(t_w0_.scalar_type());                     // [N, 256]
  temb = at::linear(at::silu(at::linear(temb, t_w0_, t_b0_)), t_w2_, t_b2_);                // [N, D]
  at::Tensor c = temb + y_table_.index_select(0, y.to(at::kLong));                          // [N, D]
  at::Tensor silu_c = at::silu(c);  // every adaLN_modulation starts with SiLU
  const bool fused = use_fused(h);
  auto run_block = [this, fused](const Block& k, const at::Tensor& x, const at::Tensor& c) {
    return fused ? fused_block_forward(k, x, c) : block_forward(k, x, c);
  };
  for (size_t i = 0; i < blocks_.size(); ++i) {
    const Block& b = blocks_[i];
    const bool recompute = checkpoint_blocks_ < 0 || int64_t(i) < checkpoint_blocks_;
    if (recompute && at::GradMode::is_enabled()) {
      // Inputs: activations, then the block's parameters (so that their gradients flow through the recompute).
      h = checkpointed(
          [run_block](const std::vector<at::Tensor>& in) {
            Block k{in[2], in[3], in[4], in[5], in[6], in[7], in[8], in[9], in[10], in[11]};
            return run_block(k, in[0], in[1]);
          },
          {h, silu_c, b.qkv_w, b.qkv_b, b.proj_w, b.proj_b, b.fc1_w, b.fc1_b, b.fc2_w, b.fc2_b, b.ada_w, b.ada_b});
    } else {
      h = run_block(b, h, silu_c);
    }
  }
  if (fused) {
    auto mod = at::linear(silu_c, final_ada_w_, final_ada_b_).chunk(2, 1);                  // shift, scale [N, D]
    h = ops::norm_modulate_linear(h, mod[0], mod[1], final_w_, final_b_, 1e-6);             // [N, T, p p Co]
  } else {
    auto mod = at::linear(silu_c, final_ada_w_, final_ada_b_).unsqueeze(1).chunk(2, -1);    // shift, scale
    h = at::layer_norm(h, {D}, {}, {}, 1e-6) * (1 + mod[1]) + mod[0];
    h = at::linear(h, final_w_, final_b_);                                                  // [N, T, p p Co]
  }
  // unpatchify: each token's vector is laid out (p_row, p_col, channel).
  h = h.view({N, g, g, p, p, Co}).permute({0, 5, 1, 3, 2, 4});                              // [N, Co, g, p, g, p]
  return h.reshape({N, Co, g * p, g * p});
}

std::map<std::string, at::Tensor> DiT::state_dict() const {
  std::map<std::string, at::Tensor> sd;
  for (const auto& [name, slot] : slots_) sd[name] = *slot;
  return sd;
}

static std::string shape_text(at::IntArrayRef s) {
  std::ostringstream os;
  os << s;
  return os.str();
}

void DiT::load_state_dict(const std::map<std::string, at::Tensor>& sd, const std::string& origin) {
  std::vector<std::string> missing, unexpected, wrong_shape;
  std::map<std::string, const at::Tensor*> ours;
  for (const auto& [name, slot] : slots_) {
    ours[name] = slot;
    auto it = sd.find(name);
    if (it == sd.end()) {
      if (name != "pos_embed") missing.push_back(name);  // frozen and computed: diffusers files omit it
    } else if (it->second.sizes() != slot->sizes()) {
      wrong_shape.push_back(name + " " + shape_text(it->second.sizes()) + " (expected " + shape_text(slot->sizes()) +
                            ")");
    }
  }
  for (const auto& [name, t] : sd)
    if (!ours.count(name)) unexpected.push_back(name);
  if (!missing.empty() || !unexpected.empty() || !wrong_shape.empty()) {
    auto first = [](const char* what, const std::vector<std::string>& v) -> std::string {
      if (v.empty()) return "";
      std::vector<std::string> head(v.begin(), v.begin() + std::min<size_t>(3, v.size()));
      return cat("; ", v.size(), " ", what, ": ", join(head, ", "), v.size() > 3 ? ", ..." : "");
    };
    throw Error(cat(origin, ": the weights do not match the deck's model (", cfg_.describe(), ")",
                    first("missing", missing), first("unexpected", unexpected), first("wrong shape", wrong_shape),
                    ". ", closest_preset_text(sd)));
  }
  for (const auto& [name, slot] : slots_) {
    if (!sd.count(name)) continue;
    const at::Tensor& src = sd.at(name);
    if (src.is_floating_point() && !at::isfinite(src).all().item<bool>())
      throw Error(cat(origin, ": ", name, " holds non-finite values (NaN or Inf)"));
  }
  at::NoGradGuard no_grad;
  for (const auto& [name, slot] : slots_)
    if (sd.count(name)) slot->copy_(sd.at(name));
}

void DiT::to(const at::TensorOptions& options) {
  for (auto& [name, slot] : slots_) {
    bool grad = slot->requires_grad();
    *slot = slot->to(options).detach();
    if (grad) slot->requires_grad_(true);
  }
}

void DiT::set_requires_grad(bool on) {
  for (auto& [name, slot] : slots_) slot->requires_grad_(on && name != "pos_embed");
}

DiTConfig infer_dit_config(const std::map<std::string, at::Tensor>& sd) {
  DiTConfig c;
  c.num_heads = 0;
  auto get = [&](const std::string& k) -> const at::Tensor* {
    auto it = sd.find(k);
    return it == sd.end() ? nullptr : &it->second;
  };
  if (auto w = get("x_embedder.proj.weight"); w && w->dim() == 4)
    c.hidden_size = w->size(0), c.in_channels = w->size(1), c.patch_size = w->size(2);
  c.depth = 0;
  while (get("blocks." + std::to_string(c.depth) + ".attn.qkv.weight")) ++c.depth;
  if (auto y = get("y_embedder.embedding_table.weight"); y && y->dim() == 2) c.num_classes = y->size(0) - 1;
  if (auto f = get("final_layer.linear.weight"); f && f->dim() == 2 && c.patch_size > 0)
    c.learn_sigma = f->size(0) == 2 * c.patch_size * c.patch_size * c.in_channels;
  if (auto pe = get("pos_embed"); pe && pe->dim() == 3)
    c.input_size = static_cast<int>(std::lround(std::sqrt(double(pe->size(1))))) * c.patch_size;
  if (auto fc1 = get("blocks.0.mlp.fc1.weight"); fc1 && fc1->dim() == 2 && c.hidden_size > 0)
    c.mlp_ratio = double(fc1->size(0)) / c.hidden_size;
  for (const auto& name : dit_preset_names()) {
    DiTConfig p = dit_preset(name);
    if (p.hidden_size == c.hidden_size) c.num_heads = p.num_heads;
  }
  return c;
}

std::string closest_preset_text(const std::map<std::string, at::Tensor>& sd) {
  DiTConfig c = infer_dit_config(sd);
  for (const auto& name : dit_preset_names()) {
    DiTConfig p = dit_preset(name);
    if (p.depth == c.depth && p.hidden_size == c.hidden_size && p.patch_size == c.patch_size)
      return cat("The weights look like ", name, " (input ", c.input_size, ", ", c.in_channels, " channels, ",
                 c.num_classes, " classes, learn_sigma ", c.learn_sigma ? "on" : "off", ").");
  }
  return cat("The weights look like a custom DiT: depth ", c.depth, ", hidden ", c.hidden_size, ", patch ",
             c.patch_size, ", input ", c.input_size, ", ", c.in_channels, " channels, ", c.num_classes,
             " classes, learn_sigma ", c.learn_sigma ? "on" : "off", ".");
}

}  // namespace opendit::models
