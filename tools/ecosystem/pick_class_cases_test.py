#!/usr/bin/env python3
"""tools/ecosystem/pick_class_cases.py on made-up reports and case folders (CTest
`ecosystem_pick_class_cases`, label unit; no GPU needed): a case is kept only when it diverges in the
system and agrees in its control arm, in one of the dtypes, the smallest such; it is kept with
expected "diverge" and a "reproduces" line; a missing report or no such case keeps nothing and says
why; --keep keeps a given case the same way.   python3 tools/ecosystem/pick_class_cases_test.py [-v]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

PICK = Path(__file__).resolve().parent / "pick_class_cases.py"


def case(model, scenario, dtype, verdict, detail="op 0, row 0, token 0, layer 0: layer_output error 1 > tolerance 0.1"):
    return {"model": model, "scenario": scenario, "dtype": dtype, "verdict": verdict,
            "detail": detail if verdict == "diverge" else "", "paths": "reference,x", "error": 0, "tolerance": 0}


class PickClassCases(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="pick_class_cases_"))
        self.cases = self.tmp / "cases"

    def report(self, name, cases):
        f = self.tmp / f"check_{name}.json"
        f.write_text(json.dumps({"cases": cases}))
        return f"{name}={f}"

    def case_dir(self, system, model, scenario, size):
        d = self.cases / system / f"{model}.{scenario}.reference.{system}"
        d.mkdir(parents=True)
        (d / "case.json").write_text(json.dumps({"format": "mambadiff.case.v1", "origin": "check", "expected": "agree"}))
        (d / "b.safetensors").write_bytes(b"x" * size)
        return d

    def run_pick(self, *args):
        return subprocess.run([sys.executable, str(PICK), *args], capture_output=True, text=True)

    def test_keeps_the_smallest_case_that_only_the_system_diverges_on(self):
        self.case_dir("sys", "tiny", "decode", 500)        # control agrees: the class, larger
        self.case_dir("sys", "bytes", "decode", 100)       # control agrees: the class, smallest
        self.case_dir("sys", "grouped", "decode", 10)      # control diverges too: another class
        self.case_dir("sys", "tiny", "fp16_decode", 5)     # a dtype not asked for
        reports = [self.report("sys", [case("tiny", "decode", "float32", "diverge"),
                                       case("bytes", "decode", "float32", "diverge"),
                                       case("grouped", "decode", "float32", "diverge"),
                                       case("tiny", "fp16_decode", "float16", "diverge"),
                                       case("limited", "decode", "float32", "agree")]),
                   self.report("ctl", [case("tiny", "decode", "float32", "agree"),
                                       case("bytes", "decode", "float32", "agree"),
                                       case("grouped", "decode", "float32", "diverge"),
                                       case("tiny", "fp16_decode", "float16", "agree")])]
        out = self.tmp / "out"
        r = self.run_pick("--cases", str(self.cases), *sum((["--report", x] for x in reports), []),
                          "--pick", "cls:sys:ctl:float32:the class's report", "--out", str(out))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("kept bytes/decode", r.stdout)
        self.assertIn("2 cases of the class", r.stdout)
        kept = json.loads((out / "cls" / "case.json").read_text())
        self.assertEqual(kept["expected"], "diverge")
        self.assertTrue(kept["reproduces"].startswith("the class's report (bytes/decode, float32"))
        self.assertEqual(list(kept)[:2], ["format", "reproduces"])
        self.assertEqual((out / "cls" / "b.safetensors").stat().st_size, 100)

    def test_nothing_kept_says_why(self):
        self.case_dir("sys", "tiny", "decode", 10)
        reports = [self.report("sys", [case("tiny", "decode", "bfloat16", "diverge")]),
                   self.report("ctl", [case("tiny", "decode", "bfloat16", "diverge")])]
        out = self.tmp / "out"
        args = ["--cases", str(self.cases), *sum((["--report", x] for x in reports), []), "--out", str(out)]
        r = self.run_pick(*args, "--pick", "a:sys:ctl:bfloat16:r", "--pick", "b:sys:missing:bfloat16:r")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("a: nothing kept (no bfloat16 case diverges in sys and agrees in ctl)", r.stdout)
        self.assertIn("b: nothing kept (no report for missing)", r.stdout)
        self.assertFalse(out.exists())

    def test_keep_mode_keeps_a_given_case(self):
        d = self.case_dir("long", "tiny", "bfloat16_decode64", 10)
        r = self.run_pick("--keep", str(d), "--as", str(self.tmp / "k"), "--reproduces", "vLLM #43301")
        self.assertEqual(r.returncode, 0, r.stderr)
        kept = json.loads((self.tmp / "k" / "case.json").read_text())
        self.assertEqual((kept["expected"], kept["reproduces"]), ("diverge", "vLLM #43301"))
        bad = self.run_pick("--keep", str(self.tmp / "nowhere"), "--as", str(self.tmp / "k2"), "--reproduces", "x")
        self.assertEqual(bad.returncode, 2)


if __name__ == "__main__":
    unittest.main()
