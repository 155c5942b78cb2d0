"""Long jobs never lose work (`opendit train` end to end on CPU, 1 to 4 ranks): signals stop a run at a step
boundary with a checkpoint and exit status 75, and the resumed run equals an uninterrupted one bit for bit; the run
folder's rules (one run at a time, no fresh start over a run, stale locks and .tmp files, branches on resume); the
deck comparison on resume; --resume auto past a damaged checkpoint; a full disk and a failing write end the run with
one clear message and never hang.

The model is the tiny DiT of test_train.py (about 60 steps/s on 2 ranks of a 2-core machine): a run of 5000 steps is
stopped by a signal long before its end.

usage: test_long_jobs.py OPENDIT MAKE_TOY_DATASET MPIRUN [unittest options, e.g. -k signal]
"""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

from safetensors.torch import load_file

BIN = MAKE = MPIRUN = None  # from the command line, at the end of the file

EXIT_STOPPED = 75  # core/stop_request.hpp: EX_TEMPFAIL

# The model: tests/support/tiny_dit.toml; the rest of the deck below.
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support", "tiny_dit.toml")) as _f:
    TINY_MODEL = _f.read()
DECK = TINY_MODEL + """
[data]
path = "{data}"
global_batch = 16
[train]
steps = 5000
precision = "fp32"
lr = 1e-3
warmup_steps = 2
log_every = 10
checkpoint_every = 100000
[run]
out_dir = "{out}"
[parallel]
device = "cpu"
"""


class LongJobTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        tmpdir = tempfile.TemporaryDirectory()
        cls.addClassCleanup(tmpdir.cleanup)
        cls.tmp = tmpdir.name
        cls.out = os.path.join(cls.tmp, "out")
        cls.deck = os.path.join(cls.tmp, "deck.toml")
        cls.data = os.path.join(cls.tmp, "toy.h5")
        subprocess.run([MAKE, cls.data, "64", "4", "3", "8"], check=True, capture_output=True)
        with open(cls.deck, "w") as f:
            f.write(DECK.format(data=cls.data, out=cls.out))

    def command(self, name, np, *sets, resume=None, flags=()):
        cmd = ([MPIRUN, "-np", str(np), "--oversubscribe"] if np > 1 else []) + \
              [BIN, "train", "--config", self.deck, "--set", f"run.name={name}"]
        if resume:
            cmd += ["--resume", resume]
        cmd += list(flags)
        for s in sets:
            cmd += ["--set", s]
        return cmd

    def train(self, name, np, *sets, resume=None, flags=(), timeout=300):
        p = subprocess.run(self.command(name, np, *sets, resume=resume, flags=flags), capture_output=True, text=True,
                           timeout=timeout)
        return p.returncode, p.stdout + p.stderr

    def start(self, name, np, *sets, env=None):
        """A run in the background, its output in a file; returns (process, log path)."""
        log = os.path.join(self.tmp, name + ".log")
        with open(log, "w") as f:
            p = subprocess.Popen(self.command(name, np, *sets), stdout=f, stderr=subprocess.STDOUT,
                                 env=dict(os.environ, **(env or {})))
        return p, log

    def wait_for(self, log, text, p, timeout=120):
        """Until the log holds `text` (the run is past its setup)."""
        end = time.time() + timeout
        while time.time() < end:
            with open(log) as f:
                if text in f.read():
                    return
            if p.poll() is not None:
                break
            time.sleep(0.05)
        p.kill()
        with open(log) as f:
            self.fail(f"'{text}' never appeared:\n{f.read()[-2000:]}")

    def finish(self, p, log, timeout=120):
        try:
            rc = p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = "hung"
        with open(log) as f:
            return rc, f.read()

    def checkpoints(self, name):
        d = os.path.join(self.out, name, "checkpoints")
        return sorted(f for f in os.listdir(d) if f.endswith(".h5")) if os.path.isdir(d) else []

    def metric_steps(self, folder):
        with open(os.path.join(folder, "metrics.jsonl")) as f:
            return [json.loads(line)["step"] for line in f]

    def stopped_step(self, name, out):
        ckpts = self.checkpoints(name)
        self.assertEqual(len(ckpts), 1, out[-2000:])
        return int(ckpts[0][len("ckpt-"):-len(".h5")])

    def assert_resume_is_bit_exact(self, name, np, step, extra=3):
        """--resume auto to step + extra equals a run of step + extra steps from scratch, bit for bit."""
        total = f"train.steps={step + extra}"
        rc1, out1 = self.train(name, np, total, resume="auto")
        rc2, out2 = self.train(name + "_ref", np, total)
        detail = out1[-1500:] + out2[-1500:]
        self.assertEqual((rc1, rc2), (0, 0), detail)
        self.assertIn(f"ckpt-{step:08d}.h5", out1, detail)
        for w in ("model", "ema"):
            a = load_file(os.path.join(self.out, name, f"{w}.safetensors"))
            b = load_file(os.path.join(self.out, name + "_ref", f"{w}.safetensors"))
            self.assertEqual([k for k in b if not (a[k] == b[k]).all()], [], f"{w}: {detail}")

    def ranks_of(self, p):
        """The processes mpirun started (its children), by pid."""
        out = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
        return [int(pid) for pid in out]

    def test_sigusr1_to_every_rank_checkpoints_exits_75_and_resumes_bit_exactly(self):
        """SIGUSR1 to the ranks of mpirun -np 2 (as srun and Slurm deliver it): a checkpoint, status 75, bit-exact resume"""
        p, log = self.start("usr1", 2)
        self.wait_for(log, "step 20/", p)
        ranks = self.ranks_of(p)
        self.assertEqual(len(ranks), 2, f"mpirun's children: {ranks}")
        for pid in ranks:
            os.kill(pid, signal.SIGUSR1)
        rc, out = self.finish(p, log)
        self.assertEqual(rc, EXIT_STOPPED, out[-2000:])
        self.assertEqual(out.count("SIGUSR1 received"), 1, out[-2000:])  # rank 0 only
        self.assertIn("continue with --resume auto", out)
        step = self.stopped_step("usr1", out)
        self.assertLess(step, 5000, out[-2000:])
        self.assertFalse(os.path.exists(os.path.join(self.out, "usr1", "model.safetensors")),
                         "a stopped run exported final weights")
        self.assert_resume_is_bit_exact("usr1", 2, step)

    def test_sigusr1_to_mpirun(self):
        """SIGUSR1 to mpirun -np 2: forwarded to the ranks, which stop with status 75 (skipped where mpirun keeps it)"""
        p, log = self.start("usr1_mpirun", 2)
        self.wait_for(log, "step 20/", p)
        p.send_signal(signal.SIGUSR1)
        try:
            rc = p.wait(20)
        except subprocess.TimeoutExpired:
            # Seen with OpenMPI 4.1.6 on a GPU machine of this project (4.1.4 here forwards it): docs/LONG_JOBS.md.
            for pid in self.ranks_of(p):
                os.kill(pid, signal.SIGUSR1)
            p.wait(60)
            self.skipTest("this mpirun does not forward SIGUSR1 to its ranks")
        with open(log) as f:
            out = f.read()
        self.assertEqual(rc, EXIT_STOPPED, out[-2000:])
        self.stopped_step("usr1_mpirun", out)

    def test_sigterm_and_sigint_to_mpirun_reach_the_ranks_and_checkpoint(self):
        """SIGTERM, SIGINT to mpirun -np 2 (OMPI_MCA_odls_base_sigkill_timeout=5): a checkpoint, bit-exact resume"""
        # mpirun answers SIGTERM and SIGINT by sending the ranks SIGTERM after odls_base_sigkill_timeout seconds and
        # SIGKILL after as many again (OpenMPI 4.1): the time a rank has to finish its step and write the checkpoint.
        for sig, name in ((signal.SIGTERM, "term"), (signal.SIGINT, "int_mpirun")):
            with self.subTest(signal.Signals(sig).name):
                p, log = self.start(name, 2, env={"OMPI_MCA_odls_base_sigkill_timeout": "5"})
                self.wait_for(log, "step 20/", p)
                p.send_signal(sig)
                rc, out = self.finish(p, log)
                self.assertNotEqual(rc, 0, out[-2000:])  # mpirun's own status after SIGTERM or SIGINT: 1
                step = self.stopped_step(name, out)
                self.assertTrue(os.path.exists(os.path.join(self.out, name, "checkpoints",
                                                            f"ckpt-{step:08d}.h5.done")))
                self.assert_resume_is_bit_exact(name, 2, step)

    def test_sigint_one_rank_checkpoints_and_exits_75(self):
        """SIGINT (Ctrl-C) to one rank: a checkpoint and exit status 75"""
        p, log = self.start("int", 1)
        self.wait_for(log, "step 20/", p)
        p.send_signal(signal.SIGINT)
        rc, out = self.finish(p, log)
        self.assertEqual(rc, EXIT_STOPPED, out[-2000:])
        self.assertIn("SIGINT received", out)
        self.stopped_step("int", out)

    def test_second_signal_exits_at_once(self):
        """a second signal exits at once (128 + signal) and leaves no partial checkpoint under its name"""
        p, log = self.start("twice", 1)
        self.wait_for(log, "step 20/", p)
        p.send_signal(signal.SIGUSR1)
        p.send_signal(signal.SIGTERM)  # another signal: not merged with the first while pending
        rc, out = self.finish(p, log)
        # Both may be pending when the process next runs: Linux delivers the lower-numbered one first.
        self.assertIn(rc, (128 + signal.SIGUSR1, 128 + signal.SIGTERM), out[-2000:])
        self.assertIn("again: exiting now", out)
        d = os.path.join(self.out, "twice", "checkpoints")
        done = [f for f in os.listdir(d) if f.endswith(".done")] if os.path.isdir(d) else []
        self.assertEqual(len(done), len(self.checkpoints("twice")), "a checkpoint without its .done marker")


    # ---- the run folder ----------------------------------------------------------------------------------------

    def test_fresh_start_into_a_run_is_refused_unless_overwrite(self):
        """a fresh start into a folder holding a run is refused (also by --dry-run); --overwrite starts over"""
        rc, out = self.train("fresh", 1, "train.steps=3")
        self.assertEqual(rc, 0, out[-2000:])
        for flags in ((), ("--dry-run",)):
            rc, out = self.train("fresh", 2, "train.steps=3", flags=flags)
            self.assertNotEqual(rc, 0, out[-2000:])
            self.assertEqual(out.count("opendit: error"), 1, out[-2000:])
            self.assertIn("already holds a run (a checkpoint at step 3, metrics.jsonl, final weights)", out)
            self.assertIn("--resume auto", out)
        rc, out = self.train("fresh", 1, "train.steps=2", flags=["--overwrite"])
        self.assertEqual(rc, 0, out[-2000:])
        self.assertIn("--overwrite: deleted the run", out)
        self.assertNotIn("ended without releasing", out)  # the refused runs left the lock as it was
        self.assertEqual(self.checkpoints("fresh"), ["ckpt-00000002.h5"])

    def test_a_second_run_into_a_running_folder_is_refused(self):
        """a second train into a folder in use is refused naming the holder; a killed run's lock and .tmp go"""
        p, log = self.start("locked", 1, "train.checkpoint_every=10")
        self.wait_for(log, "step 20/", p)
        rc, out = self.train("locked", 2, resume="auto", timeout=60)
        self.assertNotEqual(rc, 0, out[-2000:])
        self.assertIn("is in use by another `opendit train` (host ", out)
        self.assertIn(f"pid {p.pid} since", out)
        p.kill()  # SIGKILL: no checkpoint at the end, the lock file keeps its holder, a .tmp may be left
        p.wait()
        tmp = os.path.join(self.out, "locked", "checkpoints", "ckpt-00099999.h5.tmp")
        with open(tmp, "w") as f:
            f.write("half a checkpoint")
        last = self.checkpoints("locked")[-1]
        step = int(last[5:-3])
        rc, out = self.train("locked", 2, f"train.steps={step + 2}", resume="auto")
        self.assertEqual(rc, 0, out[-2000:])
        self.assertIn(f"ended without releasing it (killed?)", out)
        self.assertIn("ckpt-00099999.h5.tmp, left by a save that did not finish", out)
        self.assertFalse(os.path.exists(tmp))
        steps = self.metric_steps(os.path.join(self.out, "locked"))
        self.assertEqual(steps, sorted(set(steps)), "metrics.jsonl holds a step twice")
        self.assertEqual(steps[-1], step + 2)

    def test_resume_from_an_older_checkpoint_moves_the_later_branch_aside(self):
        """resuming from an older checkpoint: later checkpoints, weights and metrics move to abandoned/"""
        sets = ("train.steps=6", "train.checkpoint_every=2", "train.log_every=1", "train.keep_checkpoints=10")
        rc, out = self.train("branch", 1, *sets)
        self.assertEqual(rc, 0, out[-2000:])
        run = os.path.join(self.out, "branch")
        first = {w: load_file(os.path.join(run, f"{w}.safetensors")) for w in ("model", "ema")}
        rc, out = self.train("branch", 1, *sets, resume=os.path.join(run, "checkpoints", "ckpt-00000002.h5"))
        self.assertEqual(rc, 0, out[-2000:])
        self.assertIn("resume from step 2: the later steps of the run", out)
        branches = glob.glob(os.path.join(run, "abandoned", "*-from-2"))
        self.assertEqual(len(branches), 1, out[-2000:])
        self.assertEqual(sorted(os.listdir(os.path.join(branches[0], "checkpoints"))),
                         ["ckpt-00000004.h5", "ckpt-00000004.h5.done", "ckpt-00000006.h5", "ckpt-00000006.h5.done"])
        self.assertTrue(os.path.exists(os.path.join(branches[0], "ema.safetensors")))
        self.assertEqual(self.metric_steps(branches[0]), [3, 4, 5, 6])
        self.assertEqual(self.metric_steps(run), [1, 2, 3, 4, 5, 6])
        for w in ("model", "ema"):  # the branch redid the same steps: the same weights
            again = load_file(os.path.join(run, f"{w}.safetensors"))
            self.assertEqual([k for k in first[w] if not (again[k] == first[w][k]).all()], [], w)
        rc, out = self.train("branch", 1, "train.steps=7", "train.checkpoint_every=2", "train.log_every=1",
                             "train.keep_checkpoints=10", resume="auto")
        self.assertEqual(rc, 0, out[-2000:])
        self.assertIn("ckpt-00000006.h5: step 6", out)

    def test_a_checkpoint_of_another_run_starts_a_new_run(self):
        """--resume FILE of another run into a folder holding a run is refused; an own checkpoint however spelt is own"""
        for name in ("donor", "host"):
            rc, out = self.train(name, 1, "train.steps=2")
            self.assertEqual(rc, 0, out[-2000:])
        donor = os.path.join(self.out, "donor", "checkpoints", "ckpt-00000002.h5")
        rc, out = self.train("host", 1, "train.steps=4", resume=donor)
        self.assertNotEqual(rc, 0, out[-2000:])
        self.assertIn("already holds a run", out)
        rc, out = self.train("fresh_host", 1, "train.steps=4", "train.lr=2e-3", resume=donor)
        self.assertEqual(rc, 0, out[-2000:])  # fine-tuning into a new folder: changes are only listed
        self.assertIn("train.lr 0.001 -> 0.002", out)
        # The host's own checkpoint through another spelling of its path: the deck rule of an own run applies.
        own = os.path.join(self.out, "host", "checkpoints", ".", "ckpt-00000002.h5")
        rc, out = self.train("host", 1, "train.steps=4", "train.lr=2e-3", resume=own)
        self.assertNotEqual(rc, 0, out[-2000:])
        self.assertIn("--allow-deck-change", out)

    # ---- the deck on resume --------------------------------------------------------------------------------------

    def test_resume_with_a_changed_deck(self):
        """resume: a changed run-defining key is an error (unless --allow-deck-change); steps and logs may change"""
        rc, out = self.train("deck", 1, "train.steps=3")
        self.assertEqual(rc, 0, out[-2000:])
        rc, out = self.train("deck", 2, "train.steps=4", "train.lr=2e-3", "run.seed=5", resume="auto")
        self.assertNotEqual(rc, 0, out[-2000:])
        self.assertEqual(out.count("opendit: error"), 1, out[-2000:])
        self.assertIn("train.lr 0.001 -> 0.002", out)
        self.assertIn("run.seed 0 -> 5", out)
        self.assertIn("--allow-deck-change", out)
        rc, out = self.train("deck", 2, "train.steps=4", "train.lr=2e-3", resume="auto", flags=["--dry-run"])
        self.assertNotEqual(rc, 0, "--dry-run passed a deck that the run refuses")
        rc, out = self.train("deck", 2, "train.steps=5", "train.log_every=1", "parallel.strategy=ddp", resume="auto")
        self.assertEqual(rc, 0, out[-2000:])
        self.assertIn("note: the deck differs", out)
        self.assertIn("train.steps 3 -> 5", out)
        rc, out = self.train("deck", 1, "train.steps=6", "train.lr=2e-3", resume="auto", flags=["--allow-deck-change"])
        self.assertEqual(rc, 0, out[-2000:])
        self.assertIn("resumed from", out)

    def test_resume_auto_falls_back_past_a_damaged_checkpoint(self):
        """--resume auto: a damaged newest checkpoint is named and the one before it is used"""
        sets = ("train.checkpoint_every=2", "train.keep_checkpoints=5")
        rc, out = self.train("damaged", 2, "train.steps=4", *sets)
        self.assertEqual(rc, 0, out[-2000:])
        newest = os.path.join(self.out, "damaged", "checkpoints", "ckpt-00000004.h5")
        with open(newest, "r+b") as f:  # a write that never reached the disk: half the file
            f.truncate(os.path.getsize(newest) // 2)
        rc, out = self.train("damaged", 2, "train.steps=6", *sets, resume="auto")
        self.assertEqual(rc, 0, out[-2000:])
        self.assertIn("ckpt-00000004.h5", out[out.index("warning: cannot resume"):], out[-2000:])
        self.assertIn("ckpt-00000002.h5: step 2", out)
        self.assertTrue(glob.glob(os.path.join(self.out, "damaged", "abandoned", "*-from-2", "checkpoints",
                                               "ckpt-00000004.h5")), "the damaged checkpoint was not moved aside")
        # Every checkpoint damaged: an error, not a fresh start over the run.
        for c in self.checkpoints("damaged"):
            with open(os.path.join(self.out, "damaged", "checkpoints", c), "r+b") as f:
                f.truncate(100)
        rc, out = self.train("damaged", 2, "train.steps=8", *sets, resume="auto")
        self.assertNotEqual(rc, 0, out[-2000:])
        self.assertIn("none of the checkpoints", out)

    # ---- full disks and failing writes ---------------------------------------------------------------------------

    def mount_tmpfs(self, name, size):
        d = os.path.join(self.tmp, name)
        os.makedirs(d, exist_ok=True)
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", d], capture_output=True, text=True)
        if p.returncode != 0:
            self.skipTest(f"cannot mount a small tmpfs (needs root): {p.stderr.strip()}")
        self.addCleanup(subprocess.run, ["umount", "-l", d])
        return d

    def test_disk_too_full_for_a_checkpoint(self):
        """a disk with no room for the next checkpoint: one clear error at start and before a checkpoint (2, 4 ranks)"""
        small = self.mount_tmpfs("small", "2m")  # a checkpoint of the tiny model takes about 3 MiB
        for np in (2, 4):
            rc, out = self.train("full", np, f"run.out_dir={small}", "train.steps=4", timeout=120)
            self.assertEqual(rc, 1, out[-2000:])
            self.assertEqual(out.count("opendit: error"), 1, out[-2000:])
            self.assertIn("not enough free space for checkpoints: ", out)
        roomy = self.mount_tmpfs("roomy", "6m")  # one checkpoint fits, a second does not
        rc, out = self.train("full", 2, f"run.out_dir={roomy}", "train.steps=6", "train.checkpoint_every=2",
                             "train.keep_checkpoints=5", timeout=120)
        self.assertEqual(rc, 1, out[-2000:])
        self.assertIn("not enough free space for the checkpoint of step 4", out)
        self.assertIn("ckpt-00000002.h5, stands", out)

    def test_a_write_failing_on_some_ranks_ends_the_job(self):
        """a checkpoint write failing midway (file-size limit) ends the job with the error, no hang or crash (1, 2, 4 ranks)"""
        for np in (1, 2, 4):
            name = f"efbig{np}"
            cmd = self.command(name, np, "train.steps=2")
            i = cmd.index(BIN)  # every rank under `ulimit -f 1024` (1 MiB; a checkpoint takes about 3 MiB)
            # mpirun even for 1 rank: MPI started without it keeps files of its own under the same limit.
            cmd = ([] if np > 1 else [MPIRUN, "-np", "1"]) + cmd[:i] + ["sh", "-c", 'ulimit -f 1024; exec "$0" "$@"'] \
                + cmd[i:]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            out = p.stdout + p.stderr
            self.assertNotEqual(p.returncode, 0, out[-2000:])
            self.assertRegex(out, r"opendit: error( on rank \d+)?: .*(cannot write|write failed|File too large)")
            self.assertNotIn("Segmentation fault", out)
            self.assertEqual(self.checkpoints(name), [], out[-2000:])
            rc, again = self.train(name, np, "train.steps=2", resume="auto")
            self.assertEqual(rc, 0, again[-2000:])


    def test_a_background_write_failing_on_one_rank_ends_the_job(self):
        """a background checkpoint write failing on rank 0 alone, while training goes on: the job ends, no hang"""
        # Rank 0 (it writes the file's metadata and is an MPI-IO aggregator) under `ulimit -f 1024`, rank 1 not; a
        # checkpoint every 5 steps of a long run, so the failure comes while the training threads are running.
        name = "bgfail"
        cmd = self.command(name, 2, "train.steps=5000", "train.checkpoint_every=5")
        i = cmd.index(BIN)
        limit = 'if [ "$OMPI_COMM_WORLD_RANK" = 0 ]; then ulimit -f 1024; fi; exec "$0" "$@"'
        cmd = cmd[:i] + ["sh", "-c", limit] + cmd[i:]
        t0 = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        out = p.stdout + p.stderr
        self.assertNotEqual(p.returncode, 0, out[-2000:])
        self.assertRegex(out, r"opendit: error on rank 0: .*(cannot write|write failed|File too large)")
        self.assertNotIn("watchdog", out)
        self.assertLess(time.time() - t0, 120, "the job took as long as a hang")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    BIN, MAKE, MPIRUN = sys.argv[1:4]
    unittest.main(argv=sys.argv[:1] + sys.argv[4:], verbosity=2)
