"""`opendit train` with sequence parallelism on CPU ranks (MPI): every mode (DiT: ulysses, fastseq; STDiT and Latte:
ulysses, fastseq, dsp) with sp = 2 (and, for STDiT, sp = 2 x dp = 2 and sp = 4, whose 3 frames are padded to 4)
equals 1 rank after 20 steps (losses and weights); a checkpoint written at (dp, sp) = (2, 2) resumes at (4, 1) and
(1, 4); the plan and the closing table name the mode and the traffic; dsp on a DiT is one error; a rank killed in
the middle of a run ends the job instead of hanging it.

usage: test_train_sp.py OPENDIT MAKE_TOY_DATASET MPIRUN PYTHON [unittest options]
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

from safetensors.torch import load_file

BIN = MAKE = MPIRUN = PYTHON = None
HERE = os.path.dirname(os.path.abspath(__file__))

# The models: tests/support/tiny_stdit.toml (also as Latte) and tiny_dit.toml; the rest of the deck below.
with open(os.path.join(HERE, "..", "support", "tiny_stdit.toml")) as _f:
    VIDEO_MODEL = _f.read()
assert 'type = "stdit"' in VIDEO_MODEL  # the Latte deck is this one with its type replaced
with open(os.path.join(HERE, "..", "support", "tiny_dit.toml")) as _f:
    DIT_MODEL = _f.read()
REST = """
[data]
path = "{data}"
global_batch = 8
[train]
steps = 20
precision = "fp32"
lr = 1e-3
warmup_steps = 2
grad_clip = 0.5
ema_decay = 0.9
log_every = 1
checkpoint_every = 10
[run]
out_dir = "{out}"
[parallel]
device = "cpu"
strategy = "zero2"
"""

# Weights (relative norm of each tensor) and losses after 20 AdamW steps on other rank counts: rounding only
# (observed <= 2e-6 here); a real difference (a token, a head or a sample lost or counted twice) is >= 1e-2.
TOL = 1e-5


def comparable(w):
    """The weights without the key parts of attention biases: their true gradient is 0 (softmax over keys ignores a
    bias added to every key), so Adam turns the rounding noise of their gradients into full-size steps."""
    out = {}
    for k, t in w.items():
        if k.endswith("qkv.bias"):
            d = t.shape[0] // 3
            t = t.clone()
            t[d:2 * d] = 0
        elif k.endswith("to_k.bias") or k.endswith("kv_linear.bias"):
            continue
        out[k] = t
    return out


def max_rel(a, b):
    """The largest relative difference of a tensor in norm, ||a - b|| / ||b||, and its name. (Per element, Adam's
    normalised steps turn the rounding of near-zero gradients, e.g. of a zero-initialised output layer's
    elements, into differences of 1e-5 of the tensor's largest entry after 20 steps whatever the parallelism.)"""
    a, b = comparable(a), comparable(b)
    return max((((a[k] - b[k]).norm() / (b[k].norm() + 1e-12)).item(), k) for k in b)


def children(pid):
    """The pids whose parent is `pid` (mpirun's ranks), from /proc."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return sorted(out)


class TrainSpTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        tmpdir = tempfile.TemporaryDirectory()
        cls.addClassCleanup(tmpdir.cleanup)
        cls.tmp = tmpdir.name
        clips, toy = os.path.join(cls.tmp, "clips.h5"), os.path.join(cls.tmp, "toy.h5")
        subprocess.run([PYTHON, os.path.join(HERE, "make_video_dataset.py"), clips, "24", "4", "4", "3", "8", "8", "32",
                        "10"], check=True)
        subprocess.run([MAKE, toy, "64", "4", "3", "8"], check=True)
        out = os.path.join(cls.tmp, "out")
        for kind in ("stdit", "latte", "dit"):
            model = DIT_MODEL if kind == "dit" else VIDEO_MODEL.replace('type = "stdit"', f'type = "{kind}"')
            with open(os.path.join(cls.tmp, f"{kind}.toml"), "w") as f:
                f.write(model + REST.format(data=toy if kind == "dit" else clips, out=out))
            rc, log = cls.train(kind, f"{kind}_base")
            if rc != 0:
                raise RuntimeError(f"the 1-rank {kind} run failed:\n{log}")

    @classmethod
    def train(cls, kind, name, np=1, *sets, resume=None, wait=True):
        cmd = ([MPIRUN, "-np", str(np), "--oversubscribe", "-x", "OMP_NUM_THREADS"] if np > 1 else []) + \
              [BIN, "train", "--config", os.path.join(cls.tmp, f"{kind}.toml"), "--set", f"run.name={name}"]
        if resume:
            cmd += ["--resume", resume]
        for s in sets:
            cmd += ["--set", s]
        env = dict(os.environ, OMP_NUM_THREADS="1")  # one thread per rank: sums in the same order everywhere
        if not wait:
            return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                    start_new_session=True)
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        return p.returncode, p.stdout + p.stderr

    def weights(self, name, which="model"):
        return load_file(os.path.join(self.tmp, "out", name, f"{which}.safetensors"))

    def losses(self, name):
        with open(os.path.join(self.tmp, "out", name, "metrics.jsonl")) as f:
            return {r["step"]: r["loss"] for r in map(json.loads, f)}

    def assert_equals_base(self, kind, name, out):
        base = f"{kind}_base"
        err, worst = max(max_rel(self.weights(name, w), self.weights(base, w)) for w in ("model", "ema"))
        la, lb = self.losses(name), self.losses(base)
        loss_err = max(abs(la[s] - lb[s]) / abs(lb[s]) for s in lb)
        print(f"{name}: weights {err:.2e} ({worst}), losses {loss_err:.2e} (<= {TOL:g})", flush=True)
        self.assertEqual(sorted(la), sorted(lb), out[-1500:])
        self.assertLessEqual(err, TOL, out[-1500:])
        self.assertLessEqual(loss_err, TOL, out[-1500:])

    def test_every_mode_equals_one_rank(self):
        """sp = 2 on 2 ranks, sp = 2 x dp = 2 and sp = 4 on 4 ranks = 1 rank, every mode of every model"""
        runs = [("dit", m, 2, 2) for m in ("ulysses", "fastseq")]
        runs += [("stdit", m, 2, 2) for m in ("ulysses", "fastseq", "dsp")]
        runs += [("latte", m, 2, 2) for m in ("ulysses", "fastseq", "dsp")]
        runs += [("stdit", m, 4, 2) for m in ("ulysses", "fastseq", "dsp")]
        runs += [("stdit", "dsp", 4, 4), ("latte", "ulysses", 4, 4)]
        for kind, mode, np, sp in runs:
            with self.subTest(f"{kind} {mode} np {np} sp {sp}"):
                name = f"{kind}_{mode}_np{np}_sp{sp}"
                rc, out = self.train(kind, name, np, f"parallel.sp_size={sp}", f"parallel.sp_mode={mode}",
                                     "parallel.fastseq_chunks=3")
                self.assertEqual(rc, 0, out[-3000:])
                self.assert_equals_base(kind, name, out)

    def test_plan_and_closing_table_name_the_mode_and_the_traffic(self):
        """the plan says 'dsp over 2 ranks'; the closing table counts the sp group's all-to-alls per step"""
        rc, out = self.train("stdit", "traffic", 2, "parallel.sp_size=2", "train.steps=2", "train.checkpoint_every=2")
        self.assertEqual(rc, 0, out[-2000:])
        self.assertIn("dsp over 2 ranks per sample", out)  # auto: dsp for a video model
        self.assertIn("collectives per step", out)
        sp_line = [line for line in out.splitlines() if line.strip().startswith("sp ") and "calls" in line]
        self.assertTrue(sp_line and "all_to_all" in sp_line[0] and "all_reduce 1 calls" in sp_line[0], out[-1500:])

    def test_checkpoint_of_dp2_sp2_resumes_at_dp4_sp1_and_dp1_sp4(self):
        """10 steps at (dp, sp) = (2, 2), then 10 more at (4, 1) or at (1, 4) = 20 steps on 1 rank"""
        for sp, mode in [(1, "dsp"), (4, "ulysses")]:
            with self.subTest(f"sp {sp}"):
                name = f"resume_sp{sp}"
                rc1, out1 = self.train("stdit", name, 4, "parallel.sp_size=2", "train.steps=10")
                rc2, out2 = self.train("stdit", name, 4, f"parallel.sp_size={sp}", f"parallel.sp_mode={mode}",
                                       resume="auto")
                self.assertEqual((rc1, rc2), (0, 0), out1[-1500:] + out2[-1500:])
                self.assertIn("resum", out2)
                self.assert_equals_base("stdit", name, out2)

    def sample(self, out, np=1, *args, cfg="4"):
        cmd = ([MPIRUN, "-np", str(np), "--oversubscribe"] if np > 1 else []) + \
              [BIN, "sample", "--config", os.path.join(self.tmp, "dit.toml"), "--checkpoint",
               os.path.join(self.tmp, "out", "dit_base", "ema.safetensors"), "--steps", "ddim5", "--cfg", cfg,
               "--per-class", "2", "--out", os.path.join(self.tmp, out)] + list(args)
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        return p.returncode, p.stdout + p.stderr

    def test_sampling_with_sp_and_cfg_parallel_equals_one_rank(self):
        """opendit sample on 2 ranks (sp 2 ulysses / fastseq, or CFG-parallel) and 4 (sp 2 x CFG-parallel) = 1 rank"""
        rc, out = self.sample("one.safetensors")
        self.assertEqual(rc, 0, out[-2000:])
        ref = load_file(os.path.join(self.tmp, "one.safetensors"))["samples"]
        for np, args, says in [(2, ["--set", "parallel.sp_size=2"], "sp 2 ulysses"),
                               (2, ["--set", "parallel.sp_size=2", "--set", "parallel.sp_mode=fastseq"], "sp 2 fastseq"),
                               (2, ["--cfg-parallel"], "cfg-parallel"),
                               (4, ["--set", "parallel.sp_size=2", "--cfg-parallel"], "sp 2 ulysses x cfg-parallel")]:
            with self.subTest(" ".join(args)):
                name = f"np{np}_{len(args)}.safetensors"
                rc, out = self.sample(name, np, *args)
                self.assertEqual(rc, 0, out[-2000:])
                self.assertIn(f"over {np} ranks ({says})", out)
                got = load_file(os.path.join(self.tmp, name))["samples"]
                err = ((got - ref).abs().max() / ref.abs().max()).item()
                print(f"sample {' '.join(args)}: {err:.2e}", flush=True)
                self.assertLessEqual(err, 1e-5)
        for np, args, cfg, want in [
                (3, ["--set", "parallel.sp_size=2"], "4", "parallel.sp_size (2) = 2 ranks; this job has 3"),
                (2, [], "4", "= 1 rank; this job has 2"),
                (2, ["--cfg-parallel"], "1", "guidance off"),
                (2, ["--set", "parallel.sp_size=2", "--set", "parallel.sp_mode=dsp"], "4", "a DiT has no temporal axis")]:
            with self.subTest(want):
                rc, out = self.sample("bad.safetensors", np, *args, cfg=cfg)
                self.assertNotEqual(rc, 0, out[-2000:])
                self.assertIn(want, out)
                self.assertEqual(out.count("error"), 1, out[-2000:])

    def test_bad_input_is_one_clear_error(self):
        """dsp on a DiT, an unknown mode, an sp size that does not divide the world: one message, no traceback"""
        for kind, np, sets, want in [
                ("dit", 2, ["parallel.sp_size=2", "parallel.sp_mode=dsp"], "a DiT has no temporal axis"),
                ("stdit", 2, ["parallel.sp_size=2", "parallel.sp_mode=ring"], "parallel.sp_mode"),
                ("stdit", 3, ["parallel.sp_size=2"], "sp_size")]:
            with self.subTest(sets[-1]):
                rc, out = self.train(kind, "bad", np, *sets)
                self.assertNotEqual(rc, 0, out[-2000:])
                self.assertIn(want, out)
                self.assertNotIn("terminate called", out)

    def test_a_rank_killed_mid_run_ends_the_job(self):
        """SIGKILL to one rank of an sp group during training: the job ends (non-zero) within a minute"""
        p = self.train("stdit", "killed", 2, "parallel.sp_size=2", "train.steps=100000", "train.log_every=1",
                       "train.checkpoint_every=100000", "parallel.watchdog_s=30", wait=False)
        try:
            deadline = time.time() + 120
            seen = ""
            while time.time() < deadline and "step 3/" not in seen:
                seen += p.stdout.readline()
            self.assertIn("step 3/", seen)
            ranks = children(p.pid)
            self.assertTrue(ranks, "no rank processes found")
            os.kill(ranks[-1], signal.SIGKILL)
            rc = p.wait(timeout=90)
            self.assertNotEqual(rc, 0)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


if __name__ == "__main__":
    BIN, MAKE, MPIRUN, PYTHON = sys.argv[1:5]
    unittest.main(argv=[sys.argv[0]] + sys.argv[5:], verbosity=2)
