// T5 tokenizer on the SentencePiece C++ library. Mirrors transformers' T5Tokenizer as Open-Sora v1.0 loads it for
// DeepFloyd/t5-v1_1-xxl (AutoTokenizer -> T5Tokenizer(Fast), legacy=True):
//  - special-token strings in the text are split out first (matched on the raw text, before normalization), and each
//    stretch of text between them is encoded by SentencePiece on its own, so it gets its own "▁" dummy prefix
//    ("<extra_id_0>b" -> <extra_id_0>, "▁b"): that is the legacy=True behaviour. legacy=False (transformers 4 only)
//    differs on text right after a special token, never on captions without special-token strings;
//  - EOS is always appended (transformers 4's slow T5Tokenizer skipped it when the ids already ended with EOS);
//  - truncation keeps max_length - 1 pieces and then EOS; padding on the right with pad_id.
#include "models/t5/tokenizer.hpp"

#include <sentencepiece_processor.h>
#include <sys/stat.h>

#include <fstream>
#include <utility>

#include "core/error.hpp"
#include "models/t5/caption_clean.hpp"

namespace opendit::models::t5 {

namespace {
constexpr int kExtraIds = 100;  // T5's sentinel tokens <extra_id_0> .. <extra_id_99>, after the pieces

bool is_file(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}
}  // namespace

struct Tokenizer::Impl {
  std::string path;
  sentencepiece::SentencePieceProcessor sp;
  int64_t pieces = 0;
  // Special pieces of the model (control and unknown: <pad>, </s>, <unk>) that transformers matches in the text.
  std::vector<std::pair<std::string, int64_t>> specials;

  // Length of the <extra_id_N> at text[pos] (N in [0, 100), no leading zero), 0 if none; its N in *n.
  static size_t extra_id_at(const std::string& text, size_t pos, int* n) {
    static const std::string head = "<extra_id_";
    if (text.compare(pos, head.size(), head) != 0) return 0;
    size_t i = pos + head.size(), digits = 0;
    int value = 0;
    for (; i < text.size() && text[i] >= '0' && text[i] <= '9' && digits < 3; ++i, ++digits)
      value = value * 10 + (text[i] - '0');
    if (digits == 0 || i >= text.size() || text[i] != '>' || value >= kExtraIds) return 0;
    if (digits > 1 && text[pos + head.size()] == '0') return 0;  // "<extra_id_01>" is not a token
    *n = value;
    return i + 1 - pos;
  }

  void encode_piece_text(const std::string& chunk, std::vector<int64_t>* out) const {
    if (chunk.empty()) return;
    std::vector<int> ids;
    const auto status = sp.Encode(chunk, &ids);
    if (!status.ok()) throw Error(cat("T5 tokenizer ", path, ": cannot encode text: ", status.ToString()));
    out->insert(out->end(), ids.begin(), ids.end());
  }
};

Tokenizer::Tokenizer(const std::string& spiece_model_path) : impl_(std::make_unique<Impl>()) {
  impl_->path = spiece_model_path;
  {
    std::ifstream f(spiece_model_path, std::ios::binary);
    if (!is_file(spiece_model_path) || !f)
      throw Error(cat("T5 tokenizer: cannot read the SentencePiece model ", spiece_model_path,
                      is_file(spiece_model_path) ? " (unreadable)" : " (no such file)"));
  }
  const auto status = impl_->sp.Load(spiece_model_path);
  if (!status.ok())
    throw Error(cat("T5 tokenizer: ", spiece_model_path, " is not a valid SentencePiece model: ", status.ToString()));
  impl_->pieces = impl_->sp.GetPieceSize();
  if (impl_->sp.pad_id() < 0 || impl_->sp.eos_id() < 0)
    throw Error(cat("T5 tokenizer: the SentencePiece model ", spiece_model_path, " has no pad or eos piece (pad_id ",
                    impl_->sp.pad_id(), ", eos_id ", impl_->sp.eos_id(), "): not a T5 tokenizer"));
  for (int i = 0; i < impl_->sp.GetPieceSize(); ++i)
    if (impl_->sp.IsControl(i) || impl_->sp.IsUnknown(i)) impl_->specials.emplace_back(impl_->sp.IdToPiece(i), i);
}

Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

std::vector<int64_t> Tokenizer::encode(const std::string& text) const {
  std::vector<int64_t> out;
  size_t start = 0;  // beginning of the plain text not yet encoded
  for (size_t pos = text.find('<'); pos != std::string::npos; pos = text.find('<', pos)) {
    int64_t id = -1;
    size_t len = 0;
    int n = 0;
    if ((len = Impl::extra_id_at(text, pos, &n)) > 0) {
      id = extra_id(n);
    } else {
      for (const auto& [piece, piece_id] : impl_->specials)
        if (!piece.empty() && text.compare(pos, piece.size(), piece) == 0) {
          id = piece_id, len = piece.size();
          break;
        }
    }
    if (id < 0) {
      ++pos;
      continue;
    }
    impl_->encode_piece_text(text.substr(start, pos - start), &out);
    out.push_back(id);
    start = pos = pos + len;
  }
  impl_->encode_piece_text(text.substr(start), &out);
  out.push_back(eos_id());
  return out;
}

TokenBatch Tokenizer::operator()(const std::vector<std::string>& captions, int64_t max_length, bool clean) const {
  if (max_length < 1) throw Error(cat("T5 tokenizer: max_length must be at least 1, got ", max_length));
  TokenBatch b;
  b.batch = static_cast<int64_t>(captions.size());
  b.length = max_length;
  b.ids.assign(b.batch * max_length, pad_id());
  b.mask.assign(b.batch * max_length, 0);
  for (int64_t i = 0; i < b.batch; ++i) {
    std::vector<int64_t> ids = encode(clean ? clean_caption(captions[i]) : captions[i]);
    const bool cut = static_cast<int64_t>(ids.size()) > max_length;
    if (cut) {  // keep max_length - 1 pieces, then EOS
      ids.resize(max_length);
      ids.back() = eos_id();
    }
    std::copy(ids.begin(), ids.end(), b.ids.begin() + i * max_length);
    std::fill_n(b.mask.begin() + i * max_length, ids.size(), uint8_t{1});
    b.lengths.push_back(static_cast<int64_t>(ids.size()));
    b.truncated.push_back(cut);
  }
  return b;
}

int64_t Tokenizer::vocab_size() const { return impl_->pieces + kExtraIds; }
int64_t Tokenizer::pad_id() const { return impl_->sp.pad_id(); }
int64_t Tokenizer::eos_id() const { return impl_->sp.eos_id(); }
std::string Tokenizer::path() const { return impl_->path; }

int64_t Tokenizer::extra_id(int n) const {
  if (n < 0 || n >= kExtraIds) throw Error(cat("T5 tokenizer: <extra_id_", n, "> is out of range [0, 100)"));
  return impl_->pieces + kExtraIds - 1 - n;
}

std::string find_spiece_model(const std::string& dir) {
  if (is_file(dir)) return dir;
  std::vector<std::string> tried;
  for (const char* rel : {"spiece.model", "tokenizer/spiece.model", "text_encoder/spiece.model"}) {
    std::string p = dir + (dir.empty() || dir.back() == '/' ? "" : "/") + rel;
    if (is_file(p)) return p;
    tried.push_back(std::move(p));
  }
  std::string list;
  for (const auto& p : tried) list += (list.empty() ? "" : ", ") + p;
  throw Error(cat("T5 tokenizer: no spiece.model for the text encoder folder ", dir, " (tried ", list, ")"));
}

}  // namespace opendit::models::t5
