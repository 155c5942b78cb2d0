// The flat layout of a model's parameters: one float32 index space, sharded over the ranks of a data-parallel group.
//
// The global flat layout puts the parameters one after another in the given order, each at a multiple of `align`
// elements (the gaps hold zeros): [p0 .. | gap | p1 ...... | gap | p2 ..]  numel() = end of the last parameter.
// It does not depend on the world size. For a world of W ranks the buffer is padded with zeros to
// padded_numel(W), a multiple of W * align, and rank r owns the contiguous shard [r*S, (r+1)*S), S = padded / W.
//
// Checkpoints store the global flat tensor [numel()] (padding dropped) with the entries (name, shape, offset,
// numel): each rank writes its shard's part of [0, numel()) as a 1-D hyperslab, and read_range() fills a shard of
// any world size, alignment or parameter order back from such a file, matching parameters by name.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace opendit {

struct FlatRange {
  int64_t begin = 0, end = 0;  // [begin, end) of the flat index space
  int64_t size() const { return end - begin; }
};

struct FlatEntry {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0, numel = 0;
  bool decay = true;  // AdamW's weight decay applies to it
};

class FlatLayout {
 public:
  struct Spec {
    std::string name;
    std::vector<int64_t> shape;
    bool decay = true;
  };
  explicit FlatLayout(const std::vector<Spec>& specs, int64_t align = 16);

  const std::vector<FlatEntry>& entries() const { return entries_; }
  const FlatEntry& entry(const std::string& name) const;  // throws opendit::Error for an unknown name
  int64_t numel() const { return numel_; }
  int64_t align() const { return align_; }
  int64_t padded_numel(int world) const;
  int64_t shard_numel(int world) const { return padded_numel(world) / world; }
  FlatRange shard(int world, int rank) const;

  // The parts of parameters inside r, in order: entries()[entry], its elements [param, param + count) at flat
  // offset `flat`. Gaps and padding belong to no piece.
  struct Piece {
    size_t entry;
    int64_t flat, param, count;
  };
  std::vector<Piece> pieces(FlatRange r) const;

  // Same names, shapes and offsets: ranges of one are ranges of the other.
  bool same_placement(const FlatLayout& other) const;

 private:
  std::vector<FlatEntry> entries_;
  std::map<std::string, size_t> index_;
  int64_t align_ = 1, numel_ = 0;
};

using NamedTensors = std::map<std::string, at::Tensor>;

// Range r of the flat layout as a float32 tensor [r.size()] on `device`, from full per-parameter tensors
// (zeros in gaps and padding). Every parameter the range touches must be in `params` with its shape.
at::Tensor flatten_range(const FlatLayout& layout, FlatRange r, const NamedTensors& params,
                         at::Device device = at::kCPU);
// The inverse: copies values [r.size()] into the parameters of `params` that r touches.
void unflatten_range(const FlatLayout& layout, FlatRange r, const at::Tensor& values, NamedTensors& params);
// Every parameter as its own tensor (a copy, shaped), from a flat tensor of at least numel() elements.
NamedTensors unflatten(const FlatLayout& layout, const at::Tensor& flat);

// Range r of `layout`, read from a global flat tensor stored in layout `stored` (another alignment or order, any
// world size): read(offset, count) returns stored elements [offset, offset + count) as a 1-D tensor. Parameters
// are matched by name; one missing from `stored`, or stored with another shape, is an opendit::Error. Where the
// placements agree, it is one read.
using RangeReader = std::function<at::Tensor(int64_t offset, int64_t count)>;
at::Tensor read_range(const FlatLayout& layout, FlatRange r, const FlatLayout& stored, const RangeReader& read);

}  // namespace opendit
