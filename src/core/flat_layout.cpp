#include "core/flat_layout.hpp"

#include <algorithm>
#include <stdexcept>

#include "core/error.hpp"
#include "core/strings.hpp"

namespace opendit {
namespace {

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

void check_range(const FlatRange& r, const char* what) {
  if (r.begin < 0 || r.end < r.begin) throw std::invalid_argument(cat(what, ": bad range [", r.begin, ", ", r.end, ")"));
}

// The tensor of `params` for e, checked against the layout.
const at::Tensor& find_param(const NamedTensors& params, const FlatEntry& e) {
  auto it = params.find(e.name);
  if (it == params.end()) throw Error(cat("parameter ", e.name, " is missing"));
  if (it->second.sizes().vec() != e.shape)
    throw Error(cat("parameter ", e.name, " has shape ", shape_str(it->second.sizes().vec()), ", expected ",
                    shape_str(e.shape)));
  return it->second;
}

}  // namespace

// ---- FlatLayout -------------------------------------------------------------------------------------------------
FlatLayout::FlatLayout(const std::vector<Spec>& specs, int64_t align) : align_(align) {
  if (align < 1) throw std::invalid_argument(cat("FlatLayout: align ", align, " < 1"));
  int64_t offset = 0;
  for (const Spec& s : specs) {
    if (index_.count(s.name)) throw Error(cat("parameter ", s.name, " appears twice"));
    int64_t n = 1;
    for (int64_t d : s.shape) n *= d;
    offset = round_up(offset, align_);
    index_[s.name] = entries_.size();
    entries_.push_back({s.name, s.shape, offset, n, s.decay});
    offset += n;
  }
  numel_ = offset;
}

const FlatEntry& FlatLayout::entry(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw Error(cat("no parameter ", name, " in the flat layout"));
  return entries_[it->second];
}

int64_t FlatLayout::padded_numel(int world) const {
  if (world < 1) throw std::invalid_argument(cat("FlatLayout: world size ", world));
  return std::max<int64_t>(round_up(numel_, int64_t(world) * align_), int64_t(world) * align_);
}

FlatRange FlatLayout::shard(int world, int rank) const {
  if (rank < 0 || rank >= world) throw std::invalid_argument(cat("FlatLayout: rank ", rank, " of ", world));
  const int64_t s = shard_numel(world);
  return {rank * s, (rank + 1) * s};
}

std::vector<FlatLayout::Piece> FlatLayout::pieces(FlatRange r) const {
  check_range(r, "FlatLayout::pieces");
  // The first entry that ends after r.begin; entries are sorted by offset.
  auto it = std::upper_bound(entries_.begin(), entries_.end(), r.begin,
                             [](int64_t x, const FlatEntry& e) { return x < e.offset + e.numel; });
  std::vector<Piece> out;
  for (; it != entries_.end() && it->offset < r.end; ++it) {
    const int64_t b = std::max(r.begin, it->offset), e = std::min(r.end, it->offset + it->numel);
    if (b < e) out.push_back({size_t(it - entries_.begin()), b, b - it->offset, e - b});
  }
  return out;
}

bool FlatLayout::same_placement(const FlatLayout& other) const {
  if (entries_.size() != other.entries_.size()) return false;
  for (size_t i = 0; i < entries_.size(); ++i) {
    const FlatEntry &a = entries_[i], &b = other.entries_[i];
    if (a.name != b.name || a.shape != b.shape || a.offset != b.offset) return false;
  }
  return true;
}

// ---- ranges -----------------------------------------------------------------------------------------------------
at::Tensor flatten_range(const FlatLayout& layout, FlatRange r, const NamedTensors& params, at::Device device) {
  at::Tensor out = at::zeros({r.size()}, at::TensorOptions(at::kFloat).device(device));
  for (const auto& p : layout.pieces(r)) {
    const at::Tensor& t = find_param(params, layout.entries()[p.entry]);
    out.narrow(0, p.flat - r.begin, p.count).copy_(t.reshape({-1}).narrow(0, p.param, p.count));
  }
  return out;
}

void unflatten_range(const FlatLayout& layout, FlatRange r, const at::Tensor& values, NamedTensors& params) {
  if (values.numel() != r.size())
    throw std::invalid_argument(cat("unflatten_range: ", values.numel(), " values for a range of ", r.size()));
  at::Tensor v = values.reshape({-1});
  for (const auto& p : layout.pieces(r)) {
    at::Tensor t = find_param(params, layout.entries()[p.entry]);
    if (!t.is_contiguous()) throw std::invalid_argument(cat("unflatten_range: ", t.sizes(), " is not contiguous"));
    t.view({-1}).narrow(0, p.param, p.count).copy_(v.narrow(0, p.flat - r.begin, p.count));
  }
}

NamedTensors unflatten(const FlatLayout& layout, const at::Tensor& flat) {
  if (flat.numel() < layout.numel())
    throw std::invalid_argument(cat("unflatten: ", flat.numel(), " values for a layout of ", layout.numel()));
  NamedTensors out;
  for (const FlatEntry& e : layout.entries()) out[e.name] = flat.narrow(0, e.offset, e.numel).view(e.shape).clone();
  return out;
}

at::Tensor read_range(const FlatLayout& layout, FlatRange r, const FlatLayout& stored, const RangeReader& read) {
  check_range(r, "read_range");
  at::Tensor out = at::zeros({r.size()}, at::kFloat);
  auto fill = [&](int64_t out_at, int64_t stored_at, int64_t count) {
    at::Tensor got = read(stored_at, count);
    if (got.numel() != count) throw std::runtime_error(cat("read_range: asked for ", count, ", read ", got.numel()));
    out.narrow(0, out_at, count).copy_(got.reshape({-1}));
  };
  if (layout.same_placement(stored)) {  // one contiguous read; gaps are zeros in the file as in memory
    const int64_t end = std::min(r.end, layout.numel());
    if (r.begin < end) fill(0, r.begin, end - r.begin);
    return out;
  }
  for (const auto& p : layout.pieces(r)) {
    const FlatEntry& e = layout.entries()[p.entry];
    const FlatEntry& s = stored.entry(e.name);
    if (s.shape != e.shape)
      throw Error(cat("parameter ", e.name, " is stored with shape ", shape_str(s.shape), ", the model has ",
                      shape_str(e.shape)));
    fill(p.flat - r.begin, s.offset + p.param, p.count);
  }
  return out;
}

}  // namespace opendit
