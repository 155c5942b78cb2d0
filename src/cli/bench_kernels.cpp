// `opendit bench kernels`: the fused operations of cuda/ops.hpp at DiT-XL/2 training shapes, timed with CUDA events
// against a device-to-device copy (the 100% line of a memory-bound op), and torch's attention backends.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cli/app.hpp"
#include "core/devices.hpp"
#include "core/error.hpp"
#include "cuda/ops.hpp"

#ifdef OPENDIT_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <torch/csrc/autograd/autograd.h>
#endif

namespace opendit::cli {
namespace {

struct KernelBenchArgs {
  int batch = 64, iters = 50, warmup = 5;
  std::string dtype = "bf16";
};

#ifdef OPENDIT_WITH_CUDA

// DiT-XL/2 at 256x256: T tokens, width D, MLP width K, attention heads H of size D / H, parameter count.
constexpr int64_t kTokens = 256, kWidth = 1152, kMlp = 4608, kHeads = 16;
constexpr int64_t kDitXlParams = 675129632;

// Milliseconds per call of fn in steady state: `iters` back-to-back calls between two CUDA events on the current
// stream (so the GPU never waits for the host's launch, as inside a training step), divided by iters; the median of
// 5 such runs, after `warmup` calls.
double median_ms(const std::function<void()>& fn, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> ms;
  for (int r = 0; r < 5; ++r) {
    at::cuda::CUDAEvent start(cudaEventDefault), stop(cudaEventDefault);
    start.record();
    for (int i = 0; i < iters; ++i) fn();
    stop.record();
    stop.synchronize();
    ms.push_back(start.elapsed_time(stop) / iters);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

std::string dims(at::IntArrayRef s) {
  std::string out;
  for (int64_t d : s) out += (out.empty() ? "" : "x") + std::to_string(d);
  return out;
}

struct Reporter {
  double copy_gb_s = 0;
  void op(const char* name, const char* dtype, const std::string& shape, double bytes, double ms, bool fused) const {
    const double gb_s = bytes / (ms * 1e-3) / 1e9;
    std::printf("BENCH kernel op=%s dtype=%s shape=%s bytes=%.0f ms=%.4f gb_s=%.1f pct_copy=%.1f fused=%s\n", name,
                dtype, shape.c_str(), bytes, ms, gb_s, 100 * gb_s / copy_gb_s, fused ? "yes" : "no");
    std::fflush(stdout);
  }
};

// Enables one SDPA backend only (first in the priority order) and restores the previous settings when destroyed.
class OnlySdpBackend {
 public:
  explicit OnlySdpBackend(at::SDPBackend b) {
    auto& c = at::globalContext();
    order_ = c.sDPPriorityOrder();
    flash_ = c.userEnabledFlashSDP(), mem_ = c.userEnabledMemEfficientSDP(), math_ = c.userEnabledMathSDP(),
    cudnn_ = c.userEnabledCuDNNSDP();
    std::vector<int64_t> order{int64_t(b)};
    for (at::SDPBackend o : order_)
      if (o != b) order.push_back(int64_t(o));
    c.setSDPPriorityOrder(order);
    c.setSDPUseFlash(b == at::SDPBackend::flash_attention);
    c.setSDPUseMemEfficient(b == at::SDPBackend::efficient_attention);
    c.setSDPUseMath(b == at::SDPBackend::math);
    c.setSDPUseCuDNN(b == at::SDPBackend::cudnn_attention);
  }
  ~OnlySdpBackend() {
    auto& c = at::globalContext();
    std::vector<int64_t> order;
    for (at::SDPBackend o : order_) order.push_back(int64_t(o));
    c.setSDPPriorityOrder(order);
    c.setSDPUseFlash(flash_), c.setSDPUseMemEfficient(mem_), c.setSDPUseMath(math_), c.setSDPUseCuDNN(cudnn_);
  }
  OnlySdpBackend(const OnlySdpBackend&) = delete;
  OnlySdpBackend& operator=(const OnlySdpBackend&) = delete;

 private:
  std::array<at::SDPBackend, at::num_sdp_backends> order_;
  bool flash_, mem_, math_, cudnn_;
};

void bench_attention(const KernelBenchArgs& a) {
  const int64_t N = a.batch, H = kHeads, T = kTokens, hd = kWidth / kHeads;
  const auto opts = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  at::Tensor q = at::randn({N, H, T, hd}, opts), k = at::randn_like(q), v = at::randn_like(q);
  at::Tensor dout = at::randn_like(q);
  const double fwd_flops = 4.0 * N * H * T * T * hd;
  const std::string shape = dims(q.sizes());
  const std::pair<const char*, at::SDPBackend> backends[] = {{"cudnn", at::SDPBackend::cudnn_attention},
                                                             {"flash", at::SDPBackend::flash_attention},
                                                             {"mem_efficient", at::SDPBackend::efficient_attention},
                                                             {"math", at::SDPBackend::math}};
  for (const auto& [name, backend] : backends) {
    const OnlySdpBackend only(backend);
    for (bool backward : {false, true}) {
      const char* pass = backward ? "fwd_bwd" : "fwd";
      try {
        double ms = 0;
        if (!backward) {
          at::NoGradGuard no_grad;
          ms = median_ms([&] { at::scaled_dot_product_attention(q, k, v); }, a.warmup, a.iters);
        } else {
          const at::AutoGradMode grad_on(true);  // the caller runs the fused ops without autograd
          at::Tensor qg = q.detach().requires_grad_(), kg = k.detach().requires_grad_(),
                     vg = v.detach().requires_grad_();
          ms = median_ms(
              [&] {
                at::Tensor out = at::scaled_dot_product_attention(qg, kg, vg);
                torch::autograd::grad({out}, {qg, kg, vg}, {dout});
              },
              a.warmup, a.iters);
        }
        const double flops = backward ? 3.5 * fwd_flops : fwd_flops;
        std::printf("BENCH attention backend=%s pass=%s dtype=bf16 shape=%s ms=%.4f tflops=%.1f\n", name, pass,
                    shape.c_str(), ms, flops / (ms * 1e-3) / 1e12);
      } catch (const c10::Error& e) {
        std::string why = e.what_without_backtrace();
        why = why.substr(0, why.find('\n'));
        std::printf("BENCH attention backend=%s pass=%s dtype=bf16 shape=%s unavailable\n", name, pass,
                    shape.c_str());
        std::printf("  (%s: %s)\n", name, why.c_str());
      }
      std::fflush(stdout);
    }
  }
}

// STDiT-XL/2's temporal attention at 16x512^2, batch 2 (1024 positions of 16 frames, 16 heads of 72), in the
// model's [B, T, S] layout (kernels::short_attention), and cuDNN on the same frames as a batch of sequences (what
// the layout needs transposed first; the transposes are not timed).
void bench_short_attention(const KernelBenchArgs& a, const Reporter& r) {
  const int64_t B = 2, T = 16, S = 1024, H = 16, hd = 72;
  const auto opts = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const at::Tensor qkv = at::randn({B, T, S, 3, H, hd}, opts);
  const double n = double(B) * T * S * H * hd, e = 2, stats = double(B) * S * H * T * 4;
  const std::string shape = dims(qkv.sizes());
  auto f = kernels::short_attention(qkv);
  const at::Tensor dout = at::randn_like(f.out);
  // forward: read q, k, v, write out and stats; backward: read q, k, v, out, dout, stats, write dq, dk, dv
  r.op("short_attention.fwd", "bf16", shape, 4 * n * e + stats,
       median_ms([&] { kernels::short_attention(qkv); }, a.warmup, a.iters), kernels::short_attention_fused(qkv));
  r.op("short_attention.bwd", "bf16", shape, 8 * n * e + stats,
       median_ms([&] { kernels::short_attention_backward(dout, qkv, f.out, f.stats); }, a.warmup, a.iters),
       kernels::short_attention_fused(qkv));
  const at::Tensor seq = qkv.transpose(1, 2).contiguous().view({B * S, T, 3, H, hd});
  if (!kernels::packed_attention_uses_cudnn(seq)) return;
  auto c = kernels::packed_attention(seq);
  const at::Tensor dseq = dout.transpose(1, 2).contiguous().view({B * S, T, H, hd});
  r.op("cudnn_frames_as_seqs.fwd", "bf16", dims(seq.sizes()), 4 * n * e + stats,
       median_ms([&] { kernels::packed_attention(seq); }, a.warmup, a.iters), true);
  r.op("cudnn_frames_as_seqs.bwd", "bf16", dims(seq.sizes()), 8 * n * e + stats,
       median_ms([&] { kernels::packed_attention_backward(dseq, seq, c.out, c.stats); }, a.warmup, a.iters), true);
}

void run_kernel_bench(const KernelBenchArgs& a) {
  const auto dtype = a.dtype == "bf16" ? at::kBFloat16 : at::kFloat;
  const char* dt = a.dtype.c_str();
  const double e = a.dtype == "bf16" ? 2 : 4, f32 = 4;
  const auto opts = at::TensorOptions().device(at::kCUDA).dtype(dtype);
  const auto fopts = opts.dtype(at::kFloat);
  const int64_t N = a.batch, T = kTokens, D = kWidth, K = kMlp;
  const double NTD = double(N) * T * D, ND = double(N) * D, NT = double(N) * T, NTK = double(N) * T * K;
  at::NoGradGuard no_grad;
  std::printf("bench kernels: %s, batch %lld, dtype %s, %d iterations (median) after %d warmup\n",
              at::cuda::getCurrentDeviceProperties()->name, (long long)N, dt, a.iters, a.warmup);

  Reporter r;
  {
    const int64_t bytes = int64_t(1) << 30;
    at::Tensor src = at::empty({bytes}, fopts.dtype(at::kByte)).fill_(1), dst = at::empty_like(src);
    const double ms = median_ms([&] { dst.copy_(src); }, a.warmup, a.iters);
    r.copy_gb_s = 2.0 * bytes / (ms * 1e-3) / 1e9;
    std::printf("BENCH copy bytes=%lld ms=%.4f gb_s=%.1f pct_copy=100.0\n", 2LL * bytes, ms, r.copy_gb_s);
  }
  {
    at::Tensor x = at::randn({N, T, D}, opts), dy = at::randn_like(x);
    at::Tensor ada = at::randn({N, 6 * D}, opts) * 0.1;  // adaLN output: shift/scale/gate are strided chunks
    at::Tensor shift = ada.narrow(1, 0, D), scale = ada.narrow(1, D, D), gate = ada.narrow(1, 2 * D, D);
    const bool fused = kernels::fused_available(x);
    const std::string shape = dims(x.sizes());
    kernels::NormModulate nm = kernels::norm_modulate(x, shift, scale, 1e-6);
    r.op("norm_modulate.fwd", dt, shape, 2 * NTD * e + 2 * ND * e + 2 * NT * f32,
         median_ms([&] { kernels::norm_modulate(x, shift, scale, 1e-6); }, a.warmup, a.iters), fused);
    r.op("norm_modulate.bwd", dt, shape, 3 * NTD * e + 2 * NT * f32 + 3 * ND * e,
         median_ms([&] { kernels::norm_modulate_backward(dy, x, nm.mean, nm.rstd, scale); }, a.warmup, a.iters),
         fused);
    // With the residual's gradient added to dx (what a DiT block's backward runs): one more read.
    at::Tensor dres = at::randn_like(x);
    r.op("norm_modulate.bwd+res", dt, shape, 4 * NTD * e + 2 * NT * f32 + 3 * ND * e,
         median_ms([&] { kernels::norm_modulate_backward(dy, x, nm.mean, nm.rstd, scale, dres); }, a.warmup,
                   a.iters),
         fused);
    // Also writing the forward's output again (the next linear's input, for its weight gradient), which would
    // otherwise be a recompute of its own (norm_modulate.fwd): one more write and the shift.
    r.op("norm_modulate.bwd+res+h", dt, shape, 5 * NTD * e + 2 * NT * f32 + 4 * ND * e,
         median_ms([&] { kernels::norm_modulate_backward(dy, x, nm.mean, nm.rstd, scale, dres, shift); }, a.warmup,
                   a.iters),
         fused);
    at::Tensor y = at::randn_like(x), pbias = at::randn({D}, opts);
    r.op("gated_residual.fwd", dt, shape, 3 * NTD * e + ND * e,
         median_ms([&] { kernels::gated_residual(x, y, gate); }, a.warmup, a.iters), fused);
    r.op("gated_residual.bwd", dt, shape, 3 * NTD * e + 2 * ND * e,
         median_ms([&] { kernels::gated_residual_backward(dy, y, gate); }, a.warmup, a.iters), fused);
    // With the projection's bias (DiT's proj and fc2): its gradient from the same pass.
    r.op("gated_residual.fwd+bias", dt, shape, 3 * NTD * e + ND * e + D * e,
         median_ms([&] { kernels::gated_residual(x, y, gate, pbias); }, a.warmup, a.iters), fused);
    r.op("gated_residual.bwd+bias", dt, shape, 3 * NTD * e + 2 * ND * e + D * e,
         median_ms([&] { kernels::gated_residual_backward(dy, y, gate, pbias); }, a.warmup, a.iters), fused);
  }
  {
    at::Tensor h = at::randn({N, T, K}, opts), bias = at::randn({K}, opts), dg = at::randn_like(h);
    const bool fused = kernels::fused_available(h);
    const std::string shape = dims(h.sizes());
    r.op("bias_gelu.fwd", dt, shape, 2 * NTK * e + K * e,
         median_ms([&] { kernels::bias_gelu(h, bias); }, a.warmup, a.iters), fused);
    r.op("bias_gelu.bwd", dt, shape, 3 * NTK * e + 2 * K * e,
         median_ms([&] { kernels::bias_gelu_backward(dg, h, bias); }, a.warmup, a.iters), fused);
  }
  {
    // One rank's flat fp32 shard of all of DiT-XL/2 with EMA and a bf16 working copy (no decay mask).
    const int64_t n = kDitXlParams;
    at::Tensor param = at::randn({n}, fopts) * 0.02;
    kernels::AdamWTensors t{param, at::randn({n}, fopts), at::zeros({n}, fopts), at::zeros({n}, fopts),
                            param.clone(), {}, param.to(at::kBFloat16), {}};
    kernels::AdamWScalars s;
    // read param, grad, exp_avg, exp_avg_sq, ema; write param, exp_avg, exp_avg_sq, ema, working
    const double bytes = 9.0 * n * f32 + 2.0 * n;
    r.op("adamw_ema", "fp32", std::to_string(n), bytes, median_ms([&] { kernels::adamw_ema(t, s); }, a.warmup, a.iters),
         kernels::fused_available(param));
  }
  bench_short_attention(a, r);
  bench_attention(a);
}

#endif  // OPENDIT_WITH_CUDA

void run_bench_kernels(const KernelBenchArgs& a, MpiRuntime& mpi) {
  require_one_process(mpi, "bench");
  if (a.batch < 1 || a.iters < 1 || a.warmup < 0) throw Error("--batch and --iters must be >= 1, --warmup >= 0");
  const bool have_gpu = gpu_count() > 0;
#ifdef OPENDIT_WITH_CUDA
  if (have_gpu) return run_kernel_bench(a);
#endif
  (void)have_gpu;
  throw Error("bench kernels needs a GPU (none is visible, or opendit was built without CUDA)");
}

}  // namespace

void add_bench_kernels(CLI::App& bench, MpiRuntime& mpi) {
  auto a = std::make_shared<KernelBenchArgs>();
  auto* cmd = bench.add_subcommand(
      "kernels", "Time the fused ops (cuda/ops.hpp) against a device copy, and attention per backend (GPU only)");
  cmd->add_option("--batch", a->batch, "Batch size N of the [N, 256, 1152] DiT-XL/2 activations")->default_val(64);
  cmd->add_option("--iters", a->iters, "Timed iterations (the median is reported)")->default_val(50);
  cmd->add_option("--warmup", a->warmup, "Untimed iterations first")->default_val(5);
  cmd->add_option("--dtype", a->dtype, "Activation dtype (the AdamW shard is always fp32)")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->default_str("bf16");
  cmd->callback([a, &mpi] { run_bench_kernels(*a, mpi); });
}

}  // namespace opendit::cli
