#include "models/layers/final_layer.hpp"

#include "models/layers/modulated.hpp"

namespace opendit::models::layers {

at::Tensor AdaLNFinalLayer::operator()(const at::Tensor& x, const at::Tensor& silu_c) const {
  auto mod = ada(silu_c).chunk(2, 1);                                                      // shift, scale [N, D]
  return norm_modulate_linear(x, mod[0], mod[1], linear.w, linear.b, 1e-6);                // [N, T, O]
}

NamedSlots AdaLNFinalLayer::slots(const std::string& prefix) {
  NamedSlots s = linear.slots(prefix + ".linear");
  append(s, ada.slots(prefix + ".adaLN_modulation.1"));
  return s;
}

T2IFinalLayer::T2IFinalLayer(int64_t width, int64_t out, bool meta)
    : table(at::zeros({2, width}, param_options(meta))), linear(width, out, meta) {}

at::Tensor T2IFinalLayer::operator()(const at::Tensor& x, const at::Tensor& t) const {
  const at::Tensor mod = table.unsqueeze(0) + t.unsqueeze(1);                             // [N, 2, D]
  return norm_modulate_linear(x, mod.select(1, 0), mod.select(1, 1), linear.w, linear.b, 1e-6);  // [N, T, O]
}

NamedSlots T2IFinalLayer::slots(const std::string& prefix) {
  return slots_named(prefix + ".scale_shift_table", prefix + ".linear");
}

NamedSlots T2IFinalLayer::slots_named(const std::string& table_name, const std::string& linear_prefix) {
  NamedSlots s = {{table_name, &table}};
  append(s, linear.slots(linear_prefix));
  return s;
}

at::Tensor unpatchify_2d(const at::Tensor& x, int64_t gh, int64_t gw, int64_t p, int64_t channels) {
  const int64_t N = x.size(0);
  at::Tensor h = x.view({N, gh, gw, p, p, channels}).permute({0, 5, 1, 3, 2, 4});          // [N, C, gh, p, gw, p]
  return h.reshape({N, channels, gh * p, gw * p});
}

}  // namespace opendit::models::layers

namespace opendit::models::layers {

at::Tensor unpatchify_3d(const at::Tensor& x, const std::array<int64_t, 3>& g, const std::array<int64_t, 3>& p,
                         int64_t channels) {
  const int64_t N = x.size(0);
  at::Tensor h = x.view({N, g[0], g[1], g[2], p[0], p[1], p[2], channels})
                     .permute({0, 7, 1, 4, 2, 5, 3, 6});                                 // [N, C, gt, pt, gh, ph, gw, pw]
  return h.reshape({N, channels, g[0] * p[0], g[1] * p[1], g[2] * p[2]});
}

}  // namespace opendit::models::layers
