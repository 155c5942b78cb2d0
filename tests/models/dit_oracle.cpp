#include "models/dit_oracle.hpp"

#include <cmath>
#include <string>

namespace opendit::test {

namespace {

at::Tensor features(const at::Tensor& t, int64_t dim) {  // [cos(t f), sin(t f)], f_k = exp(-ln 1e4 k / half)
  const int64_t half = dim / 2;
  at::Tensor f = at::exp(-std::log(10000.0) * at::arange(half, t.options().dtype(at::kFloat)) / double(half));
  at::Tensor a = t.to(at::kFloat).unsqueeze(1) * f.unsqueeze(0);
  return at::cat({at::cos(a), at::sin(a)}, -1);
}

}  // namespace

at::Tensor dit_oracle_forward(const models::dit::DiT& model, const at::Tensor& x, const at::Tensor& t,
                              const at::Tensor& y) {
  const auto& cfg = model.config();
  const models::StateDict sd = model.state_dict();
  auto w = [&](const std::string& k) { return sd.at(k); };
  const int64_t N = x.size(0), D = cfg.hidden_size, H = cfg.num_heads, hd = D / H, p = cfg.patch_size;
  const int64_t g = cfg.grid(), T = g * g, Co = cfg.out_channels();
  auto modulate = [&](const at::Tensor& h, const at::Tensor& shift, const at::Tensor& scale) {
    return at::layer_norm(h, {D}, {}, {}, 1e-6) * (1 + scale) + shift;                       // [N, T, D]
  };
  at::Tensor h = at::conv2d(x, w("x_embedder.proj.weight"), w("x_embedder.proj.bias"), {p, p});
  h = h.flatten(2).transpose(1, 2) + w("pos_embed");                                         // [N, T, D]
  at::Tensor c = at::linear(features(t, 256).to(w("t_embedder.mlp.0.weight").scalar_type()),
                            w("t_embedder.mlp.0.weight"), w("t_embedder.mlp.0.bias"));
  c = at::linear(at::silu(c), w("t_embedder.mlp.2.weight"), w("t_embedder.mlp.2.bias"));
  c = c + w("y_embedder.embedding_table.weight").index_select(0, y);                         // [N, D]
  const at::Tensor silu_c = at::silu(c);
  for (int i = 0; i < cfg.depth; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    auto lin = [&](const at::Tensor& in, const std::string& k) {
      return at::linear(in, w(b + k + ".weight"), w(b + k + ".bias"));
    };
    auto mod = lin(silu_c, "adaLN_modulation.1").unsqueeze(1).chunk(6, -1);                  // 6 x [N, 1, D]
    at::Tensor qkv = lin(modulate(h, mod[0], mod[1]), "attn.qkv").view({N, T, 3, H, hd}).permute({2, 0, 3, 1, 4});
    at::Tensor a = at::scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]);                  // [N, H, T, hd]
    h = h + mod[2] * lin(a.transpose(1, 2).reshape({N, T, D}), "attn.proj");
    at::Tensor m = lin(at::gelu(lin(modulate(h, mod[3], mod[4]), "mlp.fc1"), "tanh"), "mlp.fc2");
    h = h + mod[5] * m;
  }
  auto mod = at::linear(silu_c, w("final_layer.adaLN_modulation.1.weight"), w("final_layer.adaLN_modulation.1.bias"))
                 .unsqueeze(1)
                 .chunk(2, -1);                                                               // shift, scale
  h = at::linear(modulate(h, mod[0], mod[1]), w("final_layer.linear.weight"), w("final_layer.linear.bias"));
  h = h.view({N, g, g, p, p, Co}).permute({0, 5, 1, 3, 2, 4});                              // [N, Co, g, p, g, p]
  return h.reshape({N, Co, g * p, g * p});
}

}  // namespace opendit::test
