// Captions -> T5 embeddings of their valid tokens, as `opendit encode` stores them (not max_length x d_model of
// padding per caption). The batch is cut to its longest caption before the encoder runs: padding keys are masked and
// the position bias depends only on distances, so every valid token's embedding is what the full-length run gives.
#pragma once
#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "models/t5/encoder.hpp"
#include "models/t5/tokenizer.hpp"

namespace opendit::encode {

struct CaptionEmbeddings {
  at::Tensor tokens;            // [sum of lengths, d_model] float32 (CPU): each caption's valid tokens, in order
  at::Tensor lengths;           // [N] int64: valid tokens per caption (EOS included)
  std::vector<bool> truncated;  // the caption was cut to max_length
};

// clean: Open-Sora's caption cleaning first. The encoder runs on its own device and dtype.
CaptionEmbeddings embed_captions(const models::t5::T5Encoder& t5, const models::t5::Tokenizer& tokenizer,
                                 const std::vector<std::string>& captions, int64_t max_length, bool clean);

// The padded form the models take: [N, max_length, d_model] and the mask [N, max_length] (bool), zeros at padding.
std::pair<at::Tensor, at::Tensor> pad_embeddings(const CaptionEmbeddings& e, int64_t max_length);

}  // namespace opendit::encode
