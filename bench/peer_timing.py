"""Shared by the encoder peers (peer_vae.py, peer_t5.py): median time of a call and the GPU's peak memory."""
import statistics
import time

import torch


def time_calls(call, warmup: int, iters: int, cuda: bool):
    """Runs call() warmup + iters times under inference mode, synchronizing the GPU around each timed call.
    Returns (median ms, min ms, peak GiB of torch.cuda.max_memory_allocated; 0 on the CPU)."""
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    with torch.inference_mode():
        for i in range(warmup + iters):
            sync()
            t0 = time.perf_counter()
            call()
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    return statistics.median(times), min(times), peak
