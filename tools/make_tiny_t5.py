#!/usr/bin/env python3
"""Makes a tiny randomly initialised T5 text encoder for the moving-digits demo, in the folder layout that
`opendit encode/sample --text-encoder DIR` reads: DIR/config.json + DIR/model.safetensors (transformers'
T5EncoderModel.save_pretrained) and DIR/spiece.model (a SentencePiece unigram model trained here on the captions).

The captions use 16 words ("a", "0".."9", "moving", "left", "right", "up", "down"), so the vocabulary is tiny
and every word is one piece. T5's conventions: pad 0, EOS 1, unk 2, no BOS. The T5 vocabulary is the pieces plus
T5's 100 <extra_id_N> sentinels, as transformers' T5Tokenizer counts them (opendit refuses a T5 whose embedding
table is smaller than that). The encoder is never trained: random features still tell the captions apart, and the
diffusion model learns to read them. Its final RMSNorm weight (--output-scale, default 15) sets the embeddings' RMS:
STDiT's caption embedder starts at std 0.02, and with RMS 1 (transformers' init) the cross-attention learns to read
the captions later (bench/RESULTS.md, the moving-digits demo). Deterministic given --seed.

usage: make_tiny_t5.py --captions train.csv [heldout.csv prompts.txt ...] --out DIR [--d-model 32] [--layers 2]
                       [--heads 4] [--vocab-size 64] [--output-scale 15] [--seed 0]
"""
import argparse
import csv
import io
import os
import sys
import tempfile
from collections import Counter

EXTRA_IDS = 100  # T5's <extra_id_0..99>, after the pieces


def read_captions(paths):
    """Caption texts of CSV manifests (the caption or text column) and plain files (one a line)."""
    texts = []
    for p in paths:
        with open(p, newline="") as f:
            if p.endswith(".csv"):
                rows = csv.DictReader(f)
                col = "caption" if "caption" in rows.fieldnames else "text"
                texts += [r[col] for r in rows]
            else:
                texts += [line.strip() for line in f if line.strip()]
    if not texts:
        sys.exit(f"make_tiny_t5: no captions in {', '.join(paths)}")
    return texts


def train_spiece(texts, vocab_size):
    """spiece.model's bytes: a unigram model whose seed pieces are the captions' whole words ("\u2581moving"), since
    the trainer's own seeding finds no multi-character piece in a few dozen distinct, rigid captions."""
    import sentencepiece as spm
    counts = Counter(w for t in texts for w in t.split())
    model = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp:
        seeds = os.path.join(tmp, "seeds.tsv")
        with open(seeds, "w") as f:
            f.writelines(f"\u2581{w}\t{n}\n" for w, n in sorted(counts.items()))
        # hard_vocab_limit off: stop below vocab_size once every word is one piece; one thread, sorted input:
        # the same model every time
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sorted(texts)), model_writer=model, model_type="unigram", vocab_size=vocab_size,
            hard_vocab_limit=False, seed_sentencepieces_file=seeds, character_coverage=1.0, pad_id=0, eos_id=1,
            unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", num_threads=1,
            minloglevel=2)
    # the model records its training options: drop the temporary seeds file's name, so that the bytes repeat
    from sentencepiece import sentencepiece_model_pb2 as pb
    proto = pb.ModelProto.FromString(model.getvalue())
    proto.trainer_spec.ClearField("seed_sentencepieces_file")
    return proto.SerializeToString()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--captions", nargs="+", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab-size", type=int, default=64, help="SentencePiece pieces at most (before extra ids)")
    ap.add_argument("--output-scale", type=float, default=15.0,
                    help="the final RMSNorm's weight, i.e. the embeddings' RMS (transformers' init: 1)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.d_model % a.heads:
        sys.exit(f"make_tiny_t5: --d-model {a.d_model} is not a multiple of --heads {a.heads}")
    import sentencepiece as spm
    import torch
    from transformers import T5Config, T5EncoderModel
    from transformers.utils import logging
    logging.disable_progress_bar()

    texts = read_captions(a.captions)
    os.makedirs(a.out, exist_ok=True)
    spiece = os.path.join(a.out, "spiece.model")
    model_bytes = train_spiece(texts, a.vocab_size)
    with open(spiece, "wb") as f:
        f.write(model_bytes)
    sp = spm.SentencePieceProcessor(model_file=spiece)
    pieces = sp.get_piece_size()

    torch.manual_seed(a.seed)
    # T5 v1.1's layout (gated GELU), as Open-Sora's t5-v1_1-xxl; relative-position buckets sized for short captions
    cfg = T5Config(vocab_size=pieces + EXTRA_IDS, d_model=a.d_model, d_kv=a.d_model // a.heads, d_ff=2 * a.d_model,
                   num_layers=a.layers, num_heads=a.heads, feed_forward_proj="gated-gelu",
                   relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0,
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    model = T5EncoderModel(cfg).eval()
    with torch.no_grad():
        model.encoder.final_layer_norm.weight.fill_(a.output_scale)
    model.save_pretrained(a.out, safe_serialization=True)

    # Check: reload the folder as transformers does; its T5Tokenizer must give the ids opendit's tokenizer gives
    # (SentencePiece pieces, then EOS), and two captions that differ in one word must embed differently.
    from transformers import T5Tokenizer
    model = T5EncoderModel.from_pretrained(a.out).eval()
    tok = T5Tokenizer.from_pretrained(a.out)
    distinct = sorted(set(texts))
    ids = [sp.encode(t) + [sp.eos_id()] for t in distinct]
    same = all(tok(t).input_ids == i for t, i in zip(distinct, ids))
    unk = sorted({w for t in distinct for w in t.split() if sp.unk_id() in sp.encode(w)})
    two = [i for i in ids if len(i) == len(ids[0])][:2]
    with torch.no_grad():
        e0, e1 = (model(input_ids=torch.tensor([i])).last_hidden_state[0] for i in two)
    print(f"spiece.model: {pieces} pieces (+{EXTRA_IDS} extra ids = T5 vocabulary {cfg.vocab_size}), trained on "
          f"{len(texts)} captions ({len(distinct)} distinct); longest caption {max(map(len, ids))} tokens with EOS")
    print(f"  {distinct[0]!r} -> {[sp.id_to_piece(k) for k in ids[0]]} (transformers' T5Tokenizer agrees on all "
          f"{len(distinct)}: {same})")
    print(f"T5EncoderModel: d_model {cfg.d_model}, d_kv {cfg.d_kv}, d_ff {cfg.d_ff} (gated GELU), {cfg.num_layers} "
          f"layers, {cfg.num_heads} heads, {sum(p.numel() for p in model.parameters())} parameters -> {a.out}")
    print(f"  two captions' embeddings {tuple(e0.shape)}: mean |difference| {(e0 - e1).abs().mean():.3f}")
    if unk or not same:
        print("make_tiny_t5: FAIL: " + (f"words that tokenize to <unk>: {unk}" if unk else "tokenizers disagree"))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
