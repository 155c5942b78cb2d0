// Activation recompute (often called "activation checkpointing"; not a training checkpoint): run `fn` without
// keeping its intermediate activations and recompute them during the backward pass. Trades one extra forward of
// `fn` for its activation memory (per DiT block: ~2/3 of the memory of a training step at DiT-XL/2 scale).
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <vector>

namespace opendit::models::layers {

using RecomputeFn = std::function<at::Tensor(const std::vector<at::Tensor>& inputs)>;

// Returns fn(inputs); gradients reach every input that requires grad (activations and parameters alike).
// fn must be deterministic (no dropout), since it runs twice.
at::Tensor recomputed(RecomputeFn fn, const std::vector<at::Tensor>& inputs);

}  // namespace opendit::models::layers
