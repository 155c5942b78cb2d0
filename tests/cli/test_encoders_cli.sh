#!/usr/bin/env bash
# The encoders from the command line: info --vae/--text-encoder, decode, sample --vae and bench vae|t5, with the
# reference folders of tests/ref (a tiny SD-layout VAE, a tiny T5, a trained-at-test-time spiece.model, a tiny latent
# DiT), and every error a user can make with them.
# usage: test_encoders_cli.sh OPENDIT REF_DIR PYTHON
set -u
BIN=$1 REF=$2 PY=$3
source "$(dirname "$0")/lib.sh"
png() { [ "$(head -c 8 "$1" 2>/dev/null | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ]; }

VAE=$REF/vae/tiny
mkdir -p "$out/pipe/tokenizer"
cp -r "$REF/t5/t5_sharded" "$out/pipe/text_encoder"
cp "$REF/tokenizer/spiece.model" "$out/pipe/tokenizer/"

# ---- info -----------------------------------------------------------------------------------------------------------
run info "$BIN" info --vae "$REF/vae/sd" --text-encoder "$out/pipe"
check "info: exit 0" test "$rc_info" -eq 0
check "info: the SD layout" has info "widths 128-256-512-512"
check "info: VAE parameters" has info "83,653,863"
check "info: T5 from shards" has info "shards: .*names and shapes match config.json"
check "info: the tokenizer found in the pipeline" has info "tokenizer/spiece.model (900 ids"
run info_list "$BIN" info --vae "$VAE" --tensors
check "info --tensors: every tensor with its shape" has info_list "^    decoder.conv_out.weight \[3, 32, 3, 3\]"
run info_nospm "$BIN" info --text-encoder "$REF/t5/t5"
check "info: no spiece.model is an error" test "$rc_info_nospm" -eq 1
check "info: ... naming the paths tried" has info_nospm "spiece.model"
run info_swap "$BIN" info --vae "$REF/t5/t5"
check "info: a T5 given as the VAE" has info_swap "a t5 model's config"
run info_mpi mpirun --oversubscribe -np 2 "$BIN" info --vae "$VAE"
check "info --vae refuses mpirun" test "$rc_info_mpi" -ne 0

# ---- latents from a tiny latent DiT, then decode --------------------------------------------------------------------
printf '[model]\npreset = "custom"\ndepth = 2\nhidden_size = 64\nnum_heads = 4\npatch_size = 2\nin_channels = 4\ninput_size = 8\nnum_classes = 10\n' >"$out/tiny.toml"
run lat "$BIN" sample --config "$out/tiny.toml" --checkpoint "$REF/sample/weights.safetensors" --classes 1,2,3 \
  --steps ddim3 --out "$out/lat.safetensors"
check "sample: latents written" test "$rc_lat" -eq 0
run dec "$BIN" decode "$out/lat.safetensors" --vae "$VAE" --out "$out/pics" --micro-batch 2
check "decode: exit 0" test "$rc_dec" -eq 0
check "decode: a PNG per sample" test "$(ls "$out/pics" | wc -l)" -eq 3
check "decode: PNG files" png "$out/pics/000002.png"
run dec_grid "$BIN" decode "$out/lat.safetensors" --vae "$VAE" --out "$out/grid.png" --rows 1:3 --tile 4 --overlap 2
check "decode: a grid of rows 1..2, tiled" png "$out/grid.png"
check "decode: says how many" has dec_grid "2 samples in one grid"
run dec_again "$BIN" decode "$out/lat.safetensors" --vae "$VAE" --out "$out/pics"
check "decode: a non-empty folder needs --overwrite" has dec_again "give --overwrite"
run dec_rows "$BIN" decode "$out/lat.safetensors" --vae "$VAE" --out "$out/r.png" --rows 5:2
check "decode: bad --rows" has dec_rows "0 <= START < END <= 3"
run dec_key "$BIN" decode "$out/lat.safetensors" --vae "$VAE" --out "$out/k.png" --key nosuch
check "decode: unknown --key" has dec_key "no tensor 'nosuch'"
run dec_ch "$BIN" decode "$out/lat.safetensors" --vae "$REF/vae/tiny3" --out "$out/c.png"
check "decode: latent channels the VAE does not take" has dec_ch "the VAE decodes \[3, h, w\]"
run dec_tile "$BIN" decode "$out/lat.safetensors" --vae "$VAE" --out "$out/t.png" --tile 1
check "decode: bad tile" has dec_tile "tile must be 0"
run dec_pix "$BIN" decode "$(dirname "$0")/../../inputs/digits/heldout.h5" --vae "$VAE" --out "$out/p.png"
check "decode: pixel data is refused" has dec_pix "not VAE latents"
check "decode: nothing written on errors" test ! -e "$out/r.png" -a ! -e "$out/k.png" -a ! -e "$out/p.png"

# ---- video latents: an MP4 per sample (read back with PyAV), one MP4, and the errors ---------------------------------
"$PY" -c "
import torch; from safetensors.torch import save_file
torch.manual_seed(0); save_file({'latents': torch.randn(2, 4, 3, 8, 6) * 0.18215}, '$out/vid.safetensors')"
if "$BIN" info | grep -q "FFmpeg  *libavformat"; then
  run vdec "$BIN" decode "$out/vid.safetensors" --vae "$VAE" --out "$out/vids" --fps 12
  check "decode video: an MP4 per sample" test -s "$out/vids/000000.mp4" -a -s "$out/vids/000001.mp4"
  check "decode video: PyAV reads 3 frames of 16x12 at 12 fps" test "$("$PY" -c "
import av
with av.open('$out/vids/000001.mp4') as c:
    s = c.streams.video[0]; f = list(c.decode(video=0))
    print(len(f), f[0].width, f[0].height, round(float(s.average_rate)))")" = "3 12 16 12"
  run vone "$BIN" decode "$out/vid.safetensors" --vae "$VAE" --out "$out/one.mp4" --rows 1:2
  check "decode video: one MP4" test -s "$out/one.mp4"
  run vtwo "$BIN" decode "$out/vid.safetensors" --vae "$VAE" --out "$out/two.mp4"
  check "decode video: one MP4 cannot hold 2 rows" has vtwo "one MP4 holds one video and 2 rows are asked for"
  run vimg "$BIN" decode "$out/lat.safetensors" --vae "$VAE" --out "$out/img.mp4" --rows 0:1
  check "decode: image latents to an MP4 are refused" has vimg "these latents are images"
else
  run vdec "$BIN" decode "$out/vid.safetensors" --vae "$VAE" --out "$out/vids"
  check "decode video without FFmpeg: PNG strips" test -s "$out/vids/000001.png"
fi

# ---- sample --vae ---------------------------------------------------------------------------------------------------
run sv "$BIN" sample --config "$out/tiny.toml" --checkpoint "$REF/sample/weights.safetensors" --classes 1,2 \
  --per-class 2 --steps ddim3 --vae "$VAE" --out "$out/sv.png"
check "sample --vae: exit 0" test "$rc_sv" -eq 0
check "sample --vae: a PNG grid" png "$out/sv.png"
check "sample --vae: says it decoded" has sv "decoded through"
run sv_st "$BIN" sample --config "$out/tiny.toml" --checkpoint "$REF/sample/weights.safetensors" --classes 1 \
  --vae "$VAE" --out "$out/sv.safetensors"
check "sample --vae: latents file refused" has sv_st "with --vae the samples are decoded to a PNG grid"
run sv_ch "$BIN" sample --config "$out/tiny.toml" --checkpoint "$REF/sample/weights.safetensors" --classes 1 \
  --vae "$REF/vae/tiny3" --out "$out/sv3.png"
check "sample --vae: latent channels checked first" has sv_ch "its latents have 3 channels; the model samples 4"
run sv_png "$BIN" sample --config "$out/tiny.toml" --checkpoint "$REF/sample/weights.safetensors" --classes 1 \
  --out "$out/nv.png"
check "sample: a latent PNG without --vae says to give it" has sv_png "give --vae DIR"

# ---- bench ----------------------------------------------------------------------------------------------------------
run bv "$BIN" bench vae --size 16 --batch 1 --iters 1 --warmup 0 --device cpu --dtype fp32
check "bench vae: a BENCH line" has bv "^BENCH vae mode=encode device=cpu"
run bt "$BIN" bench t5 --preset tiny --batch 2 --iters 1 --warmup 0 --device cpu
check "bench t5: a BENCH line" has bt "^BENCH t5 preset=tiny"
run bte "$BIN" bench t5 --preset tiny --batch 2 --compare-fp32 --device cpu
check "bench t5 --compare-fp32: the error line" has bte "^T5ERR bf16_vs_fp32"
run bbad "$BIN" bench vae --mode both --device cpu
check "bench vae: bad --mode" has bbad "expected encode or decode"

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
