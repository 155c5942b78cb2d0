"""`opendit train` of a tiny STDiT on a version-2 text-to-video file (tests/train/make_video_dataset.py) on CPU with
MPI: 2 and 4 ranks (ddp, zero2) equal 1 rank; resuming equals an uninterrupted run; caption dropout takes effect
(at probability 1 the captions cannot matter, at 0 they do); bf16 runs; a model built for other clips or captions
is one clear error.

usage: test_train_video.py OPENDIT MPIRUN PYTHON [unittest options]
"""
import os
import subprocess
import sys
import tempfile
import unittest

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

BIN = MPIRUN = PYTHON = None
HERE = os.path.dirname(os.path.abspath(__file__))

# The model: tests/support/tiny_stdit.toml; the rest of the deck below.
with open(os.path.join(HERE, "..", "support", "tiny_stdit.toml")) as _f:
    DECK = _f.read() + """
[data]
path = "{data}"
global_batch = 8
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


def without_key_bias(w):
    """The weights with the key thirds of the qkv biases zeroed: their true gradient is 0 (softmax over keys ignores
    a bias added to every key), so Adam turns the rounding noise of their gradients into full-size steps of any
    sign, which differ with the reduction order of 1, 2 or 4 ranks. Every other tensor is compared."""
    out = dict(w)
    for k, t in w.items():
        if k.endswith("qkv.bias"):
            d = t.shape[0] // 3
            out[k] = torch.cat([t[:d], torch.zeros_like(t[d:2 * d]), t[2 * d:]])
    return out


def max_rel(a, b):
    a, b = without_key_bias(a), without_key_bias(b)
    return max(((a[k] - b[k]).abs().max() / (b[k].abs().max() + 1e-12)).item() for k in b)


class TrainVideoTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        tmpdir = tempfile.TemporaryDirectory()
        cls.addClassCleanup(tmpdir.cleanup)
        cls.tmp = tmpdir.name
        make = [PYTHON, os.path.join(HERE, "make_video_dataset.py")]
        cls.data, cls.other = os.path.join(cls.tmp, "clips.h5"), os.path.join(cls.tmp, "other_captions.h5")
        subprocess.run(make + [cls.data, "24", "4", "4", "3", "8", "8", "32", "10"], check=True)
        subprocess.run(make + [cls.other, "24", "4", "4", "3", "8", "8", "32", "10", "99"], check=True)
        with open(os.path.join(cls.tmp, "deck.toml"), "w") as f:
            f.write(DECK.format(data=cls.data, out=os.path.join(cls.tmp, "out")))
        rc, out = cls.train("base")
        if rc != 0:
            raise RuntimeError("the 1-rank run failed:\n" + out)
        cls.base_out = out
        cls.base = {w: cls.weights("base", w) for w in ("model", "ema")}

    @classmethod
    def train(cls, name, np=1, *sets, resume=None):
        cmd = ([MPIRUN, "-np", str(np), "--oversubscribe"] if np > 1 else []) + \
              [BIN, "train", "--config", os.path.join(cls.tmp, "deck.toml"), "--set", f"run.name={name}"]
        if resume:
            cmd += ["--resume", resume]
        for s in sets:
            cmd += ["--set", s]
        # One thread per rank: CPU sums then run in the same order whatever the machine's core count.
        env = dict(os.environ, OMP_NUM_THREADS="1")
        if np > 1:
            cmd[1:1] = ["-x", "OMP_NUM_THREADS"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        return p.returncode, p.stdout + p.stderr

    @classmethod
    def weights(cls, name, which="model"):
        return load_file(os.path.join(cls.tmp, "out", name, f"{which}.safetensors"))

    # Other world sizes and strategies: the same weights up to rounding. Observed 1e-6 to 2e-5 depending on the
    # CPU (2e-5: the H200 machine's host; the DiT runs of test_train.py stay under 1e-5), where a real difference
    # (a sample seen twice or missed, a gradient lost or doubled) is >= 1e-2.
    TOL = 5e-5

    def assert_close_to_base(self, name, tol, detail):
        err = max(max_rel(self.weights(name, w), self.base[w]) for w in ("model", "ema"))
        print(f"{name}: max rel. error {err:.2e} (<= {tol:g})", flush=True)
        self.assertLessEqual(err, tol, detail)

    def test_one_rank_uses_the_clips_and_skips_the_images(self):
        """1 rank trains on the 24 clips, skipping the image bucket, and writes weights with the null caption"""
        self.assertIn("24 of 26 samples", self.base_out)
        self.assertIn("skipping samples of other shapes", self.base_out)
        self.assertIn("y_embedder.y_embedding", self.base["model"])

    def test_ranks_and_strategies_equal_one_rank(self):
        """2 ranks ddp, 2 ranks zero2 and 4 ranks zero2 = 1 rank (max rel. error <= TOL)"""
        for np, strategy in [(2, "ddp"), (2, "zero2"), (4, "zero2")]:
            with self.subTest(f"{np} ranks {strategy}"):
                name = f"np{np}_{strategy}"
                rc, out = self.train(name, np, f"parallel.strategy={strategy}")
                self.assertEqual(rc, 0, out[-3000:])
                self.assert_close_to_base(name, self.TOL, out[-2000:])

    def test_resume_is_bit_exact_and_across_world_sizes(self):
        """3 steps then resumed = uninterrupted: same world size bit-exact; written on 2 ranks, resumed on 1"""
        rc1, out1 = self.train("resume", 1, "train.steps=3")
        rc2, out2 = self.train("resume", 1, resume="auto")
        self.assertEqual((rc1, rc2), (0, 0), out1[-1500:] + out2[-1500:])
        self.assert_close_to_base("resume", 0, out2[-1500:])
        rc1, out1 = self.train("resume2to1", 2, "train.steps=3", "parallel.strategy=zero2")
        rc2, out2 = self.train("resume2to1", 1, resume="auto")
        self.assertEqual((rc1, rc2), (0, 0), out1[-1500:] + out2[-1500:])
        self.assert_close_to_base("resume2to1", self.TOL, out2[-1500:])

    def test_fine_tune_keeps_the_weights_null_caption(self):
        """weights -> step-0 checkpoint -> a run of another seed fine-tunes it: the null caption stays the weights'"""
        # Pretrained weights whose null caption is not what a fresh model of this deck draws.
        key, src = "y_embedder.y_embedding", os.path.join(self.tmp, "out", "base", "ema.safetensors")
        with safe_open(src, "pt") as f:
            meta = f.metadata()
        w = load_file(src)
        w[key] = torch.randn(w[key].shape, generator=torch.Generator().manual_seed(5))
        pretrained, start = os.path.join(self.tmp, "pretrained.safetensors"), os.path.join(self.tmp, "start")
        save_file(w, pretrained, metadata=meta)
        p = subprocess.run([BIN, "convert", pretrained, start, "--to", "checkpoint"], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        rc, out = self.train("finetune", 2, "train.steps=2", resume=os.path.join(start, "ckpt-00000000.h5"))
        self.assertEqual(rc, 0, out[-2000:])
        for which in ("model", "ema"):
            self.assertTrue(torch.equal(self.weights("finetune", which)[key], w[key]), which)

    def test_caption_dropout_takes_effect(self):
        """dropout 1: other captions give the same weights; dropout 0: they do not"""
        runs = {}
        for p in ("1", "0"):
            for data in (self.data, self.other):
                name = f"drop{p}_{os.path.basename(data)[:-3]}"
                rc, out = self.train(name, 1, f"model.class_dropout_prob={p}", f"data.path={data}")
                self.assertEqual(rc, 0, out[-2000:])
                runs[(p, data)] = self.weights(name)
        same = max_rel(runs[("1", self.other)], runs[("1", self.data)])
        diff = max_rel(runs[("0", self.other)], runs[("0", self.data)])
        print(f"captions replaced: dropout 1 -> {same:.2e}, dropout 0 -> {diff:.2e}", flush=True)
        self.assertEqual(same, 0.0, "with every caption dropped, the captions must not matter")
        self.assertGreater(diff, 1e-3, "with no dropout, the captions must matter")

    def test_bf16_runs_and_tracks_fp32(self):
        """bf16 compute: the weights stay within 2e-2 (norm) of fp32's after 6 steps"""
        rc, out = self.train("bf16", 1, "train.precision=bf16")
        self.assertEqual(rc, 0, out[-2000:])
        a, b = self.weights("bf16"), self.base["model"]
        num = sum(((a[k] - b[k]) ** 2).sum().item() for k in b)
        den = sum((b[k] ** 2).sum().item() for k in b)
        self.assertLessEqual((num / den) ** 0.5, 2e-2)

    def test_model_for_other_clips_or_captions_is_one_clear_error(self):
        """a model built for 4 frames, or for 64-wide captions, or for 5 tokens: one error naming both"""
        for sets, want in [(["model.num_frames=4"], "but the model takes [4, 4, 8, 8]"),
                           (["model.caption_channels=64"], "but the model takes at most 10 x 64"),
                           (["model.text_length=5"], "but the model takes at most 5 x 32")]:
            with self.subTest(sets[0]):
                rc, out = self.train("bad", 2, *sets)
                self.assertNotEqual(rc, 0, out[-2000:])
                self.assertIn(want, out)
                self.assertNotIn("Traceback", out)

    # One GPU steps as a CUDA graph after two eager steps (train.cuda_graph): for STDiT and Latte (cross-attention with
    # caption masks, temporal attention) the replayed steps must equal eager ones, and the GPU run the CPU's.
    @unittest.skipUnless(torch.cuda.is_available(), "no GPU: the GPU training checks are skipped")
    def test_gpu_cuda_graph_steps_equal_eager_steps(self):
        """one GPU, STDiT and Latte: CUDA-graph steps (queued ahead) = eager steps (bf16); GPU fp32 = CPU"""
        for kind in ("stdit", "latte"):
            with self.subTest(kind):
                sets = (f"model.type={kind}", "parallel.device=cuda", "train.steps=6")
                runs = {}
                for name, more in [("eager", ("train.precision=bf16", "train.cuda_graph=false")),
                                   ("graph", ("train.precision=bf16", "train.log_every=100")), ("fp32", ())]:
                    rc, out = self.train(f"gpu_{kind}_{name}", 1, *sets, *more)
                    self.assertEqual(rc, 0, out[-3000:])
                    self.assertEqual("captured as a CUDA graph" in out, name != "eager", out[-3000:])
                    # Untimed graph steps are queued while the step before them runs (the same bits).
                    self.assertEqual("steps were queued on the GPU" in out, name == "graph", out[-3000:])
                    runs[name] = {w: self.weights(f"gpu_{kind}_{name}", w) for w in ("model", "ema")}
                err = max(max_rel(runs["graph"][w], runs["eager"][w]) for w in ("model", "ema"))
                print(f"{kind}: graph vs eager max rel. error {err:.2e} (<= 1e-6)", flush=True)
                self.assertLessEqual(err, 1e-6)
                if kind == "stdit":  # the CPU run of this deck is the base run; observed 1.0e-4 on the H200
                    err = max(max_rel(runs["fp32"][w], self.base[w]) for w in ("model", "ema"))
                    print(f"stdit: GPU fp32 (graph) vs CPU max rel. error {err:.2e} (<= 3e-4)", flush=True)
                    self.assertLessEqual(err, 3e-4)


if __name__ == "__main__":
    BIN, MPIRUN, PYTHON = sys.argv[1:4]
    unittest.main(argv=[sys.argv[0]] + sys.argv[4:], verbosity=2)
