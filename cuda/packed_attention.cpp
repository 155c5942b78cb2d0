// cuda/ops.hpp section i on the GPU: cuDNN's fused attention through the frontend graph API. q, k and v are strided
// views into the packed qkv [N, T, 3, H, hd] (no copies); the backward writes dq, dk and dv as strided views into one
// dqkv buffer of the same layout, which is the gradient the qkv linear needs. Graphs are built once per shape, dtype,
// device (and determinism setting) and cached; executing one allocates nothing but a workspace from torch's caching
// allocator and does not synchronise, so it runs inside CUDA graph capture (after an eager call built the graph).
#if defined(OPENDIT_WITH_CUDA)
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cudnn/Handle.h>
#include <c10/cuda/CUDAGuard.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "cuda/launch.hpp"

// The frontend's JSON (de)serialisation is not used; skipping it keeps its nlohmann copy out of this file.
#define CUDNN_FRONTEND_SKIP_JSON_LIB
#include <cudnn_frontend.h>

namespace opendit::kernels::cuda_impl {
namespace {

namespace fe = cudnn_frontend;
using TensorAttr = std::shared_ptr<fe::graph::Tensor_attributes>;

// Tensor ids of the variant packs.
enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV, kScale };

struct Shape {
  int64_t N, T, H, hd;
  explicit Shape(const at::Tensor& qkv) : N(qkv.size(0)), T(qkv.size(1)), H(qkv.size(3)), hd(qkv.size(4)) {}
  // Every tensor is described as logical [B, H, S, D] = [N, H, T, hd] with the strides of its memory layout.
  std::vector<int64_t> dims() const { return {N, H, T, hd}; }
  std::vector<int64_t> packed_strides() const { return {T * 3 * H * hd, hd, 3 * H * hd, 1}; }  // [N, T, 3, H, hd]
  std::vector<int64_t> token_strides() const { return {T * H * hd, hd, H * hd, 1}; }           // [N, T, H, hd]
  std::vector<int64_t> stats_dims() const { return {N, H, T, 1}; }
  std::vector<int64_t> stats_strides() const { return {H * T, T, 1, 1}; }                      // [N, H, T]
  float scale() const { return float(1.0 / std::sqrt(double(hd))); }
};

TensorAttr add_tensor(fe::graph::Graph& g, const char* name, Uid uid, std::vector<int64_t> dims,
                      std::vector<int64_t> strides, fe::DataType_t type) {
  return g.tensor(fe::graph::Tensor_attributes().set_name(name).set_uid(uid).set_dim(std::move(dims))
                      .set_stride(std::move(strides)).set_data_type(type));
}

void set_output(const TensorAttr& t, Uid uid, std::vector<int64_t> dims, std::vector<int64_t> strides,
                fe::DataType_t type) {
  t->set_output(true).set_uid(uid).set_dim(std::move(dims)).set_stride(std::move(strides)).set_data_type(type);
}

std::shared_ptr<fe::graph::Graph> new_graph(fe::DataType_t io) {
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_io_data_type(io).set_intermediate_data_type(fe::DataType_t::FLOAT).set_compute_data_type(
      fe::DataType_t::FLOAT);
  return g;
}

// The attention scale, passed by value at execution (a host float captured into the launch).
TensorAttr scale_tensor(fe::graph::Graph& g) {
  return g.tensor(fe::graph::Tensor_attributes().set_name("attn_scale").set_uid(kScale).set_dim({1, 1, 1, 1})
                      .set_stride({1, 1, 1, 1}).set_is_pass_by_value(true).set_data_type(fe::DataType_t::FLOAT));
}

// Forward: Q, K, V (packed strides) -> O [N, T, H, hd], Stats [N, H, T] float32 (natural-log logsumexp).
std::shared_ptr<fe::graph::Graph> forward_graph(const Shape& s, fe::DataType_t io) {
  auto g = new_graph(io);
  auto q = add_tensor(*g, "Q", kQ, s.dims(), s.packed_strides(), io);
  auto k = add_tensor(*g, "K", kK, s.dims(), s.packed_strides(), io);
  auto v = add_tensor(*g, "V", kV, s.dims(), s.packed_strides(), io);
  auto opts = fe::graph::SDPA_attributes().set_name("packed_sdpa").set_generate_stats(true).set_attn_scale(
      scale_tensor(*g));
  auto [o, stats] = g->sdpa(q, k, v, opts);
  set_output(o, kO, s.dims(), s.token_strides(), io);
  set_output(stats, kStats, s.stats_dims(), s.stats_strides(), fe::DataType_t::FLOAT);
  return g;
}

// Backward: Q, K, V, O, dO, Stats -> dQ, dK, dV with the packed strides (views into one dqkv).
std::shared_ptr<fe::graph::Graph> backward_graph(const Shape& s, fe::DataType_t io, bool deterministic) {
  auto g = new_graph(io);
  auto q = add_tensor(*g, "Q", kQ, s.dims(), s.packed_strides(), io);
  auto k = add_tensor(*g, "K", kK, s.dims(), s.packed_strides(), io);
  auto v = add_tensor(*g, "V", kV, s.dims(), s.packed_strides(), io);
  auto o = add_tensor(*g, "O", kO, s.dims(), s.token_strides(), io);
  auto d_o = add_tensor(*g, "dO", kDO, s.dims(), s.token_strides(), io);
  auto stats = add_tensor(*g, "Stats", kStats, s.stats_dims(), s.stats_strides(), fe::DataType_t::FLOAT);
  auto opts = fe::graph::SDPA_backward_attributes().set_name("packed_sdpa_backward").set_attn_scale(
      scale_tensor(*g)).set_deterministic_algorithm(deterministic);
  auto [dq, dk, dv] = g->sdpa_backward(q, k, v, o, d_o, stats, opts);
  set_output(dq, kDQ, s.dims(), s.packed_strides(), io);
  set_output(dk, kDK, s.dims(), s.packed_strides(), io);
  set_output(dv, kDV, s.dims(), s.packed_strides(), io);
  return g;
}

// A built graph and its workspace size; graph null when cuDNN declined the shape.
struct Plan {
  std::shared_ptr<fe::graph::Graph> graph;
  int64_t workspace = 0;
};

cudnnHandle_t handle_on_current_stream() {
  cudnnHandle_t h = at::native::getCudnnHandle();  // torch's handle for the current device and thread
  const cudnnStatus_t st = cudnnSetStream(h, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(st == CUDNN_STATUS_SUCCESS, "cudnnSetStream failed: ", cudnnGetErrorString(st));
  return h;
}

std::string describe(const at::Tensor& qkv, bool backward) {
  return std::string(backward ? "packed_attention_backward " : "packed_attention ") + c10::str(qkv.sizes()) + " " +
         c10::toString(qkv.scalar_type());
}

Plan build(const at::Tensor& qkv, bool backward, bool deterministic, cudnnHandle_t handle) {
  const Shape s(qkv);
  const fe::DataType_t io = qkv.scalar_type() == at::kBFloat16 ? fe::DataType_t::BFLOAT16 : fe::DataType_t::HALF;
  Plan p;
  std::string why;
  try {
    auto g = backward ? backward_graph(s, io, deterministic) : forward_graph(s, io);
    auto st = g->build(handle, {fe::HeurMode_t::A});
    if (st.is_good()) st = g->get_workspace_size(p.workspace);
    if (st.is_good()) p.graph = std::move(g);
    else why = st.get_message();
  } catch (const std::exception& e) {  // the frontend throws for some backend errors
    why = e.what();
  }
  if (!p.graph)
    std::fprintf(stderr, "opendit: cuDNN declines %s (%s); running the ATen definition for this shape\n",
                 describe(qkv, backward).c_str(), why.c_str());
  return p;
}

// Held while a plan is looked up, built or executed (cuDNN execution plans are not guaranteed thread-safe, and the
// backward runs on autograd's device thread while the next forward may run on the main one).
std::mutex plans_mutex;

// The plan for qkv's shape (built on first use; plans_mutex held by the caller).
const Plan& plan_for(const at::Tensor& qkv, bool backward, cudnnHandle_t handle) {
  using Key = std::array<int64_t, 8>;
  static auto& plans = *new std::map<Key, Plan>;  // never freed: cuDNN objects must not outlive the CUDA context
  const bool deterministic = backward && at::globalContext().deterministicAlgorithms();
  const Key key = {qkv.size(0), qkv.size(1), qkv.size(3), qkv.size(4), int64_t(qkv.scalar_type()),
                   int64_t(qkv.device().index()), int64_t(backward), int64_t(deterministic)};
  auto it = plans.find(key);
  if (it == plans.end()) it = plans.emplace(key, build(qkv, backward, deterministic, handle)).first;
  return it->second;
}

void execute(const Plan& p, cudnnHandle_t handle, std::unordered_map<int64_t, void*>& pack, const at::Tensor& like) {
  const at::Tensor workspace = at::empty({p.workspace}, like.options().dtype(at::kByte));
  auto st = p.graph->execute(handle, pack, p.workspace > 0 ? workspace.data_ptr() : nullptr);
  TORCH_CHECK(st.is_good(), "cuDNN attention failed: ", st.get_message());
}

// q, k, v: views of the packed buffer [N, T, 3, H, hd] at offsets 0, H hd and 2 H hd.
void* slice_ptr(const at::Tensor& packed, int64_t i) { return packed.select(2, i).data_ptr(); }

}  // namespace

PackedAttention packed_attention(const at::Tensor& qkv) {
  const c10::cuda::CUDAGuard guard(qkv.device());
  std::unique_lock<std::mutex> lock(plans_mutex);
  cudnnHandle_t handle = handle_on_current_stream();
  const Plan& p = plan_for(qkv, false, handle);
  if (!p.graph) {
    lock.unlock();
    return reference::packed_attention(qkv);
  }
  const int64_t N = qkv.size(0), T = qkv.size(1), H = qkv.size(3), hd = qkv.size(4);
  at::Tensor out = at::empty({N, T, H, hd}, qkv.options());
  at::Tensor stats = at::empty({N, H, T}, qkv.options().dtype(at::kFloat));
  float scale = Shape(qkv).scale();
  std::unordered_map<int64_t, void*> pack = {{kQ, slice_ptr(qkv, 0)},    {kK, slice_ptr(qkv, 1)},
                                             {kV, slice_ptr(qkv, 2)},    {kO, out.data_ptr()},
                                             {kStats, stats.data_ptr()}, {kScale, &scale}};
  execute(p, handle, pack, qkv);
  return {out, stats};
}

at::Tensor packed_attention_backward(const at::Tensor& dout, const at::Tensor& qkv, const at::Tensor& out,
                                     const at::Tensor& stats) {
  const c10::cuda::CUDAGuard guard(qkv.device());
  std::unique_lock<std::mutex> lock(plans_mutex);
  cudnnHandle_t handle = handle_on_current_stream();
  const Plan& p = plan_for(qkv, true, handle);
  if (!p.graph) {
    lock.unlock();
    return reference::packed_attention_backward(dout, qkv, out, stats);
  }
  at::Tensor dqkv = at::empty_like(qkv, at::MemoryFormat::Contiguous);  // [N, T, 3, H, hd]
  float scale = Shape(qkv).scale();
  std::unordered_map<int64_t, void*> pack = {
      {kQ, slice_ptr(qkv, 0)},   {kK, slice_ptr(qkv, 1)},   {kV, slice_ptr(qkv, 2)},    {kO, out.data_ptr()},
      {kDO, dout.data_ptr()},    {kStats, stats.data_ptr()}, {kDQ, slice_ptr(dqkv, 0)}, {kDK, slice_ptr(dqkv, 1)},
      {kDV, slice_ptr(dqkv, 2)}, {kScale, &scale}};
  execute(p, handle, pack, qkv);
  return dqkv;
}

bool packed_attention_builds(const at::Tensor& qkv) {
  const c10::cuda::CUDAGuard guard(qkv.device());
  std::lock_guard<std::mutex> lock(plans_mutex);
  cudnnHandle_t handle = handle_on_current_stream();
  return plan_for(qkv, false, handle).graph && plan_for(qkv, true, handle).graph;
}

}  // namespace opendit::kernels::cuda_impl
#endif  // OPENDIT_WITH_CUDA
