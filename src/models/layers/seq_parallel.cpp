#include "models/layers/seq_parallel.hpp"

#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <vector>

#include "core/error.hpp"
#include "models/layers/attention.hpp"
#include "models/layers/modulated.hpp"

namespace opendit::models::layers {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

SpMode parse_sp_mode(const std::string& name) {
  if (name == "ulysses") return SpMode::Ulysses;
  if (name == "fastseq") return SpMode::FastSeq;
  if (name == "dsp") return SpMode::Dsp;
  throw Error(cat("parallel.sp_mode = \"", name, "\": expected ulysses, fastseq or dsp"));
}

const char* sp_mode_name(SpMode mode) {
  switch (mode) {
    case SpMode::Ulysses: return "ulysses";
    case SpMode::FastSeq: return "fastseq";
    default: return "dsp";
  }
}

namespace {

parallel::Communicator& comm_of(AutogradContext* ctx) {
  return *reinterpret_cast<parallel::Communicator*>(ctx->saved_data["comm"].toInt());
}
void keep_comm(AutogradContext* ctx, parallel::Communicator* c) {
  ctx->saved_data["comm"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(c));
}

// dim padded with zeros to `to` entries.
at::Tensor pad_to(const at::Tensor& x, int64_t dim, int64_t to) {
  if (x.size(dim) == to) return x;
  std::vector<int64_t> shape = x.sizes().vec();
  shape[size_t(dim)] = to - x.size(dim);
  return at::cat({x, at::zeros(shape, x.options())}, dim);
}

// The all-to-all moving the shard from dim s to dim g (x.size(s) divisible by P).
at::Tensor all_to_all(const at::Tensor& x, int64_t s, int64_t g, parallel::Communicator& c) {
  const int P = c.size();
  at::Tensor in = x.unflatten(s, {P, x.size(s) / P}).movedim(s, 0).contiguous();  // [P (to), ...]
  at::Tensor out = at::empty_like(in);                                            // [P (from), ...]
  c.all_to_all(out.view(-1), in.view(-1));
  return out.movedim(0, g).flatten(g, g + 1);
}

// Shards along dim -> the whole along dim (P x the shard's size).
at::Tensor all_gather(const at::Tensor& x, int64_t dim, parallel::Communicator& c) {
  at::Tensor in = x.contiguous();
  std::vector<int64_t> shape = in.sizes().vec();
  shape.insert(shape.begin(), c.size());
  at::Tensor out = at::empty(shape, in.options());  // [P, x...]
  c.all_gather(out.view(-1), in.view(-1));
  return out.movedim(0, dim).flatten(dim, dim + 1);
}

struct Split : torch::autograd::Function<Split> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t dim, parallel::Communicator* c) {
    const int P = c->size(), r = c->rank();
    const int64_t n = x.size(dim), local = (n + P - 1) / P;
    keep_comm(ctx, c);
    ctx->saved_data["dim"] = dim, ctx->saved_data["n"] = n;
    return pad_to(x, dim, local * P).narrow(dim, r * local, local).contiguous();
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    parallel::Communicator& c = comm_of(ctx);
    const int64_t dim = ctx->saved_data["dim"].toInt(), n = ctx->saved_data["n"].toInt();
    const int64_t local = g[0].size(dim);
    std::vector<int64_t> shape = g[0].sizes().vec();
    shape[size_t(dim)] = local * c.size();
    at::Tensor full = at::zeros(shape, g[0].options());
    full.narrow(dim, c.rank() * local, local).copy_(g[0]);
    return {full.narrow(dim, 0, n), at::Tensor(), at::Tensor()};
  }
};

struct Gather : torch::autograd::Function<Gather> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t dim, int64_t length,
                            parallel::Communicator* c) {
    keep_comm(ctx, c);
    ctx->saved_data["dim"] = dim, ctx->saved_data["local"] = x.size(dim);
    return all_gather(x, dim, *c).narrow(dim, 0, length).contiguous();
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    parallel::Communicator& c = comm_of(ctx);
    const int64_t dim = ctx->saved_data["dim"].toInt(), local = ctx->saved_data["local"].toInt();
    at::Tensor own = pad_to(g[0], dim, local * c.size()).narrow(dim, c.rank() * local, local) * double(c.size());
    return {own, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

struct AllToAll : torch::autograd::Function<AllToAll> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t s, int64_t g,
                            parallel::Communicator* c) {
    keep_comm(ctx, c);
    ctx->saved_data["s"] = s, ctx->saved_data["g"] = g;
    return all_to_all(x, s, g, *c);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const int64_t s = ctx->saved_data["s"].toInt(), g = ctx->saved_data["g"].toInt();
    return {all_to_all(grad[0], g, s, comm_of(ctx)), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// fastseq's projection: x [N, Tl, D] of every rank gathered in `chunks` pieces along Tl, each piece's all-gather in
// flight while the previous piece is multiplied by w [O, D] -> [N, P Tl, O] (token order: rank, then local).
// Backward: dx summed over the group (each rank's heads saw every token) by a reduce-scatter, overlapped with dw.
struct GatherLinear : torch::autograd::Function<GatherLinear> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                            parallel::Communicator* c, int64_t chunks) {
    const int P = c->size();
    const int64_t N = x.size(0), Tl = x.size(1), D = x.size(2), O = w.size(0);
    const int64_t K = std::max<int64_t>(1, std::min<int64_t>(chunks, Tl));
    at::Tensor gathered = at::empty({P, N, Tl, D}, x.options());  // every rank's x, for the backward
    at::Tensor y = at::empty({N, P, Tl, O}, x.options());
    std::vector<int64_t> start(size_t(K) + 1);
    for (int64_t k = 0; k <= K; ++k) start[size_t(k)] = Tl * k / K;
    std::vector<at::Tensor> ins(static_cast<size_t>(K)), outs(static_cast<size_t>(K));
    auto launch = [&](int64_t k) {
      const int64_t a = start[size_t(k)], n = start[size_t(k) + 1] - a;
      ins[size_t(k)] = x.narrow(1, a, n).contiguous();
      outs[size_t(k)] = at::empty({P, N, n, D}, x.options());
      return c->all_gather_async(outs[size_t(k)].view(-1), ins[size_t(k)].view(-1));
    };
    parallel::WorkPtr next = launch(0);
    for (int64_t k = 0; k < K; ++k) {
      parallel::WorkPtr now = std::move(next);
      now->wait();
      if (k + 1 < K) next = launch(k + 1);
      const int64_t a = start[size_t(k)], n = start[size_t(k) + 1] - a;
      gathered.narrow(2, a, n).copy_(outs[size_t(k)]);
      y.permute({1, 0, 2, 3}).narrow(2, a, n).copy_(at::linear(outs[size_t(k)], w, b));
    }
    keep_comm(ctx, c);
    ctx->save_for_backward({gathered, w});
    ctx->saved_data["has_bias"] = b.defined();
    return y.view({N, P * Tl, O});
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    parallel::Communicator& c = comm_of(ctx);
    auto saved = ctx->get_saved_variables();
    const at::Tensor& gathered = saved[0];  // [P, N, Tl, D]
    const at::Tensor& w = saved[1];
    const int P = c.size();
    const int64_t N = gathered.size(1), Tl = gathered.size(2), D = gathered.size(3), O = w.size(0);
    at::Tensor gy = grad[0].reshape({N, P, Tl, O}).permute({1, 0, 2, 3}).contiguous();  // [P, N, Tl, O]
    at::Tensor dx_all = at::matmul(gy, w);                                             // [P, N, Tl, D]
    at::Tensor dx = at::empty({N, Tl, D}, dx_all.options());
    parallel::WorkPtr work = c.reduce_scatter_async(dx.view(-1), dx_all.view(-1), parallel::ReduceOp::Sum);
    at::Tensor dw = at::matmul(gy.view({-1, O}).t(), gathered.view({-1, D}));            // [O, D]
    at::Tensor db = ctx->saved_data["has_bias"].toBool() ? gy.view({-1, O}).sum(0) : at::Tensor();
    work->wait();
    return {dx, dw, db, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor sp_split(const at::Tensor& x, int64_t dim, const SeqParallel& sp) {
  if (!sp.on()) return x;
  return Split::apply(x, dim, sp.comm);
}

at::Tensor sp_gather(const at::Tensor& x, int64_t dim, int64_t length, const SeqParallel& sp) {
  if (!sp.on()) return x.narrow(dim, 0, length);
  return Gather::apply(x, dim, length, sp.comm);
}

at::Tensor sp_all_to_all(const at::Tensor& x, int64_t scatter_dim, int64_t gather_dim, const SeqParallel& sp) {
  if (!sp.on()) return x;
  TORCH_CHECK(x.size(scatter_dim) % sp.size() == 0, "sp_all_to_all: dim ", scatter_dim, " of ", x.sizes(),
              " does not divide by ", sp.size());
  return AllToAll::apply(x, scatter_dim, gather_dim, sp.comm);
}

at::Tensor ulysses_attention(const at::Tensor& qkv, int64_t heads, int64_t valid, const SeqParallel& sp) {
  const int64_t N = qkv.size(0), Tl = qkv.size(1), D = qkv.size(2) / 3, hd = D / heads;
  const int64_t Hp = sp.padded(heads), Hl = Hp / sp.size(), T = Tl * sp.size();
  at::Tensor q = qkv.view({N, Tl, 3, heads, hd});
  if (Hp != heads) q = at::constant_pad_nd(q, {0, 0, 0, Hp - heads});               // zero heads
  at::Tensor full = sp_all_to_all(q, /*scatter=*/3, /*gather=*/1, sp);              // [N, T, 3, Hl, hd]
  at::Tensor a = self_attention(full.reshape({N, T, 3 * Hl * hd}), Hl, valid);       // [N, T, Hl hd]
  at::Tensor back = sp_all_to_all(a.view({N, T, Hl, hd}), 1, 2, sp);                // [N, Tl, Hp, hd]
  if (Hp != heads) back = back.narrow(2, 0, heads);
  return back.reshape({N, Tl, D});
}

at::Tensor fastseq_attention(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t heads,
                             int64_t valid, const SeqParallel& sp) {
  const int64_t N = x.size(0), Tl = x.size(1), D = w.size(1), hd = D / heads;
  const int64_t Hp = sp.padded(heads), Hl = Hp / sp.size(), T = Tl * sp.size();
  // The q, k, v rows of this rank's heads (zero rows for padding heads): [3 Hl hd, D], [3 Hl hd].
  at::Tensor w4 = w.view({3, heads, hd, D}), b3 = b.view({3, heads, hd});
  if (Hp != heads) {
    w4 = at::constant_pad_nd(w4, {0, 0, 0, 0, 0, Hp - heads});
    b3 = at::constant_pad_nd(b3, {0, 0, 0, Hp - heads});
  }
  const at::Tensor wl = w4.narrow(1, sp.rank() * Hl, Hl).reshape({3 * Hl * hd, D});
  const at::Tensor bl = b3.narrow(1, sp.rank() * Hl, Hl).reshape({3 * Hl * hd});
  at::Tensor qkv = sp.on() ? GatherLinear::apply(x, wl, bl, sp.comm, int64_t(sp.chunks)) : linear(x, wl, bl);
  at::Tensor a = self_attention(qkv, Hl, valid);                                     // [N, T, Hl hd]
  at::Tensor back = sp_all_to_all(a.view({N, T, Hl, hd}), 1, 2, sp);                 // [N, Tl, Hp, hd]
  if (Hp != heads) back = back.narrow(2, 0, heads);
  return back.reshape({N, Tl, D});
}

at::Tensor projected_self_attention(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale,
                                    const at::Tensor& w, const at::Tensor& b, int64_t heads, int64_t valid,
                                    const SeqParallel& sp, at::Tensor* residual) {
  const bool norm = shift.defined();
  if (residual) *residual = x;  // fastseq, or no norm: the residual reads x itself
  auto project = [&] {
    if (!norm) return linear(x, w, b);
    if (!residual) return norm_modulate_linear(x, shift, scale, w, b, 1e-6);
    Branch br = norm_modulate_linear_res(x, shift, scale, w, b, 1e-6);
    *residual = br.res;
    return br.out;
  };
  if (!sp.on()) return self_attention(project(), heads, valid);
  TORCH_CHECK(sp.mode != SpMode::Dsp, "projected_self_attention: dsp attention is local (pass sp off)");
  if (sp.mode == SpMode::Ulysses) return ulysses_attention(project(), heads, valid, sp);
  const at::Tensor in = norm ? norm_modulate(x, shift, scale, 1e-6) : x;
  return fastseq_attention(in, w, b, heads, valid, sp);
}

}  // namespace opendit::models::layers
