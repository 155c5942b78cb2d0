"""Checks of `opendit encode`'s output with third-party code (h5py reads it; diffusers, transformers, sentencepiece,
PyAV and Pillow recompute it). Used by tests/cli/test_encode.sh.

  check_encoded.py same A.h5 B.h5       every dataset of A equal to B's, byte for byte (attributes too, except the
                                        time and rank count of the writer)
  check_encoded.py ref FILE.h5 VAE_DIR [T5_DIR SPIECE]
                                        every sample's posterior against diffusers' AutoencoderKL on the source file
                                        prepared as DiT (images: center_crop_arr) and Open-Sora v1.0 (video clips)
                                        prepare it; caption tokens against transformers' T5EncoderModel on
                                        sentencepiece's ids
"""
import os
import sys

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "ref"))
from make_images_ref import dit_crop  # noqa: E402

WRITER_ATTRS = {"created_at", "created_by"}


def datasets(f):
    out = {}
    f.visititems(lambda name, obj: out.__setitem__(name, obj) if isinstance(obj, h5py.Dataset) else None)
    return out


def same(a_path, b_path):
    a, b = h5py.File(a_path, "r"), h5py.File(b_path, "r")
    da, db = datasets(a), datasets(b)
    assert sorted(da) == sorted(db), f"datasets differ: {sorted(da)} vs {sorted(db)}"
    for name in da:
        x, y = da[name][()], db[name][()]
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), f"{name} differs"
    ka, kb = set(a.attrs) - WRITER_ATTRS, set(b.attrs) - WRITER_ATTRS
    assert ka == kb, f"attributes differ: {ka ^ kb}"
    for k in ka:
        assert np.array_equal(a.attrs[k], b.attrs[k]), f"attribute {k} differs"
    print(f"same: {len(da)} datasets equal")


def strings(f, name):
    off, raw = f[name + "_offset"][()], f[name + "_bytes"][()].tobytes()
    return [raw[off[i]:off[i + 1]].decode() for i in range(len(off) - 1)]


def pixels(path, a):
    """The VAE's input for one file: [N, 3, S, S] (images: N = 1; videos: the clip's frames)."""
    size = int(a["image_size"])
    if path.endswith(".mp4"):
        import make_video_ref  # PyAV: only where there are videos
        make_video_ref.NUM_FRAMES, make_video_ref.INTERVAL = int(a["num_frames"]), int(a["frame_interval"])
        clip = make_video_ref.clip(make_video_ref.decode(path), size)  # [3, T, S, S]
        return clip.permute(1, 0, 2, 3), True
    from PIL import Image
    img = np.asarray(dit_crop(Image.open(path).convert("RGB"), size)).astype(np.float32)
    return torch.from_numpy(img / 127.5 - 1).permute(2, 0, 1)[None], False


def ref(path, vae_dir, t5_dir=None, spm=None):
    from diffusers import AutoencoderKL
    f = h5py.File(path, "r")
    a = f.attrs
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    paths = strings(f, "samples/path")
    bucket, row = f["samples/bucket"][()], f["samples/bucket_row"][()]
    worst = 0.0
    with torch.no_grad():
        for i, p in enumerate(paths):
            x, video = pixels(p, a)
            dist = vae.encode(x).latent_dist
            mean, logvar = dist.mean, dist.logvar
            if video:  # frames -> [C, T, h, w]
                mean, logvar = mean.permute(1, 0, 2, 3), logvar.permute(1, 0, 2, 3)
            else:
                mean, logvar = mean[0], logvar[0]
            g = f[f"bucket_{bucket[i]}"]
            for want, key in ((mean, "mean"), (logvar, "logvar")):
                got = torch.from_numpy(g[key][row[i]].astype(np.float32))
                assert got.shape == want.shape, f"{p}: {key} {tuple(got.shape)} vs {tuple(want.shape)}"
                err = ((got - want).abs().max() / want.abs().max().clamp_min(1e-6)).item()
                worst = max(worst, err)
                assert err < 2e-3, f"{p}: {key} differs from diffusers by {err:.2e} (relative)"
    print(f"ref: {len(paths)} posteriors within {worst:.1e} of diffusers (stored as {f['bucket_0/mean'].dtype})")
    if t5_dir is None:
        return
    import sentencepiece
    from transformers import T5EncoderModel
    sp = sentencepiece.SentencePieceProcessor(model_file=spm)
    t5 = T5EncoderModel.from_pretrained(t5_dir).eval()
    captions, off = strings(f, "samples/caption"), f["samples/text_offset"][()]
    tokens, L = f["text/tokens"], int(a["text_length"])
    worst = 0.0
    with torch.no_grad():
        for i, c in enumerate(captions):
            ids = sp.encode(c)[:L - 1] + [1]  # T5Tokenizer: truncated to leave room for EOS (id 1)
            assert off[i + 1] - off[i] == len(ids), f"caption {i}: {off[i + 1] - off[i]} tokens, expected {len(ids)}"
            want = t5(input_ids=torch.tensor([ids])).last_hidden_state[0]
            got = torch.from_numpy(tokens[off[i]:off[i + 1]].astype(np.float32))
            err = ((got - want).abs().max() / want.abs().max()).item()
            worst = max(worst, err)
            assert err < 2e-3, f"caption {i} ({c!r}): differs from transformers by {err:.2e}"
    print(f"ref: {len(captions)} captions within {worst:.1e} of transformers")


if __name__ == "__main__":
    {"same": same, "ref": ref}[sys.argv[1]](*sys.argv[2:])
