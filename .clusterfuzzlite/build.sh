#!/bin/bash -eu
# ClusterFuzzLite / OSS-Fuzz build of mambadiff's fuzz targets (docs/fuzz.md).
#
# Honours the builder's variables: $CC $CXX $CFLAGS $CXXFLAGS (sanitizers and coverage, e.g.
# -fsanitize=address -fsanitize-address-use-after-scope -fsanitize=fuzzer-no-link),
# $LIB_FUZZING_ENGINE (links libFuzzer into the targets), $SRC (the checkout's parent) and $OUT
# (where the targets, their .dict/.options and <target>_seed_corpus.zip go). LibTorch comes from the
# torch wheel of $PYTHON (python3 by default; the Dockerfile pip-installs it); its shared libraries
# are copied into $OUT/lib and the targets find them there ($ORIGIN/lib), because the runner
# image that executes $OUT has no torch.
#
# Run here as OSS-Fuzz's builder would (docs/fuzz.md records the result):
#   CC=clang CXX=clang++ CFLAGS=... CXXFLAGS=... LIB_FUZZING_ENGINE=-fsanitize=fuzzer \
#   OUT=/tmp/cflite-out SRC=$(dirname $PWD) PYTHON=~/.cache/mambadiff/venv/bin/python .clusterfuzzlite/build.sh

# The checkout: the working folder (the Dockerfile's WORKDIR, or the repository root when run by
# hand), else $SRC/mambadiff.
ROOT=$PWD
[ -f "$ROOT/fuzz/CMakeLists.txt" ] || ROOT=$SRC/mambadiff
PYTHON=${PYTHON:-python3}
TORCH_PREFIX=$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)')

# LibTorch's wheel is built against libstdc++ (C++11 ABI): OSS-Fuzz's -stdlib=libc++ cannot link
# with it, so it is dropped (the targets' own code is still instrumented by every other flag).
CXXFLAGS=${CXXFLAGS//-stdlib=libc++/}
export CXXFLAGS

# No CMAKE_BUILD_TYPE: the optimisation level is the builder's ($CFLAGS/$CXXFLAGS), as OSS-Fuzz expects.
BUILD=${WORK:-/tmp}/mambadiff-build-fuzz
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE= \
  -DCMAKE_C_COMPILER="$CC" -DCMAKE_CXX_COMPILER="$CXX" \
  -DMAMBADIFF_FUZZ=ON -DMAMBADIFF_FUZZ_SANITIZE=OFF -DMAMBADIFF_FUZZ_ENGINE="$LIB_FUZZING_ENGINE" \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DMAMBADIFF_PYTHON="$PYTHON" \
  -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON -DCMAKE_INSTALL_RPATH='$ORIGIN/lib'
TARGETS="scan_diff model_script parse_safetensors parse_config parse_scenario parse_case"
cmake --build "$BUILD" -j "$(nproc)" --target $TARGETS

mkdir -p "$OUT/lib"
for t in $TARGETS; do
  cp "$BUILD/fuzz/$t" "$OUT/$t"
  # The seed corpus and every kept finding (corpus/fuzz/<target>/, recursively).
  rm -f "$OUT/${t}_seed_corpus.zip"
  (cd "$ROOT/corpus/fuzz/$t" && zip -q -r "$OUT/${t}_seed_corpus.zip" .)
  if [ -f "$ROOT/corpus/fuzz/$t.dict" ]; then cp "$ROOT/corpus/fuzz/$t.dict" "$OUT/$t.dict"; fi
  cp "$ROOT/.clusterfuzzlite/$t.options" "$OUT/$t.options"
done
# The shared libraries the targets load from the torch wheel (everything ldd resolves outside the
# system's folders). The targets' RUNPATH is $ORIGIN/lib, still empty here: ldd resolves them
# through the wheel's lib folder. The CPU fuzz build links libtorch_cpu alone (CMakeLists.txt).
TORCH_LIB=$("$PYTHON" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
needed=$(LD_LIBRARY_PATH="$TORCH_LIB" ldd "$OUT/scan_diff")
if grep -q "not found" <<< "$needed"; then
  echo "build.sh: unresolved libraries: $(grep 'not found' <<< "$needed" | tr -s ' \t\n' ' ')" >&2
  exit 1
fi
for lib in $(awk '$3 ~ /^\// {print $3}' <<< "$needed" | grep -v -E '^/(lib|usr/lib|lib64|usr/lib64)/'); do
  cp -L "$lib" "$OUT/lib/"
done
