#!/usr/bin/env python3
"""tools/bench_table.py on made-up inputs (CTest `bench_table`, label unit; no GPU needed): each goal
is judged met or missed from the figures, the best peer is the faster one, a missing peer is never a
met goal, failed peer calls are listed, the markdown goes to --out whole, and bad input is exit 2 with
one line naming the file.   python3 tools/bench_table_test.py [-v]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

TABLE = Path(__file__).resolve().parent / "bench_table.py"

COPY_GBS = 4000.0  # bench's measured copy bandwidth in the made-up run


def ours(what, shape, median, variant="", bytes_=0, gbs=0.0):
    return {"what": what, "shape": shape, "dtype": "x", "path": "cuda", "variant": variant, "median_ms": median,
            "p10_ms": median * 0.9, "p90_ms": median * 1.1, "bytes": bytes_, "flops": 0, "gbs": gbs, "tflops": 0.0,
            "fraction_of_peak": 0.5, "bound": "memory"}


def peer(system, what, shape, median):
    return {"system": system, "what": what, "shape": shape, "dtype": "bfloat16", "call": "f()", "median_ms": median,
            "p10_ms": median, "p90_ms": median}


BENCH = {
    "format": "mambadiff.bench.v1", "device": "NVIDIA H200 (139 GiB)", "date": "2026-12-03T01:02:03Z",
    "command": "mambadiff bench --what all", "commit": "abc123", "path": "cuda", "model": "m130",
    "copy_bandwidth_gbs": COPY_GBS, "matmul_tflops": 700.0, "peaks": {"matmul": "bf16 matmul 8192^3"},
    "notes": ["a note"],
    "results": [
        ours("scan", "b8 L8192 h80 p64 g1 n128", 2.0),    # best peer 3.03 (vLLM): 1.515x >= 1.5: met
        ours("scan", "b4 L4096 h64 p64 g8 n128", 0.70),   # best peer 0.671 (mamba_ssm): 0.96x < 1.0: missed
        ours("scan", "b1 L2048 h24 p64 g1 n128", 0.20),   # no peer figure: unknown
        ours("state-update", "b1 h80 p64 g1 n128", 0.008),  # 8 us <= 10 us: met
        # 335 MB in 0.1 ms = 3355 GB/s = 84% of 4000: missed
        ours("state-update", "b64 h80 p64 g1 n128", 0.1, bytes_=335_544_320, gbs=3355.4432),
        ours("decode", "d768 x24 h24 p64 g1 n128 V50288 b1", 0.40, "eager"),
        ours("decode", "d768 x24 h24 p64 g1 n128 V50288 b1", 0.25, "cuda-graph"),  # the faster variant: met
        ours("optimize", "d768 x24 b1 delta@16", 0.6, "cuda-graph"),  # > 0.5 ms: missed
    ],
}
PEERS = {
    "format": "mambadiff.bench_peers.v1", "device": "NVIDIA H200", "timer": "do_bench", "initial_states": True,
    "versions": {"mamba_ssm": "2.3.2.post1", "vllm": "0.33.0", "triton": "3.6.0", "torch": "2.11.0"},
    "copy_bandwidth_gbs": 4100.0,
    "results": [
        peer("mamba_ssm", "scan", "b8 L8192 h80 p64 g1 n128", 3.19),
        peer("vllm", "scan", "b8 L8192 h80 p64 g1 n128", 3.03),
        peer("mamba_ssm", "scan", "b4 L4096 h64 p64 g8 n128", 0.671),
        peer("vllm", "scan", "b4 L4096 h64 p64 g8 n128", 0.760),
        peer("mamba_ssm", "state-update", "b1 h80 p64 g1 n128", 0.0482),
        peer("vllm", "state-update", "b1 h80 p64 g1 n128", 0.0606),
        peer("mamba_ssm", "state-update", "b64 h80 p64 g1 n128", 0.120),
        peer("vllm", "state-update", "b64 h80 p64 g1 n128", 0.1458),
    ],
    "errors": [{"system": "vllm", "what": "scan", "shape": "b1 L2048 h24 p64 g1 n128", "error": "RuntimeError: boom"}],
}
ANCHORS = ("HF eager decode step (24 layers, b1, fp32): median 15.67 ms\n"
           "ALSI-style functional optimizer iteration (24 layers, b1, fp32, delta at layer 16): median 31.28 ms; "
           "rank after 55 its: 1\n")


def run_table(*args):
    return subprocess.run([sys.executable, str(TABLE), *map(str, args)], capture_output=True, text=True)


def table_rows(markdown: str) -> dict[str, list[str]]:
    """The side-by-side table's rows by their first cell."""
    rows = {}
    for line in markdown.split("Every row of ours")[0].splitlines():
        if line.startswith("| ") and not line.startswith("| row "):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            rows[cells[0]] = cells
    return rows


class BenchTable(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)
        self.bench, self.peers, self.anchors = self.dir / "bench.json", self.dir / "peers.json", self.dir / "anchors.txt"
        self.bench.write_text(json.dumps(BENCH))
        self.peers.write_text(json.dumps(PEERS))
        self.anchors.write_text(ANCHORS)

    def tearDown(self):
        self.tmp.cleanup()

    def table(self):
        r = run_table("--bench", self.bench, "--peers", self.peers, "--anchors", self.anchors,
                      "--command", "mambadiff bench --what all --json $OUT/bench.json", "--out", self.dir / "bench.md")
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def test_each_goal_is_judged_from_the_figures(self):
        rows = table_rows(self.table())
        # Columns: row, ours, mamba_ssm, vLLM, best peer, speed-up, goal, met?
        scan = rows["chunk scan b8 L8192 h80 p64 g1 n128, bf16, chunk 256"]
        self.assertEqual(scan[2:6], ["3.190 ms", "3.030 ms", "vLLM 3.030 ms", "1.51×"])
        self.assertEqual(scan[7], "yes")
        scan_g8 = rows["chunk scan b4 L4096 h64 p64 g8 n128"]
        self.assertEqual(scan_g8[4:6], ["mamba_ssm 671.0 µs", "0.96×"])
        self.assertEqual(scan_g8[7], "no")
        self.assertEqual(rows["state update b1 h80 p64 n128, fp32 state"][7], "yes")
        b64 = rows["state update b64 h80 p64 n128, fp32 state"]
        self.assertIn("3355 GB/s = 84% of copy", b64[1])
        self.assertIn("(2796 GB/s)", b64[2])  # mamba_ssm: our 335.5 MB in 0.120 ms
        self.assertEqual(b64[7], "no")
        decode = next(v for k, v in rows.items() if k.startswith("whole-model decode"))
        self.assertIn("250.0 µs", decode[1])
        self.assertIn("cuda-graph", decode[1])  # the faster variant is ours
        self.assertEqual(decode[4:6], ["HF eager decode 15.670 ms", "62.68×"])
        self.assertEqual(decode[7], "yes")
        opt = next(v for k, v in rows.items() if k.startswith("optimizer step"))
        self.assertEqual(opt[4], "functional PyTorch loop 31.280 ms")
        self.assertEqual(opt[7], "no")

    def test_a_missing_peer_is_never_a_met_goal(self):
        rows = table_rows(self.table())
        row = rows["chunk scan b1 L2048 h24 p64 g1 n128"]
        self.assertEqual(row[2:6], ["—", "—", "—", "—"])
        self.assertEqual(row[7], "unknown (no peer figure)")

    def test_the_card_date_commands_and_failed_peer_calls_are_stated(self):
        text = self.table()
        self.assertIn("NVIDIA H200 (139 GiB), 2026-12-03T01:02:03Z", text)
        self.assertIn("mambadiff bench --what all --json $OUT/bench.json", text)
        self.assertIn("vllm scan b1 L2048 h24 p64 g1 n128: RuntimeError: boom", text)
        self.assertIn("copy 4000 GB/s", text)
        self.assertEqual((self.dir / "bench.md").read_text(), text)

    def test_without_peers_or_anchors_every_peer_cell_is_a_dash(self):
        r = run_table("--bench", self.bench)
        self.assertEqual(r.returncode, 0, r.stderr)
        for label, row in table_rows(r.stdout).items():
            self.assertEqual(row[2:6], ["—", "—", "—", "—"], label)

    def test_bad_input_is_exit_2_with_one_line_naming_the_file(self):
        (self.dir / "not.json").write_text("{ nope")
        (self.dir / "other.json").write_text(json.dumps({"format": "something.else", "results": []}))
        (self.dir / "bad_row.json").write_text(json.dumps({**BENCH, "results": [{"what": "scan"}]}))
        for args, needle in [(["--bench", self.dir / "missing.json"], "missing.json"),
                             (["--bench", self.dir / "not.json"], "not.json"),
                             (["--bench", self.dir / "other.json"], "other.json"),
                             (["--bench", self.dir / "bad_row.json"], "results[0]"),
                             (["--bench", self.bench, "--peers", self.bench], "bench.json"),
                             (["--bench", self.bench, "--anchors", self.dir / "no_anchors.txt"], "no_anchors.txt"),
                             (["--bench", self.bench, "--out", self.dir / "no_dir" / "b.md"], "b.md")]:
            with self.subTest(args=args):
                r = run_table(*args)
                self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
                self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
                self.assertIn(needle, r.stderr)
                self.assertEqual(r.stdout, "")
        self.assertEqual(sorted(p.name for p in self.dir.iterdir() if ".tmp." in p.name), [])


if __name__ == "__main__":
    unittest.main()
