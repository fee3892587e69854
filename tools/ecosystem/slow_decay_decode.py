#!/usr/bin/env python3
"""Write a long decode on which a low-precision SSM state shows end to end (vLLM's default,
mamba_ssm_cache_dtype auto: the state kept in the model's dtype, vLLM #43301).

  slow_decay_decode.py --base corpus/models/tiny --out DIR [--steps 512] [--dtype bfloat16]
                       [--a-log -4] [--dt-bias -3]

-> DIR/slowdecay/ (the base model with every layer's A_log and dt_bias set to the given values:
Δt ≈ softplus(dt_bias) ≈ 0.05, A = -exp(A_log) ≈ -0.018, a decay of ~1e-3 a step) and
DIR/slowdecay/<dtype>_repeat<STEPS>.json: a prefill of 5 tokens, then STEPS decode steps of one
repeated token (batch 1). With one token repeated, x·B is the same every step, so each head's state
grows monotonically towards ~1/(Δt·|A|) increments: once an increment falls under half a bf16 ulp
of the state (2^-9 of it, after a few hundred steps) a bf16 state stops growing where a float32
one does not. (--a-log also takes a comma-separated list, cycled over the heads.) check's decodes (6 steps, random tokens) and the 64-step random-token decodes of
scripts/gpu_ecosystem.sh never get there (docs/external.md, Results 09:19 UTC).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=512)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--a-log", default="-4", help="A_log of every head, or a comma-separated list cycled over the heads")
    ap.add_argument("--dt-bias", type=float, default=-3.0)
    ap.add_argument("--token", type=int, default=7)
    args = ap.parse_args(argv)
    import torch
    from safetensors.torch import load_file, save_file

    if not (args.base / "config.json").is_file():
        print(f"slow_decay_decode.py: {args.base}/config.json: no such file", file=sys.stderr)
        return 2
    model = args.out / "slowdecay"
    model.mkdir(parents=True, exist_ok=True)
    shutil.copy(args.base / "config.json", model / "config.json")
    w = load_file(str(args.base / "model.safetensors"))
    for k in list(w):
        if k.endswith("mixer.A_log"):
            vals = [float(v) for v in str(args.a_log).split(",")]
            w[k] = torch.tensor([vals[i % len(vals)] for i in range(w[k].numel())], dtype=w[k].dtype)
        elif k.endswith("mixer.dt_bias"):
            w[k] = torch.full_like(w[k], args.dt_bias)
    save_file(w, str(model / "model.safetensors"), metadata={"format": "pt"})
    vocab = json.loads((args.base / "config.json").read_text())["vocab_size"]
    tok = args.token % vocab
    ops = [{"op": "forward", "tokens": [[(tok + i) % vocab for i in range(5)]]}]
    ops += [{"op": "forward", "tokens": [[tok]]} for _ in range(args.steps)]
    out = model / f"{args.dtype}_repeat{args.steps}.json"
    out.write_text(json.dumps({"format": "mambadiff.scenario.v1", "model": str(model.resolve()),
                               "dtype": args.dtype, "ops": ops}) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
