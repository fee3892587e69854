#!/usr/bin/env python3
"""Compare other systems' exports of the model_script fuzz corpus with mambadiff's reference and
collect the divergences as findings, deduplicated the way `mambadiff fuzz` deduplicates campaign
findings (harness/fuzz_campaign.cpp): by the numeric signature `model_script|op:kind|layer|tensor|branch`
that the model_script target prints (fuzz/model_script.cpp), one finding per (system, signature),
kept for the first input in sorted order, in OUT/findings/<system>-<short_hash(signature)>/.

  replay_corpus.py --scenarios DIR --export NAME=DIR [--export NAME=DIR] --mambadiff BIN --out OUT

DIR/<input hash>/scenario.json (+ model/) is what `MAMBADIFF_FUZZ_SCENARIO_DIR=DIR
fuzz_replay model_script corpus/fuzz/model_script` writes; an export is EXPORT/<input hash>/scenario.safetensors
(or .skipped / .error, tools/ecosystem/export.py --all). Writes OUT/summary.json and prints one line
per system. Exit 0 when it ran (divergences are findings, reported), 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def short_hash(s: str) -> str:
    """harness/fuzz_campaign.cpp short_hash: FNV-1a 64 folded to 32 bits, 8 hex digits."""
    h = 1469598103934665603
    for ch in s.encode():
        h = ((h ^ ch) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return f"{(h ^ (h >> 32)) & 0xFFFFFFFF:08x}"


def branch_at(ops: list[dict], op_index: int) -> str:
    """The branch mambadiff dispatches op `op_index` at (SPEC §3), or '-' for an op that is not a forward."""
    offset, snapshots = 0, {}
    for i, op in enumerate(ops):
        kind = op["op"]
        if kind == "forward":
            T = len(op["tokens"][0])
            branch = "prefill" if offset == 0 else ("step" if T == 1 else "continue")
            if i == op_index:
                return branch
            offset += T
        elif kind == "snapshot":
            snapshots[op["name"]] = offset
        elif kind == "restore":
            offset = snapshots[op["name"]]
        elif kind == "reset":
            offset = 0
        if i == op_index:
            return "-"
    return "-"


def signature(scenario: dict, d: dict) -> str:
    op = d["op"]
    kind = scenario["ops"][op]["op"] if op < len(scenario["ops"]) else "?"
    layer = "-" if d.get("layer") is None or d["layer"] < 0 else str(d["layer"])
    return f"model_script|{op}:{kind}|{layer}|{d['tensor']}|{branch_at(scenario['ops'], op)}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", type=Path, required=True)
    ap.add_argument("--export", action="append", required=True, metavar="NAME=DIR")
    ap.add_argument("--mambadiff", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    systems = []
    for spec in args.export:
        name, _, d = spec.partition("=")
        if not name or not Path(d).is_dir():
            print(f"replay_corpus: --export '{spec}': expected NAME=DIR with an existing DIR", file=sys.stderr)
            return 2
        systems.append((name, Path(d)))
    inputs = sorted(p.parent for p in args.scenarios.glob("*/scenario.json"))
    if not inputs:
        print(f"replay_corpus: --scenarios {args.scenarios}: no <hash>/scenario.json", file=sys.stderr)
        return 2
    (args.out / "findings").mkdir(parents=True, exist_ok=True)
    summary = {"inputs": len(inputs), "systems": {}}
    for name, export_dir in systems:
        counts = {"agree": 0, "diverge": 0, "error": 0, "skipped": 0}
        findings: dict[str, dict] = {}
        for inp in inputs:
            scen_file = inp / "scenario.json"
            stem = export_dir / inp.name / "scenario"
            export = stem.with_suffix(".safetensors")
            if not export.is_file():
                for marker, verdict in ((".error", "error"), (".skipped", "skipped")):
                    if stem.with_suffix(marker).is_file():
                        counts[verdict] += 1
                        break
                else:
                    counts["skipped"] += 1
                continue
            report = args.out / ".work" / name / f"{inp.name}.json"
            report.parent.mkdir(parents=True, exist_ok=True)
            r = subprocess.run([str(args.mambadiff), "diff", str(scen_file), "--paths", f"reference,file:{export}",
                                "--json", str(report)], capture_output=True, text=True)
            if r.returncode == 0:
                counts["agree"] += 1
                continue
            if r.returncode != 1:
                counts["error"] += 1
                print(f"{name} {inp.name}: diff exit {r.returncode}: {r.stderr.strip()[:200]}", file=sys.stderr)
                continue
            counts["diverge"] += 1
            d = json.loads(report.read_text())["first_divergence"]
            sig = signature(json.loads(scen_file.read_text()), d)
            if sig in findings:
                findings[sig]["inputs"] += 1
                continue
            fdir = args.out / "findings" / f"{name}-{short_hash(sig)}"
            subprocess.run([str(args.mambadiff), "diff", str(scen_file), "--paths", f"reference,file:{export}",
                            "--case-out", str(fdir / "case")], capture_output=True, text=True)
            findings[sig] = {"system": name, "signature": sig, "input": inp.name, "inputs": 1,
                             "first_divergence": d, "case": str(fdir / "case")}
            (fdir / "finding.json").write_text(json.dumps(findings[sig], indent=1) + "\n")
        for f in findings.values():  # the count of inputs per finding is known only at the end
            (args.out / "findings" / f"{name}-{short_hash(f['signature'])}" / "finding.json").write_text(
                json.dumps(f, indent=1) + "\n")
        summary["systems"][name] = {**counts, "distinct_findings": len(findings), "findings": list(findings.values())}
        print(f"{name}: {len(inputs)} corpus inputs: {counts['agree']} agree, {counts['diverge']} diverge "
              f"({len(findings)} distinct signatures), {counts['error']} error, {counts['skipped']} skipped")
        for f in findings.values():
            print(f"  {f['signature']}  ({f['inputs']} inputs; first {f['input']})")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
