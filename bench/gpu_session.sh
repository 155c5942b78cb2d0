#!/usr/bin/env bash
# One GPU session in one command: build with CUDA against the machine's own torch, run every test (GPU tests
# included), print `opendit info`, and run the benchmarks with their peers. Logs go to $OUT (default out/gpu).
# On machines where nothing can be installed, header-only libraries can come from .carry/include and Python
# wheels from .whl/ (see README, "GPU machines").
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export NCCL_NVLS_ENABLE=0  # never NVLink multicast
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/opendit-site .whl/*.whl
  export PYTHONPATH=/tmp/opendit-site${PYTHONPATH:+:$PYTHONPATH}
fi
extra=""
[ -d .carry/include ] && extra="-DOPENDIT_EXTRA_INCLUDE_DIRS=$PWD/.carry/include"
{ nvidia-smi -L; python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.is_available())'; } \
  2>&1 | tee "$OUT/machine.log"
mkdir -p build && echo python3 > build/.python
t0=$(date +%s)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release $extra > "$OUT/build.log" 2>&1 &&
  cmake --build build -j "$(nproc)" >> "$OUT/build.log" 2>&1
rc=$?
echo "build rc=$rc in $(( $(date +%s) - t0 )) s"; tail -5 "$OUT/build.log"
[ $rc -eq 0 ] || exit $rc
(cd build && ctest --output-on-failure -V) > "$OUT/ctest.log" 2>&1; echo "ctest rc=$?"; grep -E "tests passed|Failed|FAIL" "$OUT/ctest.log" | head -20
build/bin/opendit info | tee "$OUT/info.log"
mpirun -np 2 build/bin/opendit info --set parallel.sp_size=2 | tail -4 | tee -a "$OUT/info.log"
{
  for dt in fp32 bf16; do bench/forward.sh DiT-XL/2 8 $dt cuda; done
  bench/forward.sh DiT-S/2 8 fp32 cpu
  bench/train.sh 30
  bench/sample.sh DiT-XL/2 8 250 cuda
} 2>&1 | grep -E "^(BENCH|PEER|RESULT)" | tee "$OUT/bench.log"
grep -E "GPU|skipped" "$OUT/ctest.log" | head -20
