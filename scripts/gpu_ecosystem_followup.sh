#!/usr/bin/env bash
# One call on the lent GPU machine: the follow-up of issue 12 (docs/external.md, "Follow-up: the three
# unexplained cases"). The CPU analysis there made each case a prediction; this call tests them on the
# card's real kernels, and does what the 09:19 UTC call left:
#  A  mamba-ssm-gpu-second-step-state-unexplained, now mamba-ssm-tf32-prefill-state-in-decode (fuzz input fee798e7): predicted TF32 (truncated
#     operands) in the PREFILL's chunked scan, carried into the decode state (the export holds the
#     cache only after the last op, so it first shows at op 2). Arms: the scenario cut after op 1, 2, 3,
#     each exported with Triton's default fp32 dots and with TRITON_F32_DEFAULT=ieee, each diffed
#     against the float64 reference (predicted: default diverges on cache.ssm_states from op 0 on,
#     5.6e-4 / 5.2e-4 / 3.39e-4; ieee agrees), and the default 3-op export against the stored one.
#  B  mamba-ssm-ieee-fastdecay-state-unexplained, now mamba-ssm-padded-chunk-decay-cumsum: predicted mamba_ssm's _chunk_state_fwd reading the
#     chunk's cumsum of dt*A at position chunk_size-1 (a padded position when the last chunk is
#     partial), which the card's parallel tl.cumsum associates differently from the last real
#     token's: exp(-1 ulp of |sum dt*A|) on a head's whole final state. Arms: capture the scan's
#     inputs and the card's dA_cumsum, `kernel_arms.py cumsum-verdict` (EXPLAINED when every head's
#     measured factor is the predicted one); the fix arm (--pad-cumsum) diffed (predicted AGREE); the
#     matrix's fastdecay fp32 cases under ieee with and without the fix (predicted: the 09:19 call's
#     fastdecay cache-state divergences gone with it).
#  C  mamba-ssm-bf16-continue-layer1-margin: reproduced on the CPU (real kernels, bf16 dots fixed);
#     predicted: not GPU-specific, a sum of bf16 roundings (HF's torch conv fallback rounding twice,
#     the kernels'), amplified at a token where layer 0's output nearly cancels. Arms: the export
#     again, with the textbook conv (--conv textbook: predicted AGREE, ~0.75 of tolerance), with
#     causal-conv1d's CUDA conv (one rounding, like the textbook one), and the stand-in (~0.12).
#  ii `mambadiff reduce --exporter` of the three cases on the card, in parallel, bounded.
#  iii mamba_ssm_cc: the check matrix through mamba_ssm with causal-conv1d 1.7.0 built here (the
#     backend's conv-layout fix: `tiny` should now error as hf_fast_cc did), check --external.
#  iv vLLM's bf16 state end to end: a 512-step repeated-token decode on a slow-decaying copy of `tiny`
#     (tools/ecosystem/slow_decay_decode.py), vLLM with its default state and with a float32 one.
# Run on an H200 2026-12-02 12:09 UTC: every prediction confirmed (docs/external.md, Follow-up).
# Writes $OUT/followup.txt (the log: every verdict line) and $OUT/followup.tgz (everything).
#
# Needs in the tree: .device/ecosystem (as scripts/gpu_ecosystem.sh) and .devbin/mambadiff (a build
# of this branch; MAMBADIFF=<path> overrides). The lead's call:
#   run(command="bash scripts/gpu_ecosystem_followup.sh", carry=[".device", ".devbin"], timeout_s=600)
# Budget: CALL_BUDGET_S (default 480 s) bounds the reductions (REDUCE_SECONDS each, default 150) and
# the causal-conv1d matrix export; the arms themselves are small (a few exports of tiny models).
# CPU dry run (Triton's interpreter; bf16 through tools/ecosystem/emulate_card.py --bf16-dots):
#   ECO_DEVICE=cpu MAMBADIFF=/tmp/bu/mambadiff PYTHON=~/.cache/mambadiff/ecosystem-venv/bin/python \
#   REDUCE_SECONDS=20 CHECK_SCENARIO=prefill_15 SLOW_DECAY_STEPS=4 OUT=/tmp/fu bash scripts/gpu_ecosystem_followup.sh
set -uo pipefail
PY=${PYTHON:-python3}
: "${OUT:?set OUT to the folder that comes back}"
T0=$(date +%s)
W=/tmp/mambadiff-followup; rm -rf "$W"; mkdir -p "$W/res"
R="$W/res"
log() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/followup.txt"; }
TL=$("$PY" -c 'import torch,os;print(os.path.dirname(torch.__file__))')
export LD_LIBRARY_PATH="$TL/lib:$TL/../nvidia/cu13/lib:${LD_LIBRARY_PATH:-}"
MD=${MAMBADIFF:-$PWD/.devbin/mambadiff}
ECO="$PWD/.device/ecosystem"
DEVICE=${ECO_DEVICE:-cuda}
BUDGET=${CALL_BUDGET_S:-480}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/mambadiff-triton-cache}
export MAMBA_DETERMINISTIC=1 VLLM_TRITON_FORCE_FIRST_CONFIG=1 PYTHONWARNINGS=ignore
RUNPY=("$PY")  # on the CPU: the interpreter, with bf16 dots fixed so that case C's bf16 runs
if [ "$DEVICE" = cpu ]; then
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
  RUNPY=("$PY" tools/ecosystem/emulate_card.py --bf16-dots --)
fi
for f in "$MD" "$ECO/VERSIONS.json"; do
  [ -e "$f" ] || { echo "gpu_ecosystem_followup.sh: no $f (carry .devbin and .device)" >&2; exit 2; }
done
CARD=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
log "card: ${CARD:-no GPU (Triton interpreter)}; $(date -u); mambadiff $("$MD" --help >/dev/null 2>&1 && echo runs || echo 'DOES NOT RUN')"
log "python: $("$PY" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' 2>&1 | tail -1)"
EXP=(tools/ecosystem/export.py --device "$DEVICE" --ecosystem "$ECO" -q)
ARMS=tools/ecosystem/kernel_arms.py
export_one() {  # NAME SCENARIO BACKEND [kernel_arms run options...]: one export, $R/NAME.safetensors
  local name=$1 scen=$2 backend=$3; shift 3
  timeout 200 "${RUNPY[@]}" "$ARMS" run "$@" -- "${EXP[@]}" --backend "$backend" "$scen" --out "$R/$name.safetensors" \
      > "$R/$name.export.txt" 2>&1 || echo "export exit $?" >> "$R/$name.export.txt"
}
verdict() {  # NAME SCENARIO PREDICTION: diff against the float64 reference, one log line
  local name=$1 scen=$2 pred=$3
  if [ ! -f "$R/$name.safetensors" ]; then
    log "$name: NO EXPORT ($(grep -v '^ ' "$R/$name.export.txt" 2>/dev/null | tail -1 | cut -c1-160)) [predicted: $pred]"; return
  fi
  "$MD" diff "$scen" --paths "reference,file:$R/$name.safetensors" --json "$R/$name.diff.json" > "$R/$name.diff.txt" 2>&1
  log "$name: $(tail -1 "$R/$name.diff.txt" | cut -c1-200) [predicted: $pred]"
}

# 0. causal-conv1d for this card, in the background (54 s in the 09:19 call).
CCD=/tmp/mambadiff-causal-conv1d CCD_PID=""
if [ "$DEVICE" = cuda ]; then
  ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')
  ( PATH="$ECO/bin:$PATH" MAX_JOBS=4 timeout 240 "$PY" tools/ecosystem/build_causal_conv1d.py \
      --sdist "$(ls "$ECO"/causal_conv1d-*.tar.gz 2>/dev/null | head -1)" --dest "$CCD" --arch "${ARCH:-90}" \
      > "$R/causal_conv1d_build.txt" 2>&1; echo "exit $? after $(( $(date +%s) - T0 )) s" >> "$R/causal_conv1d_build.txt" ) &
  CCD_PID=$!
fi

# Scenarios: the matrix (for iii and B's fastdecay arm), the cases' prefixes, the slow decay.
S=$W/scenarios; E=$W/exports
SCEN_FILTER=(); [ -n "${CHECK_SCENARIO:-}" ] && SCEN_FILTER=(--scenario "$CHECK_SCENARIO")
"$MD" check --emit-scenarios "$S" "${SCEN_FILTER[@]}" > "$R/emit.txt" 2>&1
CA=corpus/regressions/mamba-ssm-tf32-prefill-state-in-decode
CB=corpus/regressions/mamba-ssm-padded-chunk-decay-cumsum
CASE_C=corpus/regressions/mamba-ssm-bf16-continue-layer1-margin  # not CC: the card exports CC (the C compiler Triton runs)
"$PY" "$ARMS" prefixes "$CA/scenario.json" "$W/A" > /dev/null
STEPS=${SLOW_DECAY_STEPS:-512}
"$PY" tools/ecosystem/slow_decay_decode.py --base corpus/models/tiny --out "$W/D" --steps "$STEPS" > /dev/null
SD="$W/D/slowdecay/bfloat16_repeat$STEPS.json"
log "scenarios: matrix $(find "$S" -name '*.json' ! -name manifest.json | wc -l), A prefixes $(ls "$W/A" | wc -l), slow decay $SD"

# A: TF32 in the prefill, op by op; default dots and IEEE dots.
arm_A() {
  for n in 1 2 3; do export_one "A_tf32_ops$n" "$W/A/ops$n.json" mamba_ssm; done &
  for n in 1 2 3; do
    TRITON_F32_DEFAULT=ieee TRITON_CACHE_DIR=$TRITON_CACHE_DIR-ieee export_one "A_ieee_ops$n" "$W/A/ops$n.json" mamba_ssm
  done
  wait
}
# B: the cumsum at the padded end of a partial chunk (all under IEEE dots: no TF32 in the way).
arm_B() {
  export TRITON_F32_DEFAULT=ieee TRITON_CACHE_DIR=$TRITON_CACHE_DIR-ieee
  export_one B_ieee "$CB/scenario.json" mamba_ssm --capture "$R/B_capture.pt"
  export_one B_ieee_padcumsum "$CB/scenario.json" mamba_ssm --pad-cumsum
  for v in plain pad; do
    local opt=(); [ "$v" = pad ] && opt=(--pad-cumsum)
    if [ -d "$S/fastdecay" ]; then
      mkdir -p "$E/B_$v/fastdecay"
      timeout 200 "${RUNPY[@]}" "$ARMS" run "${opt[@]}" -- "${EXP[@]}" --backend mamba_ssm --all "$S/fastdecay" --dtypes float32 \
          --out-dir "$E/B_$v/fastdecay" > "$R/B_matrix_$v.export.txt" 2>&1 &
    fi
  done
  wait
}
# C: the bf16 margin with each conv.
arm_C() {
  export_one C_mamba_ssm "$CASE_C/scenario.json" mamba_ssm
  export_one C_textbook_conv "$CASE_C/scenario.json" mamba_ssm --conv textbook
  timeout 100 "$PY" "${EXP[@]}" --backend stand_in "$CASE_C/scenario.json" --out "$R/C_stand_in.safetensors" > "$R/C_stand_in.export.txt" 2>&1
}
# iv: vLLM's state dtype on the slow decay.
arm_D() {
  export_one D_vllm_default "$SD" vllm
  MAMBADIFF_VLLM_SSM_CACHE_DTYPE=float32 export_one D_vllm_state32 "$SD" vllm
}
arm_A & PA=$!
arm_B & PB=$!
arm_C & PC=$!
arm_D & PD=$!

# ii: the three reductions, in parallel, while the arms run (their exporters are the case's own).
reduce_case() {  # LABEL CASE EXPORTER...
  local label=$1 case=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - T0) - 120 )) budget=${REDUCE_SECONDS:-150}
  [ "$left" -lt "$budget" ] && budget=$left
  if [ "$budget" -lt 15 ]; then log "reduce $label: skipped (${left} s left)"; return; fi
  timeout $(( budget + 90 )) "$MD" reduce "$case" -o "$R/reduced/$label" --max-seconds "$budget" --exporter "$*" \
      > "$R/reduce_$label.txt" 2>&1
  log "reduce $label: exit $? (budget ${budget} s) -- $(tail -1 "$R/reduce_$label.txt" | cut -c1-220)"
}
EXPC="${RUNPY[*]} tools/ecosystem/export.py --backend mamba_ssm --device $DEVICE --ecosystem $ECO -q {scenario} --out {out}"
mkdir -p "$R/reduced"
reduce_case A_fee798e7_tf32 "$CA" "$EXPC" &
reduce_case B_fastdecay_ieee "$CB" "env TRITON_F32_DEFAULT=ieee TRITON_CACHE_DIR=$TRITON_CACHE_DIR-ieee $EXPC" &
reduce_case C_bf16_margin "$CASE_C" "$EXPC" &

# iii: causal-conv1d's matrix (and case C with it) once the build is done, in the background.
arm_cc() {
  if [ -z "$CCD_PID" ]; then log "iii mamba_ssm_cc: not run (device $DEVICE)"; return; fi
  while kill -0 "$CCD_PID" 2>/dev/null; do sleep 2; done
  log "$(grep -E '^causal_conv1d:' "$R/causal_conv1d_build.txt" | tail -1 || echo 'causal_conv1d: no result line')"
  grep -q "^causal_conv1d: built" "$R/causal_conv1d_build.txt" || return
  local left=$(( BUDGET - ($(date +%s) - T0) - 60 )); [ "$left" -gt 240 ] && left=240
  (export PYTHONPATH="$CCD${PYTHONPATH:+:$PYTHONPATH}"
   export_one C_causal_conv1d "$CASE_C/scenario.json" mamba_ssm
   timeout "$left" "$PY" "${EXP[@]}" --backend mamba_ssm --all "$S" --out-dir "$E/mamba_ssm_cc" > "$R/export_mamba_ssm_cc.txt" 2>&1
   echo "exit $? after $(( $(date +%s) - T0 )) s" >> "$R/export_mamba_ssm_cc.txt")
  verdict C_causal_conv1d "$CASE_C/scenario.json" "AGREE if causal-conv1d rounds once"
  "$MD" check --external "mamba_ssm_cc=$E/mamba_ssm_cc" "${SCEN_FILTER[@]}" --json "$R/check_mamba_ssm_cc.json" \
      --cases-dir "$R/cases_mamba_ssm_cc" > "$R/check_mamba_ssm_cc.txt" 2>&1
  log "iii check --external mamba_ssm_cc: exit $? -- $(tail -1 "$R/check_mamba_ssm_cc.txt")"
  log "iii mamba_ssm_cc errors (tiny expected: channel-last stride): $(find "$E/mamba_ssm_cc" -name '*.error' | sed "s|$E/mamba_ssm_cc/||" | tr '\n' ' ' | cut -c1-400)"
  local first; first=$(find "$E/mamba_ssm_cc" -name '*.safetensors' 2>/dev/null | sort | head -1)
  "$PY" tools/ecosystem/summarize.py --card "${CARD:-?}" --command "bash scripts/gpu_ecosystem_followup.sh (carry .device .devbin)" \
      --report "mamba_ssm_cc=$R/check_mamba_ssm_cc.json" --versions "mamba_ssm_cc=$first" > "$R/external_mamba_ssm_cc.md" 2>> "$R/summarize.txt"
}
arm_cc &

wait $PA $PB $PC $PD
log "arms done"
for n in 1 2 3; do
  verdict "A_tf32_ops$n" "$W/A/ops$n.json" "DIVERGE cache.ssm_states at op $((n-1)) ($(echo '5.6e-4 5.2e-4 3.39e-4' | cut -d' ' -f$n))"
  verdict "A_ieee_ops$n" "$W/A/ops$n.json" "AGREE"
done
[ -f "$R/A_tf32_ops3.safetensors" ] && "$PY" "$ARMS" compare "$R/A_tf32_ops3.safetensors" "$CA/mamba-ssm-2.3.2-h200-step2.safetensors" \
    > "$R/A_compare_stored.txt" 2>&1 && log "A: this call's 3-op TF32 export vs the stored card export: $(grep -E 'ssm_states|^compare' "$R/A_compare_stored.txt" | cut -c1-90 | tr '\n' ' ')"
verdict B_ieee "$CB/scenario.json" "DIVERGE cache.ssm_states op 4 layer 0 (5.2e-6 in the 09:19 call)"
verdict B_ieee_padcumsum "$CB/scenario.json" "AGREE"
if [ -f "$R/B_capture.pt" ]; then
  "$PY" "$ARMS" cumsum-verdict "$R/B_capture.pt" > "$R/B_cumsum_verdict.txt" 2>&1
  log "B: $(tail -1 "$R/B_cumsum_verdict.txt") [predicted: EXPLAINED]"
  log "B: $(grep -c 'PTX' "$R/B_cumsum_verdict.txt") scans; the PTX's scan order vs the card's dA_cumsum: $(grep -o '[0-9]*/[0-9]* chunk rows bit-identical' "$R/B_cumsum_verdict.txt" | tr '\n' ' ') [predicted: all rows]"
fi
for v in plain pad; do
  if [ -d "$E/B_$v/fastdecay" ]; then
    # (check has no model filter: the other models' rows are "skipped: no export")
    "$MD" check --external "B_$v=$E/B_$v" "${SCEN_FILTER[@]}" --dtypes float32 --json "$R/B_check_$v.json" \
        > "$R/B_check_$v.txt" 2>&1
    log "B fastdecay fp32 under ieee, $v: $(tail -1 "$R/B_check_$v.txt") [predicted: $([ $v = pad ] && echo 'no cache.ssm_states divergence' || echo 'some cache.ssm_states divergences')]"
    grep -E "^fastdecay|fastdecay/" "$R/B_check_$v.txt" | grep -iv "skipped" | head -12 | tee -a "$OUT/followup.txt"
  fi
done
verdict C_mamba_ssm "$CASE_C/scenario.json" "DIVERGE op 4 token 3 layer 1 layer_output (~1.4x)"
verdict C_textbook_conv "$CASE_C/scenario.json" "AGREE (~0.75 of tolerance)"
verdict C_stand_in "$CASE_C/scenario.json" "AGREE (~0.12 of tolerance)"
verdict D_vllm_default "$SD" "DIVERGE (bf16 state)"
verdict D_vllm_state32 "$SD" "AGREE (float32 state)"
"$MD" run "$SD" --path reference --out "$R/D_reference.safetensors" > /dev/null 2>&1
for a in D_vllm_default D_vllm_state32; do
  [ -f "$R/$a.safetensors" ] || continue
  log "$a final cache vs reference: $("$PY" "$ARMS" compare "$R/$a.safetensors" "$R/D_reference.safetensors" | grep -E "cache.ssm|op.$STEPS.logits" | awk '{print $1, $3}' | tr '\n' ' ') [predicted: the default state's ~20x the float32 one's]"
done
archive() { tar czf "$W/followup.tgz" -C "$W" res A D && mv "$W/followup.tgz" "$OUT/followup.tgz" && log "archive: $(du -h "$OUT/followup.tgz" | cut -f1)"; }
archive  # once now (a call cut off later still brings the arms back), again at the end
wait
log "done"
archive
