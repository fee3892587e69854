#!/usr/bin/env bash
# One call on the lent GPU machine (docs/external.md): checks the ecosystem's deployed Mamba2
# kernels -- mamba_ssm's and vLLM's Triton kernels, and HF transformers' fast path with mamba_ssm --
# against mambadiff's float64 reference over the whole check matrix, fp32 and bf16, and replays the
# model_script fuzz corpus through them. Writes to $OUT: gpu.txt (the log), external.md (the table
# for docs/external.md), check_<system>.{txt,json,xml}, export_<system>.txt, known_behaviour.txt, corpus/ (findings,
# summary.json), cases/<system>/ (one mambadiff.case.v1 case per divergence class of the matrix, INDEX.md
# listing every diverging case with the one kept for it).
#
# Needs in the tree (the machine has no registry): .device/ecosystem (tools/fetch_ecosystem_kernels.sh)
# and .device/include (copies of /usr/include/nlohmann and /usr/include/CLI, as scripts/gpu_session.sh).
# The lead's call:  run(command="bash scripts/gpu_ecosystem.sh", carry=[".device"], timeout_s=480)
#
# Budget (8 min of the card): the build of mambadiff and fuzz_replay without the CUDA
# kernels (only `reference` runs here; ~1.5 min on 16 cores), then the exporters in parallel, each
# under `timeout` (EXPORT_TIMEOUT_S, default 200 s: a case not exported by then is reported
# "skipped: no export", never a pass), then check --external per system (seconds).
# Triton autotuning would compile every config of every kernel for each of the ~10 model shapes and
# two dtypes: far beyond the budget, so the first config is forced (MAMBA_DETERMINISTIC=1,
# VLLM_TRITON_FORCE_FIRST_CONFIG=1); AUTOTUNE=1 lifts that.
# For a dry run on a CPU machine (Triton's interpreter, fp32 only): ECO_DEVICE=cpu, SKIP_BUILD=1 with
# MAMBADIFF_ECO_BUILD=<a build folder holding mambadiff and fuzz/fuzz_replay>, and
# CHECK_SCENARIO=<a --scenario filter> to keep it short.
set -uo pipefail
PY=${PYTHON:-python3}  # the Python with torch, Triton and transformers
: "${OUT:?set OUT to the folder that comes back}"
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/gpu.txt"; }
export LD_LIBRARY_PATH="$("$PY" -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib:${LD_LIBRARY_PATH:-}"
B=${MAMBADIFF_ECO_BUILD:-/tmp/mambadiff-eco-build}
ECO="$PWD/.device/ecosystem"
EXPORT_TIMEOUT_S=${EXPORT_TIMEOUT_S:-200}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/mambadiff-triton-cache}
[ "${AUTOTUNE:-0}" = 1 ] || export MAMBA_DETERMINISTIC=1 VLLM_TRITON_FORCE_FIRST_CONFIG=1
if [ ! -f "$ECO/VERSIONS.json" ]; then
  echo "gpu_ecosystem.sh: no $ECO/VERSIONS.json: run tools/fetch_ecosystem_kernels.sh on the CPU machine and carry .device" >&2
  exit 2
fi
CARD=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
CARD=${CARD:-"no GPU ($(nproc) CPU cores, Triton interpreter)"}
log "card: $CARD; $(date -u); ecosystem: $(tr -d '\n ' < "$ECO/VERSIONS.json" | cut -c1-300)"
log "python: $("$PY" -c 'import torch, triton, transformers; print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)')"

# 1. mambadiff (reference and file: paths only) and the model_script replay that writes scenarios.
if [ "${SKIP_BUILD:-0}" != 1 ]; then
cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=Release -DMAMBADIFF_PYTHON=python3 -DMAMBADIFF_CUDA=OFF -DMAMBADIFF_TESTS=OFF \
  -DMAMBADIFF_VENDOR_INCLUDE="$PWD/.device/include" \
  -DCMAKE_PREFIX_PATH="$("$PY" -c 'import torch;print(torch.utils.cmake_prefix_path)')" > "$OUT/build.txt" 2>&1
if ! cmake --build "$B" -j16 --target mambadiff fuzz_replay >> "$OUT/build.txt" 2>&1; then
  grep -E "error|Error" "$OUT/build.txt" | head -20; exit 1
fi
fi
log "build done"
SCEN_FILTER=(); [ -n "${CHECK_SCENARIO:-}" ] && SCEN_FILTER=(--scenario "$CHECK_SCENARIO")
DEVICE=${ECO_DEVICE:-cuda}
if [ "$DEVICE" = cpu ]; then export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""; fi

# 2. The matrix and the fuzz corpus as scenarios.
S=/tmp/eco-scenarios; C=/tmp/eco-corpus; E=/tmp/eco-exports
rm -rf "$S" "$C" "$E"; mkdir -p "$E" "$OUT/corpus"
"$B/mambadiff" check --emit-scenarios "$S" "${SCEN_FILTER[@]}" | tee -a "$OUT/gpu.txt"
MAMBADIFF_FUZZ_SCENARIO_DIR="$C" "$B/fuzz/fuzz_replay" model_script corpus/fuzz/model_script > "$OUT/corpus/replay.txt" 2>&1
log "corpus: $(ls "$C" | wc -l) model_script inputs written as scenarios"

# 3. The exporters, all six in parallel on the one card (each a process compiling its own kernels on
# its own CPU core; Triton's cache is shared on disk).
export_all() {  # NAME BACKEND SCENARIOS EXPORTS [export.py options...]
  local name=$1 backend=$2 scen=$3 exports=$4; shift 4
  timeout "$EXPORT_TIMEOUT_S" "$PY" tools/ecosystem/export.py --backend "$backend" --device "$DEVICE" \
      --ecosystem "$ECO" --all "$scen" --out-dir "$exports" "$@" >> "$OUT/export_$name.txt" 2>&1
  echo "exit $? after $(( $(date +%s) - T0 )) s" >> "$OUT/export_$name.txt"
}
export_all mamba_ssm mamba_ssm "$S" "$E/mamba_ssm" &
export_all vllm vllm "$S" "$E/vllm" &
export_all hf_fast hf_fast "$S" "$E/hf_fast" &
# fp32 with IEEE fp32 dots: tells TF32 (Triton's default for fp32 tl.dot on the GPU) from a kernel bug.
(export TRITON_F32_DEFAULT=ieee TRITON_CACHE_DIR=$TRITON_CACHE_DIR-ieee; export_all mamba_ssm_ieee mamba_ssm "$S" "$E/mamba_ssm_ieee" --dtypes float32) &
export_all corpus_mamba_ssm mamba_ssm "$C" "$E/corpus_mamba_ssm" &
export_all corpus_vllm vllm "$C" "$E/corpus_vllm" &
# vLLM's conv kernels as the vllm backend calls them vs the textbook conv (a calling mistake of ours
# would otherwise read as a vLLM divergence).
timeout 120 "$PY" tools/ecosystem/probe_vllm_conv.py --device "$DEVICE" --ecosystem "$ECO" > "$OUT/vllm_conv_probe.txt" 2>&1 &
# The known behaviour (softplus flush and precision, bf16 state rounding) measured on this device.
timeout "$EXPORT_TIMEOUT_S" "$PY" tools/ecosystem/measure_known_behaviour.py --device "$DEVICE" --ecosystem "$ECO" \
    > "$OUT/known_behaviour.txt" 2>&1 &
wait
log "exports done: $(for s in mamba_ssm vllm hf_fast mamba_ssm_ieee corpus_mamba_ssm corpus_vllm; do echo -n "$s $(find "$E/$s" -name '*.safetensors' 2>/dev/null | wc -l) "; done)"

# 4. check --external per system (table, JSON, JUnit; each divergence written as a case).
for s in mamba_ssm vllm hf_fast mamba_ssm_ieee; do
  [ -d "$E/$s" ] || continue
  "$B/mambadiff" check --external "$s=$E/$s" "${SCEN_FILTER[@]}" --json "$OUT/check_$s.json" --junit "$OUT/check_$s.xml" \
      --cases-dir "$OUT/cases/$s" > "$OUT/check_$s.txt" 2>&1
  log "check --external $s: exit $? -- $(tail -1 "$OUT/check_$s.txt")"
done
"$PY" tools/ecosystem/replay_corpus.py --scenarios "$C" --export "mamba_ssm=$E/corpus_mamba_ssm" \
    --export "vllm=$E/corpus_vllm" --mambadiff "$B/mambadiff" --out "$OUT/corpus" 2>&1 | tee -a "$OUT/gpu.txt"

# 5. The table for docs/external.md.
first() { find "$E/$1" -name '*.safetensors' 2>/dev/null | sort | head -1; }
"$PY" tools/ecosystem/summarize.py --card "$CARD" --command "bash scripts/gpu_ecosystem.sh (carry .device)" --prune-cases "$OUT/cases" \
    $(for s in mamba_ssm vllm hf_fast mamba_ssm_ieee; do echo "--report $s=$OUT/check_$s.json --versions $s=$(first $s)"; done) \
    > "$OUT/external.md" 2>> "$OUT/gpu.txt"
grep -E "^(softplus|state error)" "$OUT/known_behaviour.txt" | tee -a "$OUT/gpu.txt"
grep -E "^(causal_conv1d|vLLM conv probe)" "$OUT/vllm_conv_probe.txt" | tee -a "$OUT/gpu.txt"
log "done; table in external.md"

# The device call returns at most 8 files of $OUT (alphabetically first): everything again as one archive.
tar czf /tmp/mambadiff-all.tgz -C "$OUT" . && mv /tmp/mambadiff-all.tgz "$OUT/all.tgz"
