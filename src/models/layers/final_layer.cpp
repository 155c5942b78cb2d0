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

at::Tensor unpatchify_2d(const at::Tensor& x, int64_t gh, int64_t gw, int64_t p, int64_t channels) {
  const int64_t N = x.size(0);
  at::Tensor h = x.view({N, gh, gw, p, p, channels}).permute({0, 5, 1, 3, 2, 4});          // [N, C, gh, p, gw, p]
  return h.reshape({N, channels, gh * p, gw * p});
}

}  // namespace opendit::models::layers
