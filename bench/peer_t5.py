"""Peer for opendit's text-encoder benchmark: transformers' T5EncoderModel in the T5 v1.1 XXL layout
(DeepFloyd/t5-v1_1-xxl, Open-Sora v1.0's text encoder), random weights, eval, inference mode.

usage: peer_t5.py [--preset xxl|small|tiny] [--batch 8] [--tokens 120] [--dtype bf16|fp32] [--device cuda|cpu]
                  [--iters 10] [--warmup 2] [--threads N] [--compare-fp32]
Inputs: ids, mask [batch, tokens]; each prompt's valid length is drawn in [10, tokens] (seeded), its valid run ends
with EOS (1) and the rest is padding (0, mask 0), as Open-Sora pads every caption to model_max_length 120.
Prints one line:
  PEER t5 preset=... device=... threads=... dtype=... batch=... tokens=... params=... median_ms=... min_ms=...
          prompts_per_s=... peak_gib=...
peak_gib: torch.cuda.max_memory_allocated over the warm-up and timed runs, weights included (0 on cpu).
--compare-fp32 instead runs the same weights and inputs in fp32, then in bf16, and prints over the valid tokens
  T5ERR bf16_vs_fp32 max_abs=... max_rel=... mean_abs=... ref_max_abs=...
  with max_rel the largest per-token ||bf16 - fp32|| / ||fp32|| (L2 over channels). fp32 matmuls run without TF32.
bf16 means every weight in bf16: transformers keeps T5's `wo` in fp32 only when loading in fp16, so this is what
T5EncoderModel.from_pretrained(..., torch_dtype=torch.bfloat16) gives as well.
"""
import argparse

import torch
from peer_timing import time_calls
from transformers import T5Config, T5EncoderModel

COMMON = dict(relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
              layer_norm_epsilon=1e-6, dropout_rate=0.0, tie_word_embeddings=False)
PRESETS = {  # DeepFloyd/t5-v1_1-xxl (= google/t5-v1_1-xxl); google/t5-v1_1-small; the test config of make_t5_ref.py
    "xxl": dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64),
    "small": dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6),
    "tiny": dict(vocab_size=320, d_model=64, d_kv=16, d_ff=96, num_layers=3, num_heads=4),
}
EOS, PAD = 1, 0


def prompts(batch: int, tokens: int, vocab: int, seed: int = 0):
    """ids, mask [batch, tokens] int64 on the CPU, with a seeded padding pattern."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min(10, tokens), tokens + 1, (batch,), generator=g)
    ids = torch.randint(2, vocab, (batch, tokens), generator=g)
    pos = torch.arange(tokens).unsqueeze(0)
    ids = torch.where(pos == lengths.unsqueeze(1) - 1, EOS, ids)
    mask = (pos < lengths.unsqueeze(1)).long()
    return ids.masked_fill(mask == 0, PAD), mask


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", choices=list(PRESETS), default="xxl")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=120)
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--compare-fp32", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    config = T5Config(**PRESETS[a.preset], **COMMON)
    torch.manual_seed(0)
    with torch.device(dev):  # 4.7B parameters for xxl: create and initialise them on the device, in fp32
        model = T5EncoderModel(config).eval()
    params = sum(p.numel() for p in model.parameters())  # shared and encoder.embed_tokens are one tensor
    ids, mask = (t.to(dev) for t in prompts(a.batch, a.tokens, config.vocab_size))

    if a.compare_fp32:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        with torch.inference_mode():
            ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
            model.to(torch.bfloat16)
            out = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        valid = mask.bool()
        ref, diff = ref[valid], (out - ref)[valid]  # [valid tokens, d_model]
        rel = diff.norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-30)
        print(f"T5ERR bf16_vs_fp32 preset={a.preset} device={a.device} batch={a.batch} tokens={a.tokens} "
              f"valid_tokens={int(valid.sum())} max_abs={diff.abs().max().item():.4e} max_rel={rel.max().item():.4e} "
              f"mean_abs={diff.abs().mean().item():.4e} ref_max_abs={ref.abs().max().item():.4e}")
        return

    model.to(dtype)
    med, fastest, peak = time_calls(lambda: model(input_ids=ids, attention_mask=mask), a.warmup, a.iters, cuda)
    print(f"PEER t5 preset={a.preset} device={a.device} threads={torch.get_num_threads()} dtype={a.dtype} "
          f"batch={a.batch} tokens={a.tokens} params={params} median_ms={med:.3f} min_ms={fastest:.3f} "
          f"prompts_per_s={a.batch / med * 1e3:.2f} peak_gib={peak:.3f}")


if __name__ == "__main__":
    main()
