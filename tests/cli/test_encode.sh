#!/usr/bin/env bash
# `opendit encode` end to end with tiny random encoders (the tiny VAE of tests/ref, a tiny T5 made here by
# transformers, the test tokenizer): an image folder with a broken file and a caption manifest of videos and images,
# on 1, 2 and 4 ranks (the same bytes); killed with SIGKILL while encoding and while assembling, then resumed on
# another number of ranks (the same bytes as uninterrupted); the failure limit; every input error a user can make
# (one message, every rank exits, no hang); the result against diffusers / transformers / PyAV / Pillow
# (check_encoded.py), `opendit check`, and training on it.
# usage: test_encode.sh OPENDIT REF_DIR PYTHON MPIEXEC
set -u
BIN=$(realpath "$1") REF=$(realpath "$2") MPI=$4
case $3 in */*) PY=$(realpath -s "$3") ;; *) PY=$(command -v "$3") ;; esac  # a path, or a command on PATH
source "$(dirname "$0")/lib.sh"
# One thread per rank everywhere: CPU convolutions then add up in the same order on any number of ranks.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 OPENDIT_TEST_KILL_AT=
mpi="$MPI --oversubscribe -x OMP_NUM_THREADS -x OPENDIT_TEST_KILL_AT -np"
CHECK="$PY $(realpath "$(dirname "$0")")/check_encoded.py"
VAE=$REF/vae/tiny
S="--set encode.image_size=32 --set encode.block=3 --set encode.batch=2 -q --device cpu"
video=1; "$BIN" info 2>&1 | grep -q "FFmpeg  *libavformat" || video=0  # video input off in builds without FFmpeg
gpu=1; "$BIN" info 2>&1 | grep -q "no GPU visible" && gpu=0
errors() { grep -c "^opendit: error" "$out/$1.log"; }

cd "$out"
$PY - <<'EOF' >make.log 2>&1
import os, shutil, sys, numpy as np, torch
from PIL import Image
from transformers import T5Config, T5EncoderModel
rng = np.random.default_rng(0)
for c in ("cat", "dog"):
    os.makedirs(f"imgs/{c}")
    for i in range(7):
        a = (rng.random((40 + 3 * i, 50, 3)) * 255).astype("uint8")
        Image.fromarray(a).save(f"imgs/{c}/{i}." + ("jpg" if i % 2 else "png"))
open("imgs/dog/broken.jpg", "wb").write(b"\xff\xd8\xff\xe0 not a JPEG")
torch.manual_seed(0)
cfg = T5Config(vocab_size=1000, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
               feed_forward_proj="gated-gelu", relative_attention_num_buckets=8, relative_attention_max_distance=20)
T5EncoderModel(cfg).save_pretrained("t5", safe_serialization=True)
EOF
check "inputs and a tiny T5 made" test $? -eq 0
cp "$REF/tokenizer/spiece.model" t5/
[ $video -eq 1 ] && cp "$REF"/video/files/*.mp4 .
cat >m.jsonl <<'EOF'
{"path": "h264.mp4", "caption": "a red ball bouncing on the floor"}
{"path": "imgs/cat/1.jpg", "caption": "a cat"}
{"path": "mpeg4.mp4", "caption": "waves at sunset over the sea, seen from a boat"}
{"path": "truncated.mp4", "caption": "broken"}

{"path": "not_a_video.mp4", "caption": "not a video"}
{"path": "imgs/dog/2.png", "caption": "a dog running in the park with a ball"}
EOF

# ---- an image folder on 1, 2 and 4 ranks ----------------------------------------------------------------------------
run e1 $mpi 1 "$BIN" encode imgs -o e1.h5 --vae "$VAE" $S
check "encode: exit 0" test "$rc_e1" -eq 0
check "encode: the summary" has e1 "14 samples in 1 bucket, 1 failure"
check "encode: the bucket's shape" has e1 "bucket 0: 14 x \[4, 16, 16\]"
check "encode: the broken file listed with its reason" has e1 "failed: imgs/dog/broken.jpg: .*JPEG"
check "encode: a warning when it is skipped" has e1 "warning: skipping imgs/dog/broken.jpg"
check "encode: no block folder left" test ! -e e1.h5.parts
run ref1 $CHECK ref e1.h5 "$VAE"
check "encode: posteriors = diffusers on DiT's crop (h5py reads the file)" test "$rc_ref1" -eq 0
run chk "$BIN" check e1.h5
check "check: every dataset intact" has chk "e1.h5: intact"
for np in 2 4; do
  run e$np $mpi $np "$BIN" encode imgs -o e$np.h5 --vae "$VAE" $S
  run same$np $CHECK same e1.h5 e$np.h5
  rc_var=rc_same$np
  check "encode on $np ranks: the same bytes as on 1" test "${!rc_var}" -eq 0
done

# ---- out of memory: one error naming the settings that would fit (6 GB of address space; it starts in about 4) ----
run oom sh -c "ulimit -v 6000000; CUDA_VISIBLE_DEVICES= exec '$BIN' encode imgs -o oom.h5 --vae '$VAE' \
  --set encode.image_size=1024 --set encode.batch=14 -q --device cpu"
check "encode out of memory: exit 1, one error" test "$rc_oom" -eq 1 -a "$(errors oom)" -eq 1
check "encode out of memory: what the allocator refused" has oom "out of memory in block 0: host memory: an allocation"
check "encode out of memory: the VAE pass to make smaller, and --resume" \
  has oom "a smaller encode.vae_micro_batch (now 32; continue with --resume"

printf 'path,label\nimgs/cat/1.jpg,0\nimgs/dog/2.png,1\n' >good.csv
run g0 $mpi 2 "$BIN" encode good.csv -o good.h5 --vae "$VAE" $S
check "encode without a failure (empty failure lists, 2 ranks): exit 0" has g0 "2 samples in 1 bucket, 0 failures"

# ---- killed and resumed -------------------------------------------------------------------------------------------
OPENDIT_TEST_KILL_AT=block:2 run k1 $mpi 2 "$BIN" encode imgs -o k.h5 --vae "$VAE" $S
check "killed while encoding: the job ends" test "$rc_k1" -ne 0
check "killed: blocks kept, no output" test -d k.h5.parts -a ! -e k.h5
run k2 $mpi 2 "$BIN" encode imgs -o k.h5 --vae "$VAE" $S
check "a stopped job without --resume: refused" has k2 "holds a stopped encode .*--resume continues it"
run k3 $mpi 2 "$BIN" encode imgs -o k.h5 --vae "$VAE" $S --set encode.image_size=64 --resume
check "--resume with other settings: refused, naming the setting" has k3 "image_size = 32.*image_size = 64"
run k4 $mpi 4 "$BIN" encode imgs -o k.h5 --vae "$VAE" $S --resume
check "--resume on 4 ranks: exit 0" test "$rc_k4" -eq 0
check "--resume: the blocks done before are kept" has k4 "resuming: [1-9] of 5 blocks done before"
run samek $CHECK same e1.h5 k.h5
check "killed + resumed = uninterrupted" test "$rc_samek" -eq 0
OPENDIT_TEST_KILL_AT=assemble:1 run a1 $mpi 2 "$BIN" encode imgs -o a.h5 --vae "$VAE" $S
check "killed while assembling: no output" test "$rc_a1" -ne 0 -a ! -e a.h5
run a2 $mpi 1 "$BIN" encode imgs -o a.h5 --vae "$VAE" $S --resume
run samea $CHECK same e1.h5 a.h5
check "killed in assembly + resumed on 1 rank = uninterrupted" test "$rc_a2" -eq 0 -a "$rc_samea" -eq 0
run a3 $mpi 2 "$BIN" encode imgs -o a.h5 --vae "$VAE" $S --resume
check "--resume of a finished job: nothing to do" has a3 "is complete: nothing to resume"
run a4 $mpi 2 "$BIN" encode imgs -o a.h5 --vae "$VAE" $S
check "an existing output: refused without --overwrite" has a4 "exists: --overwrite replaces it"
run a5 $mpi 2 "$BIN" encode imgs -o a.h5 --vae "$VAE" $S --overwrite
check "--overwrite: exit 0" test "$rc_a5" -eq 0

OPENDIT_TEST_KILL_AT=block:1:USR1 run u1 $mpi 2 "$BIN" encode imgs -o u.h5 --vae "$VAE" $S
check "SIGUSR1 (Slurm's stop): every rank exits 75 after its block" test "$rc_u1" -eq 75
check "... saying how to continue, blocks kept" has u1 "stopped by a signal after [0-9]* of 15 inputs.*--resume"
run u2 $mpi 1 "$BIN" encode imgs -o u.h5 --vae "$VAE" $S --resume
run sameu $CHECK same e1.h5 u.h5
check "... and --resume finishes it, equal to uninterrupted" test "$rc_u2" -eq 0 -a "$rc_sameu" -eq 0

OPENDIT_TEST_KILL_AT=block:3:USR1 run u3 $mpi 2 "$BIN" encode imgs -o u3.h5 --vae "$VAE" $S
check "a signal in the last round: exit 75 before assembling" has u3 "stopped by a signal before assembling"
run u4 $mpi 2 "$BIN" encode imgs -o u3.h5 --vae "$VAE" $S --resume
run sameu3 $CHECK same e1.h5 u3.h5
check "... and --resume only assembles, equal to uninterrupted" test "$rc_u4" -eq 0 -a "$rc_sameu3" -eq 0
mkdir empty.h5.parts  # a job killed before it wrote its identity: nothing to lose, a fresh start
run j1 $mpi 2 "$BIN" encode imgs -o empty.h5 --vae "$VAE" $S --resume
check "--resume over a block folder without job.txt or blocks: starts afresh" test "$rc_j1" -eq 0 -a -e empty.h5

# ---- the failure limit ----------------------------------------------------------------------------------------------
run f1 $mpi 2 "$BIN" encode imgs -o f.h5 --vae "$VAE" $S --set encode.max_failures=0
check "max_failures = 0 and a broken file: exit 1" test "$rc_f1" -eq 1
check "... saying why, once" test "$(grep -c 'more than encode.max_failures = 0' "$out/f1.log")" -eq 1
nblocks=$(ls f.h5.parts | grep -c '^block-.*\.h5$')
run f1b $mpi 2 "$BIN" encode imgs -o f.h5 --vae "$VAE" $S --set encode.max_failures=0 --resume
check "... a resume still over the limit stops before encoding a block" \
  test "$rc_f1b" -eq 1 -a "$(ls f.h5.parts | grep -c '^block-.*\.h5$')" -eq "$nblocks" -a "$(count f1b 'max_failures = 0')" -eq 1
run f2 $mpi 2 "$BIN" encode imgs -o f.h5 --vae "$VAE" $S --resume
check "... and --resume with the limit raised finishes" test "$rc_f2" -eq 0 -a -e f.h5

# ---- videos and captions --------------------------------------------------------------------------------------------
if [ $video -eq 0 ]; then  # the images and captions of the manifest only
  grep -v mp4 m.jsonl >m2.jsonl && mv m2.jsonl m.jsonl
  printf 'not a video' >clip.mp4 && printf 'path,label\nclip.mp4,0\n' >vid.csv
  run v0 "$BIN" encode vid.csv -o novideo.h5 --vae "$VAE" $S
  check "a video in a build without FFmpeg: one clear error" has v0 "is a video, but this build has no FFmpeg"
  echo "note: this build has no FFmpeg: video checks skipped"
fi
V="--set encode.num_frames=4 --set encode.frame_interval=2 --set encode.text_length=8 --set encode.text_dtype=fp32"
run v1 $mpi 2 "$BIN" encode m.jsonl -o v.h5 --vae "$VAE" --text-encoder t5 $S $V --set encode.clean_captions=false
check "videos + captions: exit 0" test "$rc_v1" -eq 0
if [ $video -eq 1 ]; then
  check "videos + captions: two buckets" has v1 "4 samples in 2 buckets, 2 failures"
  check "videos + captions: the video bucket" has v1 "x \[4, 4, 16, 16\]"
  check "videos + captions: a truncated MP4 listed" has v1 "failed: truncated.mp4"
fi
check "videos + captions: long captions counted" has v1 "captions cut to 8 tokens"
run ref2 $CHECK ref v.h5 "$VAE" t5 t5/spiece.model
check "video posteriors = diffusers on PyAV frames; tokens = transformers" test "$rc_ref2" -eq 0
grep "^ref:" "$out/ref1.log" "$out/ref2.log"

# ---- the file trains ------------------------------------------------------------------------------------------------
printf '[model]\npreset = "custom"\ndepth = 2\nhidden_size = 32\nnum_heads = 2\npatch_size = 2\nin_channels = 4\ninput_size = 16\nnum_classes = 2\n[data]\npath = "e1.h5"\nglobal_batch = 4\n[train]\nsteps = 3\n[run]\nout_dir = "runs"\n' >t.toml
run t1 $mpi 2 "$BIN" train --config t.toml --set parallel.device=cpu
check "train on an encoded image file (2 ranks): exit 0" test "$rc_t1" -eq 0
run t2 $mpi 2 "$BIN" train --config t.toml --set data.path=v.h5 --set run.name=v --dry-run --set parallel.device=cpu
[ $video -eq 1 ] && check "train: the buckets of other shapes are skipped with a note" has t2 "note: v.h5: skipping samples of other shapes"

# ---- decode reads it ------------------------------------------------------------------------------------------------
run d1 "$BIN" decode e1.h5 --vae "$VAE" --out dec --rows 0:3 --device cpu
check "decode: an encoded file's means decode to a PNG each" test "$rc_d1" -eq 0 -a "$(ls dec 2>/dev/null | wc -l)" -eq 3
if [ $video -eq 1 ]; then
  run d2 "$BIN" decode v.h5 --vae "$VAE" --out mixed --rows 0:4 --device cpu
  check "decode: rows of different shapes are refused, naming the buckets" has d2 "have different shapes (buckets"
  run d3 "$BIN" decode v.h5 --vae "$VAE" --out clip.mp4 --rows 0:1 --device cpu
  check "decode: an encoded clip back to an MP4" test "$rc_d3" -eq 0 -a -s clip.mp4
fi

# ---- on a GPU: the same inputs through the CUDA path, against diffusers -----------------------------------------------
if [ $gpu -eq 1 ]; then
  run g1 "$BIN" encode imgs -o g.h5 --vae "$VAE" ${S% --device cpu} --device cuda
  run refg $CHECK ref g.h5 "$VAE"
  check "encode on the GPU: posteriors = diffusers" test "$rc_g1" -eq 0 -a "$rc_refg" -eq 0
  grep "^ref:" "$out/refg.log"
fi

# ---- input errors: one message, every rank exits 1 ------------------------------------------------------------------
printf 'path,label\nimgs/cat/1.jpg,0\nimgs/cat/nope.jpg,1\n' >missing.csv
printf '{"path": "imgs/cat/1.jpg", "caption": "x"}\n{"path": "imgs/cat/3.jpg", "caption": }\n' >bad.jsonl
for c in "nomanifest:nope.csv -o x.h5 --vae $VAE:does not exist" \
         "missingfile:missing.csv -o x.h5 --vae $VAE:missing.csv:3" \
         "malformed:bad.jsonl -o x.h5 --vae $VAE --text-encoder t5:bad.jsonl:2" \
         "nofolder:imgs -o nowhere/x.h5 --vae $VAE:does not exist" \
         "readonly:imgs -o /proc/x.h5 --vae $VAE:cannot create a file" \
         "wrongvae:imgs -o x.h5 --vae t5:a t5 model's config" \
         "wrongt5:m.jsonl -o x.h5 --vae $VAE --text-encoder $VAE:config" \
         "notext:m.jsonl -o x.h5 --vae $VAE:has captions: give the T5 encoder"; do
  IFS=: read -r name args want <<<"$c"
  run "bad_$name" $mpi 2 "$BIN" encode $args $S
  rc_var=rc_bad_$name
  check "bad input ($name): exit 1" test "${!rc_var}" -eq 1
  check "bad input ($name): one message saying so" test "$(errors "bad_$name")" -eq 1 -a "$(count "bad_$name" "$want")" -ge 1
done
check "bad inputs leave no files" test ! -e x.h5 -a ! -e x.h5.parts

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
