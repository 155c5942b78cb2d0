// Which kernel at::scaled_dot_product_attention runs on the GPU (a process-wide torch setting).
#pragma once
#include <string>

namespace opendit::models {

// "auto": cuDNN, then flash, memory-efficient, math (on the H100 at head dim 72 and 256 tokens cuDNN's forward is
// the fastest); "cudnn" | "flash" | "efficient" | "math": that one first, the rest in the auto order after it.
// torch takes the first backend in the order that supports the inputs (dtype, head dim, ...), so every choice
// still runs everywhere. Throws opendit::Error for an unknown name.
void set_attention_backend(const std::string& name);

}  // namespace opendit::models
