#!/usr/bin/env bash
# One short call on the lent GPU machine: the correctness gate of the `cuda` path's kernels (issue
# 11 item 4) without the figures of scripts/gpu_session.sh / gpu_bench.sh. Runs, on one card:
#   the GPU tests; the chunked scan's kernel check (float64 reference, every edge case, both bf16
#   product modes) with its per-kernel timings; compute-sanitizer memcheck and racecheck over the
#   fused-op GPU tests and over the kernel check (--small); `check` on every embedded model and path,
#   fp32 and bf16; the fuzz corpora replayed with the GPU paths; the optimizer's unit tests.
# Writes gpu.txt (the log) and one file per step to $OUT, and all of it again as all.tgz.
#
# PREBUILT=DIR: run the programs in DIR (mambadiff, gpu_tests, unit_tests, fuzz_replay,
# ssd_chunked_scan_check, and any ssd_chunked_scan_check_* variants) instead of building here. They
# are built on the CPU machine against the same LibTorch wheel (torch 2.11.0+cu130 both sides) and
# carried in (`carry=[".devbin"]`): the build there takes ~4 of the call's 10 minutes. If they do
# not start on this machine (glibc, libstdc++), the script builds as gpu_session.sh does.
#   cp build/mambadiff build/tests/{gpu,unit}_tests build/fuzz/fuzz_replay build/ssd_chunked_scan_check .devbin/
#   run(command="PREBUILT=.devbin bash scripts/gpu_verify.sh", carry=[".devbin", ".device"], timeout_s=600)
set -uo pipefail
: "${OUT:?set OUT to the folder that comes back}"
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/gpu.txt"; }
trap 'tar czf /tmp/mambadiff-verify-all.tgz -C "$OUT" --exclude=all.tgz . && mv /tmp/mambadiff-verify-all.tgz "$OUT/all.tgz"' EXIT
TORCH_DIR="$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')"
export LD_LIBRARY_PATH="$TORCH_DIR/lib:$TORCH_DIR/../nvidia/cu13/lib:${LD_LIBRARY_PATH:-}"
log "card: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1); $(date -u); $(ldd --version | head -1)"

B=""
if [ -n "${PREBUILT:-}" ] && "$PREBUILT/mambadiff" --help > /dev/null 2> "$OUT/prebuilt.txt"; then
  B="$PREBUILT"; log "prebuilt programs from $PREBUILT run here"
else
  log "prebuilt programs do not start here ($(head -1 "$OUT/prebuilt.txt" 2>/dev/null)): building"
  B=/tmp/mambadiff-build
  cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=Release -DMAMBADIFF_PYTHON=python3 \
    -DMAMBADIFF_VENDOR_INCLUDE="$PWD/.device/include" -DMAMBADIFF_GTEST_SOURCE="$PWD/.device/googletest" \
    -DCMAKE_PREFIX_PATH="$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')" > "$OUT/build.txt" 2>&1
  cmake --build "$B" -j16 --target mambadiff gpu_tests unit_tests fuzz_replay ssd_chunked_scan_check >> "$OUT/build.txt" 2>&1 ||
    { grep -E "error" "$OUT/build.txt" | head -20; exit 1; }
  mkdir -p "$B/bin" && cp "$B/mambadiff" "$B/tests/gpu_tests" "$B/tests/unit_tests" "$B/fuzz/fuzz_replay" \
    "$B/ssd_chunked_scan_check" "$B/bin/" && B="$B/bin"
  log "built"
fi

"$B/gpu_tests" > "$OUT/gpu_tests.txt" 2>&1; log "gpu tests: exit $?"
grep -E "^\[  (FAILED|PASSED|SKIPPED) |Failure|Expected|Which is|  Actual" "$OUT/gpu_tests.txt" | head -30 | tee -a "$OUT/gpu.txt"

# The kernel check: every case and the timings; compile-time variants (ssd_chunked_scan_check_*,
# e.g. other MAMBADIFF_SCAN_MIN_BLOCKS) are timed only.
"$B/ssd_chunked_scan_check" --bench > "$OUT/kernel_check.txt" 2>&1; log "ssd_chunked_scan_check --bench: exit $?"
grep -E "FAIL|bench|all cases" "$OUT/kernel_check.txt" | tee -a "$OUT/gpu.txt"
for check in "$B"/ssd_chunked_scan_check_*; do
  [ -x "$check" ] || continue
  name=$(basename "$check")
  "$check" --bench-only > "$OUT/kernel_$name.txt" 2>&1; log "$name --bench-only: exit $?"
  grep -E "bench" "$OUT/kernel_$name.txt" | tee -a "$OUT/gpu.txt"
done

# compute-sanitizer over the fused-op GPU tests (both bf16 product modes of the chunked kernel at
# chunk sizes 1, 7, 256, 1000; the 70K-token prefill and the optimizer runs left out: ~100x slower
# under the tools).
for tool in memcheck racecheck; do
  timeout 170 compute-sanitizer --tool $tool --error-exitcode 3 "$B/gpu_tests" \
    --gtest_filter='FusedOps.*:-*SeventyThousand*:*Optimizer*:*GraphReplayEquals*' > "$OUT/sanitizer_$tool.txt" 2>&1
  log "compute-sanitizer $tool on the GPU tests: exit $?"
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" "$OUT/sanitizer_$tool.txt" | tail -3 | tee -a "$OUT/gpu.txt"
done

"$B/mambadiff" check --json "$OUT/check.json" > "$OUT/check.txt" 2>&1; log "check: exit $?"
tail -1 "$OUT/check.txt" | tee -a "$OUT/gpu.txt"; grep -E "DIVERGE|FAIL" "$OUT/check.txt" | head -10 | tee -a "$OUT/gpu.txt"
for t in scan_diff model_script; do
  "$B/fuzz_replay" $t corpus/fuzz/$t > "$OUT/replay_$t.txt" 2>&1; log "fuzz replay $t on the GPU paths: exit $?"
  tail -1 "$OUT/replay_$t.txt" | tee -a "$OUT/gpu.txt"
done
"$B/unit_tests" --gtest_filter='RealCacheOptimizer*:DeltaLoop*:PrefilledCache*' > "$OUT/optimizer_unit.txt" 2>&1
log "optimizer unit tests on the GPU machine: exit $?"; grep -E "^\[  (PASSED|FAILED) " "$OUT/optimizer_unit.txt" | head -5 | tee -a "$OUT/gpu.txt"
