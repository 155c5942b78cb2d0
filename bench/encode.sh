#!/usr/bin/env bash
# `opendit encode` end to end against its Python peer (bench/peer_encode.py: a torch DataLoader of Pillow workers
# feeding diffusers' AutoencoderKL), in one call on one device: a generated ImageNet-like folder of JPEGs (about
# 500x375, quality 90, 8 classes) -> SD-VAE posteriors at 256², the SD VAE's architecture with random weights.
# Both use all the machine's cores for decoding (opendit: cores - 1 threads; the peer: cores - 1 workers).
# usage: bench/encode.sh [IMAGES] [VAE_DTYPE]     e.g. bench/encode.sh 8192 fp32
# Prints BENCH (opendit) and PEER lines (items/s of the encoding loop, GPU-busy share) and a RESULT line.
set -uo pipefail
cd "$(dirname "$0")/.."
N=${1:-8192} DT=${2:-fp32}
PY=$(cat build/.python 2>/dev/null || echo python3)
W=${BENCH_DIR:-/tmp/opendit-encode-bench}
CORES=$(nproc)
mkdir -p "$W"
"$PY" - "$W/imgs" "$N" <<'EOF'
import os, sys
from multiprocessing import Pool
import numpy as np
from PIL import Image
root, n = sys.argv[1], int(sys.argv[2])
def make(i):
    rng = np.random.default_rng(i)
    h, w = [(375, 500), (500, 375), (333, 500), (480, 640)][i % 4]
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(x / (7 + c) + y / (11 + 2 * c) + i) for c in range(3)], -1)
    img = np.clip(base + rng.normal(0, 18, (h, w, 3)), 0, 255).astype(np.uint8)
    d = os.path.join(root, f"class{i % 8:02d}")
    os.makedirs(d, exist_ok=True)
    Image.fromarray(img).save(os.path.join(d, f"{i:06d}.jpg"), quality=90)
have = sum(len(f) for _, _, f in os.walk(root)) if os.path.isdir(root) else 0
if have != n:
    with Pool(os.cpu_count()) as p:
        p.map(make, range(n), chunksize=64)
EOF
"$PY" - "$W/vae" <<'EOF'
import os, sys, torch
from diffusers import AutoencoderKL
if not os.path.exists(os.path.join(sys.argv[1], "config.json")):
    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                  layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=256).save_pretrained(sys.argv[1])
EOF
ours=$(build/bin/opendit encode "$W/imgs" -o "$W/out.h5" --vae "$W/vae" --overwrite -q --set encode.batch=64 \
  --set encode.vae_micro_batch=64 --set encode.block=1024 --set encode.vae_dtype="$DT" 2>&1)
echo "$ours" | grep -E "^(wrote|encoded|rank 0)|error"
rate=$(echo "$ours" | sed -n 's/.*: \([0-9.]*\) inputs\/s.*/\1/p')
busy=$(echo "$ours" | sed -n 's/.*GPU busy \([0-9]*\)%.*/\1/p')
echo "BENCH encode images=$N vae_dtype=$DT items_per_s=$rate gpu_busy_pct=$busy"
peer=$("$PY" bench/peer_encode.py "$W/imgs" "$W/vae" --batch 64 --workers $((CORES - 1)) --dtype "$DT" 2>/dev/null | grep '^PEER')
echo "$peer"
pr=$(echo "$peer" | sed -n 's/.*items_per_s=\([0-9.]*\).*/\1/p')
awk -v a="$rate" -v b="$pr" -v dt="$DT" 'BEGIN { if (a == "" || b == "" || b == 0) { print "RESULT encode: missing figure"; exit }
  printf "RESULT encode %s: opendit %.1f items/s, peer %.1f, speed ratio %.2fx\n", dt, a, b, a / b }'
