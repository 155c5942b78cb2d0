"""Reference T5 v1.1 encoder outputs from transformers' T5EncoderModel (small random config), for opendit's T5 tests.

Writes, all with transformers' save_pretrained(safe_serialization=True) (config.json + safetensors):
  OUTDIR/t5/          the encoder, one model.safetensors
  OUTDIR/t5_sharded/  the same weights in >= 3 shards + model.safetensors.index.json
  OUTDIR/t5_full/     a T5ForConditionalGeneration holding the same encoder and `shared` weights, so the loader has
                      to skip decoder.* and lm_head.weight. transformers >= 5 always ties lm_head to `shared` and then
                      omits it; T5 v1.1 checkpoints carry an untied lm_head, so a random one is added to the file.
  OUTDIR/t5_bf16/     the encoder saved in bfloat16
  OUTDIR/io.safetensors
    ids, mask [4,140] int64   four captions padded into one batch (valid lengths 140, 7, 1, 20; each valid run ends
                              with EOS 1, padding is 0 with mask 0); 140 > 128 so some distances pass max_distance
    out [4,140,64] fp32       last_hidden_state with attention_mask=mask (padded rows included)
    ids2, mask2 [2,12], out2  a short batch, all tokens valid
    out_bf16w [4,140,64]      `out` computed in fp32 from the bf16-rounded weights of t5_bf16
The RMS-norm weights start at 1; they are perturbed so that a loader ignoring them fails.
"""
import copy
import glob
import json
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from refcache import mark_done, outdir_from_argv, up_to_date  # noqa: E402

CONFIG = dict(vocab_size=320, d_model=64, d_kv=8, d_ff=96, num_layers=3, num_heads=6,
              relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
              layer_norm_epsilon=1e-6, dropout_rate=0.0, tie_word_embeddings=False)
PAD, EOS = 0, 1


def captions(lengths, seq_len: int, vocab: int):
    """ids, mask [B, seq_len]: random ids in [2, vocab), EOS closing each valid run, PAD after it."""
    ids = torch.full((len(lengths), seq_len), PAD, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for b, n in enumerate(lengths):
        ids[b, :n - 1] = torch.randint(2, vocab, (n - 1,))
        ids[b, n - 1] = EOS
        mask[b, :n] = 1
    return ids, mask


def embedding_keys(folder: str) -> None:
    """Print the non-block keys of each saved file: which name the token embedding is stored under."""
    for path in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        with safe_open(path, "pt") as f:
            keys = [k for k in f.keys() if ".block." not in k]
        print(f"{os.path.relpath(path, os.path.dirname(folder))}: {keys}")
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        keys = [k for k in json.load(open(index))["weight_map"] if ".block." not in k]
        print(f"{os.path.relpath(index, os.path.dirname(folder))}: {keys}")


def main():
    outdir = outdir_from_argv()
    if up_to_date(outdir, __file__):
        return
    torch.set_num_threads(2)
    torch.manual_seed(1234)
    config = T5Config(**CONFIG)
    model = T5EncoderModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_norm.weight"):  # layer_norm and final_layer_norm
                p.add_(0.1 * torch.randn_like(p))

    ids, mask = captions([140, 7, 1, 20], 140, config.vocab_size)
    ids2, mask2 = captions([12, 12], 12, config.vocab_size)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        out2 = model(input_ids=ids2, attention_mask=mask2).last_hidden_state
    for k, v in {"out": out, "out2": out2}.items():
        assert v.std() > 1e-2, f"{k} is ~constant"

    model.save_pretrained(os.path.join(outdir, "t5"), safe_serialization=True)
    sharded = os.path.join(outdir, "t5_sharded")
    model.save_pretrained(sharded, safe_serialization=True, max_shard_size="100KB")
    assert len(glob.glob(os.path.join(sharded, "model-*.safetensors"))) >= 3

    full = T5ForConditionalGeneration(config).eval()
    full.shared.load_state_dict(model.shared.state_dict())
    full.encoder.load_state_dict(model.encoder.state_dict())
    with torch.no_grad():
        assert torch.equal(full.encoder(input_ids=ids, attention_mask=mask).last_hidden_state, out)
    full_dir = os.path.join(outdir, "t5_full")
    full.save_pretrained(full_dir, safe_serialization=True)
    weights = load_file(os.path.join(full_dir, "model.safetensors"))
    if "lm_head.weight" not in weights:
        weights["lm_head.weight"] = torch.randn(config.vocab_size, config.d_model)
        save_file(weights, os.path.join(full_dir, "model.safetensors"), metadata={"format": "pt"})

    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    bf16.save_pretrained(os.path.join(outdir, "t5_bf16"), safe_serialization=True)
    with torch.no_grad():
        out_bf16w = bf16.float()(input_ids=ids, attention_mask=mask).last_hidden_state

    save_file({"ids": ids, "mask": mask, "out": out.contiguous(), "ids2": ids2, "mask2": mask2,
               "out2": out2.contiguous(), "out_bf16w": out_bf16w.contiguous()}, os.path.join(outdir, "io.safetensors"))
    for name in ("t5", "t5_sharded", "t5_full", "t5_bf16"):
        embedding_keys(os.path.join(outdir, name))
    mark_done(outdir, __file__)


if __name__ == "__main__":
    main()
