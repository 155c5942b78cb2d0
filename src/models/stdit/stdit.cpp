#include "models/stdit/stdit.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "core/error.hpp"
#include "core/strings.hpp"
#include "models/layers/attention.hpp"
#include "models/layers/modulated.hpp"
#include "models/layers/recompute.hpp"

namespace opendit::models::stdit {

STDiT::STDiT(const STDiTConfig& cfg, std::optional<uint64_t> seed)
    : cfg_((cfg.validate(), cfg)),
      x_embedder_(cfg.in_channels, cfg.hidden_size, cfg.patch_t, cfg.patch_h, cfg.patch_w, !seed),
      t_embedder_(cfg.hidden_size, !seed),
      t_block_(cfg.hidden_size, 6 * int64_t(cfg.hidden_size), !seed),
      y_proj_(cfg.caption_channels, cfg.hidden_size, cfg.hidden_size, !seed),
      final_layer_(cfg.hidden_size, int64_t(cfg.patch_volume()) * cfg.out_channels(), !seed) {
  const int64_t D = cfg_.hidden_size, M = cfg_.mlp_hidden();
  const bool meta = !seed;
  const auto opts = layers::param_options(meta);
  if (meta) {
    pos_embed_ = at::empty({1, cfg_.s_tokens(), D}, opts);
    pos_embed_temporal_ = at::empty({1, cfg_.t_tokens(), D}, opts);
  } else {
    pos_embed_ = layers::pos_embed_2d(D, cfg_.grid_h(), cfg_.grid_w(), cfg_.space_scale);
    pos_embed_temporal_ = layers::pos_embed_1d(D, cfg_.t_tokens(), cfg_.time_scale);
  }
  y_embedding_ = at::zeros({cfg_.text_length, cfg_.caption_channels}, opts);
  blocks_.resize(cfg_.depth);
  for (Block& b : blocks_)
    b = {at::zeros({6, D}, opts),         layers::Linear(D, 3 * D, meta), layers::Linear(D, D, meta),
         layers::Linear(D, D, meta),      layers::Linear(D, 2 * D, meta), layers::Linear(D, D, meta),
         layers::Linear(D, M, meta),      layers::Linear(M, D, meta),     layers::Linear(D, 3 * D, meta),
         layers::Linear(D, D, meta)};
  // The official state-dict order (PyTorch's: a module's own tensors, then its children in definition order).
  add_param("pos_embed", pos_embed_, ParamKind::Recomputed);
  add_param("pos_embed_temporal", pos_embed_temporal_, ParamKind::Recomputed);
  layers::NamedSlots slots = x_embedder_.slots("x_embedder");
  layers::append(slots, t_embedder_.slots("t_embedder"));
  layers::append(slots, t_block_.slots("t_block.1"));
  for (auto& [name, tensor] : slots) add_param(name, *tensor);
  add_param("y_embedder.y_embedding", y_embedding_, ParamKind::Buffer);
  slots = y_proj_.slots("y_embedder.y_proj");
  for (size_t i = 0; i < blocks_.size(); ++i) {
    const std::string p = "blocks." + std::to_string(i) + ".";
    Block& b = blocks_[i];
    slots.push_back({p + "scale_shift_table", &b.table});
    layers::append(slots, b.qkv.slots(p + "attn.qkv"));
    layers::append(slots, b.proj.slots(p + "attn.proj"));
    layers::append(slots, b.q.slots(p + "cross_attn.q_linear"));
    layers::append(slots, b.kv.slots(p + "cross_attn.kv_linear"));
    layers::append(slots, b.cproj.slots(p + "cross_attn.proj"));
    layers::append(slots, b.fc1.slots(p + "mlp.fc1"));
    layers::append(slots, b.fc2.slots(p + "mlp.fc2"));
    layers::append(slots, b.tqkv.slots(p + "attn_temp.qkv"));
    layers::append(slots, b.tproj.slots(p + "attn_temp.proj"));
  }
  layers::append(slots, final_layer_.slots("final_layer"));
  for (auto& [name, tensor] : slots) add_param(name, *tensor);
  if (seed) init_weights(*seed);
}

void STDiT::init_weights(uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  at::NoGradGuard no_grad;
  auto xavier = [&](at::Tensor& w) { layers::xavier_uniform(w, gen); };  // biases stay 0
  const double D = cfg_.hidden_size;
  xavier(x_embedder_.w);
  t_embedder_.fc0.w.normal_(0.0, 0.02, gen);
  t_embedder_.fc2.w.normal_(0.0, 0.02, gen);
  t_block_.w.normal_(0.0, 0.02, gen);
  y_embedding_.normal_(0.0, 1.0 / std::sqrt(double(cfg_.caption_channels)), gen);
  y_proj_.fc1.w.normal_(0.0, 0.02, gen);
  y_proj_.fc2.w.normal_(0.0, 0.02, gen);
  for (Block& b : blocks_) {
    b.table.normal_(0.0, 1.0 / std::sqrt(D), gen);
    for (layers::Linear* l : {&b.qkv, &b.proj, &b.q, &b.kv, &b.fc1, &b.fc2, &b.tqkv}) xavier(l->w);
    // cross_attn.proj and attn_temp.proj stay zero: a fresh block adds nothing from the caption or from time.
  }
  final_layer_.table.normal_(0.0, 1.0 / std::sqrt(D), gen);
  // final_layer.linear stays zero: the model outputs zeros at init.
}

std::vector<at::Tensor> STDiT::Block::tensors() const {
  std::vector<at::Tensor> t = {table};
  for (const layers::Linear* l : {&qkv, &proj, &q, &kv, &cproj, &fc1, &fc2, &tqkv, &tproj}) {
    t.push_back(l->w);
    t.push_back(l->b);
  }
  return t;
}

STDiT::Block STDiT::Block::from(const std::vector<at::Tensor>& t, size_t i) {
  Block b;
  b.table = t[i];
  size_t k = i + 1;
  for (layers::Linear* l : {&b.qkv, &b.proj, &b.q, &b.kv, &b.cproj, &b.fc1, &b.fc2, &b.tqkv, &b.tproj}) {
    l->w = t[k++];
    l->b = t[k++];
  }
  return b;
}

// x [N, Tl S', D]: this rank's Tl frames of S' positions (see Layout). tpe: the temporal table for the frames the
// temporal attention sees (block 0), else undefined.
at::Tensor STDiT::Block::forward(const at::Tensor& x, const at::Tensor& t0, const at::Tensor& y,
                                 const at::Tensor& mask, const at::Tensor& tpe, const Layout& l, int64_t heads) const {
  const int64_t N = x.size(0), D = x.size(2), T = l.t_local, S = l.s_local;
  // shift, scale, gate (attention), shift, scale, gate (MLP): [N, D] rows of one [N, 6, D] tensor (unit stride on D).
  const at::Tensor mod = table.unsqueeze(0) + t0.view({N, 6, D});
  auto m = [&](int64_t k) { return mod.select(1, k); };
  // Spatial attention, per frame (always local: a rank holds whole frames).
  // The residual stream passes through the fused projections (their LayerNorm backward adds its gradient); the
  // gated residuals add the output projections' biases (and sum their gradients).
  layers::Branch sq = layers::norm_modulate_linear_res(x, m(0), m(1), qkv.w, qkv.b, 1e-6);   // [N, T S, 3 D]
  at::Tensor a =
      layers::self_attention(sq.out.view({N * T, S, 3 * D}), heads, S > l.s ? l.s : -1).view({N, T * S, D});
  at::Tensor h = layers::gated_residual(sq.res, layers::linear(a, proj.w, {}), m(2), proj.b);
  // Temporal attention, per spatial position, on the un-normalised x (the temporal table in block 0 only).
  at::Tensor back;  // [N, T S, D]
  if (l.sp.on() && l.sp.mode == layers::SpMode::Dsp) {
    // dsp: switch to whole sequences of time (positions sharded), attend locally, switch back.
    const int64_t Tp = T * l.sp.size(), Sl = S / l.sp.size();
    at::Tensor xt = layers::sp_all_to_all(h.view({N, T, S, D}), 2, 1, l.sp).transpose(1, 2);  // [N, Sl, Tp, D]
    if (tpe.defined()) xt = xt + tpe.view({1, 1, Tp, D});
    at::Tensor at_ = layers::self_attention(tqkv(xt.reshape({N * Sl, Tp, D})), heads, Tp > l.t ? l.t : -1);
    back = layers::sp_all_to_all(layers::linear(at_, tproj.w, {}).view({N, Sl, Tp, D}).transpose(1, 2), 1, 2, l.sp)
               .reshape({N, T * S, D});
  } else if (!l.sp.on()) {
    // Frames attend in the [N, T, S] layout itself: no transposes around the qkv linear and the projection.
    at::Tensor xt = h;                                                                       // [N, T S, D]
    if (tpe.defined()) xt = (h.view({N, T, S, D}) + tpe.view({1, T, 1, D})).view({N, T * S, D});
    back = layers::linear(layers::frame_attention(layers::linear(xt, tqkv.w, tqkv.b), T, heads), tproj.w, {});
  } else {
    at::Tensor xt = h.view({N, T, S, D}).transpose(1, 2);                                    // [N, S, T, D]
    if (tpe.defined()) xt = xt + tpe.view({1, 1, T, D});
    at::Tensor at_ = layers::projected_self_attention(xt.reshape({N * S, T, D}), {}, {}, tqkv.w, tqkv.b, heads,
                                                      l.t, l.sp);                          // [N S, T, D]
    back = layers::linear(at_, tproj.w, {}).view({N, S, T, D}).transpose(1, 2).reshape({N, T * S, D});
  }
  h = layers::gated_residual(h, back, m(2), tproj.b);  // back: tproj without its bias (per channel: any layout)
  // Cross-attention to the caption: no norm, no gate.
  h = h + cproj(layers::cross_attention(q(h), kv(y), mask, heads, /*groups=*/T));  // frames as groups
  // MLP.
  layers::Branch mlp = layers::norm_modulate_mlp_res(h, m(3), m(4), fc1.w, fc1.b, fc2.w, {}, 1e-6);
  return layers::gated_residual(mlp.res, mlp.out, m(5), fc2.b);                             // [N, T S, D]
}

at::Tensor STDiT::forward(const at::Tensor& x, const at::Tensor& t, const Condition& cond) const {
  const int64_t N = x.size(0), T = cfg_.t_tokens(), S = cfg_.s_tokens(), heads = cfg_.num_heads;
  TORCH_CHECK(x.dim() == 5 && x.size(1) == cfg_.in_channels && x.size(2) == cfg_.frames &&
                  x.size(3) == cfg_.height && x.size(4) == cfg_.width,
              "STDiT expects x [N, ", cfg_.in_channels, ", ", cfg_.frames, ", ", cfg_.height, ", ", cfg_.width,
              "], got ", x.sizes());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == N, "STDiT expects t [", N, "], got ", t.sizes());
  TORCH_CHECK(cond.text.defined() && cond.text.dim() == 3 && cond.text.size(0) == N &&
                  cond.text.size(2) == cfg_.caption_channels && cond.text.size(1) <= cfg_.text_length,
              "STDiT expects captions [", N, ", L <= ", cfg_.text_length, ", ", cfg_.caption_channels, "], got ",
              cond.text.defined() ? cond.text.sizes() : at::IntArrayRef{});
  const at::ScalarType dtype = x_embedder_.w.scalar_type();
  const at::Tensor mask = cond.text_mask.defined()
                              ? cond.text_mask.to(at::kBool)
                              : at::ones({N, cond.text.size(1)}, cond.text.options().dtype(at::kBool));
  const int64_t D = cfg_.hidden_size;
  const Layout l = layout();
  at::Tensor h = (x_embedder_(x.to(dtype)).reshape({N, T, S, D}) + pos_embed_.view({1, 1, S, D})).contiguous();
  if (l.s_local != S) h = at::constant_pad_nd(h, {0, 0, 0, l.s_local - S});                // dsp: [N, T, Sp, D]
  h = layers::sp_split(h, 1, l.sp).view({N, l.t_local * l.s_local, D});                    // [N, Tl S', D]
  // The temporal table of the frames the temporal attention sees: dsp all (padded), ulysses/fastseq this rank's.
  at::Tensor tpe0 = pos_embed_temporal_;                                                     // [1, T, D]
  if (l.sp.on()) {
    tpe0 = at::constant_pad_nd(tpe0, {0, 0, 0, l.sp.padded(T) - T});
    if (l.sp.mode != layers::SpMode::Dsp) tpe0 = tpe0.narrow(1, l.sp.rank() * l.t_local, l.t_local);
  }
  const at::Tensor temb = t_embedder_(t);                                                    // [N, D]
  const at::Tensor t0 = t_block_(at::silu(temb));                                            // [N, 6 D]
  const at::Tensor y = y_proj_(cond.text.to(dtype));                                         // [N, L, D]
  for (size_t i = 0; i < blocks_.size(); ++i) {
    const Block& b = blocks_[i];
    const at::Tensor tpe = i == 0 ? tpe0 : at::Tensor();
    const bool recompute = recompute_blocks_ < 0 || int64_t(i) < recompute_blocks_;
    if (recompute && at::GradMode::is_enabled()) {
      // Inputs: activations, then the block's tensors (so that their gradients flow through the recompute).
      std::vector<at::Tensor> in = {h, t0, y, mask};
      if (tpe.defined()) in.push_back(tpe);
      const size_t first = in.size();
      for (const at::Tensor& p : b.tensors()) in.push_back(p);
      const bool with_tpe = tpe.defined();
      h = layers::recomputed(
          [=](const std::vector<at::Tensor>& in) {
            return Block::from(in, first).forward(in[0], in[1], in[2], in[3], with_tpe ? in[4] : at::Tensor(), l,
                                                  heads);
          },
          in);
    } else {
      h = b.forward(h, t0, y, mask, tpe, l, heads);
    }
  }
  if (l.sp.on()) {
    h = layers::sp_gather(h.view({N, l.t_local, l.s_local, D}), 1, T, l.sp);                 // [N, T, S', D]
    h = h.narrow(2, 0, S).reshape({N, T * S, D}).contiguous();
  }
  h = final_layer_(h, temb);                                                                 // [N, T S, P Co]
  return layers::unpatchify_3d(h, {T, cfg_.grid_h(), cfg_.grid_w()}, {cfg_.patch_t, cfg_.patch_h, cfg_.patch_w},
                               cfg_.out_channels());                                         // [N, Co, T, H, W]
}

STDiT::Layout STDiT::layout() const {
  Layout l;
  l.sp = sp_;
  l.t = cfg_.t_tokens(), l.s = cfg_.s_tokens();
  l.t_local = sp_.local(l.t);
  l.s_local = sp_.on() && sp_.mode == layers::SpMode::Dsp ? sp_.padded(l.s) : l.s;
  return l;
}

double STDiT::forward_flops(const std::vector<int64_t>& shape) const {
  TORCH_CHECK(shape.size() == 4, "STDiT samples are [C, T, H, W]");
  return cfg_.forward_flops(shape[1] / cfg_.patch_t, (shape[2] / cfg_.patch_h) * (shape[3] / cfg_.patch_w),
                            cfg_.text_length);
}

ConditionSpec STDiT::condition_spec() const {
  ConditionSpec s;
  s.kind = ConditionKind::Text;
  s.text_length = cfg_.text_length;
  s.text_dim = cfg_.caption_channels;
  s.dropout = cfg_.class_dropout_prob;
  return s;
}

Condition STDiT::null_condition(const Condition& like) const {
  const int64_t N = like.batch(), L = like.text.defined() ? like.text.size(1) : cfg_.text_length;
  Condition null;
  at::Tensor table = y_embedding_;
  if (like.text.defined() && like.text.device().is_cpu() && !y_embedding_.device().is_cpu()) {
    if (null_host_of_ != y_embedding_.data_ptr() || null_host_version_ != int64_t(y_embedding_._version())) {
      null_host_ = y_embedding_.to(at::kCPU, at::kFloat);
      null_host_of_ = y_embedding_.data_ptr(), null_host_version_ = int64_t(y_embedding_._version());
    }
    table = null_host_;
  }
  null.text = table.narrow(0, 0, L).unsqueeze(0).expand({N, L, cfg_.caption_channels}).to(
      like.text.defined() ? like.text.options() : y_embedding_.options());
  null.text_mask = like.text_mask.defined() ? like.text_mask
                                            : at::ones({N, L}, null.text.options().dtype(at::kBool));
  return null;
}

void STDiT::check_condition(const Condition& cond) const {
  if (!cond.text.defined() || cond.text.dim() != 3 || cond.text.size(2) != cfg_.caption_channels)
    throw Error(cat("an STDiT takes caption embeddings [N, L, ", cfg_.caption_channels, "], found ",
                    cond.text.defined() ? shape_str(cond.text.sizes()) : std::string("none")));
  if (cond.text.size(1) > cfg_.text_length)
    throw Error(cat("captions of ", cond.text.size(1), " tokens exceed this model's ", cfg_.text_length));
  if (cond.text_mask.defined()) {
    if (cond.text_mask.dim() != 2 || cond.text_mask.size(0) != cond.text.size(0) ||
        cond.text_mask.size(1) != cond.text.size(1))
      throw Error(cat("caption mask ", shape_str(cond.text_mask.sizes()), " does not fit captions ",
                      shape_str(cond.text.sizes())));
    if (cond.text_mask.numel() > 0 && (cond.text_mask.to(at::kBool).sum(1) == 0).any().item<bool>())
      throw Error("a caption has no valid token (its mask is all false): every caption needs at least its EOS");
  }
}

StateDict STDiT::import_weights(const StateDict& sd, const std::string& origin) const {
  StateDict out = sd;
  out.erase("pos_embed");
  out.erase("pos_embed_temporal");
  return out;
}

std::map<std::string, std::string> STDiT::weight_metadata() const {
  return {{"format", "opendit.stdit"}, {"version", "1"}, {"config", config_to_json(cfg_)}};
}

}  // namespace opendit::models::stdit
