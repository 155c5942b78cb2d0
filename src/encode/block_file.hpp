// A block of `opendit encode`'s work: the inputs [first, first + count) of the input list, encoded, in a file of
// its own (OUTPUT.parts/block-NNNNNN.h5, written under a temporary name and renamed when whole). Blocks are the unit
// of resume: a block file that exists is done, and a killed job loses at most the blocks it was writing. When every
// block is there, src/encode/assemble.cpp copies them into the one output file and removes the folder.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace opendit::encode {

// The successes of one latent shape, in input order.
struct EncodedGroup {
  std::vector<int64_t> shape;   // [C, h, w] or [C, T, h, w]
  std::vector<int64_t> inputs;  // input-list indices, ascending
  at::Tensor mean, logvar;      // [n, shape...] in the stored dtype (logvar undefined: the mean only)
};

struct EncodedBlock {
  int64_t index = 0, first = 0, count = 0;  // block index; its inputs [first, first + count)
  std::vector<EncodedGroup> groups;
  // Captions (when the job has a text encoder): the valid tokens of every success, in input order.
  std::vector<int64_t> text_inputs;  // ascending: every success of the block
  std::vector<int64_t> text_lengths;
  at::Tensor text_tokens;  // [sum of lengths, D] stored dtype
  int64_t truncated = 0;   // captions cut to the maximum length
  std::vector<int64_t> failed;        // input-list indices, ascending
  std::vector<std::string> reasons;   // why each failed
  int64_t successes() const;
};

std::string block_path(const std::string& parts_dir, int64_t index);  // parts_dir/block-000012.h5
// Writes atomically (a temporary file, then a rename).
void write_block(const std::string& path, const EncodedBlock& block);
// with_data = false reads only what assembly plans with: the inputs, shapes, text lengths and failures.
EncodedBlock read_block(const std::string& path, bool with_data);

// Fault injection for the resume tests (tests/cli/test_encode.sh): with OPENDIT_TEST_KILL_AT=WHERE:N in the
// environment, rank 0 kills itself with SIGKILL at the N-th call with WHERE ("block": after writing a block file,
// "assemble": after a round of assembly writes), leaving the files a crash there would leave; WHERE:N:USR1 sends it
// SIGUSR1 instead (Slurm's stop before the time limit).
void kill_point_test_hook(const char* where, int64_t n);

}  // namespace opendit::encode
