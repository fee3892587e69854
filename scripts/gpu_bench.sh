#!/usr/bin/env bash
# One call on the lent GPU machine (docs/bench.md, issue 11 item 3): builds mambadiff there and, on
# the same card in the same run, one after the other (never two at once on the card):
#   1. `mambadiff bench --what all` (decode and optimize on the 130m model of tools/make_bench_model.py)
#   2. mamba_ssm's and vLLM's Triton kernels at the same shapes (tools/bench_peers.py, autotuned)
#   3. HF transformers' eager decode and the functional optimizer loop (shared/anchors)
#   4. the side-by-side table (tools/bench_table.py) -> $OUT/bench.md
# Writes to $OUT: gpu.txt (the log), build.txt, bench.{txt,json}, peers.{txt,json}, anchors.txt,
# bench.md, and all of it again as all.tgz (the device call returns at most 8 files).
#
# Needs in the tree (the machine has no package registry): .device/include and .device/googletest
# (as scripts/gpu_session.sh), .device/ecosystem (tools/fetch_ecosystem_kernels.sh) and
# .device/anchors (a copy of ../shared/anchors).
# The lead's call:  run(command="bash scripts/gpu_bench.sh", carry=[".device"], timeout_s=600)
#
# Budget (10 min of the card; a stage past its limit is reported and the next one runs): the build
# of mambadiff alone (~2-3 min on 16 cores), the 130m checkpoint (~20 s), bench (BENCH_TIMEOUT_S,
# default 150 s), the peers (PEERS_TIMEOUT_S, 200 s: autotuning compiles each kernel's configs once
# per shape), the anchors (ANCHORS_TIMEOUT_S, 90 s). REPS/WARMUP set bench's timed and untimed calls.
# A dry run on a CPU machine (checks the plumbing, measures nothing worth keeping; the anchors need a
# GPU and fail): PYTHON=<venv python> SKIP_BUILD=1 MAMBADIFF_GPU_BUILD=<a build with mambadiff>
# PEERS_ARGS="--device cpu --small" REPS=3 WARMUP=1 OUT=/tmp/gb bash scripts/gpu_bench.sh
set -uo pipefail
PY=${PYTHON:-python3}  # the Python with torch, Triton and transformers
: "${OUT:?set OUT to the folder that comes back}"
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/gpu.txt"; }
# Whatever happens below, what $OUT holds also comes back as one archive.
trap 'tar czf /tmp/mambadiff-bench-all.tgz -C "$OUT" --exclude=all.tgz . && mv /tmp/mambadiff-bench-all.tgz "$OUT/all.tgz"' EXIT
TORCH_LIB="$("$PY" -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib"
export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"
B=${MAMBADIFF_GPU_BUILD:-/tmp/mambadiff-build}
ECO="$PWD/.device/ecosystem"
ANCHOR="$PWD/.device/anchors/hf_decode_and_functional_optimizer.py"
MODEL=/tmp/mambadiff-bench-m130
REPS=${REPS:-100}
WARMUP=${WARMUP:-10}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/mambadiff-triton-cache}
# The peers are timed as they deploy: autotuned (gpu_ecosystem.sh forces the first config instead).
unset MAMBA_DETERMINISTIC VLLM_TRITON_FORCE_FIRST_CONFIG TRITON_INTERPRET
for need in "$ECO/VERSIONS.json" "$ANCHOR" "$PWD/.device/include/nlohmann" "$PWD/.device/googletest/CMakeLists.txt"; do
  if [ ! -e "$need" ]; then
    echo "gpu_bench.sh: $need is missing: carry .device (tools/fetch_ecosystem_kernels.sh; a copy of ../shared/anchors)" >&2
    exit 2
  fi
done
CARD=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
log "card: ${CARD:-no nvidia-smi}; $(date -u); $("$PY" -c 'import torch, triton, transformers; print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)' 2>&1 | tail -1)"

# 1. mambadiff, built as scripts/gpu_session.sh builds it (only the binary).
if [ "${SKIP_BUILD:-0}" != 1 ]; then
cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=Release -DMAMBADIFF_PYTHON=python3 \
  -DMAMBADIFF_VENDOR_INCLUDE="$PWD/.device/include" -DMAMBADIFF_GTEST_SOURCE="$PWD/.device/googletest" \
  -DCMAKE_PREFIX_PATH="$("$PY" -c 'import torch;print(torch.utils.cmake_prefix_path)')" > "$OUT/build.txt" 2>&1
if ! cmake --build "$B" -j16 --target mambadiff ${EXTRA_TARGETS:-} >> "$OUT/build.txt" 2>&1; then
  grep -E "error|Error" "$OUT/build.txt" | head -40; log "build failed"; exit 1
fi
fi
log "build done"
"$PY" tools/make_bench_model.py --shape 130m --out "$MODEL" 2>&1 | tail -1 | tee -a "$OUT/gpu.txt"

# 1b. Correctness of what is about to be timed, when asked (EXTRA_TARGETS="ssd_chunked_scan_check
# fuzz_replay"): the kernel against its float64 check, the fuzz corpora on the GPU paths.
if [ -x "$B/ssd_chunked_scan_check" ]; then
  "$B/ssd_chunked_scan_check" > "$OUT/kernel_check.txt" 2>&1; log "ssd_chunked_scan_check: exit $?"
  grep -E "FAIL|huge|all cases" "$OUT/kernel_check.txt" | tee -a "$OUT/gpu.txt"
fi
if [ -x "$B/tests/gpu_tests" ]; then
  "$B/tests/gpu_tests" > "$OUT/gpu_tests.txt" 2>&1; log "gpu tests: exit $?"
  grep -E "^\[  (FAILED|PASSED|SKIPPED) |Failure|Expected|Which is|  Actual" "$OUT/gpu_tests.txt" | head -30 | tee -a "$OUT/gpu.txt"
fi
if [ "${KERNEL_PROFILE:-0}" = 1 ] && [ -x "$B/ssd_chunked_scan_check" ]; then
  # Time per kernel of the chunked scan at the bench shapes, both bf16 product modes (nsys when the
  # toolkit has it), and the check program's own timings of both.
  "$B/ssd_chunked_scan_check" --bench-only > "$OUT/kernel_bench.txt" 2>&1; log "kernel bench: exit $?"
  grep bench "$OUT/kernel_bench.txt" | tee -a "$OUT/gpu.txt"
  NSYS=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
  if [ -n "$NSYS" ]; then
    timeout 120 "$NSYS" profile --stats=false -o /tmp/scan_prof -f true "$B/ssd_chunked_scan_check" --bench-only > /dev/null 2>&1
    timeout 60 "$NSYS" stats --report cuda_gpu_kern_sum --format csv /tmp/scan_prof.nsys-rep > "$OUT/kernel_profile.csv" 2>&1
    log "nsys per-kernel summary: exit $?"; cut -c1-220 "$OUT/kernel_profile.csv" | head -20 | tee -a "$OUT/gpu.txt"
  else
    log "no nsys on this machine: no per-kernel breakdown"
  fi
fi
if [ "${CHECK_BOTH_PRODUCTS:-0}" = 1 ]; then
  # `check` on every embedded model and path, fp32 and bf16, with each bf16 product mode of the
  # chunked scan kernel (MAMBADIFF_SCAN_PRODUCTS).
  for mode in bf16 split-tf32; do
    MAMBADIFF_SCAN_PRODUCTS=$mode "$B/mambadiff" check --json "$OUT/check_$mode.json" > "$OUT/check_$mode.txt" 2>&1
    log "check with $mode products: exit $?"; tail -2 "$OUT/check_$mode.txt" | tee -a "$OUT/gpu.txt"
    grep -E "DIVERGE|FAIL" "$OUT/check_$mode.txt" | head -10 | tee -a "$OUT/gpu.txt"
  done
fi
if [ -x "$B/fuzz/fuzz_replay" ]; then
  for t in scan_diff model_script; do
    "$B/fuzz/fuzz_replay" $t corpus/fuzz/$t > "$OUT/replay_$t.txt" 2>&1; log "fuzz replay $t on the GPU paths: exit $?"
    tail -2 "$OUT/replay_$t.txt" | tee -a "$OUT/gpu.txt"
  done
fi

# 2. Ours.
BENCH_CMD=("$B/mambadiff" bench --what all --model "$MODEL" --reps "$REPS" --warmup "$WARMUP" --json "$OUT/bench.json")
timeout "${BENCH_TIMEOUT_S:-150}" "${BENCH_CMD[@]}" > "$OUT/bench.txt" 2>&1
log "mambadiff bench: exit $?"
cat "$OUT/bench.txt"

# 3. The peers at the same shapes.
read -r -a PEERS_EXTRA <<< "${PEERS_ARGS:-}"
PEERS_CMD=("$PY" tools/bench_peers.py --ecosystem "$ECO" --out "$OUT/peers.json" "${PEERS_EXTRA[@]}")
timeout "${PEERS_TIMEOUT_S:-200}" "${PEERS_CMD[@]}" > "$OUT/peers.txt" 2>&1
log "bench_peers: exit $? (1: some calls failed, listed in the table)"
grep -vE "Warning|warnings.warn" "$OUT/peers.txt" | tail -12

# 4. The anchors: HF eager decode and the functional optimizer loop, 130m shape.
ANCHORS_CMD=("$PY" "$ANCHOR")
timeout "${ANCHORS_TIMEOUT_S:-90}" "${ANCHORS_CMD[@]}" > "$OUT/anchors.txt" 2>&1
log "anchors: exit $?"
grep -v Warning "$OUT/anchors.txt" | tail -3

# 5. The table (a stage that wrote nothing leaves its cells empty: "—").
TABLE_ARGS=(--bench "$OUT/bench.json" --out "$OUT/bench.md")
[ -s "$OUT/peers.json" ] && TABLE_ARGS+=(--peers "$OUT/peers.json")
[ -s "$OUT/anchors.txt" ] && TABLE_ARGS+=(--anchors "$OUT/anchors.txt")
"$PY" tools/bench_table.py "${TABLE_ARGS[@]}" \
  --command "bash scripts/gpu_bench.sh   # carry .device; on ${CARD:-?}" \
  --command "${BENCH_CMD[*]}" --command "${PEERS_CMD[*]}" --command "${ANCHORS_CMD[*]}" > /dev/null 2>> "$OUT/gpu.txt"
log "table: exit $? -> bench.md"
cat "$OUT/bench.md" 2>/dev/null
