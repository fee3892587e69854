#!/usr/bin/env bash
# Kernel-branch coverage with and without the kernels' counters as libFuzzer extra counters
# (issue 10 §6, docs/fuzz.md "Kernel-branch coverage on the GPU"). ONE call on the lent GPU machine.
#
#   here, once:   scripts/gpu_fuzz_campaign.sh --prepare      (fills .device/, git-ignored)
#   device call:  run(command="bash scripts/gpu_fuzz_campaign.sh", carry=[".device"], timeout_s=600)
#
# The GPU machine has no clang, so the fuzz targets are built there with g++ and nvcc
# (-DMAMBADIFF_FUZZ_CUDA=ON -DMAMBADIFF_KERNEL_COVERAGE=ON), host coverage from g++'s
# -fsanitize-coverage=trace-pc through fuzz/gcc_trace_pc_counters.cpp (linked into every program,
# CMake's compiler check included, since every instrumented program calls it), and linked against
# libFuzzer's runtime carried from this machine (.device/fuzz/libFuzzer-gcc.a: Debian's
# libclang_rt.fuzzer-x86_64.a with its __sanitizer_cov_trace_pc made weak). No sanitizers there.
# Then, all at once for FUZZ_GPU_SECONDS (default 150) each, one process each (no fork mode, so the
# process's union of kernel branches is the campaign's), from the seed corpus, libFuzzer seed 1,
# with MAMBADIFF_FUZZ_KEEP_GOING=1 (a divergence is printed and the run goes on: the first one
# ended the 2026-12-01 run after 84 executions; each distinct signature is listed in summary.txt):
#   scan_diff and model_script, each with the kernel counters fed to libFuzzer (MAMBADIFF_KERNEL_COUNTERS=1)
#   and without (=0: the same counts measured and logged, libFuzzer sees host coverage only).
# Also builds and runs tests/kernel_coverage_gpu_test in a coverage build. Writes to $OUT:
#   summary.txt (machine, date, the table of kernel branches/features over time), gpu_test.txt,
#   cov_<target>_<with|without>.txt (the mambadiff-kernel-coverage lines and libFuzzer's stats),
#   build.txt (the builds' last lines), artifacts.tgz (crash inputs, if any).
set -uo pipefail

if [ "${1:-}" = "--prepare" ]; then
  mkdir -p .device/include .device/fuzz
  cp -r /usr/include/nlohmann /usr/include/CLI .device/include/
  [ -d .device/googletest ] || cp -r /usr/src/googletest .device/googletest
  A=$(ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a | head -1)
  objcopy --weaken-symbol=__sanitizer_cov_trace_pc "$A" .device/fuzz/libFuzzer-gcc.a
  echo "prepared .device/ (libFuzzer from $A)"
  exit 0
fi

: "${OUT:?run on the device machine (OUT unset)}"
SECONDS_EACH=${FUZZ_GPU_SECONDS:-150}
TORCH_LIB="$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib"
export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"
PREFIX="$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')"
F=/tmp/mambadiff-fuzz-gpu T=/tmp/mambadiff-cov-test
S="$OUT/summary.txt"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; date -u; nproc; } > "$S"

t0=$(date +%s)
g++ -O2 -c fuzz/gcc_trace_pc_counters.cpp -o /tmp/trace_pc_counters.o
COMMON=(-DCMAKE_BUILD_TYPE=Release -DMAMBADIFF_PYTHON=python3 -DCMAKE_PREFIX_PATH="$PREFIX"
        -DMAMBADIFF_VENDOR_INCLUDE="$PWD/.device/include" -DMAMBADIFF_KERNEL_COVERAGE=ON)
( cmake -S . -B "$F" "${COMMON[@]}" -DMAMBADIFF_FUZZ=ON -DMAMBADIFF_FUZZ_CUDA=ON -DMAMBADIFF_FUZZ_SANITIZE=OFF \
    -DCMAKE_CXX_FLAGS="-fsanitize-coverage=trace-pc" -DCMAKE_EXE_LINKER_FLAGS=/tmp/trace_pc_counters.o \
    -DMAMBADIFF_FUZZ_ENGINE="$PWD/.device/fuzz/libFuzzer-gcc.a;-lpthread" \
  && cmake --build "$F" -j10 --target scan_diff model_script ) > /tmp/build_fuzz.txt 2>&1 &
fuzz_build=$!
( cmake -S . -B "$T" "${COMMON[@]}" -DMAMBADIFF_GTEST_SOURCE="$PWD/.device/googletest" \
  && cmake --build "$T" -j6 --target gpu_tests ) > /tmp/build_test.txt 2>&1 &
test_build=$!
wait $fuzz_build; fuzz_rc=$?
echo "fuzz build exit $fuzz_rc ($(( $(date +%s) - t0 )) s)" | tee -a "$S"
{ echo "== fuzz build"; tail -30 /tmp/build_fuzz.txt; } > "$OUT/build.txt"
[ $fuzz_rc = 0 ] || { grep -E "error|Error" /tmp/build_fuzz.txt | head -30; exit 1; }

pids=()
for target in scan_diff model_script; do
  for arm in with without; do
    mkdir -p "/tmp/fz/$target-$arm/corpus" "/tmp/fz/$target-$arm/artifacts"
    feed=1; [ $arm = without ] && feed=0
    MAMBADIFF_KERNEL_COUNTERS=$feed MAMBADIFF_KERNEL_COVERAGE_LOG=1 MAMBADIFF_FUZZ_KEEP_GOING=1 \
      MAMBADIFF_FUZZ_CASE_DIR="/tmp/fz/$target-$arm/cases" \
      "$F/fuzz/$target" -seed=1 -max_total_time="$SECONDS_EACH" -timeout=60 -print_final_stats=1 \
      -artifact_prefix="/tmp/fz/$target-$arm/artifacts/" "/tmp/fz/$target-$arm/corpus" "corpus/fuzz/$target" \
      > "/tmp/fz/$target-$arm.log" 2>&1 &
    pids+=($!)
  done
done
wait $test_build; echo "coverage test build exit $? ($(( $(date +%s) - t0 )) s)" | tee -a "$S"
{ echo "== coverage test build"; tail -15 /tmp/build_test.txt; } >> "$OUT/build.txt"
"$T/tests/gpu_tests" --gtest_filter='KernelCoverage*' > "$OUT/gpu_test.txt" 2>&1; echo "gpu_tests KernelCoverage exit $?" | tee -a "$S"
for p in "${pids[@]}"; do wait "$p"; done

for target in scan_diff model_script; do
  for arm in with without; do
    grep -E "mambadiff-kernel-coverage:|^stat::|INITED|DONE|ERROR|SUMMARY|mambadiff-fuzz-signature|Extra Counters" \
      "/tmp/fz/$target-$arm.log" > "$OUT/cov_${target}_${arm}.txt"
  done
done
echo -e "\ndistinct finding signatures per arm (keep-going mode):" >> "$S"
for target in scan_diff model_script; do
  for arm in with without; do
    echo "$target $arm: $(grep -h '^mambadiff-fuzz-signature:' /tmp/fz/$target-$arm.log | sort | uniq -c | sed 's/mambadiff-fuzz-signature: //' | tr '\n' ';')" >> "$S"
  done
done
grep -h -A1 '^mambadiff-fuzz-signature:' /tmp/fz/*.log | head -40 > "$OUT/findings.txt"
# The first three cases of each arm (replayable with `mambadiff repro` on a CPU).
mkdir -p /tmp/fz-cases
for d in /tmp/fz/*/cases; do
  [ -d "$d" ] || continue
  arm=$(basename "$(dirname "$d")"); mkdir -p "/tmp/fz-cases/$arm"
  ls "$d" | head -3 | while read -r c; do cp -r "$d/$c" "/tmp/fz-cases/$arm/"; done
done
tar czf "$OUT/cases.tgz" -C /tmp fz-cases 2>/dev/null
tar czf "$OUT/artifacts.tgz" -C /tmp/fz $(cd /tmp/fz && ls -d */artifacts) 2>/dev/null
python3 - "$SECONDS_EACH" >> "$S" <<'PY'
import sys, os
out, limit = os.environ["OUT"], float(sys.argv[1])
marks = [t for t in (5, 10, 20, 40, 80, 150, 300, 600) if t <= limit] + [limit]
print(f"\nkernel branches / kernel features reached by time (s), {limit:.0f} s each, one process, libFuzzer -seed=1")
print("| target | counters fed to libFuzzer | " + " | ".join(f"{m:g} s" for m in marks) + " | executions | inputs kept |")
print("|---|---|" + "---:|" * (len(marks) + 2))
for target in ("scan_diff", "model_script"):
    for arm in ("with", "without"):
        pts, execs, kept = [], "?", "?"
        for line in open(f"{out}/cov_{target}_{arm}.txt"):
            if line.startswith("mambadiff-kernel-coverage:"):
                f = line.split()
                pts.append((float(f[1]), f[3], f[4]))
            elif line.startswith("stat::number_of_executed_units:"):
                execs = line.split()[-1]
            elif line.startswith("stat::new_units_added:"):
                kept = line.split()[-1]
        cells = []
        for m in marks:
            seen = [p for p in pts if p[0] <= m]
            cells.append(f"{seen[-1][1]} / {seen[-1][2]}" if seen else "0")
        print(f"| {target} | {arm} | " + " | ".join(cells) + f" | {execs} | {kept} |")
PY
cat "$S"

# The device call returns at most 8 files of $OUT (alphabetically first): everything again as one archive.
tar czf /tmp/mambadiff-all.tgz -C "$OUT" . && mv /tmp/mambadiff-all.tgz "$OUT/all.tgz"
