#!/usr/bin/env bash
# One call on the lent GPU machine (see README "GPU figures"): runs `check` with the GPU paths,
# the optimizer on the 130m shape on chunked-gpu, and the anchor scripts beside it, on one card.
# Expects build/mambadiff built on the CPU machine (same torch 2.11 wheel) and, under .device/,
# the anchor scripts copied from ../shared/anchors. Writes logs and JSON to $OUT.
set -uo pipefail
export LD_LIBRARY_PATH="$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib:${LD_LIBRARY_PATH:-}"
export MAMBADIFF_MODELS="$PWD/corpus/models"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
date -u | tee -a "$OUT/gpu.txt"
build/mambadiff check --json "$OUT/check_gpu.json" > "$OUT/check_gpu.txt" 2>&1; echo "check exit $?" | tee -a "$OUT/gpu.txt"
grep -E "chunked-gpu" "$OUT/check_gpu.txt" | grep -v skipped | awk '{print $1,$2,$3,$5,$6,$7}' | head -80
tail -1 "$OUT/check_gpu.txt"
python3 tools/make_bench_model.py --shape 130m --out /tmp/m130 | tee -a "$OUT/gpu.txt"
PROMPT=$(python3 -c 'import random;random.seed(0);print(",".join(str(random.randrange(50288)) for _ in range(32)))')
for path in chunked-gpu; do
  build/mambadiff optimize --model /tmp/m130 --prompt-tokens "$PROMPT" --target 1234 --layers 16 \
      --loss margin --margin 1e9 --steps 40 --path $path --out /tmp/d.safetensors --json "$OUT/opt_$path.json"
  python3 -c "import json;j=json.load(open('$OUT/opt_$path.json'));print('optimize 130m $path: %.3f ms/step (median of %d steps), restore bit-identical %s' % (j['seconds_per_step']*1e3, j['steps'], j['restore_bit_identical']))" | tee -a "$OUT/gpu.txt"
done
python3 .device/anchors/hf_decode_and_functional_optimizer.py 2>&1 | grep -v Warning | tee -a "$OUT/gpu.txt"
