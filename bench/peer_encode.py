"""The peer of `opendit encode` for images: what DiT's extract_features.py-style precompute does with the Python
stack. A torch DataLoader (worker processes) reads an ImageFolder with Pillow, crops as DiT's center_crop_arr, and
diffusers' AutoencoderKL encodes on the GPU; the posterior (mean and log-variance) comes back to the host as
float16, as opendit stores it. Prints one line:
  PEER encode images=N seconds=S items_per_s=R gpu_busy_pct=B
(gpu_busy_pct: the share of the encode loop the GPU spent in the VAE, from CUDA events; the rest waited for data).
usage: peer_encode.py FOLDER VAE_DIR [--batch 64] [--workers 15] [--size 256] [--dtype fp32]
"""
import argparse
import os
import sys
import time

import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "ref"))
from make_images_ref import dit_crop as center_crop_arr  # noqa: E402  DiT's preprocessing, as the tests check it


class Folder(torch.utils.data.Dataset):
    def __init__(self, root, size):
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        self.items = [(os.path.join(root, c, f), k) for k, c in enumerate(classes)
                      for f in sorted(os.listdir(os.path.join(root, c)))]
        self.size = size

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        a = center_crop_arr(Image.open(path).convert("RGB"), self.size)
        return torch.from_numpy(a).permute(2, 0, 1).float().div(127.5).sub(1), label


def main():
    p = argparse.ArgumentParser()
    p.add_argument("folder")
    p.add_argument("vae")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=15)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--dtype", default="fp32")
    a = p.parse_args()
    from diffusers import AutoencoderKL
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    vae = AutoencoderKL.from_pretrained(a.vae).to("cuda", dtype).eval()
    data = Folder(a.folder, a.size)
    loader = torch.utils.data.DataLoader(data, batch_size=a.batch, num_workers=a.workers, pin_memory=True,
                                         persistent_workers=False, prefetch_factor=4)
    means, logvars, busy = [], [], 0.0
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for x, _ in loader:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dist = vae.encode(x.to("cuda", dtype, non_blocking=True)).latent_dist
            end.record()
            means.append(dist.mean.half().cpu())
            logvars.append(dist.logvar.half().cpu())
            busy += start.elapsed_time(end) / 1e3
    torch.cuda.synchronize()
    s = time.perf_counter() - t0
    n = sum(m.shape[0] for m in means)
    print(f"PEER encode images={n} seconds={s:.2f} items_per_s={n / s:.1f} gpu_busy_pct={100 * busy / s:.1f}")


if __name__ == "__main__":
    main()
