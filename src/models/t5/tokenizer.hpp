// The T5 text tokenizer (SentencePiece unigram model, spiece.model) as Open-Sora v1.0 / PixArt call it through
// transformers: captions -> [N, max_length] token ids + attention mask, EOS appended, truncated and padded.
// Plain std types only (no torch): the caller turns TokenBatch into tensors.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace opendit::models::t5 {

struct TokenBatch {
  int64_t batch = 0, length = 0;  // [batch, length] row-major
  std::vector<int64_t> ids;       // padded with pad_id
  std::vector<uint8_t> mask;      // 1 at valid tokens (EOS included), 0 at padding
  std::vector<int64_t> lengths;   // valid tokens per caption (EOS included)
  std::vector<bool> truncated;    // caption was cut to fit length
};

class Tokenizer {
 public:
  // Reads a SentencePiece model file (T5's spiece.model). Throws opendit::Error with the path and the reason when the
  // file is missing, unreadable, or not a SentencePiece model (or one without pad and eos pieces).
  explicit Tokenizer(const std::string& spiece_model_path);
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Token ids of one caption as transformers' T5Tokenizer gives them (add_special_tokens=True): the pieces, then EOS.
  // Special-token strings in the text (<extra_id_N> for N < 100, </s>, <pad>, <unk>) become their ids.
  std::vector<int64_t> encode(const std::string& text) const;
  // Captions -> [N, max_length]: truncation to max_length (the last kept token is EOS, as transformers truncates),
  // padding to max_length with pad_id, attention mask. max_length >= 1 else opendit::Error.
  // clean: each caption first goes through clean_caption (models/t5/caption_clean.hpp), as Open-Sora v1.0 and PixArt
  // preprocess their captions.
  TokenBatch operator()(const std::vector<std::string>& captions, int64_t max_length, bool clean = false) const;

  int64_t vocab_size() const;     // pieces + 100 extra ids (T5Tokenizer's vocab_size)
  int64_t pad_id() const;         // 0 for T5
  int64_t eos_id() const;         // 1 for T5
  int64_t extra_id(int n) const;  // id of <extra_id_n>, n in [0, 100): pieces + 99 - n
  std::string path() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The spiece.model of a text encoder folder: DIR itself when it is a file, else the first of DIR/spiece.model (a
// Hugging Face T5 repo such as DeepFloyd/t5-v1_1-xxl keeps it at the top), DIR/tokenizer/spiece.model (a diffusers
// pipeline folder), DIR/text_encoder/spiece.model. Throws opendit::Error listing the paths tried.
std::string find_spiece_model(const std::string& dir);

}  // namespace opendit::models::t5
