#!/usr/bin/env python3
"""Keep one divergence case of a GPU-only class, told apart by a control arm, ready for
corpus/regressions/ and for `mambadiff reduce`.

  pick_class_cases.py --cases DIR --report NAME=check.json [--report ...] \
      --pick LABEL:SYSTEM:CONTROL:DTYPES:REPRODUCES [--pick ...] --out DIR

A class is what changes between SYSTEM and its CONTROL arm (the same kernels with one setting
changed): a case of it diverges in SYSTEM's report and agrees in CONTROL's, in one of DTYPES
(comma-separated). scripts/gpu_ecosystem.sh picks
  tf32          mamba_ssm vs mamba_ssm_ieee (TRITON_F32_DEFAULT=ieee), float32: Triton's TF32 dots;
  vllm_state    vllm vs vllm_state32 (MAMBADIFF_VLLM_SSM_CACHE_DTYPE=float32), bfloat16/float16:
                vLLM's SSM state kept in the model's dtype (vLLM #43301).
For each, the smallest such case folder `check --external ... --cases-dir DIR` wrote
(DIR/SYSTEM/<model>.<scenario>.reference.SYSTEM, export copied beside it) is copied to OUT/LABEL
with case.json's "expected" set to "diverge" and "reproduces" to REPRODUCES (what corpus/regressions/
requires; `repro` replays it on any CPU). Run it before summarize.py --prune-cases, which deletes
all but one case per class. One line per pick: what was kept, or why nothing was.

  pick_class_cases.py --keep CASE_DIR --as DIR --reproduces TEXT

keeps one given case the same way (a `mambadiff diff --case-out` case: the script's long vLLM decode).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from summarize import case_dir_name


def load(spec: str) -> tuple[str, dict]:
    name, _, path = spec.partition("=")
    try:
        cases = json.loads(Path(path).read_text())["cases"]
    except (OSError, ValueError, KeyError):
        return name, {}
    return name, {(c["model"], c["scenario"]): c for c in cases}


def keep(case: Path, dest: Path, reproduces: str) -> None:
    """CASE copied to DEST with expected "diverge" and a "reproduces" line (corpus/regressions/'s form)."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(case, dest)
    doc = json.loads((dest / "case.json").read_text())
    doc["expected"] = "diverge"
    ordered = {"format": doc.pop("format"), "reproduces": reproduces,
               **{k: v for k, v in doc.items() if k != "reproduces"}}
    (dest / "case.json").write_text(json.dumps(ordered, indent=1) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=Path)
    ap.add_argument("--report", action="append", default=[], metavar="NAME=check.json")
    ap.add_argument("--pick", action="append", default=[], metavar="LABEL:SYSTEM:CONTROL:DTYPES:REPRODUCES")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--keep", type=Path, metavar="CASE_DIR")
    ap.add_argument("--as", dest="keep_as", type=Path, metavar="DIR")
    ap.add_argument("--reproduces", default="")
    args = ap.parse_args(argv)
    if args.keep is not None:
        if args.keep_as is None or not args.reproduces or not (args.keep / "case.json").is_file():
            ap.error("--keep CASE_DIR (holding case.json) needs --as DIR and --reproduces TEXT")
        keep(args.keep, args.keep_as, args.reproduces)
        print(f"kept {args.keep} as {args.keep_as}")
        return 0
    if args.cases is None or args.out is None or not args.pick or not args.report:
        ap.error("--cases, --report, --pick and --out (or --keep)")
    reports = dict(load(r) for r in args.report)
    for spec in args.pick:
        parts = spec.split(":", 4)
        if len(parts) != 5:
            ap.error(f"--pick {spec!r}: expected LABEL:SYSTEM:CONTROL:DTYPES:REPRODUCES")
        label, system, control, dtypes, reproduces = parts
        sys_cases, ctl_cases = reports.get(system, {}), reports.get(control, {})
        if not sys_cases or not ctl_cases:
            print(f"{label}: nothing kept (no report for {system if not sys_cases else control})")
            continue
        found = []
        for key, c in sys_cases.items():
            ctl = ctl_cases.get(key)
            if c["verdict"] != "diverge" or c["dtype"] not in dtypes.split(",") or not ctl or ctl["verdict"] != "agree":
                continue
            case = args.cases / system / case_dir_name(f"{c['model']}.{c['scenario']}.reference.{system}")
            if case.is_dir():
                found.append((sum(f.stat().st_size for f in case.rglob("*") if f.is_file()), case, c))
        if not found:
            print(f"{label}: nothing kept (no {dtypes} case diverges in {system} and agrees in {control})")
            continue
        found.sort(key=lambda x: (x[0], str(x[1])))
        _, case, c = found[0]
        dest = args.out / label
        keep(case, dest, f"{reproduces} ({c['model']}/{c['scenario']}, {c['dtype']}: {c['detail']})")
        print(f"{label}: kept {c['model']}/{c['scenario']} ({c['dtype']}; {len(found)} cases of the class; "
              f"{c['detail']}) as {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
