"""Reference data for tests/diffusion: noise-schedule tables, q_sample, single DDPM/DDIM steps and short sampling
loops from diffusers' DDPMScheduler / DDIMScheduler, and the VB / NLL loss terms from the IDDPM formulas.

Usage: make_diffusion_ref.py OUTDIR. Writes OUTDIR/index.json ({"tensors": {name: {file, dtype, shape}}, "meta": ...})
and one raw little-endian file per tensor (float64 "f64" or int64 "i64").

Precision: diffusers keeps its tables in float32, whose 1 - abar_t / abar_{t-1} loses ~1e-3 relative accuracy.
Except for the "native_*" tables (diffusers' own float32 betas and cumulative products), every scheduler here gets
the same three tables rebuilt in float64 (betas -> alphas -> cumprod, as its __init__ does) so its step()
arithmetic runs in float64.
"""
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from refcache import mark_done, outdir_from_argv, up_to_date  # noqa: E402

from diffusers import DDIMScheduler, DDPMScheduler  # noqa: E402
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

torch.set_grad_enabled(False)
F64 = torch.float64

TENSORS = {}
META = {}


def put(name, value):
    t = torch.as_tensor(value)
    if t.dtype in (torch.int64, torch.int32, torch.bool):
        TENSORS[name] = ("i64", t.to(torch.int64).contiguous())
    else:
        TENSORS[name] = ("f64", t.to(F64).contiguous())


def write_all(outdir):
    index = {}
    for name, (dtype, t) in TENSORS.items():
        fname = name + ".bin"
        arr = t.numpy().astype("<f8" if dtype == "f64" else "<i8")
        arr.tofile(os.path.join(outdir, fname))
        index[name] = {"file": fname, "dtype": dtype, "shape": list(t.shape)}
    with open(os.path.join(outdir, "index.json"), "w") as f:
        json.dump({"tensors": index, "meta": META}, f, indent=1)


# ---- schedules ---------------------------------------------------------------------------------------------------
def betas64(schedule):
    if schedule == "linear":
        # diffusers' linear schedule (torch.linspace(1e-4, 0.02, 1000)), evaluated in float64.
        return torch.linspace(1e-4, 0.02, 1000, dtype=F64)
    # IDDPM's squaredcos_cap_v2 (the formula diffusers' betas_for_alpha_bar implements), kept in float64.
    abar = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return torch.tensor([min(1 - abar((i + 1) / 1000) / abar(i / 1000), 0.999) for i in range(1000)], dtype=F64)


DIFFUSERS_NAME = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


def f64_tables(s, betas):
    s.betas = betas.clone()
    s.alphas = 1.0 - s.betas
    s.alphas_cumprod = torch.cumprod(s.alphas, dim=0)
    s.one = torch.tensor(1.0, dtype=F64)
    if hasattr(s, "final_alpha_cumprod"):
        s.final_alpha_cumprod = torch.tensor(1.0, dtype=F64)  # set_alpha_to_one=True
    return s


def ddpm64(schedule, **kw):
    b = betas64(schedule)
    return f64_tables(DDPMScheduler(trained_betas=b.numpy(), clip_sample=False, **kw), b)


def ddim64(schedule, steps):
    b = betas64(schedule)
    s = DDIMScheduler(trained_betas=b.numpy(), clip_sample=False, set_alpha_to_one=True, steps_offset=0,
                      timestep_spacing="leading")
    f64_tables(s, b)
    s.set_timesteps(steps)
    return s


# Respacings of the base 1000 steps and the diffusers spacing that keeps the same steps: IDDPM's single-section
# "N" keeps round(k * 999 / (N - 1)) (no ties occur for N = 250, 10), which is diffusers' "linspace" spacing;
# "ddimN" keeps range(0, 1000, 1000 // N), which is diffusers' "leading" spacing.
RESPACINGS = {"full": ("leading", None), "250": ("linspace", 250), "ddim50": ("leading", 50)}


def respaced_ddpm(schedule, tag, **kw):
    spacing, steps = RESPACINGS[tag]
    s = ddpm64(schedule, timestep_spacing=spacing, **kw)
    if steps is not None:
        s.set_timesteps(steps)
    kept = torch.sort(s.timesteps if steps is not None else torch.arange(1000)).values
    return s, kept


def make_tables():
    for sched in ("linear", "cosine"):
        native = DDPMScheduler(beta_schedule=DIFFUSERS_NAME[sched])
        put(f"native_{sched}_betas", native.betas)
        put(f"native_{sched}_alphas_cumprod", native.alphas_cumprod)
        assert (native.betas.to(F64) - betas64(sched)).abs().max() < 1e-7
        put(f"{sched}_betas64", betas64(sched))
        for tag in RESPACINGS:
            s, kept = respaced_ddpm(sched, tag)
            # posterior mean coefficients from step() itself: predicting the sample x0 with a zero learned
            # variance makes the step exactly coef1 * x0 + coef2 * x_t (x0 = 1, x_t = 0 and x0 = 0, x_t = 1).
            probe, _ = respaced_ddpm(sched, tag, prediction_type="sample", variance_type="learned")
            x0 = torch.tensor([[1.0], [0.0]], dtype=F64)
            xt = torch.tensor([[0.0], [1.0]], dtype=F64)
            rows = {k: [] for k in ("betas", "pvar", "plogvar", "coef1", "coef2")}
            for k in kept.tolist():
                rows["betas"].append(s._get_variance(k, variance_type="fixed_large"))
                rows["pvar"].append(s._get_variance(k, variance_type="fixed_small"))
                rows["plogvar"].append(s._get_variance(k, predicted_variance=torch.tensor(-1.0, dtype=F64),
                                                       variance_type="learned_range"))
                out = probe.step(torch.cat([x0, torch.zeros_like(x0)], 1), k, xt,
                                 generator=torch.Generator().manual_seed(0)).prev_sample
                rows["coef1"].append(out[0, 0])
                rows["coef2"].append(out[1, 0])
            abar = s.alphas_cumprod[kept]
            plogvar = torch.stack(rows["plogvar"])
            plogvar[0] = plogvar[1]  # the posterior variance is 0 at the first step: IDDPM clips to the next one
            pvar = torch.stack(rows["pvar"])
            pvar[0] = 0.0  # diffusers clamps it to 1e-20
            p = f"{sched}_{tag}_"
            put(p + "timesteps", kept)
            put(p + "betas", torch.stack(rows["betas"]))
            put(p + "alphas_cumprod", abar)
            put(p + "alphas_cumprod_prev", torch.cat([torch.ones(1, dtype=F64), abar[:-1]]))
            put(p + "posterior_variance", pvar)
            put(p + "posterior_log_variance_clipped", plogvar)
            put(p + "posterior_mean_coef1", torch.stack(rows["coef1"]))
            put(p + "posterior_mean_coef2", torch.stack(rows["coef2"]))


# ---- q_sample ----------------------------------------------------------------------------------------------------
def make_q_sample():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 3, 5, 5, generator=g, dtype=F64)
    noise = torch.randn(4, 3, 5, 5, generator=g, dtype=F64)
    put("q_x0", x0)
    put("q_noise", noise)
    for tag, idx in (("full", [0, 17, 500, 999]), ("250", [0, 1, 124, 249])):
        s, kept = respaced_ddpm("linear", tag)
        idx = torch.tensor(idx)
        put(f"q_{tag}_t", idx)
        put(f"q_{tag}_expected", s.add_noise(x0, noise, kept[idx]))


# ---- one DDPM step (learned_range) and one DDIM step ----------------------------------------------------------------
def make_steps():
    cases = [("linear", "full", [1, 437, 999]), ("linear", "250", [1, 100, 249]), ("cosine", "full", [1, 600, 999])]
    n = 0
    for sched, tag, idxs in cases:
        s, kept = respaced_ddpm(sched, tag, variance_type="learned_range")
        for i in idxs:
            g = torch.Generator().manual_seed(100 + n)
            x = torch.randn(2, 4, 3, 3, generator=g, dtype=F64)
            out = torch.cat([torch.randn(2, 4, 3, 3, generator=g, dtype=F64),
                             torch.tanh(torch.randn(2, 4, 3, 3, generator=g, dtype=F64))], 1)
            seed = 1000 + n
            noise = randn_tensor((2, 4, 3, 3), generator=torch.Generator().manual_seed(seed), dtype=F64)
            k = int(kept[i])
            res = s.step(out, k, x, generator=torch.Generator().manual_seed(seed))
            p = f"ddpm{n}_"
            META[p + "case"] = {"schedule": sched, "respacing": tag, "index": i, "timestep": k}
            put(p + "x", x)
            put(p + "out", out)
            put(p + "noise", noise)
            put(p + "prev", res.prev_sample)
            put(p + "pred_x0", res.pred_original_sample)
            n += 1
    META["ddpm_cases"] = n

    cases = [("ddim50", 50, [0, 25, 49]), ("full", 1000, [500])]
    n = 0
    for tag, steps, idxs in cases:
        s = ddim64("linear", steps)
        kept = torch.sort(s.timesteps).values
        for i in idxs:
            for eta in (0.0, 1.0):
                g = torch.Generator().manual_seed(200 + n)
                x = torch.randn(2, 4, 3, 3, generator=g, dtype=F64)
                eps = torch.randn(2, 4, 3, 3, generator=g, dtype=F64)
                v = torch.tanh(torch.randn(2, 4, 3, 3, generator=g, dtype=F64))
                noise = torch.randn(2, 4, 3, 3, generator=g, dtype=F64)
                k = int(kept[i])
                res = s.step(eps, k, x, eta=eta, variance_noise=noise if eta > 0 else None)
                p = f"ddim{n}_"
                META[p + "case"] = {"respacing": tag, "index": i, "timestep": k, "eta": eta}
                put(p + "x", x)
                put(p + "out", torch.cat([eps, v], 1))
                put(p + "noise", noise)
                put(p + "prev", res.prev_sample)
                put(p + "pred_x0", res.pred_original_sample)
                n += 1
    META["ddim_cases"] = n


# ---- loss terms: IDDPM formulas (diffusers has no variational-bound terms) -------------------------------------------
def normal_kl(m1, lv1, m2, lv2):
    # KL between two Gaussians, IDDPM / Ho et al.
    return 0.5 * (-1.0 + lv2 - lv1 + torch.exp(lv1 - lv2) + (m1 - m2) ** 2 * torch.exp(-lv2))


def approx_cdf(x):
    # tanh approximation of the standard normal CDF (Page 1977), used by IDDPM's decoder.
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_log_likelihood(x, mean, log_scale):
    # log-probability of the 256-bin (width 2/255) discretization of N(mean, exp(log_scale)^2) on [-1, 1];
    # the edge bins extend to +-infinity (IDDPM eq. 13 / Ho et al.).
    inv = torch.exp(-log_scale)
    hi = approx_cdf(inv * (x - mean + 1.0 / 255))
    lo = approx_cdf(inv * (x - mean - 1.0 / 255))
    log_hi = torch.log(hi.clamp(min=1e-12))
    log_1m_lo = torch.log((1.0 - lo).clamp(min=1e-12))
    log_mid = torch.log((hi - lo).clamp(min=1e-12))
    return torch.where(x < -0.999, log_hi, torch.where(x > 0.999, log_1m_lo, log_mid))


def make_losses():
    for tag, idx in (("full", [0, 0, 1, 10, 500, 999]), ("250", [0, 1, 2, 50, 124, 249])):
        s, kept = respaced_ddpm("linear", tag)
        tab = {k: TENSORS[f"linear_{tag}_{k}"][1] for k in
               ("betas", "alphas_cumprod", "posterior_log_variance_clipped", "posterior_mean_coef1",
                "posterior_mean_coef2")}
        g = torch.Generator().manual_seed(300)
        x0 = torch.randint(0, 256, (6, 3, 4, 4), generator=g).to(F64) / 255 * 2 - 1
        x0[0, 0, 0, :2] = torch.tensor([-1.0, 1.0])
        noise = torch.randn(6, 3, 4, 4, generator=g, dtype=F64)
        eps = noise + 0.3 * torch.randn(6, 3, 4, 4, generator=g, dtype=F64)
        v = torch.tanh(torch.randn(6, 3, 4, 4, generator=g, dtype=F64))
        t = torch.tensor(idx)
        x_t = s.add_noise(x0, noise, kept[t])

        def at(name):
            return tab[name][t].view(-1, 1, 1, 1)

        abar = at("alphas_cumprod")
        true_mean = at("posterior_mean_coef1") * x0 + at("posterior_mean_coef2") * x_t
        true_logvar = at("posterior_log_variance_clipped").expand_as(x0)
        pred_x0 = (x_t - torch.sqrt(1 - abar) * eps) / torch.sqrt(abar)  # Ho et al. eq. 15 solved for x0
        model_mean = at("posterior_mean_coef1") * pred_x0 + at("posterior_mean_coef2") * x_t
        frac = (v + 1) / 2  # IDDPM eq. 15: v interpolates log beta_t and log beta~_t
        model_logvar = frac * torch.log(at("betas")) + (1 - frac) * at("posterior_log_variance_clipped")
        dims = (1, 2, 3)
        kl = normal_kl(true_mean, true_logvar, model_mean, model_logvar).mean(dims) / math.log(2.0)
        nll = -discretized_log_likelihood(x0, model_mean, 0.5 * model_logvar).mean(dims) / math.log(2.0)
        vb = torch.where(t == 0, nll, kl)  # DiT's LossType.MSE: no num_timesteps / 1000 rescaling
        mse = ((eps - noise) ** 2).mean(dims)
        p = f"loss_{tag}_"
        put(p + "x0", x0)
        put(p + "noise", noise)
        put(p + "t", t)
        put(p + "x_t", x_t)
        put(p + "out", torch.cat([eps, v], 1))
        put(p + "mse", mse)
        put(p + "vb", vb)
        put(p + "loss", mse + vb)


# ---- sampling loops with a toy class-conditional network ------------------------------------------------------------
# The same closed-form network is written in tests/diffusion/test_diffusion.cpp (toy_net there).
C, NULL_LABEL = 4, 10


def toy_net(x, t, y):
    c = torch.arange(C, dtype=F64)
    a = (0.5 + 0.1 * c).view(1, C, 1, 1).to(x.dtype)
    b = (0.3 - 0.2 * c).view(1, C, 1, 1).to(x.dtype)
    emb = 0.4 * torch.sin(1.7 * y.to(F64).view(-1, 1) + 0.9 * c.view(1, -1))  # [M, C]
    emb = emb.view(-1, C, 1, 1).to(x.dtype)
    tt = (t.to(F64) / 1000).view(-1, 1, 1, 1).to(x.dtype)
    # mostly 0.9 x, as a denoiser's eps roughly tracks x_t, so the samples stay O(1) under guidance scale 4
    eps = 0.9 * x + 0.1 * torch.tanh(a * x + 0.2 * torch.roll(x, -1, dims=1) + b * tt + emb)
    var = torch.tanh(0.3 * x - 0.5 * tt + 0.5 * emb)
    return torch.cat([eps, var], 1)


def cfg(x, t, y, scale, first3):
    # Classifier-free guidance as in DiT's forward_with_cfg: one forward on [x; x] with labels [y; null].
    n = x.shape[0]
    out = toy_net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, NULL_LABEL)]))
    cond, uncond = out[:n], out[n:]
    g = 3 if first3 else C
    guided = uncond[:, :g] + scale * (cond[:, :g] - uncond[:, :g])
    return torch.cat([guided, cond[:, g:]], 1)


def make_loops():
    labels = torch.tensor([1, 5, 9])
    x_T = torch.randn(3, C, 4, 4, generator=torch.Generator().manual_seed(400), dtype=F64)
    put("loop_labels", labels)
    put("loop_noise", x_T)
    META["loop_scale"] = 4.0
    META["loop_null_label"] = NULL_LABEL

    # DDIM, eta = 0, "ddim20" (diffusers "leading" 20 of 1000), float64 throughout.
    for first3 in (False, True):
        s = ddim64("linear", 20)
        x = x_T.clone()
        for k in s.timesteps:
            t = torch.full((3,), int(k))
            x = s.step(cfg(x, t, labels, 4.0, first3)[:, :C], int(k), x, eta=0.0).prev_sample
        put("loop_ddim20_eta0" + ("_first3" if first3 else ""), x)

    # DDIM eta = 1 and DDPM (learned range, IDDPM "10" = diffusers "linspace" 10) with a seeded CPU generator:
    # float32 samples so that every step's noise is torch.randn(float32) from that generator.
    s = ddim64("linear", 20)
    g = torch.Generator().manual_seed(7)
    x = x_T.float()
    for k in s.timesteps:
        t = torch.full((3,), int(k))
        x = s.step(cfg(x, t, labels, 4.0, False)[:, :C], int(k), x, eta=1.0, generator=g).prev_sample
    put("loop_ddim20_eta1_seed7", x)
    META["loop_ddim_seed"] = 7

    s = ddpm64("linear", variance_type="learned_range", timestep_spacing="linspace")
    s.set_timesteps(10)
    g = torch.Generator().manual_seed(11)
    x = x_T.float()
    for k in s.timesteps:
        t = torch.full((3,), int(k))
        x = s.step(cfg(x, t, labels, 4.0, False), int(k), x, generator=g).prev_sample
    put("loop_ddpm10_seed11", x)
    put("loop_ddpm10_timesteps", torch.sort(s.timesteps).values)
    META["loop_ddpm_seed"] = 11


def main():
    outdir = outdir_from_argv()
    script = os.path.abspath(__file__)
    if up_to_date(outdir, script):
        return
    make_tables()
    make_q_sample()
    make_steps()
    make_losses()
    make_loops()
    write_all(outdir)
    mark_done(outdir, script)


if __name__ == "__main__":
    main()
