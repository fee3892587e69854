#!/usr/bin/env bash
# Fetch the ecosystem's Mamba2 kernel sources from the package registry and extract the few files
# the exporters (tools/ecosystem/) run, into DEST (default .device/ecosystem, git-ignored; the lead
# carries .device to the GPU machine, which has no registry). Nothing third-party is committed.
#
#   tools/fetch_ecosystem_kernels.sh [--dest DIR] [--only mamba_ssm|vllm|causal_conv1d|all]
#
# What lands in DEST (about 1 MB):
#   mamba_ssm/   ops/triton/*.py (not mamba3/) and utils/*.py of the registry's mamba-ssm sdist, with
#                empty __init__.py files: the package's own __init__ imports its CUDA extension
#                (REFERENCE.md, "Building on the GPU machine").
#   vllm/        model_executor/layers/mamba/ops/{ssd_*,mamba_ssm,causal_conv1d,layernorm_gated,
#                triton_helpers}.py, ops/configs/ (tuned launch configs) and triton_utils/*.py of the vllm wheel, plus the small stubs of
#                tools/ecosystem/vllm_stub/ for the modules they import (REFERENCE.md, "vLLM's Mamba2
#                kernels"): current_platform says CUDA, not CPU, so vLLM does not swap in its CPU code.
#   site/einops/ einops (mamba_ssm imports it; the GPU machine's Python may lack it).
#   causal_conv1d-<v>.tar.gz  the registry's causal-conv1d sdist, unbuilt (30 KB): the GPU call builds
#                its CUDA extension for the card (tools/ecosystem/build_causal_conv1d.py), and
#   bin/ninja    ninja from the registry's `ninja` wheel, so that build compiles its sources in parallel.
#   VERSIONS.json  versions and sha256 of what was downloaded.
# Downloads are cached in ~/.cache/mambadiff/ecosystem-dl (the vllm wheel is 336 MB: fetched once).
# A helper venv ~/.cache/mambadiff/ecosystem-venv (the mambadiff venv's packages through a .pth,
# plus wheel/setuptools for the sdist's metadata and numpy < 2.4 for Triton's interpreter, triton
# issue #9171) builds the sdist's metadata and runs the CPU interpreter tests.
set -euo pipefail

MAMBA_SSM_VERSION=2.3.2.post1   # the registry's 2.3.2 sdist is published as 2.3.2.post1
VLLM_VERSION=0.33.0
EINOPS_VERSION=0.8.2
CAUSAL_CONV1D_VERSION=1.7.0     # the release mamba_ssm 2.3.2 and HF 5.17 call (causal_conv1d_fn/update)
NINJA_VERSION=1.13.2

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
dest="$repo/.device/ecosystem"
only=all
while [ $# -gt 0 ]; do
  case "$1" in
    --dest) dest=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "fetch_ecosystem_kernels.sh: usage: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
case "$only" in all|mamba_ssm|vllm|causal_conv1d) ;; *) echo "fetch_ecosystem_kernels.sh: --only: '$only' is not all, mamba_ssm, vllm or causal_conv1d" >&2; exit 2 ;; esac

cache=${MAMBADIFF_CACHE:-$HOME/.cache/mambadiff}
venv=${MAMBADIFF_VENV:-$cache/venv}
eco_venv=$cache/ecosystem-venv
dl=$cache/ecosystem-dl
mkdir -p "$dl" "$dest"
# One fetch at a time (ctest -j runs the interpreter tests side by side; they share the venv and downloads).
exec 9>"$cache/.fetch_ecosystem.lock"
flock 9

if [ ! -x "$eco_venv/bin/python" ]; then
  "$venv/bin/python" -m venv "$eco_venv"
  site=$("$eco_venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')
  "$venv/bin/python" -c 'import site; print(site.getsitepackages()[0])' > "$site/zz_mambadiff_venv.pth"
fi
"$eco_venv/bin/python" -c 'import wheel, einops, numpy; assert tuple(map(int, numpy.__version__.split(".")[:2])) < (2, 4)' 2>/dev/null \
  || "$eco_venv/bin/pip" install -q --disable-pip-version-check wheel setuptools packaging einops "numpy<2.4"
pip=("$eco_venv/bin/pip" download -q --disable-pip-version-check --no-deps -d "$dl")

sha() { sha256sum "$1" | cut -d' ' -f1; }

versions="{\"triton\": \"$("$eco_venv/bin/python" -c 'import triton; print(triton.__version__)')\""

# einops, for mamba_ssm on a machine without it.
[ -f "$dl/einops-$EINOPS_VERSION-py3-none-any.whl" ] || "${pip[@]}" "einops==$EINOPS_VERSION"
rm -rf "$dest/site" && mkdir -p "$dest/site"
(cd "$dest/site" && unzip -q -o "$dl/einops-$EINOPS_VERSION-py3-none-any.whl" 'einops/*')
versions+=", \"einops\": \"$EINOPS_VERSION\""

if [ "$only" = all ] || [ "$only" = mamba_ssm ]; then
  sdist="$dl/mamba_ssm-$MAMBA_SSM_VERSION.tar.gz"
  # pip builds the sdist's metadata, which imports torch: no build isolation, no CUDA build.
  [ -f "$sdist" ] || MAMBA_SKIP_CUDA_BUILD=TRUE "${pip[@]}" --no-build-isolation --no-binary :all: "mamba-ssm==$MAMBA_SSM_VERSION"
  tmp=$(mktemp -d)
  tar xzf "$sdist" -C "$tmp"
  src="$tmp/mamba_ssm-$MAMBA_SSM_VERSION/mamba_ssm"
  rm -rf "$dest/mamba_ssm"
  mkdir -p "$dest/mamba_ssm/ops/triton" "$dest/mamba_ssm/utils"
  cp "$src"/ops/triton/*.py "$dest/mamba_ssm/ops/triton/"
  cp "$src"/utils/*.py "$dest/mamba_ssm/utils/"
  : > "$dest/mamba_ssm/__init__.py"
  : > "$dest/mamba_ssm/ops/__init__.py"
  : > "$dest/mamba_ssm/ops/triton/__init__.py"
  echo "__version__ = \"$MAMBA_SSM_VERSION\"  # the sdist's own __init__ imports its CUDA extension" > "$dest/mamba_ssm/__init__.py"
  rm -rf "$tmp"
  versions+=", \"mamba_ssm\": \"$MAMBA_SSM_VERSION\", \"mamba_ssm_sdist_sha256\": \"$(sha "$sdist")\""
fi

if [ "$only" = all ] || [ "$only" = causal_conv1d ]; then
  # The sdist as the registry serves it (pip builds its metadata, which imports torch: no isolation);
  # built on the GPU machine, for its card only.
  ccd="$dl/causal_conv1d-$CAUSAL_CONV1D_VERSION.tar.gz"
  [ -f "$ccd" ] || CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE "${pip[@]}" --no-build-isolation --no-binary :all: "causal-conv1d==$CAUSAL_CONV1D_VERSION"
  cp "$ccd" "$dest/"
  nwhl="$dl/ninja-$NINJA_VERSION-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"
  [ -f "$nwhl" ] || "${pip[@]}" --only-binary :all: --platform manylinux2014_x86_64 "ninja==$NINJA_VERSION"
  mkdir -p "$dest/bin"
  unzip -q -o -j "$nwhl" "ninja-$NINJA_VERSION.data/scripts/ninja" -d "$dest/bin" && chmod +x "$dest/bin/ninja"
  versions+=", \"causal_conv1d\": \"$CAUSAL_CONV1D_VERSION\", \"causal_conv1d_sdist_sha256\": \"$(sha "$ccd")\""
  versions+=", \"ninja\": \"$NINJA_VERSION\""
fi

if [ "$only" = all ] || [ "$only" = vllm ]; then
  whl="$dl/vllm-$VLLM_VERSION-cp38-abi3-manylinux_2_28_x86_64.whl"
  [ -f "$whl" ] || "${pip[@]}" "vllm==$VLLM_VERSION"
  ops=vllm/model_executor/layers/mamba/ops
  rm -rf "$dest/vllm"
  (cd "$dest" && unzip -q -o "$whl" \
      "$ops/ssd_bmm.py" "$ops/ssd_chunk_scan.py" "$ops/ssd_chunk_state.py" "$ops/ssd_combined.py" \
      "$ops/ssd_state_passing.py" "$ops/mamba_ssm.py" "$ops/causal_conv1d.py" "$ops/layernorm_gated.py" \
      "$ops/triton_helpers.py" "$ops/__init__.py" "$ops/configs/selective_state_update/*NVIDIA*" 'vllm/triton_utils/*.py')
  # The stubs for what those files import from the rest of vllm (ours, not vLLM's).
  cp -r "$here/ecosystem/vllm_stub/." "$dest/vllm/"
  versions+=", \"vllm\": \"$VLLM_VERSION\", \"vllm_wheel_sha256\": \"$(sha "$whl")\""
fi

# Merged with what an earlier --only call recorded.
echo "$versions}" | "$eco_venv/bin/python" -c '
import json, os, sys
f = sys.argv[1]
d = json.load(open(f)) if os.path.isfile(f) else {}
d.update(json.load(sys.stdin))
open(f, "w").write(json.dumps(d, indent=1, sort_keys=True) + "\n")' "$dest/VERSIONS.json"
find "$dest" -name __pycache__ -prune -exec rm -rf {} +
echo "fetch_ecosystem_kernels.sh: $(du -sh "$dest" | cut -f1) in $dest ($(tr -d '\n ' < "$dest/VERSIONS.json" | cut -c1-200))"
