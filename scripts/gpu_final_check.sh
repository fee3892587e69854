#!/usr/bin/env bash
# The short GPU re-check after a kernel change (when the full gpu_session.sh does not fit the time
# left): builds mambadiff, the GPU tests and the kernel check; runs the GPU tests, `check` on every
# path, compute-sanitizer memcheck over the chunked-kernel tests, and bench's decode row (the
# captured graph's kernel count). Logs to $OUT (and $OUT/all.tgz).
set -uo pipefail
export LD_LIBRARY_PATH="$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib:${LD_LIBRARY_PATH:-}"
trap 'tar czf /tmp/final-all.tgz -C "$OUT" --exclude=all.tgz . && mv /tmp/final-all.tgz "$OUT/all.tgz"' EXIT
B=/tmp/mambadiff-build
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u; } | tee "$OUT/final.txt"
cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=Release -DMAMBADIFF_PYTHON=python3 \
  -DMAMBADIFF_VENDOR_INCLUDE="$PWD/.device/include" -DMAMBADIFF_GTEST_SOURCE="$PWD/.device/googletest" \
  -DCMAKE_PREFIX_PATH="$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')" > "$OUT/build.txt" 2>&1
cmake --build "$B" -j16 --target mambadiff gpu_tests >> "$OUT/build.txt" 2>&1 || { grep -E "error" "$OUT/build.txt" | head; exit 1; }
"$B/tests/gpu_tests" > "$OUT/gpu_tests.txt" 2>&1; echo "gpu tests exit $?" | tee -a "$OUT/final.txt"
grep -E "^\[  (FAILED|PASSED) |tests ran" "$OUT/gpu_tests.txt" | tee -a "$OUT/final.txt"
"$B/mambadiff" check > "$OUT/check.txt" 2>&1; echo "check exit $?" | tee -a "$OUT/final.txt"; tail -1 "$OUT/check.txt" | tee -a "$OUT/final.txt"
timeout 60 compute-sanitizer --tool memcheck --error-exitcode 3 "$B/tests/gpu_tests" \
  --gtest_filter='FusedOps.ChunkedKernelMatchesTheChunkedScanAtAnyChunkSize:FusedOps.Bfloat16*:FusedOps.ScanWith*:FusedOps.DecodeGraph*' \
  > "$OUT/sanitizer_memcheck.txt" 2>&1
echo "compute-sanitizer memcheck: exit $?" | tee -a "$OUT/final.txt"; grep -E "ERROR SUMMARY|PASSED|FAILED" "$OUT/sanitizer_memcheck.txt" | tee -a "$OUT/final.txt"
python3 tools/make_bench_model.py --shape 130m --out /tmp/m130 > /dev/null 2>&1
"$B/mambadiff" bench --what decode --model /tmp/m130 --reps 30 --json "$OUT/bench_decode.json" > "$OUT/bench_decode.txt" 2>&1
python3 -c "import json;[print(r['variant'], '%.1f us' % (r['median_ms']*1e3), r['op']) for r in json.load(open('$OUT/bench_decode.json'))['results']]" | tee -a "$OUT/final.txt"
