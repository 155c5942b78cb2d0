// OpProfiler: a profile of a few aten ops (CPU here, CUDA where a GPU is visible), the JSON it writes, its misuse
// errors, and the kernel-name shortening and categories on real kernel names of torch, cuBLAS, flash and NCCL.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <torch/cuda.h>

#include <chrono>
#include <thread>

#include "core/error.hpp"
#include "core/op_profiler.hpp"
#include "support/support.hpp"

using namespace opendit;

namespace {

const OpRow* find_row(const std::vector<OpRow>& rows, const std::string& name) {
  for (const OpRow& r : rows)
    if (r.name == name) return &r;
  return nullptr;
}

}  // namespace

TEST(OpProfiler, CpuAggregatesAtenOpsBySelfTime) {
  at::Tensor a = at::randn({192, 192}), b = at::randn({192, 192});
  OpProfiler p;
  p.start(/*cuda=*/false);
  at::Tensor c = a;
  for (int i = 0; i < 3; ++i) c = at::mm(c, b);
  for (int i = 0; i < 2; ++i) c = at::add(c, a);
  at::Tensor lin = at::linear(a, b);  // nests aten::t, aten::addmm... inside aten::linear
  p.stop();

  const OpRow* mm = find_row(p.rows(), "aten::mm");
  ASSERT_NE(mm, nullptr) << p.table();
  EXPECT_EQ(mm->count, 4);  // 3 + the one inside aten::linear
  EXPECT_GT(mm->total_us, 0);
  EXPECT_EQ(mm->category, "cpu");
  const OpRow* add = find_row(p.rows(), "aten::add");
  ASSERT_NE(add, nullptr) << p.table();
  EXPECT_EQ(add->count, 2);
  ASSERT_NE(find_row(p.rows(), "aten::linear"), nullptr) << p.table();

  // Self times of nested ops on one thread add up to the time covered by the outermost ops; plain durations
  // would count aten::linear's children twice.
  double self_sum = 0;
  for (const OpRow& r : p.rows()) {
    EXPECT_GE(r.total_us, 0) << r.name;
    self_sum += r.total_us;
  }
  EXPECT_NEAR(self_sum, p.busy_us(), 0.01 * p.busy_us() + 1.0);
  EXPECT_GT(p.busy_us(), 0);
  EXPECT_LE(p.busy_us(), p.wall_us() + 1e-6);
  for (size_t i = 1; i < p.rows().size(); ++i) EXPECT_GE(p.rows()[i - 1].total_us, p.rows()[i].total_us);

  std::string table = p.table(25);
  EXPECT_NE(table.find("aten::mm"), std::string::npos) << table;
  EXPECT_NE(table.find("CPU ops"), std::string::npos) << table;
  EXPECT_NE(table.find("wall"), std::string::npos) << table;
  // top = 1: one row, the rest summed on a "(N more)" line.
  std::string one = p.table(1);
  EXPECT_NE(one.find(cat("(", p.rows().size() - 1, " more)")), std::string::npos) << one;
}

TEST(OpProfiler, WritesJsonAndTrace) {
  at::Tensor a = at::randn({64, 64});
  OpProfiler p;
  p.start(false);
  at::Tensor c = at::mm(a, a);
  c = at::mm(c, a);
  p.stop();

  test::TempDir dir;
  p.write_json(dir.file("ops.json"));
  nlohmann::json j = nlohmann::json::parse(test::read_bytes(dir.file("ops.json")));  // throws if not valid JSON
  EXPECT_EQ(j["device"], "cpu");
  EXPECT_DOUBLE_EQ(j["wall_us"].get<double>(), p.wall_us());
  EXPECT_DOUBLE_EQ(j["idle_us"].get<double>(), p.wall_us() - p.busy_us());
  ASSERT_EQ(j["rows"].size(), p.rows().size());
  bool found = false;
  double percent_sum = 0;
  for (const auto& r : j["rows"]) {
    percent_sum += r["percent"].get<double>();
    if (r["name"] == "aten::mm") {
      found = true;
      EXPECT_EQ(r["count"].get<int64_t>(), 2);
      EXPECT_GT(r["total_us"].get<double>(), 0);
    }
  }
  EXPECT_TRUE(found) << j.dump(1);
  EXPECT_NEAR(percent_sum, 100.0, 1e-6);

  p.write_trace(dir.file("trace.json"));
  nlohmann::json trace = nlohmann::json::parse(test::read_bytes(dir.file("trace.json")));
  EXPECT_TRUE(trace.contains("traceEvents"));

  EXPECT_THROW(p.write_json(dir.file("no/such/folder/ops.json")), Error);
}

TEST(OpProfiler, MisuseIsAClearError) {
  OpProfiler p;
  EXPECT_THROW(p.stop(), std::logic_error);
  EXPECT_THROW(p.table(), std::logic_error);
  EXPECT_THROW(p.rows(), std::logic_error);
  EXPECT_THROW(p.largest_gaps(), std::logic_error);
  p.start(false);
  EXPECT_THROW(p.start(false), std::logic_error);
  EXPECT_THROW(p.table(), std::logic_error);  // still running
  OpProfiler other;
  EXPECT_THROW(other.start(false), std::logic_error);  // Kineto's state is per process
  p.stop();
  EXPECT_THROW(p.stop(), std::logic_error);
  EXPECT_NO_THROW(p.table());
  EXPECT_TRUE(p.largest_gaps().empty());  // a CPU run has no GPU idle stretches
  if (!at::hasCUDA()) EXPECT_THROW(p.start(true), Error);
  EXPECT_FALSE(p.running());
  {
    OpProfiler dropped;
    dropped.start(false);
  }  // the destructor stops it ...
  EXPECT_NO_THROW(other.start(false));  // ... so another can start
  other.stop();
}

TEST(OpProfiler, ShortKernelNames) {
  EXPECT_EQ(short_kernel_name("void at::native::vectorized_elementwise_kernel<4, at::native::BinaryFunctor<float, "
                              "float, float, at::native::binary_internal::MulFunctor<float> >, std::array<char*, 3ul> "
                              ">(int, at::native::BinaryFunctor<float, float, float, "
                              "at::native::binary_internal::MulFunctor<float> >, std::array<char*, 3ul>)"),
            "vectorized_elementwise_kernel<4, BinaryFunctor<float, float, float, MulFunctor<float>>, "
            "array<char*, 3ul>>");
  EXPECT_EQ(short_kernel_name("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float>(int, "
                              "float, float const*, float*, float*, float*)"),
            "vectorized_layer_norm_kernel<float, float>");
  EXPECT_EQ(short_kernel_name("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::"
                              "TensorIteratorBase&)::{lambda()#3}::operator()() const::{lambda(float)#1}, "
                              "std::array<char*, 2ul>, 4>(int, std::array<char*, 2ul>)"),
            "unrolled_elementwise_kernel<direct_copy_kernel_cuda(){lambda()#3}operator()() const{lambda()#1}, "
            "array<char*, 2ul>, 4>");
  const std::string cublas =
      "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel__"
      "5x_cublas";
  EXPECT_EQ(short_kernel_name(cublas), cublas);
  EXPECT_EQ(short_kernel_name("ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)"),
            "ncclDevKernel_AllReduce_Sum_f32_RING_LL");
  EXPECT_EQ(short_kernel_name("Memcpy DtoD (Device -> Device)"), "Memcpy DtoD (Device -> Device)");

  // Width: the front and the back survive, the middle is elided.
  std::string s = short_kernel_name(cublas, 40);
  EXPECT_EQ(s.size(), 40u);
  EXPECT_EQ(s.substr(0, 10), "sm90_xmma_");
  EXPECT_NE(s.find("..."), std::string::npos);
  EXPECT_EQ(s.substr(s.size() - 6), "cublas");
  EXPECT_EQ(short_kernel_name("short_kernel", 40), "short_kernel");
}

TEST(OpProfiler, KernelCategories) {
  EXPECT_EQ(kernel_category("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_cublas"), "gemm");
  EXPECT_EQ(kernel_category("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_TNT"), "gemm");
  EXPECT_EQ(kernel_category("void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_tn_align8>"
                            "(cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_tn_align8::Params)"),
            "gemm");
  EXPECT_EQ(kernel_category("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 64, 4>, true>"),
            "attention");
  EXPECT_EQ(kernel_category("fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel)"),
            "attention");
  EXPECT_EQ(kernel_category("cudnn_generated_fort_native_sdpa_sm90_knob_7_64x128x128_4x1x1_kernel0_0"), "attention");
  // The helper kernels of torch's cuDNN attention backward.
  EXPECT_EQ(kernel_category("void compute_dot_do_o<true>(int, int, int, int, float*)"), "attention");
  EXPECT_EQ(kernel_category("void convert_dq_to_16bits<true>(int, int, float const*, __nv_bfloat16*)"), "attention");
  EXPECT_EQ(kernel_category("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float>"),
            "norm");
  EXPECT_EQ(kernel_category("void opendit::kernels::norm_modulate_kernel<__nv_bfloat16>"), "norm");
  EXPECT_EQ(kernel_category("void opendit::kernels::adamw_ema_kernel<float>"), "optimizer");
  EXPECT_EQ(kernel_category("void at::native::multi_tensor_apply_kernel<TensorListMetadata<4>, FusedAdamMathFunctor>"),
            "optimizer");
  EXPECT_EQ(kernel_category("ncclDevKernel_AllReduce_Sum_bf16_RING_LL"), "nccl");
  EXPECT_EQ(kernel_category("void at::native::reduce_kernel<512, 1, ReduceOp<float, func_wrapper_t<float, sum>>>"),
            "reduce");
  EXPECT_EQ(kernel_category("Memcpy DtoD (Device -> Device)"), "copy");
  EXPECT_EQ(kernel_category("void at::native::unrolled_elementwise_kernel<direct_copy_kernel_cuda>"), "copy");
  EXPECT_EQ(kernel_category("void at::native::vectorized_elementwise_kernel<4, GeluCUDAKernelImpl>"), "elementwise");
  EXPECT_EQ(kernel_category("void opendit::kernels::gated_residual_kernel<float>"), "elementwise");
  EXPECT_EQ(kernel_category("some_unknown_kernel"), "other");
}

TEST(OpProfiler, CudaKernelsAndIdleGap) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no GPU";
  auto opts = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  at::Tensor a = at::randn({1024, 1024}, opts), b = at::randn({1024, 1024}, opts);
  at::mm(a, b);  // cuBLAS handle and workspace outside the window
  OpProfiler p;
  p.start(/*cuda=*/true);
  at::Tensor c = a;
  for (int i = 0; i < 4; ++i) c = at::mm(c, b);
  c = at::add(c, a);
  torch::cuda::synchronize();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the GPU idles: the longest gap in the list
  c = at::add(c, a);
  p.stop();
  ASSERT_FALSE(p.largest_gaps().empty());
  EXPECT_GE(p.largest_gaps()[0].us, 15000) << p.table();
  EXPECT_FALSE(p.largest_gaps()[0].before.empty());
  EXPECT_FALSE(p.largest_gaps()[0].after.empty());

  int64_t gemm_count = 0;
  for (const OpRow& r : p.rows()) {
    EXPECT_NE(r.category, "cpu") << r.name;  // GPU rows only
    EXPECT_GT(r.total_us, 0) << r.name;
    if (r.category == "gemm") gemm_count += r.count;
  }
  EXPECT_GE(gemm_count, 4) << p.table();  // cuBLAS may split one mm in more kernels
  EXPECT_GT(p.busy_us(), 0);
  EXPECT_LE(p.busy_us(), p.wall_us() + 1e-6);
  EXPECT_GE(p.idle_us(), -1e-6);
  std::vector<CategoryTotal> cats = p.categories();
  ASSERT_FALSE(cats.empty());
  std::string table = p.table();
  EXPECT_NE(table.find("GPU busy"), std::string::npos) << table;
  EXPECT_NE(table.find("by category"), std::string::npos) << table;
  std::cout << table;
}
