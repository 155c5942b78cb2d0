#include "models/latte/latte.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "core/error.hpp"
#include "core/strings.hpp"
#include "models/layers/attention.hpp"
#include "models/layers/modulated.hpp"
#include "models/layers/recompute.hpp"

namespace opendit::models::latte {

Latte::Latte(const LatteConfig& cfg, std::optional<uint64_t> seed)
    : cfg_((cfg.validate(), cfg)),
      x_embedder_(cfg.in_channels, cfg.hidden_size, cfg.patch_size, !seed),
      t_embedder_(cfg.hidden_size, !seed),
      t_block_(cfg.hidden_size, 6 * int64_t(cfg.hidden_size), !seed),
      y_proj_(cfg.caption_channels, cfg.hidden_size, cfg.hidden_size, !seed),
      final_layer_(cfg.hidden_size, int64_t(cfg.patch_size) * cfg.patch_size * cfg.out_channels, !seed) {
  const int64_t D = cfg_.hidden_size, M = 4 * D, g = cfg_.sample_size / cfg_.patch_size;
  const bool meta = !seed;
  const auto opts = layers::param_options(meta);
  // diffusers' PatchEmbed table at the native size (interpolation scale max(sample_size / 64, 1), base size = grid).
  const double scale = std::max(cfg_.sample_size / 64, 1);
  pos_embed_ = meta ? at::empty({1, g * g, D}, opts) : layers::pos_embed_2d(D, g, g, scale);
  temp_pos_embed_ = meta ? at::empty({1, cfg_.video_length, D}, opts) : layers::pos_embed_1d(D, cfg_.video_length, 1.0);
  auto block = [&](bool cross) {
    Block b;
    b.table = at::zeros({6, D}, opts);
    for (layers::Linear* l : {&b.q, &b.k, &b.v, &b.o}) *l = layers::Linear(D, D, meta);
    if (cross)
      for (layers::Linear* l : {&b.q2, &b.k2, &b.v2, &b.o2}) *l = layers::Linear(D, D, meta);
    b.fc1 = layers::Linear(D, M, meta), b.fc2 = layers::Linear(M, D, meta), b.cross = cross;
    return b;
  };
  for (int i = 0; i < cfg_.depth; ++i) spatial_.push_back(block(true)), temporal_.push_back(block(false));
  // diffusers' state-dict order: the root's own table, then the modules as registered.
  add_param("pos_embed", pos_embed_, ParamKind::Recomputed);
  add_param("temp_pos_embed", temp_pos_embed_, ParamKind::Recomputed);
  layers::NamedSlots slots = {{"scale_shift_table", &final_layer_.table}};
  layers::append(slots, x_embedder_.slots("pos_embed"));
  auto block_slots = [&](Block& b, const std::string& p) {
    slots.push_back({p + "scale_shift_table", &b.table});
    layers::append(slots, b.q.slots(p + "attn1.to_q"));
    layers::append(slots, b.k.slots(p + "attn1.to_k"));
    layers::append(slots, b.v.slots(p + "attn1.to_v"));
    layers::append(slots, b.o.slots(p + "attn1.to_out.0"));
    if (b.cross) {
      layers::append(slots, b.q2.slots(p + "attn2.to_q"));
      layers::append(slots, b.k2.slots(p + "attn2.to_k"));
      layers::append(slots, b.v2.slots(p + "attn2.to_v"));
      layers::append(slots, b.o2.slots(p + "attn2.to_out.0"));
    }
    layers::append(slots, b.fc1.slots(p + "ff.net.0.proj"));
    layers::append(slots, b.fc2.slots(p + "ff.net.2"));
  };
  for (int i = 0; i < cfg_.depth; ++i) block_slots(spatial_[size_t(i)], cat("transformer_blocks.", i, "."));
  for (int i = 0; i < cfg_.depth; ++i) block_slots(temporal_[size_t(i)], cat("temporal_transformer_blocks.", i, "."));
  layers::append(slots, final_layer_.linear.slots("proj_out"));
  layers::append(slots, t_embedder_.fc0.slots("adaln_single.emb.timestep_embedder.linear_1"));
  layers::append(slots, t_embedder_.fc2.slots("adaln_single.emb.timestep_embedder.linear_2"));
  layers::append(slots, t_block_.slots("adaln_single.linear"));
  layers::append(slots, y_proj_.slots("caption_projection", "linear_1", "linear_2"));
  for (auto& [name, tensor] : slots) add_param(name, *tensor);
  if (seed) init_weights(*seed);
}

void Latte::init_weights(uint64_t seed) {
  // Latte's own initialisation (Vchitect/Latte, like PixArt's): xavier linears and patch embedding, normal(0.02)
  // timestep and caption MLPs and the adaLN projection, tables randn / sqrt(D), zero output layer.
  at::Generator gen = at::detail::createCPUGenerator(seed);
  at::NoGradGuard no_grad;
  auto xavier = [&](at::Tensor& w) { layers::xavier_uniform(w, gen); };  // biases stay 0
  const double D = cfg_.hidden_size;
  xavier(x_embedder_.w);
  for (layers::Linear* l : {&t_embedder_.fc0, &t_embedder_.fc2, &t_block_, &y_proj_.fc1, &y_proj_.fc2})
    l->w.normal_(0.0, 0.02, gen);
  for (std::vector<Block>* blocks : {&spatial_, &temporal_})
    for (Block& b : *blocks) {
      b.table.normal_(0.0, 1.0 / std::sqrt(D), gen);
      for (layers::Linear* l : {&b.q, &b.k, &b.v, &b.o, &b.fc1, &b.fc2}) xavier(l->w);
      if (b.cross)
        for (layers::Linear* l : {&b.q2, &b.k2, &b.v2, &b.o2}) xavier(l->w);
    }
  final_layer_.table.normal_(0.0, 1.0 / std::sqrt(D), gen);
}

std::vector<at::Tensor> Latte::Block::tensors() const {
  std::vector<at::Tensor> t = {table};
  for (const layers::Linear* l : {&q, &k, &v, &o, &fc1, &fc2}) t.push_back(l->w), t.push_back(l->b);
  if (cross)
    for (const layers::Linear* l : {&q2, &k2, &v2, &o2}) t.push_back(l->w), t.push_back(l->b);
  return t;
}

Latte::Block Latte::Block::from(const std::vector<at::Tensor>& t, size_t i, bool cross) {
  Block b;
  b.table = t[i++];
  b.cross = cross;
  for (layers::Linear* l : {&b.q, &b.k, &b.v, &b.o, &b.fc1, &b.fc2}) l->w = t[i++], l->b = t[i++];
  if (cross)
    for (layers::Linear* l : {&b.q2, &b.k2, &b.v2, &b.o2}) l->w = t[i++], l->b = t[i++];
  return b;
}

at::Tensor Latte::Block::forward(const at::Tensor& x, const at::Tensor& t0, const at::Tensor& y,
                                 const at::Tensor& mask, int64_t heads, int64_t groups, int64_t valid,
                                 const layers::SeqParallel& sp, int64_t frames) const {
  const int64_t B = x.size(0), D = x.size(2);
  const at::Tensor mod = table.unsqueeze(0) + t0.view({B, 6, D});                      // [B, 6, D]
  auto m = [&](int64_t j) { return mod.select(1, j); };
  // to_q, to_k, to_v packed into one GEMM (their gradients flow back through the cat).
  const at::Tensor w = at::cat({q.w, k.w, v.w}), bias = at::cat({q.b, k.b, v.b});
  // The residual passes through the fused projections (their LayerNorm backward adds its gradient); the gated
  // residuals add the output projections' biases (and sum their gradients).
  at::Tensor res, a;
  if (frames > 0) {
    TORCH_CHECK(!sp.on(), "Latte: a block over whole frames runs without sequence parallelism");
    layers::Branch qkv = layers::norm_modulate_linear_res(x, m(0), m(1), w, bias, 1e-6);   // [N, T S, 3 D]
    res = qkv.res;
    a = layers::frame_attention(qkv.out, frames, heads, valid);
  } else {
    a = layers::projected_self_attention(x, m(0), m(1), w, bias, heads, valid, sp, &res);
  }
  at::Tensor h = layers::gated_residual(res, layers::linear(a, o.w, {}), m(2), o.b);
  if (cross) {
    // Cross-attention on the un-normalised x (PixArt's ada_norm_single block), no gate; each sample's frames
    // (groups of rows of x) attend to that sample's caption.
    const int64_t N = y.size(0), rows = B / N, Lq = x.size(1);
    const at::Tensor kv = layers::linear(y, at::cat({k2.w, v2.w}), at::cat({k2.b, v2.b}));   // [N, L, 2 D]
    const at::Tensor c = layers::cross_attention(q2(h).view({N, rows * Lq, D}), kv, mask, heads, groups);
    h = h + o2(c.view({B, Lq, D}));
  }
  layers::Branch f = layers::norm_modulate_mlp_res(h, m(3), m(4), fc1.w, fc1.b, fc2.w, {}, 1e-6);
  return layers::gated_residual(f.res, f.out, m(5), fc2.b);
}

at::Tensor Latte::run_block(const Block& b, bool recompute, const at::Tensor& x_in, const at::Tensor& t0,
                            const at::Tensor& y, const at::Tensor& mask, int64_t groups, int64_t valid,
                            const layers::SeqParallel& sp_in, int64_t frames) const {
  const int64_t heads = cfg_.num_heads;
  const layers::SeqParallel sp = sp_in;
  const at::Tensor x = x_in.contiguous();  // the fused kernels take contiguous tokens
  if (!recompute || !at::GradMode::is_enabled()) return b.forward(x, t0, y, mask, heads, groups, valid, sp, frames);
  std::vector<at::Tensor> in = {x, t0, y, mask};
  for (const at::Tensor& p : b.tensors()) in.push_back(p);
  const bool cross = b.cross;
  return layers::recomputed(
      [=](const std::vector<at::Tensor>& in) {
        return Block::from(in, 4, cross).forward(in[0], in[1], in[2], in[3], heads, groups, valid, sp, frames);
      },
      in);
}

at::Tensor Latte::forward(const at::Tensor& x, const at::Tensor& t, const Condition& cond) const {
  const int64_t N = x.size(0), T = cfg_.video_length, S = cfg_.s_tokens(), D = cfg_.hidden_size;
  const int64_t C = cfg_.in_channels, H = cfg_.sample_size, p = cfg_.patch_size, g = H / p;
  TORCH_CHECK(x.dim() == 5 && x.size(1) == C && x.size(2) == T && x.size(3) == H && x.size(4) == H,
              "Latte expects x [N, ", C, ", ", T, ", ", H, ", ", H, "], got ", x.sizes());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == N, "Latte expects t [", N, "], got ", t.sizes());
  TORCH_CHECK(cond.text.defined() && cond.text.dim() == 3 && cond.text.size(0) == N &&
                  cond.text.size(2) == cfg_.caption_channels,
              "Latte expects captions [", N, ", L, ", cfg_.caption_channels, "]");
  const at::ScalarType dtype = x_embedder_.w.scalar_type();
  const at::Tensor mask = cond.text_mask.defined()
                              ? cond.text_mask.to(at::kBool)
                              : at::ones({N, cond.text.size(1)}, cond.text.options().dtype(at::kBool));
  // Frames through the 2D patch embedding: [N T, S, D]; with sp a rank keeps its frames Tl (padded to a multiple
  // of P) and, for dsp, S padded to Sp: [N Tl, S', D].
  const layers::SeqParallel sp = sp_;
  const bool dsp = sp.on() && sp.mode == layers::SpMode::Dsp;
  const int64_t Tl = sp.local(T), Sx = dsp ? sp.padded(S) : S, Tp = Tl * sp.size();
  at::Tensor h = (x_embedder_(x.to(dtype).transpose(1, 2).reshape({N * T, C, H, H})) + pos_embed_).contiguous();
  if (sp.on()) {
    h = h.view({N, T, S, D});
    if (Sx != S) h = at::constant_pad_nd(h, {0, 0, 0, Sx - S});
    h = layers::sp_split(h, 1, sp).view({N * Tl, Sx, D});
  }
  at::Tensor tpe = temp_pos_embed_;  // [1, T, D]: the frames the temporal blocks see
  if (sp.on()) {
    tpe = at::constant_pad_nd(tpe, {0, 0, 0, Tp - T});
    if (!dsp) tpe = tpe.narrow(1, sp.rank() * Tl, Tl);
  }
  const at::Tensor temb = t_embedder_(t);                                                    // [N, D]
  const at::Tensor t0 = t_block_(at::silu(temb));                                            // [N, 6 D]
  const int64_t Sl = dsp ? Sx / sp.size() : S;  // the positions a temporal block sees
  const at::Tensor t0_frames = t0.repeat_interleave(Tl, 0);
  const at::Tensor t0_cells = sp.on() ? t0.repeat_interleave(Sl, 0) : at::Tensor();  // sp: per temporal row
  const at::Tensor y = y_proj_(cond.text.to(dtype));                                         // [N, L, D]
  const int64_t s_valid = Sx != S ? S : -1, t_valid = Tp != T ? T : -1;
  for (int i = 0; i < cfg_.depth; ++i) {
    const bool recompute = recompute_blocks_ < 0 || i < recompute_blocks_;
    h = run_block(spatial_[size_t(i)], recompute, h, t0_frames, y, mask, Tl, s_valid);      // [N Tl, S', D]
    if (dsp) {
      // Whole sequences of time for the temporal block (positions sharded), then back to whole frames.
      at::Tensor ht = layers::sp_all_to_all(h.view({N, Tl, Sx, D}), 2, 1, sp).transpose(1, 2);  // [N, Sl, Tp, D]
      if (i == 0 && T > 1) ht = ht + tpe.view({1, 1, Tp, D});
      ht = run_block(temporal_[size_t(i)], recompute, ht.reshape({N * Sl, Tp, D}), t0_cells, y, mask, 1, t_valid);
      h = layers::sp_all_to_all(ht.view({N, Sl, Tp, D}).transpose(1, 2), 1, 2, sp).reshape({N * Tl, Sx, D});
      continue;
    }
    if (!sp.on()) {  // the temporal block on whole frames in place: [N, T S, D], no transposes
      at::Tensor hf = h.view({N, Tl * S, D});
      if (i == 0 && T > 1) hf = (h.view({N, Tl, S, D}) + tpe.view({1, Tl, 1, D})).view({N, Tl * S, D});
      h = run_block(temporal_[size_t(i)], recompute, hf, t0, y, mask, 1, -1, sp, Tl).view({N * Tl, S, D});
      continue;
    }
    at::Tensor ht = h.view({N, Tl, S, D}).transpose(1, 2);                                   // [N, S, Tl, D]
    if (i == 0 && T > 1) ht = ht + tpe.view({1, 1, Tl, D});
    ht = run_block(temporal_[size_t(i)], recompute, ht.reshape({N * S, Tl, D}), t0_cells, y, mask, 1, T, sp);
    h = ht.view({N, S, Tl, D}).transpose(1, 2).reshape({N * Tl, S, D});
  }
  if (sp.on()) h = layers::sp_gather(h.view({N, Tl, Sx, D}), 1, T, sp).narrow(2, 0, S).reshape({N * T, S, D}).contiguous();
  h = final_layer_(h, temb.repeat_interleave(T, 0));                                        // [N T, S, p p Co]
  at::Tensor out = layers::unpatchify_2d(h, g, g, p, cfg_.out_channels);                     // [N T, Co, H, W]
  return out.view({N, T, cfg_.out_channels, H, H}).transpose(1, 2).contiguous();            // [N, Co, T, H, W]
}

double Latte::forward_flops(const std::vector<int64_t>& shape) const {
  TORCH_CHECK(shape.size() == 4, "Latte samples are [C, T, H, W]");
  return cfg_.forward_flops(shape[1], (shape[2] / cfg_.patch_size) * (shape[3] / cfg_.patch_size), cfg_.text_length);
}

ConditionSpec Latte::condition_spec() const {
  ConditionSpec s;
  s.kind = ConditionKind::Text;
  s.text_length = cfg_.text_length;
  s.text_dim = cfg_.caption_channels;
  s.dropout = 0;
  s.null_is_text = true;
  return s;
}

Condition Latte::null_condition(const Condition&) const {
  throw Error("a Latte model has no null caption: guidance runs against a negative prompt's embedding "
              "(opendit sample makes it from --negative-prompt)");
}

void Latte::check_condition(const Condition& cond) const {
  if (!cond.text.defined() || cond.text.dim() != 3 || cond.text.size(2) != cfg_.caption_channels)
    throw Error(cat("a Latte model takes caption embeddings [N, L, ", cfg_.caption_channels, "]"));
  if (cond.text_mask.defined() && cond.text_mask.numel() > 0 &&
      (cond.text_mask.to(at::kBool).sum(1) == 0).any().item<bool>())
    throw Error("a caption has no valid token (its mask is all false): every caption needs at least its EOS");
}

StateDict Latte::import_weights(const StateDict& sd, const std::string&) const {
  StateDict out = sd;
  out.erase("pos_embed"), out.erase("temp_pos_embed");
  return out;
}

StateDict Latte::export_weights(const StateDict& official, const std::string& layout) const {
  if (layout == "diffusers") {  // the same names; diffusers keeps no table buffers in its files
    StateDict out = official;
    out.erase("pos_embed"), out.erase("temp_pos_embed");
    return out;
  }
  return Model::export_weights(official, layout);
}

std::map<std::string, std::string> Latte::weight_metadata() const {
  return {{"format", "opendit.latte"}, {"version", "1"}, {"config", config_to_json(cfg_)}};
}

}  // namespace opendit::models::latte
