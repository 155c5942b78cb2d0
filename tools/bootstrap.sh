#!/usr/bin/env bash
# Installs what opendit needs to build (and, with --test, to run its reference tests).
# Idempotent: when everything is present it only checks, in a few seconds.
#   tools/bootstrap.sh          Debian packages + LibTorch (torch==2.11.0 wheel in .venv/)
#   tools/bootstrap.sh --test   ... plus the Python packages used by the reference-test scripts and the digits test,
#                               and Slurm + munge for the real-Slurm job test (tests/jobs/test_slurm.sh)
#   tools/bootstrap.sh --demo   ... plus the Python packages of `make run` (digits quality score and plots)
# Where a python3 that already imports torch 2.11 exists (the GPU machines), it is used and nothing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
APT_PACKAGES=(cmake g++ make ninja-build pkg-config ccache python3-venv
  libopenmpi-dev openmpi-bin libhdf5-openmpi-dev hdf5-tools
  libgtest-dev libcli11-dev libtomlplusplus-dev nlohmann-json3-dev libpng-dev libturbojpeg0-dev libsentencepiece-dev
  libavformat-dev libavcodec-dev libswscale-dev libavutil-dev)
# A single-node Slurm (22.05 on Debian 12) that the jobs/ scripts are tested under; the test starts its own daemons.
TEST_APT_PACKAGES=(slurm-wlm munge)
# pip name[:import name]
# (the video demo: h5py for the digits, PyAV for the clips, transformers and sentencepiece for its tiny T5)
DEMO_PIP_PACKAGES=(numpy safetensors scikit-learn:sklearn matplotlib h5py av transformers sentencepiece)
# CUDA builds (nvcc present): the cuDNN frontend's header-only C++ API (the wheel puts it in site-packages/include),
# used by the fused self-attention (cuda/packed_attention.cpp). Installed with --no-deps: the headers need none of
# its Python dependencies (the CUTLASS DSL, about 0.5 GB).
CUDA_PIP_PACKAGES=(nvidia-cudnn-frontend==1.32.0:cudnn)
TEST_PIP_PACKAGES=(numpy h5py diffusers transformers sentencepiece protobuf:google.protobuf beautifulsoup4:bs4 ftfy av safetensors scikit-learn:sklearn matplotlib)

want_test=0
want_demo=0
for a in "$@"; do
  case "$a" in
    --test) want_test=1 ;;
    --demo) want_demo=1 ;;
    *) echo "bootstrap: unknown argument '$a' (expected --test or --demo)" >&2; exit 2 ;;
  esac
done

say() { echo "bootstrap: $*"; }

# ---- Debian packages -------------------------------------------------------------------------------
if [ $want_test -eq 1 ]; then APT_PACKAGES+=("${TEST_APT_PACKAGES[@]}"); fi
if command -v dpkg-query >/dev/null 2>&1; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
           $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
      # A machine without a package registry (the GPU machines): carry on; CMake names what is really missing.
      say "warning: could not install ${missing[*]}; continuing with what this machine has"
    fi
  fi
else
  say "no dpkg: assuming the system libraries (MPI, HDF5, GoogleTest, CLI11, toml++, nlohmann-json) are present"
fi

# ---- Python with torch (LibTorch comes from the wheel) ---------------------------------------------
torch_ok() { "$1" -c "import torch,sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') else 1)" 2>/dev/null; }

PY=""
if [ -x .venv/bin/python ] && torch_ok .venv/bin/python; then
  PY=.venv/bin/python
elif [ ! -d .venv ] && command -v python3 >/dev/null && torch_ok python3; then
  PY=$(command -v python3)          # GPU machines: the system python already holds torch
else
  [ -x .venv/bin/python ] || { say "creating .venv/"; python3 -m venv .venv; }
  say "installing torch==$TORCH_VERSION into .venv/ (first time: about 3 GB download)"
  .venv/bin/python -m pip install -q --disable-pip-version-check "torch==$TORCH_VERSION"
  PY=.venv/bin/python
fi

if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  for spec in "${CUDA_PIP_PACKAGES[@]}"; do
    p=${spec%%:*} mod=${spec#*:}
    "$PY" -c "import $mod" 2>/dev/null && continue
    if [ "$PY" = .venv/bin/python ]; then
      say "installing $p (CUDA build)"
      .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "$p"
    else
      say "warning: $PY lacks $p (not ours to install into): CMake then looks in OPENDIT_EXTRA_INCLUDE_DIRS"
    fi
  done
fi

pip_wanted=()
[ $want_test -eq 1 ] && pip_wanted+=("${TEST_PIP_PACKAGES[@]}")
[ $want_demo -eq 1 ] && pip_wanted+=("${DEMO_PIP_PACKAGES[@]}")
if [ ${#pip_wanted[@]} -gt 0 ]; then
  missing=()
  for spec in "${pip_wanted[@]}"; do
    p=${spec%%:*} mod=${spec#*:}
    "$PY" -c "import $mod" 2>/dev/null || [[ " ${missing[*]} " == *" $p "* ]] || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$PY" = .venv/bin/python ]; then
      say "installing Python packages: ${missing[*]}"
      .venv/bin/python -m pip install -q --disable-pip-version-check "${missing[@]}"
    else
      say "warning: $PY lacks ${missing[*]} (not ours to install into): what needs them will fail"
    fi
  fi
fi

# The build reads the chosen interpreter from here.
mkdir -p build
echo "$PY" > build/.python
