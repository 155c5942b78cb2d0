"""Reference data for tests/parallel: torch.optim.AdamW with gradient-norm clipping and DiT's EMA, a few steps.

Each step: grads (given) -> torch.nn.utils.clip_grad_norm_(params, max_norm) -> AdamW.step() -> update_ema as in
facebookresearch/DiT train.py (ema.mul_(decay).add_(param, alpha=1 - decay); the EMA starts as a copy).

Two cases:
  dit    lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight_decay 0 (DiT's settings), EMA decay 0.9999, max_norm 1
  decay  lr 3e-3, betas (0.8, 0.95), eps 1e-6, weight_decay 0.1 on matrices only (a second param group without
         decay for vectors), EMA decay 0.9, max_norm 0.5
Gradient scales vary by step, so some steps clip and others do not.

Usage: make_adamw_ref.py OUTDIR. Writes OUTDIR/index.json ({"tensors": {name: {file, dtype, shape}}, "meta": ...})
and one raw little-endian float64 file per tensor (float32 values, converted exactly). Names:
  CASE.init.NAME, CASE.stepK.grad.NAME (before clipping), CASE.stepK.{param,exp_avg,exp_avg_sq,ema}.NAME,
  CASE.stepK.norm (clip_grad_norm_'s total norm), CASE.stepK.coef (its clamped clip coefficient), K = 1..STEPS.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from refcache import mark_done, outdir_from_argv, up_to_date  # noqa: E402

STEPS = 5
SHAPES = {"a.weight": (8, 5), "a.bias": (5,), "b.weight": (3, 4, 2), "b.scale": (37,)}
GRAD_SCALES = [0.02, 3.0, 0.2, 1.5, 0.05]
CASES = {
    "dit": dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, ema_decay=0.9999, max_norm=1.0),
    "decay": dict(lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1, ema_decay=0.9, max_norm=0.5),
}

TENSORS = {}


def put(name, t):
    TENSORS[name] = torch.as_tensor(t).detach().to(torch.float64).contiguous()


def run_case(case, cfg):
    gen = torch.Generator().manual_seed(1234)
    params = {n: torch.randn(s, generator=gen).requires_grad_() for n, s in SHAPES.items()}
    decayed = [p for p in params.values() if p.dim() > 1]
    plain = [p for p in params.values() if p.dim() <= 1]
    opt = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": cfg["weight_decay"]}, {"params": plain, "weight_decay": 0.0}],
        lr=cfg["lr"], betas=cfg["betas"], eps=cfg["eps"], foreach=False)
    ema = {n: p.detach().clone() for n, p in params.items()}  # update_ema(ema, model, decay=0)
    for n, p in params.items():
        put(f"{case}.init.{n}", p)
    for k in range(1, STEPS + 1):
        for n, p in params.items():
            p.grad = torch.randn(p.shape, generator=gen) * GRAD_SCALES[k - 1]
            put(f"{case}.step{k}.grad.{n}", p.grad)
        norm = torch.nn.utils.clip_grad_norm_(list(params.values()), cfg["max_norm"])
        coef = torch.clamp(cfg["max_norm"] / (norm + 1e-6), max=1.0)
        put(f"{case}.step{k}.norm", norm.reshape(1))
        put(f"{case}.step{k}.coef", coef.reshape(1))
        opt.step()
        with torch.no_grad():
            for n, p in params.items():
                ema[n].mul_(cfg["ema_decay"]).add_(p, alpha=1 - cfg["ema_decay"])
        for n, p in params.items():
            state = opt.state[p]
            put(f"{case}.step{k}.param.{n}", p)
            put(f"{case}.step{k}.exp_avg.{n}", state["exp_avg"])
            put(f"{case}.step{k}.exp_avg_sq.{n}", state["exp_avg_sq"])
            put(f"{case}.step{k}.ema.{n}", ema[n])


def main():
    outdir = outdir_from_argv()
    if up_to_date(outdir, __file__):
        return
    for case, cfg in CASES.items():
        run_case(case, cfg)
    index = {}
    for name, t in TENSORS.items():
        t.numpy().astype("<f8").tofile(os.path.join(outdir, name + ".bin"))
        index[name] = {"file": name + ".bin", "dtype": "f64", "shape": list(t.shape)}
    meta = {"steps": STEPS, "params": {n: list(s) for n, s in SHAPES.items()}, "cases": CASES,
            "torch": torch.__version__}
    with open(os.path.join(outdir, "index.json"), "w") as f:
        json.dump({"tensors": index, "meta": meta}, f, indent=1)
    mark_done(outdir, __file__)


if __name__ == "__main__":
    main()
