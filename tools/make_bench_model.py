#!/usr/bin/env python3
"""Write a random-weight HF Mamba2 checkpoint of a benchmark shape (not committed: large).

  130m: the mamba2-130m shape of REFERENCE.md / shared/anchors (vocab 50288, d 768, 24 layers,
        24 heads x 64, state 128, 1 group, chunk 256, conv 4), fp32, the same config the
        anchor script builds, so the two measure the same model size.

Usage: tools/make_bench_model.py --shape 130m --out /tmp/m130
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import transformers

SHAPES = {
    "130m": dict(vocab_size=50288, hidden_size=768, num_hidden_layers=24, state_size=128, expand=2,
                 head_dim=64, num_heads=24, n_groups=1, chunk_size=256, conv_kernel=4),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="130m")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    config = transformers.Mamba2Config(**SHAPES[args.shape])
    model = transformers.Mamba2ForCausalLM(config).float()
    model.save_pretrained(args.out, safe_serialization=True)
    print(f"{args.shape}: {sum(p.numel() for p in model.parameters())} parameters -> {args.out}")


if __name__ == "__main__":
    main()
