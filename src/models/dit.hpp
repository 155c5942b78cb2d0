// DiT (Peebles & Xie 2023) on plain ATen ops: parameter names, shapes and initialisation of the official
// facebookresearch/DiT state_dict, so weights map 1:1. The model knows nothing of MPI or the optimizer.
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "models/dit_config.hpp"

namespace opendit::models {

class DiT {
 public:
  // Allocates float32 CPU parameters and initialises them like the official code (adaLN-Zero: outputs zeros).
  DiT(const DiTConfig& cfg, uint64_t seed);

  // x [N, C_in, H, W], t [N] (float; fractional allowed), y [N] int64 in [0, num_classes] (num_classes = null).
  // Returns [N, C_out, H, W]: eps, then (learn_sigma) the variance interpolation channels.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& t, const at::Tensor& y) const;

  const DiTConfig& config() const { return cfg_; }

  // Every parameter by its official name, in state_dict order; pos_embed is frozen (requires_grad false).
  const std::vector<std::pair<std::string, at::Tensor*>>& named_parameters() const { return slots_; }
  std::map<std::string, at::Tensor> state_dict() const;

  // Copies a state dict in (any dtype/device; converted to the model's). Every name and shape must match and every
  // value be finite; otherwise one opendit::Error lists the first mismatches and the preset the weights look like.
  // pos_embed may be absent (it is frozen and computed; diffusers files omit it).
  void load_state_dict(const std::map<std::string, at::Tensor>& sd, const std::string& origin);

  void to(const at::TensorOptions& options);  // device and/or dtype of every parameter
  // Training: recompute each block's activations in the backward pass instead of storing them.
  void set_activation_checkpointing(bool on) { checkpoint_blocks_ = on ? -1 : 0; }
  // Recompute only the first `blocks` blocks (-1: all): memory traded for time in steps of one block.
  void set_checkpoint_blocks(int blocks) { checkpoint_blocks_ = blocks; }
  // Which block implementation runs: Auto uses the fused autograd functions of models/dit_ops.hpp where fused
  // kernels exist (CUDA, float32/bfloat16) and plain ATen ops elsewhere; Fused forces the functions (on the CPU they
  // run the ATen definitions: how the tests check their backward), Plain forces plain ATen ops.
  enum class Ops { Auto, Fused, Plain };
  void set_ops(Ops ops) { ops_ = ops; }
  void set_requires_grad(bool on);             // trainable parameters only; pos_embed stays frozen

 private:
  struct Block {
    at::Tensor qkv_w, qkv_b, proj_w, proj_b, fc1_w, fc1_b, fc2_w, fc2_b, ada_w, ada_b;
  };
  at::Tensor block_forward(const Block& b, const at::Tensor& x, const at::Tensor& silu_c) const;
  at::Tensor fused_block_forward(const Block& b, const at::Tensor& x, const at::Tensor& silu_c) const;
  bool use_fused(const at::Tensor& x) const;
  void register_all();
  void init_weights(uint64_t seed);

  DiTConfig cfg_;
  int checkpoint_blocks_ = 0;
  Ops ops_ = Ops::Auto;
  at::Tensor pos_embed_, x_w_, x_b_, t_w0_, t_b0_, t_w2_, t_b2_, y_table_, final_ada_w_, final_ada_b_, final_w_,
      final_b_;
  std::vector<Block> blocks_;
  std::vector<std::pair<std::string, at::Tensor*>> slots_;
};

// Sinusoidal timestep features [N, dim]: [cos(t f_k), sin(t f_k)], f_k = exp(-ln(10000) k / (dim/2)).
at::Tensor timestep_embedding(const at::Tensor& t, int64_t dim);

// The frozen 2D sin-cos position table [1, grid*grid, dim] (float32; computed in float64): first dim/2 channels
// encode the column, the second dim/2 the row; each half is [sin, cos].
at::Tensor pos_embed_2d(int64_t dim, int64_t grid);

// What DiT a state dict holds (depth, width, patch, channels, classes, learn_sigma, input size); heads from the
// matching preset, or 0 when no preset has that width. Used to explain mismatches.
DiTConfig infer_dit_config(const std::map<std::string, at::Tensor>& sd);
std::string closest_preset_text(const std::map<std::string, at::Tensor>& sd);

}  // namespace opendit::models
