#!/usr/bin/env bash
# One call on the lent GPU machine (docs/external.md): checks the ecosystem's deployed Mamba2
# kernels -- mamba_ssm's and vLLM's Triton kernels, and HF transformers' fast path with mamba_ssm --
# against mambadiff's float64 reference over the whole check matrix, fp32, bf16 and fp16, and replays
# the model_script fuzz corpus through them. Writes to $OUT: gpu.txt (the log), external.md (the table
# for docs/external.md), check_<system>.{txt,json,xml}, export_<system>.txt, known_behaviour.txt, corpus/ (findings,
# summary.json), cases/<system>/ (one mambadiff.case.v1 case per divergence class of the matrix, INDEX.md
# listing every diverging case with the one kept for it), gpu_only/<class>/ (one case of each GPU-only
# class told apart by a control arm -- tf32, vllm_state -- ready for corpus/regressions/),
# reduced/<class>/ (those cases shrunk by `mambadiff reduce --exporter` on the card), reduce_<class>.txt,
# causal_conv1d_build.txt; and all of it again as all.tgz (the device returns at most 8 files), the
# cases alone as all-cases.tgz (small, in case all.tgz is over the 16 MiB a file may have).
#
# Needs in the tree (the machine has no registry): .device/ecosystem (tools/fetch_ecosystem_kernels.sh:
# the kernels' sources, causal-conv1d's sdist, ninja) and .device/include (copies of /usr/include/nlohmann
# and /usr/include/CLI, as scripts/gpu_session.sh).
# The lead's call:  run(command="bash scripts/gpu_ecosystem.sh", carry=[".device"], timeout_s=600)
#
# Budget (at most ~9.5 min of the card; the device allows 10): causal-conv1d's CUDA extension built
# for the card in the background (tools/ecosystem/build_causal_conv1d.py, forward and update only,
# under `timeout ${CAUSAL_CONV1D_TIMEOUT_S:-240}`) while mambadiff and fuzz_replay build without the
# CUDA kernels (only `reference` runs here; ~2 min on 16 cores); then the exporters in parallel, each
# under `timeout` (EXPORT_TIMEOUT_S, default 170 s; six took 74 s in the last call: a case not
# exported by then is reported "skipped: no export", never a pass) -- mamba_ssm and hf_fast with HF's
# torch conv, and again with causal-conv1d (mamba_ssm_cc, hf_fast_cc) when it built, bounded by what
# is left of the call -- then check --external per system in parallel (seconds each), then `reduce`
# of the GPU-only classes' cases, in parallel, each bounded by --max-seconds ${REDUCE_SECONDS:-75} and
# by what is left of CALL_BUDGET_S (560 s).
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
DEVICE=${ECO_DEVICE:-cuda}
EXPORT_TIMEOUT_S=${EXPORT_TIMEOUT_S:-170}
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

# 0. causal-conv1d's CUDA extension for this card, in the background (4 sources; ninja from .device).
CCD=/tmp/mambadiff-causal-conv1d CCD_PID=""
if [ "$DEVICE" = cuda ] && [ "${SKIP_CAUSAL_CONV1D:-0}" != 1 ]; then
  ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')
  ( PATH="$ECO/bin:$PATH" MAX_JOBS=4 timeout "${CAUSAL_CONV1D_TIMEOUT_S:-240}" "$PY" tools/ecosystem/build_causal_conv1d.py \
      --sdist "$(ls "$ECO"/causal_conv1d-*.tar.gz 2>/dev/null | head -1)" --dest "$CCD" --arch "${ARCH:-90}" \
      > "$OUT/causal_conv1d_build.txt" 2>&1; echo "exit $? after $(( $(date +%s) - T0 )) s" >> "$OUT/causal_conv1d_build.txt" ) &
  CCD_PID=$!
else
  echo "causal_conv1d: not built (device $DEVICE)" > "$OUT/causal_conv1d_build.txt"
fi

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
[ -n "${CHECK_DTYPES:-}" ] && SCEN_FILTER+=(--dtypes "$CHECK_DTYPES")
if [ "$DEVICE" = cpu ]; then export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""; fi

# 2. The matrix and the fuzz corpus as scenarios.
S=/tmp/eco-scenarios; C=/tmp/eco-corpus; E=/tmp/eco-exports; L=/tmp/eco-long-decode
rm -rf "$S" "$C" "$E" "$L"; mkdir -p "$E" "$OUT/corpus"
"$B/mambadiff" check --emit-scenarios "$S" "${SCEN_FILTER[@]}" | tee -a "$OUT/gpu.txt"
MAMBADIFF_FUZZ_SCENARIO_DIR="$C" "$B/fuzz/fuzz_replay" model_script corpus/fuzz/model_script > "$OUT/corpus/replay.txt" 2>&1
log "corpus: $(ls "$C" | wc -l) model_script inputs written as scenarios"
# 64 decode steps in bf16 and fp16 on two models with one group and no dt limit (no other vLLM class
# applies): where a low-precision SSM state shows, if check's 6 steps do not.
"$PY" tools/ecosystem/long_decode.py --out "$L" --model corpus/models/tiny --model corpus/models/bytes --steps 64 > /dev/null

# 3. The exporters in parallel on the one card (each a process compiling its own kernels on its own
# CPU core; Triton's cache is shared on disk), all with HF's torch conv where mamba_ssm and HF's fast
# path would call causal-conv1d; when its build has finished and succeeded, mamba_ssm and hf_fast
# once more on the matrix with it on PYTHONPATH (mamba_ssm_cc, hf_fast_cc: the CUDA conv as deployed).
export_all() {  # NAME BACKEND SCENARIOS EXPORTS [export.py options...]
  local name=$1 backend=$2 scen=$3 exports=$4; shift 4
  timeout "$EXPORT_TIMEOUT_S" "$PY" tools/ecosystem/export.py --backend "$backend" --device "$DEVICE" \
      --ecosystem "$ECO" --all "$scen" --out-dir "$exports" "$@" >> "$OUT/export_$name.txt" 2>&1
  echo "exit $? after $(( $(date +%s) - T0 )) s" >> "$OUT/export_$name.txt"
}
export_all vllm vllm "$S" "$E/vllm" &
# vLLM with --mamba-ssm-cache-dtype float32 on the low-precision cases: tells its bf16/fp16 state from its kernels.
(export MAMBADIFF_VLLM_SSM_CACHE_DTYPE=float32; export_all vllm_state32 vllm "$S" "$E/vllm_state32" --dtypes bfloat16,float16) &
export_all corpus_vllm vllm "$C" "$E/corpus_vllm" &
export_all vllm_long vllm "$L" "$E/vllm_long" &
(export MAMBADIFF_VLLM_SSM_CACHE_DTYPE=float32; export_all vllm_long_state32 vllm "$L" "$E/vllm_long_state32") &
# vLLM's conv kernels as the vllm backend calls them vs the textbook conv (a calling mistake of ours
# would otherwise read as a vLLM divergence).
timeout 120 "$PY" tools/ecosystem/probe_vllm_conv.py --device "$DEVICE" --ecosystem "$ECO" > "$OUT/vllm_conv_probe.txt" 2>&1 &
# The known behaviour (softplus flush and precision, bf16 state rounding) measured on this device.
timeout "$EXPORT_TIMEOUT_S" "$PY" tools/ecosystem/measure_known_behaviour.py --device "$DEVICE" --ecosystem "$ECO" \
    > "$OUT/known_behaviour.txt" 2>&1 &
export_all mamba_ssm mamba_ssm "$S" "$E/mamba_ssm" &
export_all hf_fast hf_fast "$S" "$E/hf_fast" &
# fp32 with IEEE fp32 dots: tells TF32 (Triton's default for fp32 tl.dot on the GPU) from a kernel bug.
(export TRITON_F32_DEFAULT=ieee TRITON_CACHE_DIR=$TRITON_CACHE_DIR-ieee; export_all mamba_ssm_ieee mamba_ssm "$S" "$E/mamba_ssm_ieee" --dtypes float32) &
export_all corpus_mamba_ssm mamba_ssm "$C" "$E/corpus_mamba_ssm" &
if [ -n "$CCD_PID" ]; then
  wait "$CCD_PID"
  log "$(grep -E '^causal_conv1d:' "$OUT/causal_conv1d_build.txt" | tail -1 || echo 'causal_conv1d: no result line (timed out)')"
  if grep -q "^causal_conv1d: built" "$OUT/causal_conv1d_build.txt"; then
    # What is left of the call for these two (the checks, reductions and archives need ~3 min after).
    left=$(( ${CALL_BUDGET_S:-560} - ($(date +%s) - T0) - 190 ))
    [ "$left" -gt "$EXPORT_TIMEOUT_S" ] && left=$EXPORT_TIMEOUT_S
    if [ "$left" -ge 30 ]; then
      (export PYTHONPATH="$CCD${PYTHONPATH:+:$PYTHONPATH}" EXPORT_TIMEOUT_S=$left
       export_all mamba_ssm_cc mamba_ssm "$S" "$E/mamba_ssm_cc" &
       export_all hf_fast_cc hf_fast "$S" "$E/hf_fast_cc" &
       wait) &
    else
      log "causal_conv1d: built, but only ${left} s left for its exports: not run"
    fi
  fi
fi
wait
SYSTEMS="mamba_ssm vllm hf_fast mamba_ssm_ieee vllm_state32"
for s in mamba_ssm_cc hf_fast_cc; do [ -d "$E/$s" ] && SYSTEMS+=" $s"; done
log "exports done: $(for s in $SYSTEMS corpus_mamba_ssm corpus_vllm vllm_long vllm_long_state32; do echo -n "$s $(find "$E/$s" -name '*.safetensors' 2>/dev/null | wc -l) "; done)"

# 4. check --external per system, in parallel (table, JSON, JUnit; each divergence written as a case).
# vllm_state32 exported only the bf16/fp16 cases and mamba_ssm_ieee only the fp32 ones: their checks
# are limited to them (the rest would be "skipped: no export" rows).
check_external() {  # SYSTEM [check options...]
  local s=$1; shift
  "$B/mambadiff" check --external "$s=$E/$s" "${SCEN_FILTER[@]}" "$@" --json "$OUT/check_$s.json" --junit "$OUT/check_$s.xml" \
      --cases-dir "$OUT/cases/$s" > "$OUT/check_$s.txt" 2>&1
  log "check --external $s: exit $? -- $(tail -1 "$OUT/check_$s.txt")"
}
for s in $SYSTEMS; do
  [ -d "$E/$s" ] || continue
  if [ "$s" = vllm_state32 ] && [ -z "${CHECK_DTYPES:-}" ]; then
    check_external "$s" --dtypes bfloat16,float16 &
  elif [ "$s" = mamba_ssm_ieee ] && [ -z "${CHECK_DTYPES:-}" ]; then
    check_external "$s" --dtypes float32 &
  else
    check_external "$s" &
  fi
done
wait
"$PY" tools/ecosystem/replay_corpus.py --scenarios "$C" --export "mamba_ssm=$E/corpus_mamba_ssm" \
    --export "vllm=$E/corpus_vllm" --mambadiff "$B/mambadiff" --out "$OUT/corpus" 2>&1 | tee -a "$OUT/gpu.txt"

# 5. One case of each GPU-only class (told apart by its control arm), ready for corpus/regressions/,
# then reduced on the card: every candidate re-exported by the system's own exporter (README, `reduce`).
REPORTS=(); for s in $SYSTEMS; do REPORTS+=(--report "$s=$OUT/check_$s.json"); done
"$PY" tools/ecosystem/pick_class_cases.py --cases "$OUT/cases" "${REPORTS[@]}" --out "$OUT/gpu_only" \
    --pick "tf32:mamba_ssm:mamba_ssm_ieee:float32:mamba_ssm 2.3.2's Triton chunked scan computes its fp32 dot products in TF32 on the GPU (Triton's default for fp32 tl.dot; the same export with TRITON_F32_DEFAULT=ieee agrees)" \
    --pick "vllm_state:vllm:vllm_state32:bfloat16,float16:vLLM 0.33 keeps the SSM state in the model's dtype by default (mamba_ssm_cache_dtype auto; vLLM #43301), rounded at every step (with --mamba-ssm-cache-dtype float32 the same kernels agree)" \
    2>&1 | tee -a "$OUT/gpu.txt"
# The long decodes: diverging with vLLM's default state, agreeing with a float32 one.
for f in $(cd "$L" && find . -name '*.json' | sort); do
  id=${f#./}; id=${id%.json}; x="$E/vllm_long/$id.safetensors"; x32="$E/vllm_long_state32/$id.safetensors"
  if [ ! -f "$x" ] || [ ! -f "$x32" ]; then
    log "long decode $id: $(cat "${x%.safetensors}.skipped" "${x%.safetensors}.error" 2>/dev/null | head -1 | cut -c1-120 || true) (no export)"
    continue
  fi
  "$B/mambadiff" diff "$L/$id.json" --paths "reference,file:$x" --case-out "$OUT/cases/vllm_long/${id//\//.}" > "$OUT/long_$(echo "$id" | tr / .).txt" 2>&1
  v=$?; "$B/mambadiff" diff "$L/$id.json" --paths "reference,file:$x32" >> "$OUT/long_$(echo "$id" | tr / .).txt" 2>&1
  v32=$?
  log "long decode $id: vllm exit $v, vllm with a float32 state exit $v32 -- $(grep -m1 -E 'first divergence|AGREE' "$OUT/long_$(echo "$id" | tr / .).txt")"
  if [ "$v" = 1 ] && [ "$v32" = 0 ] && [ ! -d "$OUT/gpu_only/vllm_state" ]; then
    "$PY" tools/ecosystem/pick_class_cases.py --keep "$OUT/cases/vllm_long/${id//\//.}" --as "$OUT/gpu_only/vllm_state" \
        --reproduces "vLLM 0.33 keeps the SSM state in the model's dtype by default (mamba_ssm_cache_dtype auto; vLLM #43301), rounded at every decode step: $id, 64 steps (with --mamba-ssm-cache-dtype float32 the same kernels agree)" \
        | tee -a "$OUT/gpu.txt"
  fi
done
# 5b. The table for docs/external.md (its --prune-cases keeps one case per class in cases/).
first() { find "$E/$1" -name '*.safetensors' 2>/dev/null | sort | head -1; }
"$PY" tools/ecosystem/summarize.py --card "$CARD" --command "bash scripts/gpu_ecosystem.sh (carry .device)" --prune-cases "$OUT/cases" \
    $(for s in $SYSTEMS; do echo "--report $s=$OUT/check_$s.json --versions $s=$(first $s)"; done) \
    > "$OUT/external.md" 2>> "$OUT/gpu.txt"
grep -E "^(softplus|state error)" "$OUT/known_behaviour.txt" | tee -a "$OUT/gpu.txt"
grep -E "^(causal_conv1d|vLLM conv probe)" "$OUT/vllm_conv_probe.txt" | tee -a "$OUT/gpu.txt"
log "table in external.md"

# The device call returns at most 8 files of $OUT (alphabetically first), 16 MiB each: everything
# again as one archive, and the cases alone (sorting first) in case that one is over the limit. Made
# once before the reductions (so a call cut off during them still brings the rest back) and again after.
archive() {
  (cd "$OUT" && tar czf /tmp/mambadiff-cases.tgz $(ls -d cases gpu_only reduced 2>/dev/null)) && mv /tmp/mambadiff-cases.tgz "$OUT/all-cases.tgz"
  tar czf /tmp/mambadiff-all.tgz -C "$OUT" --exclude=./all-cases.tgz --exclude=./all.tgz . && mv /tmp/mambadiff-all.tgz "$OUT/all.tgz"
  log "archives: $(cd "$OUT" && du -h all-cases.tgz all.tgz | tr '\n\t' '  ')"
}
archive

# 6. The GPU-only classes' cases reduced on the card, side by side.
exporter_cmd() {  # BACKEND: the export command reduce runs per candidate ({scenario}, {out} filled in)
  echo "$PY tools/ecosystem/export.py --backend $1 --device $DEVICE --ecosystem $ECO -q {scenario} --out {out}"
}
# Each reduction gets what is left of the call (CALL_BUDGET_S, default 560 of the device's 600 s,
# less 30 s for the table and the archives and 60 s for the candidate in flight when the budget ends:
# reduce finishes it, then writes its best case so far -- on this CPU's interpreter, --max-seconds 200
# wrote after 251 s), at most REDUCE_SECONDS.
reduce_case() {  # LABEL BACKEND
  [ -d "$OUT/gpu_only/$1" ] || return 0
  local left=$(( ${CALL_BUDGET_S:-560} - ($(date +%s) - T0) - 90 )) budget=${REDUCE_SECONDS:-75}
  [ "$left" -lt "$budget" ] && budget=$left
  if [ "$budget" -lt 15 ]; then log "reduce $1: skipped (${left} s left of the call)"; return 0; fi
  timeout $(( budget + 60 )) "$B/mambadiff" reduce "$OUT/gpu_only/$1" -o "$OUT/reduced/$1" \
      --max-seconds "$budget" --exporter "$(exporter_cmd "$2")" > "$OUT/reduce_$1.txt" 2>&1
  log "reduce $1: exit $? in ${budget} s budget -- $(tail -1 "$OUT/reduce_$1.txt")"
}
reduce_case tf32 mamba_ssm &
reduce_case vllm_state vllm &
wait
log "done"
archive

