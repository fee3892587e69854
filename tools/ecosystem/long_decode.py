#!/usr/bin/env python3
"""Write long-decode scenarios: a prefill of 5 tokens, then STEPS single-token decode steps, batch 2.

  long_decode.py --out DIR --model corpus/models/tiny [--model ...] [--dtypes bfloat16,float16] [--steps 64]

-> DIR/<model>/<dtype>_decode<STEPS>.json (mambadiff.scenario.v1, the model by absolute path; tokens
from a fixed seed). check's matrix decodes 6 steps, where a system keeping its SSM state in bf16 or
fp16 (vLLM's default, vLLM #43301) is still within the low-precision tolerance: the rounding error of
the state grows over the first tens of steps (docs/external.md, "A bf16 decode state is rounded at
every step"). scripts/gpu_ecosystem.sh plays these on vLLM with its default state and with a float32
state, and `mambadiff diff` keeps a case when only the default one diverges.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", type=Path, action="append", required=True)
    ap.add_argument("--dtypes", default="bfloat16,float16")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--seed", type=int, default=20261202)
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be at least 1")
    for model in args.model:
        config = model / "config.json"
        if not config.is_file():
            print(f"long_decode.py: {config}: no such file", file=sys.stderr)
            return 2
        vocab = json.loads(config.read_text())["vocab_size"]
        rng = random.Random(f"{args.seed}/{model.name}")
        ops = [{"op": "forward", "tokens": [[rng.randrange(vocab) for _ in range(5)] for _ in range(2)]}]
        ops += [{"op": "forward", "tokens": [[rng.randrange(vocab)] for _ in range(2)]} for _ in range(args.steps)]
        for dtype in args.dtypes.split(","):
            out = args.out / model.name / f"{dtype}_decode{args.steps}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"format": "mambadiff.scenario.v1", "model": str(model.resolve()),
                                       "dtype": dtype, "ops": ops}) + "\n")
            print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
