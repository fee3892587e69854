#!/usr/bin/env python3
"""The markdown table of docs/external.md from `mambadiff check --external NAME=DIR --json F` reports:
per system, scenario class and dtype, the cases run, agree, diverge, error and skipped, and the
worst logits error over its tolerance (with the case), plus the card, date, versions and command.

  summarize.py --report NAME=check.json [--report ...] [--versions NAME=EXPORT.safetensors ...]
               [--card TEXT] [--command TEXT] [--prune-cases DIR] > table.md

--prune-cases DIR: DIR/NAME/ holds the cases `check --cases-dir` wrote for NAME, one per diverging
case (each with a copy of the export: megabytes over a whole matrix); keep one per class --
(scenario class, dtype, the tensor it first parts on) -- the smallest, with expected "diverge" (as
corpus/regressions/ asserts; `repro` replays it), and list every diverging case with the one kept
for it in DIR/NAME/INDEX.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shutil
import sys
from collections import defaultdict
from pathlib import Path


DETAIL = re.compile(r"(?P<tensor>[\w.]+) error (?P<err>[-+.\deinf]+) > tolerance (?P<tol>[-+.\deinf]+)")


def scenario_class(name: str) -> str:
    """harness/check_suite.cpp scenario_class: no dtype prefix, no trailing length or layer."""
    s = name[5:] if name.startswith(("bf16_", "fp16_")) else name
    s = re.sub(r"_?\d+$", "", s)
    return s[:-6] if s.endswith("_layer") else s


def case_dir_name(text: str) -> str:
    """harness/divergence_case.h case_dir_name: letters, digits, '-', '_', '.'; anything else '_'."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def prune_cases(root: Path, name: str, cases: list[dict]) -> None:
    d = root / name
    if not d.is_dir():
        return
    groups = defaultdict(list)
    for c in cases:
        if c["verdict"] != "diverge":
            continue
        m = DETAIL.search(c["detail"] or "")
        case = d / case_dir_name(f"{c['model']}.{c['scenario']}.reference.{name}")
        if case.is_dir():
            size = sum(f.stat().st_size for f in case.rglob("*") if f.is_file())
            groups[(scenario_class(c["scenario"]), c["dtype"], m["tensor"] if m else "?")].append((size, case, c))
    lines = ["| class | dtype | tensor | kept | also diverging |", "|---|---|---|---|---|"]
    for (cls, dtype, tensor), members in sorted(groups.items()):
        members.sort(key=lambda x: x[0])
        keep = members[0][1]
        for _, case, _ in members[1:]:
            shutil.rmtree(case)
        # What corpus/regressions/ asserts of it: that it diverges (`repro` then says REPRODUCED);
        # its "reproduces" line, naming the public report, is the reader's to add.
        doc = json.loads((keep / "case.json").read_text())
        doc["expected"] = "diverge"
        (keep / "case.json").write_text(json.dumps(doc, indent=1) + "\n")
        lines.append(f"| {cls} | {dtype} | {tensor} | {keep.name} | {', '.join(c['model'] + '/' + c['scenario'] for _, _, c in members[1:]) or '-'} |")
    (d / "INDEX.md").write_text("\n".join(lines) + "\n")


def versions_of(export: str) -> str:
    from safetensors import safe_open

    with safe_open(export, "pt") as f:
        m = f.metadata() or {}
    v = json.loads(m.get("versions", "{}"))
    return ", ".join(f"{k} {v[k]}" for k in sorted(v))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--report", action="append", required=True, metavar="NAME=check.json")
    ap.add_argument("--versions", action="append", default=[], metavar="NAME=EXPORT.safetensors")
    ap.add_argument("--card", default="?")
    ap.add_argument("--command", default="scripts/gpu_ecosystem.sh")
    ap.add_argument("--prune-cases", type=Path, default=None)
    args = ap.parse_args(argv)
    versions = {}
    for spec in args.versions:
        name, _, f = spec.partition("=")
        try:
            versions[name] = versions_of(f)
        except Exception as e:  # noqa: BLE001 (a missing export: say so in the table)
            versions[name] = f"? ({type(e).__name__})"
    print(f"Card: {args.card}. Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. "
          f"Command: `{args.command}`.\n")
    for spec in args.report:
        name, _, path = spec.partition("=")
        try:
            cases = json.load(open(path))["cases"]
        except (OSError, ValueError, KeyError) as e:
            print(f"**{name}**: no report ({path}: {type(e).__name__})\n")
            continue
        if args.prune_cases is not None:
            prune_cases(args.prune_cases, name, cases)
        print(f"**{name}** ({versions.get(name, 'versions: see the exports metadata')})\n")
        print("| class | dtype | run | agree | diverge | error | skipped | worst error / tolerance (case, tensor) |")
        print("|---|---|---|---|---|---|---|---|")
        groups = defaultdict(list)
        for c in cases:
            groups[(scenario_class(c["scenario"]), c["dtype"])].append(c)
        for (cls, dtype), cs in sorted(groups.items()):
            n = {v: sum(c["verdict"] == v for c in cs) for v in ("agree", "diverge", "error", "skipped")}
            worst = None  # (ratio, error, tolerance, case, tensor)
            for c in cs:
                if c["verdict"] not in ("agree", "diverge"):
                    continue
                # A divergence's own error and tolerance (its detail names the tensor: a layer
                # output or a cache state may part before the logits do); else the logits'.
                m = DETAIL.search(c["detail"] or "")
                err, tol, tensor = ((float(m["err"]), float(m["tol"]), m["tensor"]) if m and c["verdict"] == "diverge"
                                    else (c["error"], c["tolerance"], "logits"))
                ratio = err / tol if tol > 0 else float("inf")
                if worst is None or ratio > worst[0]:
                    worst = (ratio, err, tol, f"{c['model']}/{c['scenario']}", tensor)
            w = (f"{worst[1]:.3g} / {worst[2]:.3g} = {worst[0]:.3g} ({worst[3]}, {worst[4]})" if worst else "-")
            print(f"| {cls} | {dtype} | {len(cs) - n['skipped']} | {n['agree']} | {n['diverge']} | {n['error']} | "
                  f"{n['skipped']} | {w} |")
        firsts = sorted({(c["model"], c["scenario"], c["detail"]) for c in cases if c["verdict"] in ("diverge", "error")})
        if firsts:
            print(f"\nFirst divergences ({len(firsts)}):\n")
            for m, s, d in firsts[:40]:
                print(f"* {m}/{s}: {d}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
