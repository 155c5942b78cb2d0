// DiT's one forward path (the fused layers; on the CPU they run the ATen definitions of cuda/ops.hpp) against the
// plain-ATen oracle (tests/models/dit_oracle.cpp): on the CPU in float64, which checks the hand-written backwards,
// and on the GPU, where the CUDA kernels run, against the CPU oracle.
#include <ATen/Context.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <memory>

#include "models/dit_oracle.hpp"

using namespace opendit::models;
using namespace opendit::models::dit;
using opendit::test::dit_oracle_forward;
using opendit::test::labels_of;

namespace {

DiTConfig odd_config() {  // D = 36 (9 per head), odd token count 9, learn_sigma on
  DiTConfig c;
  c.depth = 3, c.hidden_size = 36, c.num_heads = 4, c.patch_size = 2;
  c.in_channels = 3, c.input_size = 6, c.num_classes = 5, c.learn_sigma = true;
  return c;
}

// A model whose adaLN and final layers are not zero (as after training), so that every path carries signal.
std::unique_ptr<DiT> trained_like(const DiTConfig& cfg) {
  auto m = std::make_unique<DiT>(cfg, uint64_t{7});
  at::manual_seed(3);
  at::NoGradGuard g;
  for (const Param& p : m->parameters())
    if (p.name.find("adaLN") != std::string::npos || p.name.find("final_layer") != std::string::npos ||
        p.name.find("bias") != std::string::npos)
      p.tensor->normal_(0, 0.1);
  return m;
}

struct Inputs {
  at::Tensor x, t, y;
};
Inputs inputs(const DiTConfig& cfg, int64_t n) {
  at::manual_seed(11);
  return {at::randn({n, cfg.in_channels, cfg.input_size, cfg.input_size}, at::kDouble),
          at::randint(0, 1000, {n}, at::kDouble), at::randint(0, cfg.num_classes + 1, {n}, at::kLong)};
}

// Output and every parameter's gradient of sum(out * w) for a fixed random w; `oracle`: through the oracle.
std::pair<at::Tensor, std::map<std::string, at::Tensor>> run(DiT& m, const Inputs& in, const at::TensorOptions& o,
                                                              bool oracle = false) {
  m.to(o);
  m.set_requires_grad(true);
  const at::Tensor x = in.x.to(o), t = in.t.to(o.device()), y = in.y.to(o.device());
  at::Tensor out = oracle ? dit_oracle_forward(m, x, t, y) : m.forward(x, t, labels_of(y));
  at::manual_seed(5);
  at::Tensor w = at::randn(out.sizes(), at::kDouble).to(o);
  std::vector<at::Tensor> params;
  std::vector<std::string> names;
  for (const Param& p : m.parameters())
    if (p.tensor->requires_grad()) names.push_back(p.name), params.push_back(*p.tensor);
  auto grads = torch::autograd::grad({(out * w).sum()}, params);
  std::map<std::string, at::Tensor> g;
  for (size_t i = 0; i < names.size(); ++i) g[names[i]] = grads[i].to(at::kCPU, at::kDouble);
  return {out.to(at::kCPU, at::kDouble), g};
}

double rel(const at::Tensor& a, const at::Tensor& b) {
  return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item<double>();
}

bool have_gpu() { return at::detail::getCUDAHooks().hasCUDA() && at::detail::getCUDAHooks().getNumGPUs() > 0; }

}  // namespace

TEST(DiTOracle, FusedLayersMatchThePlainCompositionInFloat64OnCpu) {
  for (int64_t n : {1, 3}) {
    DiTConfig cfg = odd_config();
    auto model = trained_like(cfg);
    Inputs in = inputs(cfg, n);
    auto f64 = at::TensorOptions().dtype(at::kDouble);
    auto [out_p, g_p] = run(*model, in, f64, /*oracle=*/true);
    auto [out_f, g_f] = run(*model, in, f64);
    EXPECT_LT(rel(out_f, out_p), 1e-12) << "batch " << n;
    ASSERT_EQ(g_f.size(), g_p.size());
    for (const auto& [name, g] : g_p) EXPECT_LT(rel(g_f.at(name), g), 1e-10) << name << " batch " << n;
  }
}

TEST(DiTOracle, RecomputedBlocksGiveTheSameGradients) {
  DiTConfig cfg = odd_config();
  auto a = trained_like(cfg), b = trained_like(cfg);
  b->set_recompute_blocks(2);  // two of three blocks recomputed
  Inputs in = inputs(cfg, 2);
  auto f64 = at::TensorOptions().dtype(at::kDouble);
  auto [oa, ga] = run(*a, in, f64);
  auto [ob, gb] = run(*b, in, f64);
  EXPECT_TRUE(at::equal(oa, ob));
  for (const auto& [name, g] : ga) EXPECT_TRUE(at::equal(gb.at(name), g)) << name;
}

// The GPU model (fused kernels, cuDNN/flash attention) against the CPU oracle in float64. fp32: TF32 off, 1e-4
// relative (accumulation order differs); bf16: 3e-2 on the output and 6e-2 on gradients in max-relative terms.
TEST(DiTOracle, GpuForwardAndBackwardMatchCpu) {
  if (!have_gpu()) GTEST_SKIP() << "no GPU";
  at::globalContext().setAllowTF32CuBLAS(false);
  at::globalContext().setAllowTF32CuDNN(false);
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    for (DiTConfig cfg : {odd_config(), preset("DiT-S/2")}) {
      cfg.input_size = cfg.hidden_size == 36 ? 6 : 16;
      auto cpu = trained_like(cfg), gpu = trained_like(cfg);
      Inputs in = inputs(cfg, 4);
      auto [out_c, g_c] = run(*cpu, in, at::TensorOptions().dtype(at::kDouble), /*oracle=*/true);
      auto [out_g, g_g] = run(*gpu, in, at::TensorOptions().dtype(dtype).device(at::kCUDA));
      const bool bf = dtype == at::kBFloat16;
      EXPECT_LT(rel(out_g, out_c), bf ? 3e-2 : 1e-4) << cfg.describe() << " " << dtype;
      for (const auto& [name, g] : g_c)
        EXPECT_LT(rel(g_g.at(name), g), bf ? 6e-2 : 1e-4) << name << " " << cfg.describe() << " " << dtype;
    }
  }
}
