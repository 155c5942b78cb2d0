#include "encode/text.hpp"

#include <ATen/core/grad_mode.h>

#include <algorithm>

#include "core/error.hpp"

namespace opendit::encode {

CaptionEmbeddings embed_captions(const models::t5::T5Encoder& t5, const models::t5::Tokenizer& tokenizer,
                                 const std::vector<std::string>& captions, int64_t max_length, bool clean) {
  if (captions.empty()) throw Error("embed_captions: no captions");
  if (tokenizer.vocab_size() > t5.config().vocab_size)
    throw Error(cat("the tokenizer has ", tokenizer.vocab_size(), " ids (", tokenizer.path(), ") but the T5 encoder's "
                    "vocabulary is ", t5.config().vocab_size, ": they are not one model's"));
  const models::t5::TokenBatch b = tokenizer(captions, max_length, clean);
  const int64_t longest = *std::max_element(b.lengths.begin(), b.lengths.end());
  const at::Tensor ids = at::tensor(b.ids).view({b.batch, b.length}).narrow(1, 0, longest).contiguous();
  const at::Tensor mask = at::tensor(std::vector<int64_t>(b.mask.begin(), b.mask.end()))
                              .view({b.batch, b.length})
                              .narrow(1, 0, longest)
                              .contiguous();
  at::NoGradGuard no_grad;
  const at::Tensor out = t5.forward(ids, mask).to(at::kCPU);  // [N, longest, d]
  CaptionEmbeddings e;
  e.tokens = out.index({mask.to(at::kBool)});  // row-major: caption by caption, token by token
  e.lengths = at::tensor(b.lengths);
  e.truncated = b.truncated;
  return e;
}

std::pair<at::Tensor, at::Tensor> pad_embeddings(const CaptionEmbeddings& e, int64_t max_length) {
  const int64_t n = e.lengths.size(0), d = e.tokens.size(1);
  if (e.lengths.max().item<int64_t>() > max_length)
    throw Error(cat("pad_embeddings: a caption has ", e.lengths.max().item<int64_t>(), " tokens, more than ",
                    max_length));
  at::Tensor out = at::zeros({n, max_length, d}, e.tokens.options());
  const at::Tensor mask = at::arange(max_length).unsqueeze(0) < e.lengths.unsqueeze(1);  // [N, L] bool
  out.index_put_({mask}, e.tokens);
  return {out, mask};
}

}  // namespace opendit::encode
