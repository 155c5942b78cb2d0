"""Checks of tools/convert_opensora_pt.py (Open-Sora v1.0 STDiT .pth / checkpoint folder -> safetensors), run as a
subprocess on tiny fake STDiT weights under the official names, including the inputs it must refuse.

setUpClass writes every input and runs all the conversions at once (in parallel: each run starts its own Python
with torch); the test methods then check the exit status, the messages and the files written.

With OPENDIT (the binary), also `opendit convert` of the result: names and shapes checked against a deck's STDiT,
the model recorded in the file it writes, and its errors without a deck and with another model.

usage: test_convert_opensora.py [REPO_ROOT] [OPENDIT] [unittest options]   (REPO_ROOT defaults to two folders up)
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest
from concurrent.futures import ThreadPoolExecutor

import torch
from safetensors import safe_open
from safetensors.torch import load_file

OPENDIT = None  # the opendit binary, when given
ROOT = None  # from the command line or this file's location, at the end of the file
DEPTH, D, PATCH, CIN, COUT, CAP, TOKENS = 2, 32, (1, 2, 2), 4, 8, 16, 6
FRAMES, GRID = 4, 4  # latent input 4 x 8 x 8 -> 4 temporal and 4 x 4 spatial patches


def stdit_state_dict(seed=0, dtype=torch.float32):
    """Random tensors under the official Open-Sora v1.0 STDiT names and shapes."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    lin = lambda name, o, i: {name + ".weight": r(o, i), name + ".bias": r(o)}  # noqa: E731
    pv = PATCH[0] * PATCH[1] * PATCH[2]
    sd = {"pos_embed": r(1, GRID * GRID, D), "pos_embed_temporal": r(1, FRAMES, D),
          "x_embedder.proj.weight": r(D, CIN, *PATCH), "x_embedder.proj.bias": r(D),
          **lin("t_embedder.mlp.0", D, 256), **lin("t_embedder.mlp.2", D, D), **lin("t_block.1", 6 * D, D),
          "y_embedder.y_embedding": r(TOKENS, CAP), **lin("y_embedder.y_proj.fc1", D, CAP),
          **lin("y_embedder.y_proj.fc2", D, D)}
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sd.update({b + "scale_shift_table": r(6, D), **lin(b + "attn.qkv", 3 * D, D), **lin(b + "attn.proj", D, D),
                   **lin(b + "cross_attn.q_linear", D, D), **lin(b + "cross_attn.kv_linear", 2 * D, D),
                   **lin(b + "cross_attn.proj", D, D), **lin(b + "mlp.fc1", 4 * D, D),
                   **lin(b + "mlp.fc2", D, 4 * D), **lin(b + "attn_temp.qkv", 3 * D, D),
                   **lin(b + "attn_temp.proj", D, D)})
    sd.update({"final_layer.scale_shift_table": r(2, D), **lin("final_layer.linear", pv * COUT, D)})
    return sd


def dit_state_dict():
    """The DiT layout: a 2-D patch conv, class labels, adaLN blocks, no temporal attention."""
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return {"pos_embed": r(1, 16, D), "x_embedder.proj.weight": r(D, CIN, 2, 2), "x_embedder.proj.bias": r(D),
            "y_embedder.embedding_table.weight": r(11, D), "blocks.0.attn.qkv.weight": r(3 * D, D),
            "blocks.0.adaLN_modulation.1.weight": r(6 * D, D), "final_layer.linear.weight": r(4 * COUT, D)}


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file if the tool unpickled code


class ConvertOpenSoraTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        tmpdir = tempfile.TemporaryDirectory()
        cls.addClassCleanup(tmpdir.cleanup)
        cls.tmp = tmpdir.name
        cls.tool = os.path.join(ROOT, "tools", "convert_opensora_pt.py")
        cls.sd = stdit_state_dict(0)
        cls.other = stdit_state_dict(1)
        cls.bf16 = stdit_state_dict(2, torch.bfloat16)
        p = cls.path
        torch.save(cls.sd, p("plain.pth"))
        # A wrapper as a train.py-style checkpoint: EMA under DDP's "module." prefix, the trained weights in bf16
        # under torch.compile's "_orig_mod." (on top of "module."), and a non-dict entry to pass over.
        torch.save({"ema": {"module." + k: v for k, v in cls.sd.items()},
                    "model": {"_orig_mod.module." + k: v for k, v in cls.bf16.items()}, "step": 7}, p("wrapped.pth"))
        torch.save(dit_state_dict(), p("dit.pth"))
        pixart = {k.replace("attn_temp", "gone"): v for k, v in cls.sd.items()}
        pixart["x_embedder.proj.weight"] = pixart["x_embedder.proj.weight"][:, :, 0]
        torch.save(pixart, p("pixart.pth"))
        nan = dict(cls.sd)
        nan["blocks.1.mlp.fc2.weight"] = nan["blocks.1.mlp.fc2.weight"].clone()
        nan["blocks.1.mlp.fc2.weight"][3, 5] = float("nan")
        torch.save(nan, p("nan.pth"))
        cls.marker = p("pwned")
        torch.save({"x": Evil(cls.marker)}, p("evil.pth"))
        # A training checkpoint folder as Open-Sora's save() writes it: ema.pt (float32) and a sharded model/
        # (bf16, as the boosted model trains in), with the index naming each tensor's shard.
        ck = p("epoch0-global_step10")
        os.makedirs(os.path.join(ck, "model"))
        torch.save(cls.sd, os.path.join(ck, "ema.pt"))
        names = list(cls.bf16)
        half = len(names) // 2
        shards = {"pytorch_model-00001.bin": names[:half], "pytorch_model-00002.bin": names[half:]}
        for shard, keys in shards.items():
            torch.save({k: cls.bf16[k] for k in keys}, os.path.join(ck, "model", shard))
        with open(os.path.join(ck, "model", "pytorch_model.bin.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": 0}, "weight_map": {k: s for s, ks in shards.items() for k in ks}}, f)

        # Each run starts a Python with torch (about 2 s of CPU): few runs, all at once.
        jobs = {"plain": ["plain.pth"], "wrapped": ["wrapped.pth"], "wrapped_model": ["wrapped.pth", "--key", "model"],
                "folder_model": [ck, "--key", "model"], "dit": ["dit.pth"], "pixart": ["pixart.pth"],
                "nan": ["nan.pth"], "evil": ["evil.pth"]}

        def run(name):
            args = jobs[name]
            out = p(name + ".safetensors")
            proc = subprocess.run([sys.executable, cls.tool, p(args[0]), out, *args[1:]], capture_output=True,
                                  text=True)
            return name, (proc.returncode, proc.stdout, proc.stderr, out)

        with ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2))) as pool:
            cls.res = dict(pool.map(run, jobs))

    @classmethod
    def path(cls, name):
        return os.path.join(cls.tmp, name)

    def ok(self, name):
        rc, out, err, path = self.res[name]
        self.assertEqual(rc, 0, f"{name}: {out}{err}")
        return load_file(path), out

    def refused(self, name, *words):
        rc, out, err, path = self.res[name]
        self.assertEqual(rc, 1, f"{name}: {out}{err}")
        self.assertFalse(os.path.exists(path), f"{name}: wrote {path} anyway")
        lines = err.strip().splitlines()
        self.assertEqual(len(lines), 1, f"{name}: not one line: {err}")
        for w in words:
            self.assertIn(w, lines[0])
        return lines[0]

    def assert_same(self, got, ref):
        want = {k: v.float() for k, v in ref.items() if k not in ("pos_embed", "pos_embed_temporal")}
        self.assertEqual(sorted(got), sorted(want))
        for k, v in want.items():
            self.assertEqual(got[k].dtype, torch.float32, k)
            self.assertTrue(got[k].is_contiguous(), k)
            self.assertTrue(torch.equal(got[k], v), k)

    def test_plain(self):
        got, out = self.ok("plain")
        self.assertNotIn("pos_embed", got)
        self.assertNotIn("pos_embed_temporal", got)
        self.assertIn("y_embedder.y_embedding", got)
        self.assert_same(got, self.sd)
        for part in (f"depth {DEPTH}", f"hidden {D}", "patch 1x2x2", f"in {CIN}", f"out {COUT}",
                     f"caption {CAP} channels x {TOKENS} tokens", "dropped pos_embed, pos_embed_temporal"):
            self.assertIn(part, out)

    def test_metadata(self):
        for name, source in (("plain", "plain.pth"), ("folder_model", "epoch0-global_step10")):
            self.ok(name)
            with safe_open(self.res[name][3], "pt") as f:
                self.assertEqual(f.metadata(), {"format": "opendit.stdit", "version": "1", "source": source})

    def test_wrapped_takes_ema_and_strips_module(self):
        self.assert_same(self.ok("wrapped")[0], self.sd)

    def test_key_model_bf16_widened(self):
        got, out = self.ok("wrapped_model")
        self.assert_same(got, self.bf16)
        self.assertIn("bfloat16", out)

    def test_checkpoint_folder_shards(self):
        self.assert_same(self.ok("folder_model")[0], self.bf16)

    def test_dit_refused(self):
        self.refused("dit", "DiT", "tools/convert_dit_pt.py")

    def test_pixart_refused(self):
        self.refused("pixart", "PixArt", "not supported")

    def test_nan_refused(self):
        self.refused("nan", "blocks.1.mlp.fc2.weight", "NaN")

    def test_unreadable_refused(self):
        self.refused("evil", "cannot read", "weights_only")
        self.assertFalse(os.path.exists(self.marker), "the pickle's code ran")

    def convert(self, *args):
        p = subprocess.run([OPENDIT, "convert", *args], capture_output=True, text=True, timeout=120)
        return p.returncode, p.stdout + p.stderr

    def test_opendit_convert_checks_and_records_the_model(self):
        if not OPENDIT:
            self.skipTest("no opendit binary given")
        self.ok("plain")
        src, out = self.res["plain"][3], self.path("checked.safetensors")
        deck = ["--set", "model.type=stdit", "--set", "model.preset=custom", "--set", f"model.depth={DEPTH}",
                "--set", f"model.hidden_size={D}", "--set", "model.num_heads=4", "--set", "model.patch_size=2",
                "--set", f"model.in_channels={CIN}", "--set", f"model.input_size={2 * GRID}",
                "--set", f"model.num_frames={FRAMES}", "--set", f"model.caption_channels={CAP}",
                "--set", f"model.text_length={TOKENS}"]
        rc, log = self.convert(src, out, *deck)
        self.assertEqual(rc, 0, log)
        with safe_open(out, "pt") as f:
            meta = f.metadata()
        self.assertEqual(meta["format"], "opendit.stdit")
        self.assertEqual(json.loads(meta["config"])["input_size"], [FRAMES, 2 * GRID, 2 * GRID])
        got = load_file(out)
        self.assertTrue(torch.equal(got["blocks.1.attn_temp.proj.weight"], self.sd["blocks.1.attn_temp.proj.weight"]))
        # Without a deck the heads and the latent size are unknown; a deck of another depth does not fit.
        rc, log = self.convert(src, self.path("x.safetensors"))
        self.assertNotEqual(rc, 0, log)
        self.assertIn("pass --config DECK", log)
        rc, log = self.convert(src, self.path("y.safetensors"), *deck, "--set", "model.depth=3")
        self.assertNotEqual(rc, 0, log)
        self.assertIn("The weights look like a custom STDiT: depth 2", log)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and os.path.isdir(args[0]):
        ROOT = os.path.abspath(args.pop(0))
    else:
        ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    if args and os.path.isfile(args[0]) and os.access(args[0], os.X_OK):
        OPENDIT = os.path.abspath(args.pop(0))
    unittest.main(argv=sys.argv[:1] + args, verbosity=2)
