#!/usr/bin/env bash
# One call on the lent GPU machine (README "GPU figures"): builds mambadiff and the GPU tests there
# (GoogleTest from a copy of its source in .device/googletest, header-only deps from
# .device/include; the machine has no package registry), runs the GPU tests, `check` on every
# path (chunked-gpu and cuda included), the optimizer on the 130m shape on chunked-gpu and cuda,
# eager and CUDA-graph-replayed, and the anchors' functional PyTorch loop beside it, on one card.
# Writes logs and JSON to $OUT.
set -uo pipefail
export LD_LIBRARY_PATH="$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib:${LD_LIBRARY_PATH:-}"
B=${MAMBADIFF_GPU_BUILD:-/tmp/mambadiff-build}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
date -u | tee -a "$OUT/gpu.txt"
t0=$(date +%s)
cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=Release -DMAMBADIFF_PYTHON=python3 \
  -DMAMBADIFF_VENDOR_INCLUDE="$PWD/.device/include" -DMAMBADIFF_GTEST_SOURCE="$PWD/.device/googletest" \
  -DCMAKE_PREFIX_PATH="$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')" > "$OUT/build.txt" 2>&1
if ! cmake --build "$B" -j16 --target mambadiff gpu_tests ssd_chunked_scan_check >> "$OUT/build.txt" 2>&1; then
  grep -E "error|Error" "$OUT/build.txt" | head -40; exit 1
fi
# The rest is reported, not fatal: the GPU tests and check still run if one of these fails.
cmake --build "$B" -j16 --target unit_tests fuzz_replay >> "$OUT/build.txt" 2>&1 ||
  { echo "build of unit_tests / fuzz replays failed:"; grep -E "error" "$OUT/build.txt" | head -10; }
echo "build: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/gpu.txt"
"$B/tests/gpu_tests" > "$OUT/gpu_tests.txt" 2>&1; echo "gpu tests exit $?" | tee -a "$OUT/gpu.txt"
grep -E "^\[  (FAILED|PASSED|SKIPPED) |Failure|error:|Expected|Which is|rel_err|  Actual" "$OUT/gpu_tests.txt" | head -40
# The chunked SSD kernel beside its float64 CPU reference (kernels/check/), with its timings.
"$B/ssd_chunked_scan_check" --bench > "$OUT/kernel_check.txt" 2>&1; echo "ssd_chunked_scan_check exit $?" | tee -a "$OUT/gpu.txt"
grep -E "FAIL|bench|all cases" "$OUT/kernel_check.txt"
# compute-sanitizer over the fused-op GPU tests (the 70K-token prefill and the optimizer runs are
# left out: ~100x slower under the tools, and their kernels are the ones the fused-op tests run).
for tool in memcheck racecheck; do
  timeout 150 compute-sanitizer --tool $tool --error-exitcode 3 "$B/tests/gpu_tests" \
    --gtest_filter='FusedOps.*:KernelCoverage*:-*SeventyThousand*:*Optimizer*:*GraphReplayEquals*' > "$OUT/sanitizer_$tool.txt" 2>&1
  echo "compute-sanitizer $tool on the GPU tests: exit $?" | tee -a "$OUT/gpu.txt"
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|tests ran|PASSED|FAILED" "$OUT/sanitizer_$tool.txt" | tail -4 | tee -a "$OUT/gpu.txt"
done
# The differential fuzz corpora replayed with chunked-gpu and cuda among the paths (the targets add
# them when a device is present), and the optimizer's unit tests on a GPU machine (device-side rank).
for t in scan_diff model_script; do
  "$B/fuzz/fuzz_replay" $t corpus/fuzz/$t > "$OUT/replay_$t.txt" 2>&1; echo "fuzz replay $t on the GPU paths: exit $?" | tee -a "$OUT/gpu.txt"
  tail -2 "$OUT/replay_$t.txt"
done
"$B/tests/unit_tests" --gtest_filter='RealCacheOptimizer*:DeltaLoop*:PrefilledCache*' > "$OUT/optimizer_unit.txt" 2>&1
echo "optimizer unit tests on the GPU machine: exit $?" | tee -a "$OUT/gpu.txt"; grep -E "^\[  (PASSED|FAILED) " "$OUT/optimizer_unit.txt" | head
t0=$(date +%s)
"$B/mambadiff" check --json "$OUT/check_gpu.json" > "$OUT/check_gpu.txt" 2>&1; echo "check exit $? ($(( $(date +%s) - t0 )) s)" | tee -a "$OUT/gpu.txt"
grep -E "^(cuda|chunked-gpu)|DIVERGE|FAIL" "$OUT/check_gpu.txt" | grep -v skipped | head -20
tail -3 "$OUT/check_gpu.txt"
python3 tools/make_bench_model.py --shape 130m --out /tmp/m130 | tee -a "$OUT/gpu.txt"
PROMPT=$(python3 -c 'import random;random.seed(0);print(",".join(str(random.randrange(50288)) for _ in range(32)))')
for path in chunked-gpu cuda; do
  for graph in "" "--no-cuda-graph"; do
    tag="${path}${graph:+-eager}"
    "$B/mambadiff" optimize --model /tmp/m130 --prompt-tokens "$PROMPT" --target 1234 --layers 16 \
        --loss margin --margin 1e9 --steps 60 --path $path $graph --out /tmp/d.safetensors --json "$OUT/opt_$tag.json" \
        > "$OUT/opt_$tag.txt" 2>&1 || { echo "optimize $tag exit $?"; tail -5 "$OUT/opt_$tag.txt"; }
    python3 -c "import json;j=json.load(open('$OUT/opt_$tag.json'));print('optimize 130m %-18s %.3f ms/step (median of %d steps; cuda_graph %s), restore bit-identical %s, gate %s' % ('$tag', j['seconds_per_step']*1e3, j['steps'], j['cuda_graph'], j['restore_bit_identical'], j['zero_delta_gate_passed']))" | tee -a "$OUT/gpu.txt"
  done
done
"$B/mambadiff" optimize --prompt "The cat sat on the" --target " dog" --path cuda --out /tmp/dog.safetensors > "$OUT/opt_bytes_cuda.txt" 2>&1
echo "byte model on cuda: exit $?" | tee -a "$OUT/gpu.txt"; tail -12 "$OUT/opt_bytes_cuda.txt"
python3 .device/anchors/hf_decode_and_functional_optimizer.py 2>&1 | grep -v Warning | tee -a "$OUT/gpu.txt"

# The device call returns at most 8 files of $OUT (alphabetically first): everything again as one archive.
tar czf /tmp/mambadiff-all.tgz -C "$OUT" . && mv /tmp/mambadiff-all.tgz "$OUT/all.tgz"
