#!/usr/bin/env bash
# One GPU session in one command: build with CUDA against the machine's own torch, then the chosen stages, logs to
# $OUT (default out/gpu). Stages (default: all, in this order):
#   ctest    every test (GPU tests included)            tests   the GPU-facing tests only (kernels, model, sampling)
#   kernels  opendit bench kernels (bf16, fp32)          sample  bench/sample.sh (opendit and peer, XL/2, 8 images)
#   train    bench/train.sh (opendit and peer, XL/2)     forward bench/forward.sh (opendit and peer, XL/2 batch 8)
#   profile  one profiled XL/2 batch-64 step of opendit and of the peer
#   checkpoint  bench/checkpoint.sh (XL/2 checkpoint pauses: background and foreground writes, and the peer)
#   encoders bench/encoders.sh (SD VAE and T5-XXL, opendit and peers)
#   enctests the encoder tests (VAE, T5, tokenizer against diffusers / transformers references) and `opendit encode`'s
#   encode   bench/encode.sh (opendit encode vs a DataLoader + diffusers peer on 8192 JPEGs, fp32 and bf16 VAE)
#   stdit    bench/stdit.sh (STDiT-XL/2 training at 16x512^2 and 16x256^2, 100 guided steps; opendit and peer)
#   stdittests  the STDiT tests (model vs references, training, text-to-video sampling) on the GPU machine
#   stditprofile  one profiled STDiT-XL/2 16x512^2 step of opendit and of the peer
#   sp       bench/sp.sh cost (the sequence-parallel cost model) and, when old/build/bin/opendit exists (the commit
#            before sequence parallelism, built by the caller), bench/sp.sh baseline against it
# On machines where nothing can be installed, header-only libraries come from .carry/include and Python wheels from
# .whl/ (see README, "GPU machines").
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
STAGES=${*:-ctest kernels sample train forward}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export NCCL_NVLS_ENABLE=0  # never NVLink multicast
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/opendit-site .whl/*.whl
  export PYTHONPATH=/tmp/opendit-site${PYTHONPATH:+:$PYTHONPATH}
fi
extra=""
[ -d .carry/include ] && extra="-DOPENDIT_EXTRA_INCLUDE_DIRS=$PWD/.carry/include"
[ -d .carry/lib ] && extra="$extra -DOPENDIT_EXTRA_LIB_DIRS=$PWD/.carry/lib"  # SentencePiece (Debian's .so)
{ nvidia-smi -L; python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.is_available())'; } \
  2>&1
mkdir -p build && echo python3 > build/.python
t0=$(date +%s)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release $extra > "$OUT/build.log" 2>&1 &&
  cmake --build build -j "$(nproc)" >> "$OUT/build.log" 2>&1
rc=$?
echo "build rc=$rc in $(( $(date +%s) - t0 )) s"
[ $rc -eq 0 ] || { grep -E "error|Error" "$OUT/build.log" | head -30; exit $rc; }
for stage in $STAGES; do
  t0=$(date +%s)
  case $stage in
    ctest) (cd build && ctest -j 4 --output-on-failure) > "$OUT/ctest.log" 2>&1
           grep -E "tests passed|Failed|FAIL|\*\*\*" "$OUT/ctest.log" | head -20 ;;
    tests) { build/tests/cuda/test_kernels; build/tests/models/test_models --gtest_filter='DiTOracle*';
             (cd build && ctest -R "^sample|^core" --output-on-failure); } > "$OUT/tests.log" 2>&1
           grep -E "^\[  (PASSED|FAILED|SKIPPED) |tests passed|Failure|error" "$OUT/tests.log" | head -40 ;;
    kernels) bench/kernels.sh 64 30 2>&1 | tee "$OUT/kernels.log" ;;
    sample) bench/sample.sh DiT-XL/2 8 250 cuda 2>&1 | tee "$OUT/sample.log" ;;
    train) bench/train.sh 30 2>&1 | grep -E "^(BENCH|PEER)" | tee "$OUT/train.log" ;;
    forward) for dt in fp32 bf16; do bench/forward.sh DiT-XL/2 8 $dt cuda; done 2>&1 | tee "$OUT/forward.log" ;;
    encoders) bench/encoders.sh cuda 10 2>&1 | tee "$OUT/encoders.log" ;;
    encode) for dt in fp32 bf16; do bench/encode.sh 8192 $dt; done 2>&1 | tee "$OUT/encode.log" ;;
    # The encoder suites (VAE, T5, tokenizer, their kernels, the command line) on the GPU machine; their references
    # need transformers, sentencepiece, protobuf, beautifulsoup4 and ftfy from .whl/.
    enctests) (cd build && ctest -R "^encoders|^encode$|^kernels$|^sample_cli$" --output-on-failure) > "$OUT/enctests.log" 2>&1
              grep -E "tests passed|Failed|FAIL|\*\*\*|tiled|bf16 run" "$OUT/enctests.log" | head -20 ;;
    stdit) bench/stdit.sh 16 2>&1 | tee "$OUT/stdit.log" ;;
    stdittests) (cd build && ctest -R "^models$|^train_video$|^sample_video$|^convert_opensora$" --output-on-failure) \
                  > "$OUT/stdittests.log" 2>&1
                grep -E "tests passed|Failed|FAIL|\*\*\*|worst" "$OUT/stdittests.log" | head -20 ;;
    stditprofile) bench/stdit.sh 12 "$OUT" > "$OUT/stdit_profile_run.log" 2>&1; grep -E "^step|error" "$OUT/opendit_stdit_train.log"
                  head -45 "$OUT/stdit_profile.txt" ;;
    sp) { [ -x old/build/bin/opendit ] && bench/sp.sh baseline old/build/bin/opendit; bench/sp.sh cost; } 2>&1 |
          tee "$OUT/sp.log" ;;
    checkpoint) bench/checkpoint.sh 450 150 2> "$OUT/checkpoint_runs.log" | tee "$OUT/checkpoint.log" ;;
    profile) bench/train.sh 14 "$OUT" > "$OUT/profile_run.log" 2>&1; grep -E "^step|error" "$OUT/opendit_train.log"; head -45 "$OUT/profile.txt" ;;
    *) echo "unknown stage $stage" ;;
  esac
  echo "stage $stage: $(( $(date +%s) - t0 )) s"
done
