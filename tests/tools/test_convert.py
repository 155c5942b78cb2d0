"""End-to-end checks of weight import/export: tools/convert_dit_pt.py (official .pt) and `opendit convert`
(diffusers folders and files, both directions), including the files they must refuse.

A unittest suite: setUpClass writes the official checkpoint, converts it once with the tool and then with
`opendit convert` (the files the later conversions start from), and saves a diffusers model folder.

usage: test_convert.py OPENDIT_BINARY SOURCE_DIR [unittest options, e.g. -k diffusers]
"""
import os
import pickle
import subprocess
import sys
import tempfile
import unittest

import torch
from diffusers import DiTTransformer2DModel
from safetensors.torch import load_file, save_file

BIN = SRC = None  # from the command line, at the end of the file
PY = sys.executable
TINY = ["--set", "model.preset=custom", "--set", "model.depth=2", "--set", "model.hidden_size=64",
        "--set", "model.num_heads=4", "--set", "model.patch_size=2", "--set", "model.in_channels=4",
        "--set", "model.input_size=8", "--set", "model.num_classes=10"]


def run(*args):
    p = subprocess.run(list(args), capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def official_state_dict(depth=2, d=64, p=2, c=4, grid=4, classes=10, learn_sigma=True):
    """Random tensors under the official DiT names and shapes (ROADMAP/REFERENCE key table)."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    out = 2 * c if learn_sigma else c
    sd = {"pos_embed": r(1, grid * grid, d), "x_embedder.proj.weight": r(d, c, p, p), "x_embedder.proj.bias": r(d),
          "t_embedder.mlp.0.weight": r(d, 256), "t_embedder.mlp.0.bias": r(d), "t_embedder.mlp.2.weight": r(d, d),
          "t_embedder.mlp.2.bias": r(d), "y_embedder.embedding_table.weight": r(classes + 1, d)}
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update({b + "attn.qkv.weight": r(3 * d, d), b + "attn.qkv.bias": r(3 * d), b + "attn.proj.weight": r(d, d),
                   b + "attn.proj.bias": r(d), b + "mlp.fc1.weight": r(4 * d, d), b + "mlp.fc1.bias": r(4 * d),
                   b + "mlp.fc2.weight": r(d, 4 * d), b + "mlp.fc2.bias": r(d),
                   b + "adaLN_modulation.1.weight": r(6 * d, d), b + "adaLN_modulation.1.bias": r(6 * d)})
    sd.update({"final_layer.linear.weight": r(p * p * out, d), "final_layer.linear.bias": r(p * p * out),
               "final_layer.adaLN_modulation.1.weight": r(2 * d, d), "final_layer.adaLN_modulation.1.bias": r(2 * d)})
    return sd


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


class ConvertTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        tmpdir = tempfile.TemporaryDirectory()
        cls.addClassCleanup(tmpdir.cleanup)  # also runs when setUpClass fails, unlike tearDownClass
        cls.tmp = tmpdir.name
        cls.tool = os.path.join(SRC, "tools", "convert_dit_pt.py")
        cls.model_sd = official_state_dict()
        cls.ema_sd = {k: v + 1 for k, v in cls.model_sd.items()}
        torch.save({"model": cls.model_sd, "ema": cls.ema_sd, "opt": {}, "args": {"lr": 1e-4}}, cls.path("ckpt.pt"))
        # The official weights the .pt tool writes, and opendit's own from them: the later conversions start there.
        cls.ema_rc, cls.ema_out = run(PY, cls.tool, cls.path("ckpt.pt"), cls.path("ema.safetensors"))
        cls.ours_rc, cls.ours_out = run(BIN, "convert", cls.path("ema.safetensors"), cls.path("ours.safetensors"),
                                        *TINY)
        # A diffusers model folder (save_pretrained): heads and input size come from its config.json.
        torch.manual_seed(0)
        dm = DiTTransformer2DModel(num_attention_heads=6, attention_head_dim=64, in_channels=4, out_channels=8,
                                   num_layers=2, sample_size=16, patch_size=2, num_embeds_ada_norm=10, norm_eps=1e-6)
        emb0 = dm.transformer_blocks[0].norm1.emb
        for blk in dm.transformer_blocks:
            blk.norm1.emb.load_state_dict(emb0.state_dict())
        dm.save_pretrained(cls.path("folder"))

    @classmethod
    def path(cls, name):
        return os.path.join(cls.tmp, name)

    def test_pt_checkpoint_ema_weights_by_default(self):
        """.pt checkpoint: EMA weights by default"""
        self.assertEqual(self.ema_rc, 0, self.ema_out)
        got = load_file(self.path("ema.safetensors"))
        self.assertEqual([k for k in self.ema_sd if k not in got or not torch.equal(got[k], self.ema_sd[k])], [],
                         self.ema_out)
        self.assertEqual(len(got), len(self.ema_sd), self.ema_out)

    def test_pt_checkpoint_key_model(self):
        """.pt checkpoint: --key model"""
        rc, out = run(PY, self.tool, self.path("ckpt.pt"), self.path("model.safetensors"), "--key", "model")
        self.assertEqual(rc, 0, out)
        self.assertTrue(torch.equal(load_file(self.path("model.safetensors"))["pos_embed"], self.model_sd["pos_embed"]),
                        out)

    def test_plain_state_dict_pt(self):
        """plain state_dict .pt"""
        torch.save(self.model_sd, self.path("plain.pt"))
        rc, out = run(PY, self.tool, self.path("plain.pt"), self.path("plain.safetensors"))
        self.assertEqual(rc, 0, out)

    def test_pickle_with_code_is_refused(self):
        """a pickle with code is refused"""
        with open(self.path("evil.pt"), "wb") as f:
            pickle.dump({"x_embedder.proj.weight": Evil()}, f)
        rc, out = run(PY, self.tool, self.path("evil.pt"), self.path("evil.safetensors"))
        self.assertEqual(rc, 1, out)
        self.assertIn("cannot read as torch weights", out, out)

    def test_pt_that_is_not_dit_is_refused(self):
        """a .pt that is not DiT is refused"""
        torch.save({"foo": torch.zeros(1)}, self.path("other.pt"))
        rc, out = run(PY, self.tool, self.path("other.pt"), self.path("other.safetensors"))
        self.assertEqual(rc, 1, out)
        self.assertIn("neither a DiT state_dict", out, out)

    def test_opendit_convert_official_to_opendit(self):
        """opendit convert official -> opendit"""
        self.assertEqual(self.ours_rc, 0, self.ours_out)
        self.assertIn("ours.safetensors", self.ours_out, self.ours_out)

    def test_opendit_convert_to_diffusers_and_back_is_exact(self):
        """opendit convert -> diffusers; diffusers -> opendit round trip is exact"""
        rc, out = run(BIN, "convert", self.path("ours.safetensors"), self.path("diffusers.safetensors"), "--to",
                      "diffusers", *TINY)
        self.assertEqual(rc, 0, "opendit convert -> diffusers\n" + out)
        rc, out = run(BIN, "convert", self.path("diffusers.safetensors"), self.path("back.safetensors"), *TINY)
        self.assertEqual(rc, 0, out)
        back, ours = load_file(self.path("back.safetensors")), load_file(self.path("ours.safetensors"))
        self.assertEqual(set(back), set(ours), out)
        self.assertEqual([k for k in ours if k != "pos_embed" and not torch.equal(back[k], ours[k])], [], out)

    def test_diffusers_folder_converts_without_a_deck(self):
        """diffusers folder with config.json converts without a deck"""
        rc, out = run(BIN, "convert", self.path("folder"), self.path("from_folder.safetensors"))
        self.assertEqual(rc, 0, out)
        for fact in ("hidden 384", "heads 6", "input 16x16x4"):
            self.assertIn(fact, out, out)

    def test_deck_that_does_not_match_the_weights_is_refused(self):
        """a deck that does not match the weights is refused"""
        rc, out = run(BIN, "convert", os.path.join(self.path("folder"), "diffusion_pytorch_model.safetensors"),
                      self.path("x.safetensors"), "--set", "model.preset=DiT-S/2")
        self.assertNotEqual(rc, 0, out)
        self.assertIn("do not match", out, out)

    def test_non_dit_safetensors_is_refused(self):
        """non-DiT safetensors is refused"""
        save_file({"foo": torch.zeros(2)}, self.path("notdit.safetensors"))
        rc, out = run(BIN, "convert", self.path("notdit.safetensors"), self.path("y.safetensors"))
        self.assertNotEqual(rc, 0, out)
        self.assertIn("not DiT weights", out, out)

    def test_custom_widths_need_a_deck_for_the_heads(self):
        """custom widths need a deck for the heads (weights that record no model)"""
        rc, out = run(BIN, "convert", self.path("ema.safetensors"), self.path("z.safetensors"))
        self.assertNotEqual(rc, 0, out)
        self.assertIn("number of heads", out, out)

    def test_opendit_weights_record_their_model(self):
        """opendit's weights record their model in the metadata: no deck needed, and a deck that agrees is fine"""
        rc, out = run(BIN, "convert", self.path("ours.safetensors"), self.path("recorded.safetensors"))
        self.assertEqual(rc, 0, out)
        for fact in ("depth 2", "hidden 64", "heads 4", "input 8x8x4"):
            self.assertIn(fact, out, out)
        rc, out = run(BIN, "convert", self.path("ours.safetensors"), self.path("recorded.safetensors"), "--set",
                      "model.num_heads=4")
        self.assertEqual(rc, 0, out)

    def test_deck_contradicting_the_recorded_model_is_refused(self):
        """a deck key that contradicts the model the weights record is an error naming both"""
        rc, out = run(BIN, "convert", self.path("ours.safetensors"), self.path("x.safetensors"), "--set",
                      "model.num_heads=8", "--set", "model.preset=DiT-S/2")
        self.assertNotEqual(rc, 0, out)
        self.assertIn("the deck contradicts the model these weights record", out, out)
        self.assertIn("model.num_heads = 8 (--set) but they record num_heads 4", out, out)
        self.assertIn('model.preset = "DiT-S/2" (--set) but they record depth 2 (the preset\'s is 12)', out, out)
        self.assertEqual(out.count("opendit: error"), 1, out)

    def test_missing_input_is_one_clear_error(self):
        """missing input is one clear error"""
        rc, out = run(BIN, "convert", self.path("missing.safetensors"), self.path("z.safetensors"), *TINY)
        self.assertNotEqual(rc, 0, out)
        self.assertIn("missing.safetensors", out, out)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    BIN, SRC = sys.argv[1:3]
    unittest.main(argv=sys.argv[:1] + sys.argv[3:], verbosity=2)
