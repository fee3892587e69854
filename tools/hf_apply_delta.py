#!/usr/bin/env python3
"""Apply a mambadiff Δ file through HuggingFace transformers and rank the target (SPEC §8).

The injection point is mambadiff's: prefill prompt[:-1] with HF's own cache, add each
``delta.<layer>`` tensor unchanged to ``cache.layers[layer].recurrent_states[0]``, step
prompt[-1] (HF's decode branch), then teacher-force the further target tokens. Prints JSON:
{"rank": worst rank over the targets, "ranks": [...], "probability": p(target[0]),
 "exporter": "transformers <version>"}.

Usage: tools/hf_apply_delta.py --model DIR --prompt-tokens 3,1,4 --target 7 --delta D.safetensors
Exit status: 0 done, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_export import HFCachePlayer, ScenarioError, load_model  # noqa: E402


def parse_ids(text: str, option: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t != ""]
    except ValueError:
        raise ScenarioError(f"{option} {text!r}: expected comma-separated token ids")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--prompt-tokens", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--delta", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        prompt = parse_ids(args.prompt_tokens, "--prompt-tokens")
        target = parse_ids(args.target, "--target")
        if len(prompt) < 2 or not target:
            raise ScenarioError("--prompt-tokens needs >= 2 tokens and --target >= 1")
        model = load_model(args.model)
        deltas = {int(name.split(".", 1)[1]): t for name, t in load_file(str(args.delta)).items()
                  if name.startswith("delta.")}
        if not deltas:
            raise ScenarioError(f"{args.delta}: no delta.<layer> tensors")
    except (ScenarioError, OSError, ValueError) as e:
        print(f"hf_apply_delta: error: {e}", file=sys.stderr)
        return 2

    with torch.no_grad():
        player = HFCachePlayer(model, batch=1)
        player.forward(torch.tensor([prompt[:-1]]))
        for layer, delta in sorted(deltas.items()):
            player.inject(layer, delta)  # recurrent_states[layer] += delta, unchanged
        ranks, probability, token = [], None, prompt[-1]
        for t in target:
            logits = player.forward(torch.tensor([[token]]))[0, -1].double()  # [V]
            ranks.append(1 + int((logits > logits[t]).sum()))
            if probability is None:
                probability = float(torch.softmax(logits, 0)[t])
            token = t
    print(json.dumps({"rank": max(ranks), "ranks": ranks, "probability": probability,
                      "exporter": f"transformers {transformers.__version__}"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
