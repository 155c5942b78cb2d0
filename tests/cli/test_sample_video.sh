#!/usr/bin/env bash
# Text-to-video sampling end to end on CPU with tiny random models: a tiny STDiT trained a few steps on a version-2
# file of clips with captions (tests/train/make_video_dataset.py), a tiny T5 made here by transformers with the test
# tokenizer, the tiny VAE of tests/ref. `opendit sample --prompt/--prompts` with Open-Sora's defaults (IDDPM 100,
# cfg 7), MP4s checked with PyAV (frames, size), PNG strips, the latents output, the seed's determinism, Open-Sora's
# guidance of channels 0..2, and every input error a user can make (one message each).
# usage: test_sample_video.sh OPENDIT REF_DIR PYTHON
set -u
BIN=$(realpath "$1") REF=$(realpath "$2")
case $3 in */*) PY=$(realpath -s "$3") ;; *) PY=$(command -v "$3") ;; esac
HERE=$(realpath "$(dirname "$0")")
source "$HERE/lib.sh"
export OMP_NUM_THREADS=1
VAE=$REF/vae/tiny
video=1; "$BIN" info 2>&1 | grep -q "FFmpeg  *libavformat" || video=0
errors() { grep -c "^opendit: error" "$out/$1.log"; }

cd "$out"
$PY - <<'PYEOF' >make.log 2>&1
import torch
from transformers import T5Config, T5EncoderModel
torch.manual_seed(0)
cfg = T5Config(vocab_size=1000, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
               feed_forward_proj="gated-gelu", relative_attention_num_buckets=8, relative_attention_max_distance=20)
T5EncoderModel(cfg).save_pretrained("t5", safe_serialization=True)
cfg.d_model = 48
T5EncoderModel(cfg).save_pretrained("t5wide", safe_serialization=True)
PYEOF
check "a tiny T5 made" test $? -eq 0
cp "$REF/tokenizer/spiece.model" t5/
cp "$REF/tokenizer/spiece.model" t5wide/
$PY "$HERE/../train/make_video_dataset.py" clips.h5 16 4 4 3 8 8 32 10 >>make.log 2>&1
check "a file of clips made" test $? -eq 0
cat >deck.toml <<'DECK'
[model]
type = "stdit"
preset = "custom"
depth = 2
hidden_size = 32
num_heads = 4
in_channels = 4
input_size = 8
num_frames = 3
caption_channels = 32
text_length = 10
[data]
path = "clips.h5"
global_batch = 8
[train]
steps = 4
precision = "fp32"
lr = 1e-2
[run]
out_dir = "runs"
name = "tiny"
[parallel]
device = "cpu"
DECK
run train "$BIN" train --config deck.toml
check "a tiny STDiT trained" test "$rc_train" -eq 0
W=runs/tiny/ema.safetensors

# Two prompts, defaults: IDDPM on 100 respaced steps, guidance 7 against the null caption.
printf 'a red ball bouncing\n\n  waves at sunset  \n' >prompts.txt
run s1 "$BIN" sample --checkpoint $W --prompts prompts.txt --text-encoder t5 --vae "$VAE" --out vids
check "sample: exit 0" test "$rc_s1" -eq 0
check "sample: Open-Sora's defaults (DDPM 100, cfg 7)" has s1 "DDPM 100, cfg 7"
check "sample: 2 videos (2 prompts x 1)" has s1 "sampling 2 videos (2 prompts x 1)"
check "sample: a PNG strip each" test -s vids/000000.png -a -s vids/000001.png
check "sample: prompts.txt names each video's prompt" grep -q "^000001	waves at sunset$" vids/prompts.txt
if [ $video -eq 1 ]; then
  # The tiny VAE upsamples by 2 (two blocks): 3 latent frames of 8 x 8 -> 3 frames of 16 x 16.
  $PY - >probe.log 2>&1 <<'PYEOF'
import av
for i in range(2):
    with av.open(f"vids/00000{i}.mp4") as c:
        frames = [f for f in c.decode(video=0)]
        print(i, len(frames), frames[0].width, frames[0].height)
PYEOF
  check "sample: playable MP4s of 3 frames of 16x16 (PyAV)" test "$(cat probe.log)" = "$(printf '0 3 16 16\n1 3 16 16')"
fi

# One prompt to NAME.mp4 (and NAME.png beside it); a prompt longer than the model's 10 tokens is cut with a warning.
long="a very long prompt with many words that the tiny tokenizer turns into far more than ten tokens"
if [ $video -eq 1 ]; then
  run s2 "$BIN" sample --checkpoint $W --prompt "$long" --text-encoder t5 --vae "$VAE" --out one.mp4 --steps ddim5
  check "one video: exit 0" test "$rc_s2" -eq 0
  check "one video: the MP4" test -s one.mp4
  check "one video: its strip beside it" test -s one.png
else  # a build without FFmpeg refuses NAME.mp4 and says why; a folder gets the PNG strips
  run s2x "$BIN" sample --checkpoint $W --prompt x --text-encoder t5 --vae "$VAE" --out one.mp4 --steps ddim5
  check "no FFmpeg: NAME.mp4 refused" test "$rc_s2x" -ne 0
  run s2 "$BIN" sample --checkpoint $W --prompt "$long" --text-encoder t5 --vae "$VAE" --out one --steps ddim5
  check "one video: exit 0" test "$rc_s2" -eq 0
  check "one video: its strip" test -s one/000000.png
fi
check "one video: the long prompt is cut with a warning" has s2 "warning: prompt 1 is longer than the model's 10"

# Latents: the same seed gives the same videos; another seed others; Open-Sora's channels-0..2 guidance runs.
for n in a b; do
  run lat$n "$BIN" sample --checkpoint $W --prompt "a cat" --prompt "a dog" --per-prompt 2 --text-encoder t5 \
    --out lat$n.safetensors --steps ddim4
done
run latc "$BIN" sample --checkpoint $W --prompt "a cat" --prompt "a dog" --per-prompt 2 --text-encoder t5 \
  --out latc.safetensors --steps ddim4 --seed 1
run latd "$BIN" sample --checkpoint $W --prompt "a cat" --text-encoder t5 --out latd.safetensors --steps ddim4 \
  --set sample.cfg_channels=first3
check "latents: exit 0" test "$rc_lata$rc_latb$rc_latc$rc_latd" = 0000
$PY - >lat.log 2>&1 <<'PYEOF'
import torch
from safetensors import safe_open
from safetensors.torch import load_file
a, b, c = (load_file(f"lat{n}.safetensors")["samples"] for n in "abc")
assert a.shape == (4, 4, 3, 8, 8), a.shape
assert torch.equal(a, b), "same seed, other latents"
assert not torch.equal(a, c), "another seed, same latents"
assert not torch.equal(a[0], a[2]), "two prompts, same video"
with safe_open("lata.safetensors", "pt") as f:
    assert f.metadata()["prompts"] == "a cat\na dog", f.metadata()
print("ok")
PYEOF
check "latents: [4, 4, 3, 8, 8], the seed decides, the prompts in the metadata" grep -q "^ok$" lat.log
check "latents: first3 guidance is said" has latd "cfg 7 (channels 0..2)"

# Latte: trained on the same clips (diffusers' layout), guided against a negative prompt's T5 embedding.
run latte_train "$BIN" train --config deck.toml --set model.type=latte --set model.preset=custom \
  --set model.depth=1 --set model.hidden_size=32 --set model.num_heads=4 --set model.patch_size=2 \
  --set run.name=latte --set train.steps=2
check "latte: trained" test "$rc_latte_train" -eq 0
for neg in "" "blurry, low quality"; do
  run latte_s "$BIN" sample --checkpoint runs/latte/ema.safetensors --prompt "a cat" --negative-prompt "$neg" \
    --text-encoder t5 --out latte.safetensors --steps ddim3
  check "latte: sampled with negative prompt \"$neg\"" test "$rc_latte_s" -eq 0
  cp latte.safetensors "latte_${#neg}.safetensors"
done
$PY -c "
import torch; from safetensors.torch import load_file
a, b = (load_file(f'latte_{n}.safetensors')['samples'] for n in (0, 19))
assert a.shape == (1, 4, 3, 8, 8) and not torch.equal(a, b)" >latte_cmp.log 2>&1
check "latte: the negative prompt steers the samples" test $? -eq 0
run e10 "$BIN" sample --checkpoint $W --prompt x --negative-prompt y --text-encoder t5 --out e10.safetensors
check "--negative-prompt for STDiT: refused" has e10 "guides against its own null caption"

# Input errors: one message each, before any sampling.
run e1 "$BIN" sample --checkpoint $W --text-encoder t5 --vae "$VAE" --out e1
check "no prompt: says --prompt" has e1 "give --prompt TEXT or --prompts FILE"
: >empty.txt
run e2 "$BIN" sample --checkpoint $W --prompts empty.txt --text-encoder t5 --vae "$VAE" --out e2
check "an empty prompts file: named" has e2 "empty.txt: no prompt in the file"
run e3 "$BIN" sample --checkpoint $W --prompt x --text-encoder t5wide --vae "$VAE" --out e3
check "T5 of another width: both widths named" has e3 "T5 of width 48; the model takes captions of 32 channels"
run e4 "$BIN" sample --checkpoint $W --prompt x --prompt y --text-encoder t5 --vae "$VAE" --out e4.mp4
check "two videos to one MP4: refused" has e4 "one MP4 holds one video and 2 are asked for"
run e5 "$BIN" sample --checkpoint $W --prompt x --text-encoder t5 --out e5
check "a folder without --vae: refused" has e5 "decoding videos needs --vae DIR"
run e6 "$BIN" sample --checkpoint $W --prompt x --vae "$VAE" --out e6
check "no --text-encoder: refused" has e6 "needs T5 for its prompts"
run e7 "$BIN" sample --checkpoint $W --prompt x --text-encoder t5 --vae "$VAE" --out vids
check "a folder that holds files: refused without --overwrite" has e7 "the folder is not empty"
run e8 "$BIN" sample --checkpoint $W --prompt x --text-encoder t5 --out e8.safetensors --set model.num_frames=5
check "a deck that contradicts the weights: named" has e8 "model.num_frames = 5"
run e9 "$BIN" sample --checkpoint $W --classes 1 --text-encoder t5 --out e9.safetensors
check "--classes for a text model: refused" has e9 "takes prompts (--prompt)"
# STDiT weights that record no config (as tools/convert_opensora_pt.py writes them): named as such.
$PY -c "
from safetensors import safe_open
from safetensors.torch import load_file, save_file
save_file(load_file('$W'), 'bare.safetensors', metadata={'format': 'opendit.stdit', 'version': '1'})"
run e11 "$BIN" sample --checkpoint bare.safetensors --prompt x --text-encoder t5 --out e11.safetensors
check "weights without a config, no deck: says they are stdit's" has e11 "stdit weights that record no model config"
run e12 "$BIN" convert bare.safetensors e12.safetensors --set model.input_size=8
check "convert with a deck of no type: names the weights' type" has e12 "these are stdit weights but the deck builds a dit"
run e13 "$BIN" train --config deck.toml --set model.type=latte --set model.input_width=4 --set run.name=e13
check "latte with a key it does not read: refused" has e13 "model.input_width (--set): not a key of model.type"
for e in e1 e2 e3 e4 e5 e6 e7 e8 e9 e10 e11 e12 e13; do
  eval "rc=\$rc_$e"
  check "$e: exit 1 with one error" test "$rc" -ne 0 -a "$(errors $e)" = 1
done
check "no folder made by a refused run" test ! -e e1 -a ! -e e5 -a ! -e e6

echo "$passes passed, $fails failed"
[ $fails -eq 0 ]
