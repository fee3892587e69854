#!/usr/bin/env python3
"""Write the parity scenarios (corpus/scenarios/<model>/*.json) for the embedded models.

Five scenarios per model, in the SPEC §5 format, each exercising one branch of the cache
dispatch (SPEC §3) on the same seeded token sequence of length L = 2·chunk_size + 5 (not a
multiple of the chunk size, more than two chunks: 37 for tiny, 21 for the chunk-8 models),
batch 2, a different sequence per row:

  full.json      one forward of all L tokens                        (prefill)
  decode.json    forward 5, then L-5 single-token forwards          (prefill + step)
  continue.json  forward 9, then the remaining L-9 in one forward   (prefill + continue)
  inject.json    forward 9, inject delta.1 [B,H,P,N] at layer 1, forward 1,
                 inject delta.0 [H,P,N] (broadcast) at layer 0, forward 1
  snapshot.json  forward 7, snapshot s0, forward 3, inject delta.1, restore s0,
                 forward the same 3 tokens again, reset, forward the first 4 tokens again

By construction full/decode/continue must give the same logits per token, and in
snapshot.json the forward after the restore must repeat the one before it bit for bit, and
the forward after the reset must repeat the first 4 positions of the first forward.

The deltas (N(0, 0.5), float32) are in deltas.safetensors next to the scenarios. Everything
is seeded per model; running the tool twice gives byte-identical files, and ``--check``
compares a fresh generation with the committed tree.

Usage:
  tools/make_scenarios.py [--models corpus/models] [--out corpus/scenarios]
  tools/make_scenarios.py --check
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from make_models import compare_trees, model_specs

ROOT = Path(__file__).resolve().parent.parent
SCENARIO_FORMAT = "mambadiff.scenario.v1"
BATCH = 2
DELTA_STD = 0.5
DELTA_FILE = "deltas.safetensors"


def read_config(model_dir: Path) -> dict:
    """The integer shape keys of an HF config.json (the inf spelling of time_step_limit is not needed here)."""
    cfg = json.loads((model_dir / "config.json").read_text())
    return {k: cfg[k] for k in ("vocab_size", "num_heads", "head_dim", "state_size", "chunk_size")}


def forward(tokens: torch.Tensor) -> dict:
    """A forward op for tokens [B, T]."""
    return {"op": "forward", "tokens": tokens.tolist()}


def inject(layer: int, tensor: str) -> dict:
    return {"op": "inject", "layer": layer, "delta": {"file": DELTA_FILE, "tensor": tensor}}


def scenario_ops(tokens: torch.Tensor) -> dict[str, list[dict]]:
    """The five scenarios' op lists for one token sequence [B, L]."""
    length = tokens.shape[1]
    return {
        "full": [forward(tokens)],
        "decode": [forward(tokens[:, :5])] + [forward(tokens[:, t:t + 1]) for t in range(5, length)],
        "continue": [forward(tokens[:, :9]), forward(tokens[:, 9:])],
        "inject": [
            forward(tokens[:, :9]),
            inject(1, "delta.1"),
            forward(tokens[:, 9:10]),
            inject(0, "delta.0"),
            forward(tokens[:, 10:11]),
        ],
        "snapshot": [
            forward(tokens[:, :7]),
            {"op": "snapshot", "name": "s0"},
            forward(tokens[:, 7:10]),
            inject(1, "delta.1"),
            {"op": "restore", "name": "s0"},
            forward(tokens[:, 7:10]),
            {"op": "reset"},
            forward(tokens[:, :4]),
        ],
    }


def scenario_json(model_name: str, ops: list[dict]) -> str:
    """SPEC §5 JSON, one op per line (token rows stay readable and diffs stay small)."""
    head = {"format": SCENARIO_FORMAT, "model": f"../../models/{model_name}", "dtype": "float32"}
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    op_lines = ",\n".join(f"    {json.dumps(op)}" for op in ops)
    return "{\n" + "\n".join(lines) + '\n  "ops": [\n' + op_lines + "\n  ]\n}\n"


def write_model_scenarios(model_name: str, seed: int, model_dir: Path, out_dir: Path) -> list[Path]:
    """Write <out_dir>/<model_name>/{*.json, deltas.safetensors}; return the files written."""
    cfg = read_config(model_dir)
    length = 2 * cfg["chunk_size"] + 5
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg["vocab_size"], (BATCH, length), generator=gen)  # [B, L]
    state = (cfg["num_heads"], cfg["head_dim"], cfg["state_size"])  # [H, P, N]
    deltas = {
        "delta.1": torch.randn((BATCH, *state), generator=gen) * DELTA_STD,  # [B, H, P, N]
        "delta.0": torch.randn(state, generator=gen) * DELTA_STD,  # [H, P, N], broadcast over B
    }

    target = out_dir / model_name
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, ops in scenario_ops(tokens).items():
        path = target / f"{name}.json"
        path.write_text(scenario_json(model_name, ops))
        written.append(path)
    # One metadata key only: safetensors 0.8 writes several keys in hash order, which would
    # make the file's bytes differ from run to run.
    save_file(deltas, target / DELTA_FILE,
              metadata={"generator": f"tools/make_scenarios.py seed={seed} std={DELTA_STD}"})
    written.append(target / DELTA_FILE)
    return written


def write_all(models_dir: Path, out_dir: Path) -> list[Path]:
    written = []
    for spec in model_specs():
        # Seeded from the model's own seed so that each model gets its own sequences.
        written += write_model_scenarios(spec.name, spec.seed + 7, models_dir / spec.name, out_dir)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / "corpus" / "models",
                        help="model directories (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "corpus" / "scenarios",
                        help="scenario tree to write (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="regenerate into a temporary directory and compare bytes with --out; exit 1 on a difference")
    args = parser.parse_args(argv)

    if args.check:
        with tempfile.TemporaryDirectory(prefix="make_scenarios.") as tmp:
            write_all(args.models, Path(tmp))
            # Per model directory: other scenarios elsewhere under --out are not this tool's.
            diffs = [(f"{spec.name}/{rel}", reason) for spec in model_specs()
                     for rel, reason in compare_trees(args.out / spec.name, Path(tmp) / spec.name)]
        for rel, reason in diffs:
            print(f"make_scenarios --check: {args.out / rel}: {reason}", file=sys.stderr)
        if diffs:
            print(f"regenerate with: tools/make_scenarios.py --out {args.out}", file=sys.stderr)
            return 1
        print(f"{args.out}: identical")
        return 0

    for path in write_all(args.models, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
