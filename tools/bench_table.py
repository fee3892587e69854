#!/usr/bin/env python3
"""Merge one run's benchmark outputs into the side-by-side table of docs/bench.md (issue 11 item 3):
our figure (`mambadiff bench --json`), mamba_ssm's and vLLM's (tools/bench_peers.py), the best peer,
our speed-up over it, issue 11's goal and whether it is met; HF's eager decode and the functional
optimizer loop (shared/anchors/hf_decode_and_functional_optimizer.py's printed lines) beside our
decode and optimizer step; then every row of ours with its spread and fraction of the measured peak.

  tools/bench_table.py --bench bench.json [--peers peers.json] [--anchors anchors.txt]
                       [--command "LINE"]... [--out bench.md]

Missing inputs are cells of "—" (and a goal against a missing peer is "unknown", never met).
Bad input (a file that does not exist or is not the JSON expected) is exit 2 with one line naming it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

# Issue 11's goals, one per row of the side-by-side table. kind: "speedup" (best peer's median ÷
# ours >= value), "max_ms" (our median <= value), "copy_fraction" (our GB/s ÷ bench's measured copy
# bandwidth >= value). `peer` rows of decode/optimize compare with the anchors' figure instead.
ROWS = [
    dict(label="chunk scan b8 L8192 h80 p64 g1 n128, bf16, chunk 256", what="scan", shape="b8 L8192 h80 p64 g1 n128",
         kind="speedup", value=1.5, goal="≥ 1.5× the best peer (aim 2.5×)"),
    dict(label="chunk scan b4 L4096 h64 p64 g8 n128", what="scan", shape="b4 L4096 h64 p64 g8 n128",
         kind="speedup", value=1.0, goal="≥ 1.0× (on par)"),
    dict(label="chunk scan b1 L2048 h24 p64 g1 n128", what="scan", shape="b1 L2048 h24 p64 g1 n128",
         kind="speedup", value=1.0, goal="≥ 1.0× (on par)"),
    dict(label="state update b1 h80 p64 n128, fp32 state", what="state-update", shape="b1 h80 p64 g1 n128",
         kind="max_ms", value=0.010, goal="≤ 10 µs"),
    dict(label="state update b64 h80 p64 n128, fp32 state", what="state-update", shape="b64 h80 p64 g1 n128",
         kind="copy_fraction", value=0.90, goal="≥ 90% of the measured copy bandwidth"),
    dict(label="whole-model decode, 130m shape, fp32, per token", what="decode", shape=None,
         kind="max_ms", value=0.3, goal="≤ 0.3 ms", anchor="hf_decode", anchor_name="HF eager decode"),
    dict(label="optimizer step, 130m shape, Δ at layer 16", what="optimize", shape=None,
         kind="max_ms", value=0.5, goal="≤ 0.5 ms", anchor="functional_loop", anchor_name="functional PyTorch loop"),
]
PEERS = ("mamba_ssm", "vllm")
PEER_NAMES = {"mamba_ssm": "mamba_ssm", "vllm": "vLLM"}
# The anchor script's two result lines (shared/anchors/hf_decode_and_functional_optimizer.py).
ANCHOR_LINES = {
    "hf_decode": re.compile(r"HF eager decode step.*: median ([0-9.]+) ms"),
    "functional_loop": re.compile(r"functional optimizer iteration.*: median ([0-9.]+) ms"),
}
DASH = "—"


class BadInput(Exception):
    pass


def load_json(path: Path, fmt: str) -> dict:
    try:
        j = json.loads(path.read_text())
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(f"{path}: not JSON ({str(e).splitlines()[0]})")
    if not isinstance(j, dict) or j.get("format") != fmt or not isinstance(j.get("results"), list):
        raise BadInput(f"{path}: not a {fmt} report (no \"format\": \"{fmt}\" with a \"results\" list)")
    for i, r in enumerate(j["results"]):
        if not isinstance(r, dict) or not isinstance(r.get("median_ms"), (int, float)) or not isinstance(r.get("what"), str):
            raise BadInput(f"{path}: results[{i}]: no \"what\" and numeric \"median_ms\"")
    return j


def parse_anchors(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise BadInput(f"{path}: {e.strerror or e}")
    found = {}
    for key, rx in ANCHOR_LINES.items():
        m = rx.search(text)
        if m:
            found[key] = float(m.group(1))
    return found


def rate(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def duration(ms) -> str:
    if ms is None or not math.isfinite(ms):
        return DASH
    return f"{ms * 1e3:.1f} µs" if ms < 1 else f"{ms:.3f} ms"


def ours_for(bench: dict, row: dict):
    """Our row for a table row: the shape's row, or for decode/optimize the fastest variant."""
    rows = [r for r in bench["results"] if r["what"] == row["what"] and (row["shape"] is None or r.get("shape") == row["shape"])]
    return min(rows, key=lambda r: r["median_ms"]) if rows else None


def peers_for(peers: dict | None, row: dict) -> dict:
    if not peers or row["shape"] is None:
        return {}
    return {r["system"]: r for r in peers["results"]
            if r.get("what") == row["what"] and r.get("shape") == row["shape"] and r.get("system") in PEERS}


def side_by_side(bench: dict, peers: dict | None, anchors: dict) -> list[list[str]]:
    copy_gbs = bench.get("copy_bandwidth_gbs") or 0
    table = []
    for row in ROWS:
        ours = ours_for(bench, row)
        ours_ms = ours["median_ms"] if ours else None
        by_peer = peers_for(peers, row)
        cells_peer = []
        for p in PEERS:
            r = by_peer.get(p)
            cell = duration(r["median_ms"]) if r else DASH
            if r and row["what"] == "state-update" and ours and r["median_ms"] > 0:  # same tensors as ours: our byte count
                cell += f" ({ours['bytes'] / (r['median_ms'] * 1e-3) / 1e9:.0f} GB/s)"
            cells_peer.append(cell)
        # The best peer: the faster kernel, or for decode/optimize the anchor script's figure.
        best_name, best_ms = None, None
        if "anchor" in row:
            if row["anchor"] in anchors:
                best_name, best_ms = row["anchor_name"], anchors[row["anchor"]]
        elif by_peer:
            p = min(by_peer, key=lambda k: by_peer[k]["median_ms"])
            best_name, best_ms = PEER_NAMES[p], by_peer[p]["median_ms"]
        ratio = best_ms / ours_ms if best_ms and ours_ms else None

        if ours is None:
            met = DASH
        elif row["kind"] == "speedup":
            met = "unknown (no peer figure)" if ratio is None else ("yes" if ratio >= row["value"] else "no")
        elif row["kind"] == "max_ms":
            met = "yes" if ours_ms <= row["value"] else "no"
        else:  # copy_fraction
            fraction = ours["gbs"] / copy_gbs if copy_gbs else None
            met = DASH if fraction is None else ("yes" if fraction >= row["value"] else "no")

        ours_cell = DASH
        if ours:
            ours_cell = f"{duration(ours_ms)} ({duration(ours['p10_ms'])} – {duration(ours['p90_ms'])})"
            if row["kind"] == "copy_fraction" and copy_gbs:
                ours_cell += f", {ours['gbs']:.0f} GB/s = {100 * ours['gbs'] / copy_gbs:.0f}% of copy"
            if ours.get("variant"):
                ours_cell += f", {ours['variant']}"
        label = row["label"] if row["shape"] or not ours else f"{row['label']} (ours: {ours['shape']})"
        table.append([label, ours_cell, *cells_peer,
                      f"{best_name} {duration(best_ms)}" if best_name else DASH,
                      f"{ratio:.2f}×" if ratio else DASH, row["goal"], met])
    return table


def our_rows(bench: dict) -> list[list[str]]:
    out = []
    for r in bench["results"]:
        out.append([r["what"], r.get("shape", ""), r.get("dtype", ""), r.get("variant") or "-", duration(r["median_ms"]),
                    f"{duration(r.get('p10_ms'))} – {duration(r.get('p90_ms'))}", f"{r.get('gbs', 0):.1f}",
                    f"{r.get('tflops', 0):.2f}", f"{100 * r.get('fraction_of_peak', 0):.1f}% ({r.get('bound', '?')})"])
    return out


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render(bench: dict, peers: dict | None, anchors: dict, commands: list[str]) -> str:
    out = [f"### Side by side: {bench.get('device', '?')}, {bench.get('date', '?')} (one run)\n"]
    out.append(f"mambadiff commit {bench.get('commit', 'unknown')}, path `{bench.get('path', '?')}`, model {bench.get('model', '?')}.")
    if peers:
        v = peers.get("versions", {})
        out.append(f"Peers on {peers.get('device', '?')}: mamba_ssm {v.get('mamba_ssm', '?')}, vLLM {v.get('vllm', '?')}, "
                   f"Triton {v.get('triton', '?')}, torch {v.get('torch', '?')}; {peers.get('timer', '?')}; "
                   f"initial states {'given' if peers.get('initial_states') else 'none'}.")
    copy = bench.get("copy_bandwidth_gbs")
    line = f"Measured peaks: copy {rate(copy)} GB/s (read + written)" if copy else "Measured peaks: copy —"
    if peers and peers.get("copy_bandwidth_gbs"):
        line += f" ({rate(peers['copy_bandwidth_gbs'])} GB/s measured by bench_peers.py)"
    if bench.get("matmul_tflops"):
        line += f", matmul {rate(bench['matmul_tflops'])} TFLOP/s ({bench.get('peaks', {}).get('matmul', '?')})"
    out.append(line + ".\n")
    out.append(markdown_table(["row", "ours: median (p10 – p90)", "mamba_ssm", "vLLM", "best peer", "speed-up vs best",
                               "goal (issue 11)", "met?"], side_by_side(bench, peers, anchors)))
    if peers and peers.get("errors"):
        out.append("Peer calls that failed (no figure):\n")
        out += [f"* {e.get('system')} {e.get('what')} {e.get('shape')}: {e.get('error')}" for e in peers["errors"]]
        out.append("")
    out.append("Every row of ours (bytes and FLOPs per op: docs/bench.md):\n")
    out.append(markdown_table(["item", "shape", "dtype", "variant", "median", "p10 – p90", "GB/s", "TFLOP/s",
                               "of the roofline"], our_rows(bench)))
    if bench.get("notes"):
        out += [f"* note: {n}" for n in bench["notes"]]
        out.append("")
    if commands:
        out.append("Commands (one device call):\n")
        out.append("```\n" + "\n".join(commands) + "\n```\n")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", type=Path, required=True, help="mambadiff bench --json output")
    ap.add_argument("--peers", type=Path, help="tools/bench_peers.py output")
    ap.add_argument("--anchors", type=Path, help="the printed output of hf_decode_and_functional_optimizer.py")
    ap.add_argument("--command", action="append", default=[], help="a command line of the run (repeatable)")
    ap.add_argument("--out", type=Path, help="write the markdown here (whole or not at all) as well as to stdout")
    args = ap.parse_args(argv)
    try:
        bench = load_json(args.bench, "mambadiff.bench.v1")
        peers = load_json(args.peers, "mambadiff.bench_peers.v1") if args.peers else None
        anchors = parse_anchors(args.anchors) if args.anchors else {}
        text = render(bench, peers, anchors, args.command)
        if args.out:
            tmp = args.out.with_name(args.out.name + f".tmp.{os.getpid()}")
            try:
                tmp.write_text(text)
                tmp.replace(args.out)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                raise BadInput(f"{args.out}: cannot write: {e.strerror or e}")
    except BadInput as e:
        print(f"bench_table: {e}", file=sys.stderr)
        return 2
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
