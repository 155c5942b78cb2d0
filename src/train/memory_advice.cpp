#include "train/memory_advice.hpp"

#include "core/error.hpp"

namespace opendit::train {

std::string out_of_memory_advice(bool in_step, int64_t step, const std::string& failure, const RunMemory& m) {
  const int64_t local = m.global_batch / m.dp_size, micro = local / m.accumulation;  // samples a rank, a pass
  std::string s = in_step ? cat("out of memory in training step ", step, ": ", failure)
                          : cat("out of memory while the model, its optimizer state and EMA were set up: ", failure);
  auto fix = [&](const std::string& line) { s += "\n  - " + line; };
  if (in_step) {
    const std::string recomputed = m.recompute < 0   ? cat("all ", m.depth, " blocks")
                                   : m.recompute == 0 ? cat("none of the ", m.depth, " blocks")
                                                      : cat(m.recompute, " of the ", m.depth, " blocks");
    s += cat("\n  a pass of the step holds the activations of ", micro, micro == 1 ? " sample" : " samples",
             " on this rank (data.global_batch ", m.global_batch, " over ", m.dp_size,
             m.dp_size == 1 ? " data-parallel rank" : " data-parallel ranks", ", train.accumulation ", m.accumulation,
             "), with ", recomputed, " recomputed in backward. To fit:");
    if (m.recompute == 0)
      fix(cat("recompute activations in backward: train.activation_checkpointing = true (every block, about one more "
              "forward a step), or train.checkpoint_blocks = K (the first K of ", m.depth, ")"));
    else if (m.recompute > 0 && m.recompute < m.depth)
      fix(cat("recompute more blocks: train.checkpoint_blocks = ", m.recompute + 1, " to ", m.depth,
              " (each one costs about a block's forward a step), or train.activation_checkpointing = true"));
    for (int64_t a = m.accumulation + 1; a <= local; ++a)
      if (local % a == 0) {
        fix(cat("split each step into smaller passes: train.accumulation = ", a, " (", local / a,
                local / a == 1 ? " sample" : " samples", " a pass instead of ", micro, "; the same global batch)"));
        break;
      }
    fix(cat("run on more ranks: more data-parallel ranks share the global batch, and parallel.sp_size (now ",
            m.sp_size, ") splits each sample's tokens"));
  } else {
    s += "\n  the weights, their gradients, the AdamW moments and the EMA come before any activation. To fit:";
    fix(m.sharded ? "run on more ranks: zero1/zero2 split the optimizer state and the EMA over the data-parallel ranks"
                  : "parallel.strategy = zero2 on more ranks: it splits the optimizer state and the EMA over the "
                    "data-parallel ranks (ddp keeps all of it on every rank)");
  }
  return s;
}

}  // namespace opendit::train
