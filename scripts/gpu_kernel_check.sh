#!/usr/bin/env bash
# One device call for the chunked SSD scan alone (fast to iterate: nvcc on three files, no LibTorch):
# kernels/check/ssd_chunked_scan_check.cu against its float64 CPU reference and the sequential
# kernel, its timings at the shapes, and compute-sanitizer memcheck + racecheck on the
# small cases. Writes $OUT/kernel_check.txt and $OUT/kernel_sanitizers.txt.
set -uo pipefail
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/kernel_check.txt"
date -u | tee -a "$OUT/kernel_check.txt"
t0=$(date +%s)
nvcc -std=c++17 -O3 -arch=sm_90 -I. -Werror=all-warnings -lineinfo kernels/check/ssd_chunked_scan_check.cu \
  kernels/ssd_chunked_scan.cu kernels/ssd_chunk_scan.cu -o /tmp/ssd_chunked_scan_check || exit 1
echo "nvcc: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/kernel_check.txt"
/tmp/ssd_chunked_scan_check --bench 2>&1 | tee -a "$OUT/kernel_check.txt"
echo "check exit ${PIPESTATUS[0]}" | tee -a "$OUT/kernel_check.txt"
for tool in memcheck racecheck; do
  timeout 240 compute-sanitizer --tool $tool --error-exitcode 3 /tmp/ssd_chunked_scan_check --small \
    > "/tmp/san_$tool.txt" 2>&1
  echo "compute-sanitizer $tool: exit $?" | tee -a "$OUT/kernel_sanitizers.txt"
  tail -4 "/tmp/san_$tool.txt" | tee -a "$OUT/kernel_sanitizers.txt"
done
# Where the time goes, per kernel (nsys, when the machine has it).
if command -v nsys > /dev/null; then
  nsys profile -o /tmp/scan_prof --force-overwrite true --stats=false /tmp/ssd_chunked_scan_check --bench-only > /dev/null 2>&1
  nsys stats --report cuda_gpu_kern_sum --format csv /tmp/scan_prof.nsys-rep 2>/dev/null |
    python3 -c 'import sys,csv
rows=[r for r in csv.reader(sys.stdin) if len(r)>8]
for r in rows[:14]: print(" | ".join([r[0],r[1],r[2],r[3],r[-1][:90]]))' | tee "$OUT/kernel_profile.txt"
fi
