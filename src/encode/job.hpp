// `opendit encode` as a library call: inputs (a manifest or an ImageNet-style folder) -> VAE posteriors and T5
// caption embeddings -> one opendit.latents v2 file, on every rank of `world` (one GPU each, or the CPU).
//
// The input list is cut into blocks of `block` inputs (independent of the world size); the ranks take the blocks not
// yet done in turn, decode files on CPU threads ahead of the encoder, and write each finished block to its own file
// in OUTPUT.parts/ (encode/block_file.hpp). After every round of blocks the ranks add up what they did: rank 0's
// progress bar, the failure limit and a stop signal act on all ranks at once. When every block exists, they are
// assembled into OUTPUT (encode/assemble.hpp) and the folder is removed. Killed at any point, the job continues with
// `resume`: done blocks are kept, nothing is encoded twice. Batches are made within a block, so each file's result
// is the same on any number of ranks.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <string>

#include "encode/assemble.hpp"
#include "encode/prepare.hpp"
#include "parallel/process_group.hpp"

namespace opendit::encode {

// --vae pixel: no VAE; the preprocessed pixels are stored as the samples (space = "pixel", no posterior).
inline constexpr const char* kPixelSpace = "pixel";

struct EncodeSettings {
  std::string input, output, vae, text_encoder;  // text_encoder: needed exactly when the manifest has captions
  PrepareSettings prepare;
  int64_t batch = 32;   // inputs per encoder call (per rank)
  int64_t block = 256;  // inputs per block file: the unit of resume and of work sharing
  bool mean_only = false;
  at::ScalarType dtype = at::kHalf;  // stored latents and tokens
  at::ScalarType vae_dtype = at::kFloat, t5_dtype = at::kBFloat16;
  int64_t vae_micro_batch = 32;  // images (frames) per VAE pass
  int64_t text_length = 120;     // T5 tokens kept per caption (Open-Sora v1.0: 120)
  bool clean_captions = true;    // Open-Sora's caption cleaning before tokenizing
  int64_t max_failures = 100;    // more failed inputs stop the job; < 0: no limit
  int threads = 0;               // decoding threads per rank; 0: the node's cores shared by its ranks
  bool resume = false, overwrite = false;
  bool force_serial = false;  // rank-by-rank HDF5 writes even with parallel HDF5 (tests)
  bool progress = true;
};

struct EncodeReport {
  bool nothing_to_do = false;  // --resume of a finished job
  AssembleResult result;
  int64_t inputs = 0, encoded_now = 0, blocks = 0, blocks_resumed = 0;
  double seconds = 0, loop_seconds = 0;  // the whole job; the encoding rounds (no loading, no assembly)
  // Shares of rank 0's encoding time: the host's in the encoders (launching them, waiting for their results), and
  // waiting for decoded inputs.
  double encoder_share = 0, input_wait_share = 0;
  double gpu_busy_share = -1;  // on a GPU: the share of rank 0's encoding time its GPU worked (CUDA events); else -1
  int stopped_by = 0;  // a signal stopped it after a round (the blocks done are kept)
};

// Collective over `world`. Errors every rank reaches are opendit::CollectiveError.
EncodeReport run_encode(const EncodeSettings& s, const parallel::ProcessGroup& world, at::Device device);

// The summary printed at the end (rank 0).
std::string format_report(const EncodeSettings& s, const EncodeReport& r);

}  // namespace opendit::encode
