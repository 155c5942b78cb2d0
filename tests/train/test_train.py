"""`opendit train` end to end on CPU with MPI: the same deck, seed and global batch give the same weights on 1, 2
and 4 ranks in ddp, zero1 and zero2; accumulation equals one full batch; resuming equals an uninterrupted run; bf16
tracks fp32; the loss goes down; bad input fails cleanly. With a GPU visible, the GPU run is checked against the CPU
run as well (skipped otherwise).

A unittest suite: setUpClass makes the toy datasets and the 1-rank run that the comparisons are made against.

usage: test_train.py OPENDIT MAKE_TOY_DATASET MPIRUN [unittest options, e.g. -k resume]
"""
import json
import os
import resource
import subprocess
import sys
import tempfile
import unittest

import torch
from safetensors.torch import load_file

BIN = MAKE = MPIRUN = None  # from the command line, at the end of the file

# The model: tests/support/tiny_dit.toml; the rest of the deck below.
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support", "tiny_dit.toml")) as _f:
    TINY_MODEL = _f.read()
DECK = TINY_MODEL + """
[data]
path = "{data}"
global_batch = 16
prefetch = 2
[train]
steps = 6
precision = "fp32"
lr = 1e-3
warmup_steps = 2
grad_clip = 0.5
ema_decay = 0.9
log_every = 1
[run]
out_dir = "{out}"
[parallel]
device = "cpu"
"""


def train(tmp, name, np=1, *sets, deck="deck.toml", timeout=600, resume=None, flags=()):
    cmd = ([MPIRUN, "-np", str(np), "--oversubscribe"] if np > 1 else []) + \
          [BIN, "train", "--config", os.path.join(tmp, deck), "--set", f"run.name={name}"]
    if resume:
        cmd += ["--resume", resume]
    cmd += list(flags)
    for s in sets:
        cmd += ["--set", s]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def weights(tmp, name, which):
    return load_file(os.path.join(tmp, "out", name, f"{which}.safetensors"))


def max_rel(a, b):
    return max(((a[k] - b[k]).abs().max() / (b[k].abs().max() + 1e-12)).item() for k in b)


def rel_norm(a, b):
    """||a - b|| / ||b|| over all tensors together."""
    num = sum(((a[k] - b[k]) ** 2).sum().item() for k in b)
    den = sum((b[k] ** 2).sum().item() for k in b)
    return (num / den) ** 0.5


def losses(tmp, name):
    with open(os.path.join(tmp, "out", name, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f]


def differing(a, b):
    """The names of b's tensors that a lacks or holds with other values."""
    return [k for k in b if k not in a or not torch.equal(a[k], b[k])]


class TrainTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        tmpdir = tempfile.TemporaryDirectory()
        cls.addClassCleanup(tmpdir.cleanup)  # also runs when setUpClass fails, unlike tearDownClass
        cls.tmp = tmpdir.name
        cls.deck = os.path.join(cls.tmp, "deck.toml")
        cls.data, cls.nan_data = os.path.join(cls.tmp, "toy.h5"), os.path.join(cls.tmp, "nan.h5")
        subprocess.run([MAKE, cls.data, "64", "4", "3", "8"], check=True)
        subprocess.run([MAKE, cls.nan_data, "64", "4", "3", "8", "nan"], check=True)
        with open(cls.deck, "w") as f:
            f.write(DECK.format(data=cls.data, out=os.path.join(cls.tmp, "out")))
        cls.base_rc, cls.base_out = train(cls.tmp, "base")
        if cls.base_rc != 0:
            raise RuntimeError("the 1-rank run that the others are compared with failed:\n" + cls.base_out)
        cls.base = {w: weights(cls.tmp, "base", w) for w in ("model", "ema")}
        cls.base_ckpt = os.path.join(cls.tmp, "out", "base", "checkpoints", "ckpt-00000006.h5")

    def assert_close_to_base(self, name, tol, detail):
        """The run's model and EMA weights equal the 1-rank run's to `tol` (max rel. error over all tensors)."""
        err = max(max_rel(weights(self.tmp, name, w), self.base[w]) for w in ("model", "ema"))
        print(f"{name}: max rel. error {err:.2e} (<= {tol:g})", flush=True)
        self.assertLessEqual(err, tol, detail)

    def assert_bf16_tracks_fp32(self, fp32, bf16):
        # bf16 tolerance: every logged loss within 2% of fp32's, and the weights within 1e-3 in norm over all
        # parameters after 6 steps at lr 1e-3. (Per-tensor maxima are not a fair measure: tensors that start at
        # zero, like adaLN-Zero's, hold only a few Adam steps whose signs bf16 noise can flip.)
        lf, lb = losses(self.tmp, fp32), losses(self.tmp, bf16)
        dl = max(abs(a - b) / a for a, b in zip(lf, lb))
        err = rel_norm(weights(self.tmp, bf16, "model"), weights(self.tmp, fp32, "model"))
        print(f"{fp32} vs {bf16}: loss curve {lf} vs {lb}, loss {dl:.2e} (<= 2e-2), weights {err:.2e} (<= 1e-3)",
              flush=True)
        self.assertLessEqual(dl, 2e-2, "largest relative difference of the logged losses")
        self.assertLessEqual(err, 1e-3, "relative difference of the model weights in norm")

    def test_one_rank_trains_and_writes_weights(self):
        """1 rank trains and writes weights"""
        self.assertEqual(self.base_rc, 0, self.base_out)
        self.assertIn("ema.safetensors", self.base_out, self.base_out)

    def test_ranks_and_strategies_equal_one_rank(self):
        """2 and 4 ranks in ddp, zero1 and zero2 = 1 rank (max rel. error <= 1e-5)"""
        for np, strategy in [(2, "ddp"), (2, "zero1"), (2, "zero2"), (4, "ddp"), (4, "zero1"), (4, "zero2")]:
            with self.subTest(f"{np} ranks {strategy}"):
                name = f"np{np}_{strategy}"
                rc, out = train(self.tmp, name, np, f"parallel.strategy={strategy}")
                self.assertEqual(rc, 0, out)
                self.assert_close_to_base(name, 1e-5, out[-2000:])

    def test_accumulation_4_micro_batches_equal_one_full_batch(self):
        """4 micro-batches = one full batch (max rel. error <= 1e-5)"""
        rc, out = train(self.tmp, "accum4", 1, "train.accumulation=4")
        self.assertEqual(rc, 0, out[-2000:])
        self.assert_close_to_base("accum4", 1e-5, out[-2000:])

    def test_accumulation_2_ranks_x_2_micro_batches_equal_one_rank(self):
        """2 ranks x 2 micro-batches = 1 rank (max rel. error <= 1e-5)"""
        rc, out = train(self.tmp, "np2_accum2", 2, "train.accumulation=2")
        self.assertEqual(rc, 0, out[-2000:])
        self.assert_close_to_base("np2_accum2", 1e-5, out[-2000:])

    def test_resume_same_world_size_is_bit_exact(self):
        """resumed after 3 steps = uninterrupted, same world size (max rel. error == 0)"""
        rc1, out1 = train(self.tmp, "resume", 1, "train.steps=3")
        rc2, out2 = train(self.tmp, "resume", 1, resume="auto")
        detail = out1[-1500:] + out2[-1500:]
        self.assertEqual((rc1, rc2), (0, 0), detail)
        self.assert_close_to_base("resume", 0, detail)
        self.assertIn("resumed from", out2, detail)
        self.assertIn("ckpt-00000003.h5", out2, detail)

    def test_resume_4_ranks_zero2_on_2_ranks_ddp(self):
        """written by 4 ranks (zero2), resumed on 2 (ddp) = uninterrupted (max rel. error <= 1e-5)"""
        rc1, out1 = train(self.tmp, "resume4to2", 4, "train.steps=3", "parallel.strategy=zero2")
        rc2, out2 = train(self.tmp, "resume4to2", 2, "parallel.strategy=ddp", resume="auto")
        detail = out1[-1500:] + out2[-1500:]
        self.assertEqual((rc1, rc2), (0, 0), detail)
        self.assert_close_to_base("resume4to2", 1e-5, detail)
        self.assertIn("written by 4 ranks", out2, detail)

    def test_convert_checkpoint_ema_to_safetensors(self):
        """opendit convert: checkpoint EMA -> safetensors equals the run's ema.safetensors"""
        exported = os.path.join(self.tmp, "from_ckpt.safetensors")
        p = subprocess.run([BIN, "convert", self.base_ckpt, exported], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertEqual(differing(load_file(exported), self.base["ema"]), [], p.stdout + p.stderr)

    def test_convert_safetensors_to_step0_checkpoint_and_fine_tune(self):
        """safetensors -> step-0 checkpoint holds the weights, and 2 ranks fine-tune from it"""
        start = os.path.join(self.tmp, "start")
        step0 = os.path.join(start, "ckpt-00000000.h5")
        p = subprocess.run([BIN, "convert", os.path.join(self.tmp, "out", "base", "ema.safetensors"), start, "--to",
                            "checkpoint", "--config", self.deck], capture_output=True, text=True)
        rc, out = train(self.tmp, "finetune", 2, "train.steps=2", resume=step0)
        back = os.path.join(self.tmp, "start_back.safetensors")
        q = subprocess.run([BIN, "convert", step0, back, "--group", "model"], capture_output=True, text=True)
        detail = p.stdout + p.stderr + q.stdout + q.stderr + out[-1500:]
        self.assertEqual(p.returncode, 0, detail)
        self.assertEqual(q.returncode, 0, detail)
        self.assertEqual(differing(load_file(back), self.base["ema"]), [], detail)
        self.assertEqual(rc, 0, detail)
        self.assertIn("resumed from", out, detail)

    def test_resume_auto_without_checkpoint_starts_fresh(self):
        """--resume auto without a checkpoint starts fresh"""
        rc, out = train(self.tmp, "fresh", 1, "train.steps=1", resume="auto")
        self.assertEqual(rc, 0, out[-1500:])
        self.assertIn("starting at step 0", out, out[-1500:])

    def test_resume_other_models_checkpoint_is_one_clear_error(self):
        """resuming another model's checkpoint is one clear error"""
        rc, out = train(self.tmp, "other", 1, "model.depth=3", resume=self.base_ckpt, timeout=60)
        self.assertNotEqual(rc, 0, out[-1500:])
        self.assertEqual(out.count("opendit: error"), 1, out[-1500:])
        self.assertIn("ckpt-00000006.h5", out, out[-1500:])

    def test_bf16_tracks_fp32(self):
        """bf16 tracks fp32 (loss <= 2e-2, weights <= 1e-3)"""
        rc, out = train(self.tmp, "bf16", 1, "train.precision=bf16")
        self.assertEqual(rc, 0, out)
        self.assert_bf16_tracks_fp32("base", "bf16")

    def test_ema_every_3_moves_the_ema_less_often(self):
        """train.ema_every=3: the EMA moves less often (differs from every-step EMA, model weights equal)"""
        rc, out = train(self.tmp, "ema3", 1, "train.ema_every=3")
        self.assertEqual(rc, 0, out)
        self.assertEqual(max_rel(weights(self.tmp, "ema3", "model"), self.base["model"]), 0, "model weights")
        self.assertGreater(max_rel(weights(self.tmp, "ema3", "ema"), self.base["ema"]), 1e-6, "EMA weights")

    def test_activation_checkpointing_gives_the_same_weights(self):
        """activation checkpointing gives the same weights (max rel. error <= 1e-6)"""
        rc, out = train(self.tmp, "ckpt", 1, "train.activation_checkpointing=true")
        self.assertEqual(rc, 0, out[-2000:])
        err = max_rel(weights(self.tmp, "ckpt", "model"), self.base["model"])
        print(f"ckpt: max rel. error {err:.2e} (<= 1e-6)", flush=True)
        self.assertLessEqual(err, 1e-6, out[-2000:])

    def test_learning_run_on_2_ranks(self):
        """150 steps on 2 ranks: the loss goes down, the log lines and the timing table"""
        rc, out = train(self.tmp, "learn", 2, "train.steps=150", "train.log_every=25", "train.grad_clip=0")
        with self.subTest("the loss goes down"):
            self.assertEqual(rc, 0, out)
            curve = losses(self.tmp, "learn")
            print(f"learn: loss {curve[0]:.3f} -> {curve[-1]:.3f}", flush=True)
            self.assertLess(curve[-1], 0.7 * curve[0], str(curve))
        with self.subTest("log lines have the required fields"):
            for field in ("step 150/150", "epoch", "loss", "grad", "lr", "img/s", "ETA"):
                self.assertIn(field, out, out[-1500:])
        with self.subTest("the timing table closes the run"):
            self.assertIn("time per phase over 2 ranks", out, out)
            self.assertIn("communication", out, out)

    def test_profile_step_with_no_save(self):
        """train.profile_step=2 with --no-save: a per-op table and profile.json, and nothing but logs"""
        rc, out = train(self.tmp, "profile", 1, "train.profile_step=2", "train.steps=3", timeout=120,
                        flags=["--no-save"])
        run_dir = os.path.join(self.tmp, "out", "profile")
        with self.subTest("--no-save writes no checkpoint and no weights"):
            self.assertEqual(rc, 0, out[-1500:])
            run_files = os.listdir(run_dir)
            ckpts = os.path.join(run_dir, "checkpoints")
            self.assertEqual([f for f in run_files if f.endswith(".safetensors")], [], str(run_files))
            self.assertFalse(os.path.exists(ckpts) and os.listdir(ckpts), str(run_files))
        with self.subTest("train.profile_step writes a per-op table and profile.json"):
            prof = os.path.join(run_dir, "profile.json")
            self.assertEqual(rc, 0, out[-1500:])
            self.assertIn("profile of step 2", out, out[-1500:])
            self.assertIn("aten::", out, out[-1500:])
            self.assertTrue(os.path.exists(prof), out[-1500:])
            with open(prof) as f:
                self.assertGreater(len(json.load(f)["rows"]), 5, out[-1500:])

    def test_dry_run_validates_and_exits_0(self):
        """--dry-run validates and exits 0"""
        # 4 ranks, zero1: the plan is printed once, nothing is trained and nothing is written.
        rc, out = train(self.tmp, "dry", 4, "parallel.strategy=zero1", flags=["--dry-run"])
        self.assertEqual(rc, 0, out[-1500:])
        self.assertEqual(out.count("dry run: deck, data and mesh are valid"), 1, out[-1500:])
        self.assertNotIn("step 1/", out)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "out", "dry")), "a dry run wrote its run folder")
        p = subprocess.run([MPIRUN, "-np", "2", BIN, "train", "--dry-run", "--config", self.deck],
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_bad_input_is_one_clear_error(self):
        """bad input: one clear error"""
        bad = [("data.path=" + os.path.join(self.tmp, "none.h5"), "none.h5"),
               ("data.global_batch=15", "multiple of the data-parallel size"),
               ("data.global_batch=128", "fewer than the global batch 128"),
               ("model.input_size=16", "but the model takes"),
               ("train.min_lr=1", "exceeds train.lr"),
               ("train.checkpoint_blocks=3", "exceeds the model's 2 blocks")]
        for setting, message in bad:
            with self.subTest(f"bad input {setting}"):
                rc, out = train(self.tmp, "bad", 2, setting, timeout=60)
                self.assertNotEqual(rc, 0, out[-1500:])
                self.assertIn(message, out, out[-1500:])
                self.assertEqual(out.count("opendit: error"), 1, out[-1500:])

    def out_of_memory_run(self, device, limit_bytes=None, *sets):
        """A run whose first step cannot fit: 4096 samples of 32x32 (256 tokens) at once. Returns (rc, output)."""
        data = os.path.join(self.tmp, "big.h5")
        if not os.path.exists(data):
            subprocess.run([MAKE, data, "4096", "4", "3", "32"], check=True, capture_output=True)
        cmd = [BIN, "train", "--config", self.deck, "--set", "run.name=oom_" + device, "--set", "data.path=" + data,
               "--set", "data.global_batch=4096", "--set", "model.input_size=32", "--set", "parallel.device=" + device,
               "--no-save"] + [a for s in sets for a in ("--set", s)]
        limit = (lambda: resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))) if limit_bytes else None
        # Under the limit the GPUs are hidden: CUDA's start alone reserves more address space than that.
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="") if limit_bytes else None
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, preexec_fn=limit, env=env)
        return p.returncode, p.stdout + p.stderr

    def assert_clear_out_of_memory(self, rc, out, allocator):
        self.assertEqual(rc, 1, out[-3000:])
        self.assertEqual(out.count("opendit: error: out of memory in training step 1: " + allocator), 1, out[-3000:])
        for advice in ("activations of 4096 samples on this rank", "train.activation_checkpointing = true",
                       "train.accumulation = 2 (2048 samples a pass instead of 4096"):
            self.assertIn(advice, out, out[-3000:])
        self.assertNotIn("terminate called", out)

    def test_out_of_memory_is_one_clear_error(self):
        """a step that does not fit in memory: one error that says what to change"""
        # The process is limited to 6 GB of address space: the program starts and sets up in about 4, the step's
        # activations take more than 12 (measured on the 2-core CI machine).
        rc, out = self.out_of_memory_run("cpu", 6 * 10**9)
        self.assert_clear_out_of_memory(rc, out, "host memory: an allocation of ")

    @unittest.skipUnless(torch.cuda.is_available(), "no GPU: the GPU training checks are skipped")
    def test_gpu_out_of_memory_is_one_clear_error(self):
        """GPU: a step that does not fit in the GPU's memory: one error that says what to change"""
        # hidden 1152 (DiT-XL's width), 4 blocks: about 5 GB a 4096 x 256 x 1152 activation, hundreds of GB a step.
        rc, out = self.out_of_memory_run("cuda", None, "model.hidden_size=1152", "model.num_heads=16",
                                         "model.depth=4")
        self.assert_clear_out_of_memory(rc, out, "CUDA out of memory. Tried to allocate ")

    def test_non_finite_losses_skip_steps_then_stop(self):
        """non-finite losses: steps skipped with a warning, then a clear stop"""
        rc, out = train(self.tmp, "nan", 2, "data.path=" + self.nan_data, "train.max_nonfinite_steps=3", timeout=60)
        self.assertNotEqual(rc, 0, out[-1500:])
        self.assertIn("step skipped", out, out[-1500:])
        self.assertIn("3 consecutive steps", out, out[-1500:])

    # The GPU path: NCCL communicator (world of 1), CUDA kernels; fp32 to GPU-vs-CPU tolerance.
    @unittest.skipUnless(torch.cuda.is_available(), "no GPU: the GPU training checks are skipped")
    def test_gpu_equals_cpu_and_gpu_bf16_tracks_fp32(self):
        """GPU (NCCL, world of 1) = CPU run (max rel. error <= 1e-4); GPU bf16 tracks fp32"""
        with self.subTest("GPU (NCCL, world of 1) = CPU run"):
            rc, out = train(self.tmp, "gpu", 1, "parallel.device=cuda")
            self.assertEqual(rc, 0, out[-2000:])
            self.assert_close_to_base("gpu", 1e-4, out[-2000:])
        with self.subTest("GPU bf16 tracks fp32 (loss <= 2e-2, weights <= 1e-3)"):
            rc, out = train(self.tmp, "gpu_bf16", 1, "parallel.device=cuda", "train.precision=bf16")
            self.assertEqual(rc, 0, out)
            self.assert_bf16_tracks_fp32("gpu", "gpu_bf16")

    # 50 steps: the fused kernels (LayerNorm+modulate, gated residual, bias+GELU, AdamW+EMA) against the CPU's ATen
    # ops over a longer run. Adam amplifies rounding differences over steps: 1e-3 on weights.
    @unittest.skipUnless(torch.cuda.is_available(), "no GPU: the GPU training checks are skipped")
    def test_gpu_50_steps_equal_50_cpu_steps(self):
        """50 GPU steps = 50 CPU steps (weights <= 1e-3 in norm, losses <= 1e-3)"""
        long = ("train.steps=50", "train.log_every=10", "train.lr=2e-4")
        rc_c, out_c = train(self.tmp, "cpu50", 1, *long)
        rc_g, out_g = train(self.tmp, "gpu50", 1, "parallel.device=cuda", *long)
        self.assertEqual((rc_c, rc_g), (0, 0), (out_c + out_g)[-2000:])
        err = max(rel_norm(weights(self.tmp, "gpu50", w), weights(self.tmp, "cpu50", w)) for w in ("model", "ema"))
        lc, lg = losses(self.tmp, "cpu50"), losses(self.tmp, "gpu50")
        dl = max(abs(a - b) / a for a, b in zip(lc, lg))
        print(f"gpu50 vs cpu50: weights {err:.2e} in norm (<= 1e-3), losses {dl:.2e} (<= 1e-3)", flush=True)
        self.assertLessEqual(err, 1e-3, f"{lc} vs {lg}")
        self.assertLessEqual(dl, 1e-3, f"{lc} vs {lg}")

    # One GPU replays each step as a CUDA graph after two eager steps (train.cuda_graph, on by default): the same
    # kernels on the same inputs. Two micro-batches and clipping go through the graph; a run resumed after step 4
    # warms up and captures again.
    @unittest.skipUnless(torch.cuda.is_available(), "no GPU: the GPU training checks are skipped")
    def test_gpu_cuda_graph_steps_equal_eager_steps(self):
        """one GPU: CUDA-graph steps = eager steps (bf16, 2 micro-batches; resumed across a capture too)"""
        sets = ("parallel.device=cuda", "train.precision=bf16", "train.accumulation=2", "train.steps=8",
                "train.checkpoint_every=4")
        rc_e, out_e = train(self.tmp, "gpu_eager", 1, *sets, "train.cuda_graph=false")
        rc_g, out_g = train(self.tmp, "gpu_graph", 1, *sets)
        rc_r1, out_r1 = train(self.tmp, "gpu_graph_resumed", 1, *sets[:-2], "train.steps=4")
        rc_r2, out_r2 = train(self.tmp, "gpu_graph_resumed", 1, *sets, resume="auto")
        # Untimed steps (no log line between) are queued while the step before them runs: the same bits.
        rc_a, out_a = train(self.tmp, "gpu_graph_ahead", 1, *sets, "train.log_every=100")
        detail = (out_e + out_g + out_r1 + out_r2 + out_a)[-3000:]
        self.assertEqual((rc_e, rc_g, rc_r1, rc_r2, rc_a), (0, 0, 0, 0, 0), detail)
        self.assertRegex(out_a, r"\n[1-9]\d* steps were queued on the GPU while the step before them ran", detail)
        self.assertNotIn("steps were queued", out_g, detail)  # every step timed (log_every = 1): none ahead
        self.assertIn("step 3: captured as a CUDA graph", out_g, detail)
        self.assertIn("step 7: captured as a CUDA graph", out_r2, detail)
        self.assertNotIn("captured", out_e, detail)
        self.assertIn("graph replay", out_g, detail)  # the phase table's row
        eager = {w: weights(self.tmp, "gpu_eager", w) for w in ("model", "ema")}
        for name in ("gpu_graph", "gpu_graph_resumed", "gpu_graph_ahead"):
            got = {w: weights(self.tmp, name, w) for w in ("model", "ema")}
            err = max(rel_norm(got[w], eager[w]) for w in got)
            print(f"{name} vs gpu_eager: weights {err:.2e} in norm (<= 1e-6), bit-identical tensors: "
                  f"{sum(len(eager[w]) - len(differing(got[w], eager[w])) for w in got)} of "
                  f"{sum(len(eager[w]) for w in got)}", flush=True)
            self.assertLessEqual(err, 1e-6, detail)
        le, lg = losses(self.tmp, "gpu_eager"), losses(self.tmp, "gpu_graph")
        self.assertLessEqual(max(abs(a - b) / a for a, b in zip(le, lg)), 1e-5, f"{le} vs {lg}")

    @unittest.skipUnless(torch.cuda.is_available(), "no GPU: the GPU training checks are skipped")
    def test_gpu_cuda_graph_skips_non_finite_steps(self):
        """one GPU: non-finite steps are skipped inside the CUDA graph too (queued ahead), then a clear stop"""
        rc, out = train(self.tmp, "gpu_nan", 1, "data.path=" + self.nan_data, "parallel.device=cuda",
                        "train.max_nonfinite_steps=5", "train.log_every=100", timeout=120)
        self.assertNotEqual(rc, 0, out[-1500:])
        self.assertIn("step 3: captured as a CUDA graph", out, out[-1500:])
        self.assertEqual(out.count("step skipped"), 5, out[-1500:])
        self.assertIn("5 consecutive steps", out, out[-1500:])


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    BIN, MAKE, MPIRUN = sys.argv[1:4]
    unittest.main(argv=sys.argv[:1] + sys.argv[4:], verbosity=2)
