// Parameters laid out as one flat float32 buffer (core/flat_layout.hpp), sharded over the dp group: the model's
// tensors become views of the buffer, and gradients are streamed into a second one during backward.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/flat_layout.hpp"
#include "models/model.hpp"

namespace opendit::train {

// The model's parameters moved into one flat buffer. On construction the values are copied into `data()`
// (float32, on the parameters' device, [padded_numel(world)]) and every slot is pointed at its view of it, keeping
// its requires_grad: the model then computes with the flat buffer and sees every update made to it.
// Bind after loading weights: anything that replaces a slot's tensor (load_state_dict, to()) unbinds it.
class FlatParams {
 public:
  using Slots = std::vector<std::pair<std::string, at::Tensor*>>;
  // A model's trainable tensors (in its order), the rest by name in *frozen: kept beside the flat buffer, in
  // checkpoints and exported weights.
  static Slots trainable(const models::Model& model, std::map<std::string, at::Tensor*>* frozen);
  using DecayRule = std::function<bool(const std::string& name, const at::Tensor& param)>;
  FlatParams(const Slots& params, int world, int rank, int64_t align = 16, const DecayRule& decays = nullptr);
  ~FlatParams();  // removes the hooks and gradient sinks stream_grads() set (the model must still exist)
  FlatParams(const FlatParams&) = delete;
  FlatParams& operator=(const FlatParams&) = delete;

  const FlatLayout& layout() const { return layout_; }
  int world() const { return world_; }
  int rank() const { return rank_; }
  FlatRange own() const { return layout_.shard(world_, rank_); }  // this rank's shard

  at::Tensor& data() { return data_; }  // float32 [padded]
  at::Tensor& grad() { return grad_; }  // float32 [padded]
  // The model's views of a buffer [padded] (data(), or working() once there is one).
  at::Tensor view(const at::Tensor& flat, size_t entry) const;

  // Optional lower-precision copy [padded] (e.g. bfloat16) that the model computes with instead of data(); the
  // slots are re-pointed at it (and, after stream_grads(), their hooks and sinks with them). The optimizer keeps it
  // equal to data() rounded.
  void use_working_copy(at::ScalarType dtype);
  const at::Tensor& working() const { return working_; }  // undefined without a working copy

  // Streams gradients into grad() during backward: a post-accumulate hook per parameter copies (first micro-batch
  // of a step) or adds (later ones) its .grad() into its float32 view and frees it at once, so no full set of
  // per-parameter gradients ever exists; and each parameter's view is its gradient sink
  // (models/layers/grad_sink.hpp), so that linear layers write their weight and bias gradients there directly.
  // Without it, gather_grads() copies them after backward.
  void stream_grads();
  void gather_grads();  // completes grad() for the step: slots' .grad() copied, zeros where none arrived
  void clear_grads();   // drops every slot's .grad()
  void restart_step();  // a step abandoned half-way (a failed CUDA graph capture): the next starts afresh
  void absorb_grad(size_t entry, const at::Tensor& param);  // the hook's work (public for the hook object)

 private:
  void bind(const at::Tensor& flat);
  void unstream();  // the slots' hooks and sinks removed

  Slots slots_;
  FlatLayout layout_;
  int world_ = 1, rank_ = 0;
  at::Tensor data_, grad_, working_;
  std::vector<char> fresh_;  // per slot: no gradient absorbed yet in this step (the sinks point at these)
  bool streaming_ = false;   // stream_grads() set hooks and sinks on the slots
};

}  // namespace opendit::train
