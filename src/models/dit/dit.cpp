#include "models/dit/dit.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "core/error.hpp"
#include "models/dit/weights.hpp"
#include "models/layers/attention.hpp"
#include "models/layers/modulated.hpp"
#include "models/layers/recompute.hpp"

namespace opendit::models::dit {

DiT::DiT(const DiTConfig& cfg, std::optional<uint64_t> seed)
    : cfg_((cfg.validate(), cfg)),
      x_embedder_(cfg.in_channels, cfg.hidden_size, cfg.patch_size, !seed),
      t_embedder_(cfg.hidden_size, !seed),
      final_layer_(cfg.hidden_size, int64_t(cfg.patch_size) * cfg.patch_size * cfg.out_channels(), !seed) {
  const int64_t D = cfg_.hidden_size, M = cfg_.mlp_hidden();
  const bool meta = !seed;
  pos_embed_ = meta ? at::empty({1, cfg_.tokens(), D}, layers::param_options(true)) : layers::pos_embed_2d(D, cfg_.grid());
  y_table_ = at::zeros({cfg_.num_classes + 1, D}, layers::param_options(meta));
  blocks_.resize(cfg_.depth);
  for (Block& b : blocks_)
    b = {layers::Linear(D, 3 * D, meta), layers::Linear(D, D, meta), layers::Linear(D, M, meta),
         layers::Linear(M, D, meta), layers::Linear(D, 6 * D, meta)};
  // The official state-dict order (the flat layout of training follows it).
  add_param("pos_embed", pos_embed_, ParamKind::Recomputed);
  layers::NamedSlots slots = x_embedder_.slots("x_embedder");
  layers::append(slots, t_embedder_.slots("t_embedder"));
  slots.push_back({"y_embedder.embedding_table.weight", &y_table_});
  for (size_t i = 0; i < blocks_.size(); ++i) {
    const std::string p = "blocks." + std::to_string(i) + ".";
    Block& b = blocks_[i];
    layers::append(slots, b.qkv.slots(p + "attn.qkv"));
    layers::append(slots, b.proj.slots(p + "attn.proj"));
    layers::append(slots, b.fc1.slots(p + "mlp.fc1"));
    layers::append(slots, b.fc2.slots(p + "mlp.fc2"));
    layers::append(slots, b.ada.slots(p + "adaLN_modulation.1"));
  }
  layers::append(slots, final_layer_.slots("final_layer"));
  for (auto& [name, tensor] : slots) add_param(name, *tensor);
  if (seed) init_weights(*seed);
}

void DiT::init_weights(uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  at::NoGradGuard no_grad;
  auto xavier = [&](at::Tensor& w) { layers::xavier_uniform(w, gen); };  // biases stay 0
  xavier(x_embedder_.w);  // the patch conv viewed as [D, C p p]
  for (Block& b : blocks_) {
    xavier(b.qkv.w);  // one [3D, D] matrix, as the official init does
    xavier(b.proj.w);
    xavier(b.fc1.w);
    xavier(b.fc2.w);
    // adaLN_modulation stays zero: every block starts as the identity (adaLN-Zero).
  }
  y_table_.normal_(0.0, 0.02, gen);
  t_embedder_.fc0.w.normal_(0.0, 0.02, gen);
  t_embedder_.fc2.w.normal_(0.0, 0.02, gen);
  // final_layer adaLN and linear stay zero: the model outputs zeros at init.
}

std::vector<at::Tensor> DiT::Block::tensors() const {
  return {qkv.w, qkv.b, proj.w, proj.b, fc1.w, fc1.b, fc2.w, fc2.b, ada.w, ada.b};
}

DiT::Block DiT::Block::from(const std::vector<at::Tensor>& t, size_t i) {
  auto linear = [&](size_t k) {
    layers::Linear l;
    l.w = t[i + k], l.b = t[i + k + 1];
    return l;
  };
  return {linear(0), linear(2), linear(4), linear(6), linear(8)};
}

// The adaLN chunks stay [N, D] views of one [N, 6D] tensor (the fused ops read them strided).
// With sequence parallelism x is this rank's [N, T/P, D] of `tokens` (the rest padding).
at::Tensor DiT::Block::forward(const at::Tensor& x, const at::Tensor& silu_c, int64_t heads, int64_t tokens,
                               const layers::SeqParallel& sp) const {
  auto mod = ada(silu_c).chunk(6, 1);  // shift, scale, gate for attention, then for the MLP: 6 x [N, D]
  // The residual stream passes through the fused projections (their LayerNorm backward adds its gradient), and the
  // output projections' biases are added by the gated residuals (whose backward sums their gradients).
  at::Tensor res;
  at::Tensor a = layers::projected_self_attention(x, mod[0], mod[1], qkv.w, qkv.b, heads,
                                                  sp.on() ? tokens : -1, sp, &res);          // [N, T, D]
  at::Tensor out = layers::gated_residual(res, layers::linear(a, proj.w, {}), mod[2], proj.b);
  layers::Branch m = layers::norm_modulate_mlp_res(out, mod[3], mod[4], fc1.w, fc1.b, fc2.w, {}, 1e-6);
  return layers::gated_residual(m.res, m.out, mod[5], fc2.b);                              // [N, T, D]
}

at::Tensor DiT::forward(const at::Tensor& x, const at::Tensor& t, const Condition& cond) const {
  const at::Tensor& y = cond.labels;
  const int64_t N = x.size(0), g = cfg_.grid(), heads = cfg_.num_heads;
  TORCH_CHECK(x.dim() == 4 && x.size(1) == cfg_.in_channels && x.size(2) == cfg_.input_size &&
                  x.size(3) == cfg_.input_size,
              "DiT expects x [N, ", cfg_.in_channels, ", ", cfg_.input_size, ", ", cfg_.input_size, "], got ",
              x.sizes());
  TORCH_CHECK(y.defined() && t.dim() == 1 && t.size(0) == N && y.dim() == 1 && y.size(0) == N,
              "DiT expects t and labels of shape [", N, "], got ", t.sizes(), " and ",
              y.defined() ? y.sizes() : at::IntArrayRef{});
  at::Tensor h = (x_embedder_(x) + pos_embed_).contiguous();                                // [N, T, D]
  const int64_t tokens = h.size(1);
  const layers::SeqParallel sp = sp_;
  h = layers::sp_split(h, 1, sp);                                                           // [N, T/P, D]
  at::Tensor c = t_embedder_(t) + y_table_.index_select(0, y.to(at::kLong));                 // [N, D]
  at::Tensor silu_c = at::silu(c);  // every adaLN_modulation starts with SiLU
  for (size_t i = 0; i < blocks_.size(); ++i) {
    const Block& b = blocks_[i];
    const bool recompute = recompute_blocks_ < 0 || int64_t(i) < recompute_blocks_;
    if (recompute && at::GradMode::is_enabled()) {
      // Inputs: activations, then the block's tensors (so that their gradients flow through the recompute).
      std::vector<at::Tensor> in = {h, silu_c};
      for (const at::Tensor& p : b.tensors()) in.push_back(p);
      h = layers::recomputed(
          [heads, tokens, sp](const std::vector<at::Tensor>& in) {
            return Block::from(in, 2).forward(in[0], in[1], heads, tokens, sp);
          },
          in);
    } else {
      h = b.forward(h, silu_c, heads, tokens, sp);
    }
  }
  h = layers::sp_gather(h, 1, tokens, sp);                                                  // [N, T, D]
  h = final_layer_(h, silu_c);                                                              // [N, T, p p Co]
  return layers::unpatchify_2d(h, g, g, cfg_.patch_size, cfg_.out_channels());             // [N, Co, H, W]
}

std::string DiT::sp_mode_problem(layers::SpMode mode) const {
  if (mode != layers::SpMode::Dsp) return "";
  return "parallel.sp_mode = \"dsp\" shards a video's frames or positions; a DiT has no temporal axis: use ulysses "
         "or fastseq";
}

double DiT::forward_flops(const std::vector<int64_t>& shape) const {
  TORCH_CHECK(shape.size() == 3, "DiT samples are [C, H, W]");
  return cfg_.forward_flops((shape[1] / cfg_.patch_size) * (shape[2] / cfg_.patch_size));
}

ConditionSpec DiT::condition_spec() const {
  ConditionSpec s;
  s.kind = ConditionKind::Labels;
  s.num_classes = cfg_.num_classes;
  s.dropout = cfg_.class_dropout_prob;
  return s;
}

Condition DiT::null_condition(const Condition& like) const {
  Condition null;
  null.labels = at::full_like(like.labels, cfg_.num_classes);
  return null;
}

void DiT::check_condition(const Condition& cond) const {
  if (!cond.labels.defined() || cond.labels.dim() != 1 || cond.labels.scalar_type() != at::kLong)
    throw Error("a class-conditional DiT needs int64 labels [N]");
  if (cond.labels.numel() == 0) return;
  const int64_t lo = cond.labels.min().item<int64_t>(), hi = cond.labels.max().item<int64_t>();
  if (lo < 0 || hi > cfg_.num_classes)
    throw Error(cat("label ", lo < 0 ? lo : hi, " is outside [0, ", cfg_.num_classes, "] of this model"));
}

StateDict DiT::import_weights(const StateDict& sd, const std::string& origin) const { return to_official(sd, origin); }

StateDict DiT::export_weights(const StateDict& official, const std::string& layout) const {
  if (layout == "diffusers") return official_to_diffusers(official);
  return Model::export_weights(official, layout);
}

std::map<std::string, std::string> DiT::weight_metadata() const {
  return {{"format", "opendit.dit"}, {"version", "1"}, {"config", config_to_json(cfg_)}};
}

}  // namespace opendit::models::dit
