#!/usr/bin/env python3
"""Write the embedded default Mamba2 models (corpus/models/<name>/), seeded and reproducible.

Each model is a small HuggingFace ``Mamba2ForCausalLM`` checkpoint written by transformers'
own ``save_pretrained`` (so the on-disk format is exactly HF's: ``config.json``,
``generation_config.json``, ``model.safetensors`` or shards plus
``model.safetensors.index.json``). HF's default init is replaced by seeded random values
chosen to make the models numerically interesting: activations and logits of order 1..10,
decay rates spread over a decade and more, and -- for ``limited`` -- a finite
``time_step_limit`` that many tokens' Δt exceed, so that any path that forgets the clamp
shows it.

The first three models cover the checkpoint variants the loader must read (SPEC §2):
  tiny       float32, one file, tied lm_head, conv bias, no linear biases, ngroups 1
  grouped    bfloat16, sharded (3 files + index), linear biases, ngroups 4, conv kernel 3
  limited    float16, finite time_step_limit (0, 0.05), no conv bias tensor, ngroups 2
  fastdecay  float32, every head fast: |A| in [16, 64], Δt in ~[4, 8], so |Δt·A| >= ~50 per
             token (each head's state holds about its last token) and one 16-token chunk sums to
             thousands -- where a real checkpoint's 256-token chunks take its faster heads. The
             other models never pass ~40 per chunk (the summary line prints it), so without this
             one no check could see exp() of a segment sum overflow float32 (past ~88.7:
             mamba_ssm PR #713; the `segsum-exp-before-mask` mutant).
             Heads of medium speed are left out on purpose: with chunk sums of 100-1000 in heads
             that still remember a few tokens, the chunked scan's fp32 cumsum loses ~ulp(|Acs|)
             in exp(Acs_i - Acs_j), and a trial model (|A| up to 64, Δt in [0.01, 1]) put its
             cache state 7.8e-6 from the reference against a tolerance of 3.3e-6 with 2 threads
             (within it with 1): a precision limit of the SSD form, not modelled by the tolerance.

Running the tool twice gives byte-identical files (same torch and transformers versions);
``--check`` regenerates into a temporary directory and compares bytes with the committed
ones, so a golden-file mismatch names the file and says how to regenerate.

Usage:
  tools/make_models.py [--out corpus/models] [--only NAME ...]
  tools/make_models.py --check [--out corpus/models]
"""

from __future__ import annotations

import argparse
import filecmp
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import Mamba2Config, Mamba2ForCausalLM

from hf_export import UnclampedDtRecorder

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "corpus" / "models"


@dataclass(frozen=True)
class ModelSpec:
    """One embedded model: its HF config, storage format and the distribution of its weights."""

    name: str
    seed: int
    config: dict  # Mamba2Config keyword arguments
    dtype: torch.dtype  # storage dtype of every tensor in the checkpoint
    dt_range: tuple[float, float]  # softplus(dt_bias), the Δt of a zero dt projection, is log-uniform here
    max_shard_size: int | None = None  # bytes; None writes a single model.safetensors
    # Logit scale: lm_head rows ~ N(0, logit_gain / sqrt(hidden)) so that logits of the
    # RMS-normalised final hidden state have standard deviation about logit_gain.
    logit_gain: float = 2.5
    # -A = exp(A_log) is uniform here (HF's init range by default).
    a_range: tuple[float, float] = (1.0, 16.0)


# The config the embedded models share; each spec names only where it departs from it.
BASE_CONFIG = dict(
    vocab_size=64, hidden_size=32, expand=2, head_dim=8, num_heads=8, n_groups=1,
    state_size=16, num_hidden_layers=2, chunk_size=16, conv_kernel=4,
    time_step_limit=(0.0, math.inf), tie_word_embeddings=False,
    use_bias=False, use_conv_bias=True,
)


def config(**overrides) -> dict:
    """BASE_CONFIG with `overrides` (Mamba2Config keyword arguments) in place of its values."""
    unknown = set(overrides) - set(BASE_CONFIG)
    if unknown:
        raise ValueError(f"make_models: config keys {sorted(unknown)} are not in BASE_CONFIG")
    return {**BASE_CONFIG, **overrides}


def model_specs() -> list[ModelSpec]:
    """The embedded default models (SPEC §6: `mambadiff check` with no arguments runs these)."""
    return [
        ModelSpec(
            name="tiny",
            seed=1001,
            config=config(vocab_size=96, head_dim=16, num_heads=4, tie_word_embeddings=True),
            dtype=torch.float32,
            dt_range=(1e-3, 0.1),
        ),
        ModelSpec(
            name="grouped",
            seed=1002,
            config=config(vocab_size=80, hidden_size=48, head_dim=12, n_groups=4, state_size=8,
                          num_hidden_layers=3, chunk_size=8, conv_kernel=3, use_bias=True),
            dtype=torch.bfloat16,
            dt_range=(1e-3, 0.1),
            # The bf16 checkpoint is 126 KB; 50 KB shards give 3 files plus the index.
            max_shard_size=50_000,
        ),
        ModelSpec(
            name="limited",
            seed=1003,
            config=config(n_groups=2, chunk_size=8, time_step_limit=(0.0, 0.05), use_conv_bias=False),
            dtype=torch.float16,
            # Half of this log range lies above the 0.05 limit, so the clamp engages on
            # many tokens (the summary line prints the fraction).
            dt_range=(0.01, 0.5),
        ),
        ModelSpec(
            name="fastdecay",
            seed=1004,
            config=config(),
            dtype=torch.float32,
            dt_range=(4.0, 8.0),
            a_range=(16.0, 64.0),
        ),
    ]


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """x with softplus(x) == y, for y > 0 (the form HF's init uses, stable for small y)."""
    return y + torch.log(-torch.expm1(-y))


def sample_parameter(name: str, shape: torch.Size, spec: ModelSpec, gen: torch.Generator) -> torch.Tensor:
    """A seeded float32 value for the parameter `name` (an HF Mamba2ForCausalLM tensor name)."""
    cfg = spec.config
    hidden = cfg["hidden_size"]
    d_inner = cfg["expand"] * hidden

    def normal(mean: float, std: float) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std + mean

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(shape, generator=gen, dtype=torch.float32) * (hi - lo) + lo

    if name == "backbone.embeddings.weight":
        # Tied: the embedding matrix is also the lm_head, so it sets the logit scale. Untied:
        # the first RMSNorm rescales whatever comes in, so unit variance is as good as any.
        std = spec.logit_gain / math.sqrt(hidden) if cfg["tie_word_embeddings"] else 1.0
        return normal(0.0, std)
    if name == "lm_head.weight":
        return normal(0.0, spec.logit_gain / math.sqrt(hidden))
    if name.endswith("norm.weight") or name == "backbone.norm_f.weight":
        return normal(1.0, 0.1)
    if name.endswith("mixer.in_proj.weight"):
        # Input is RMS-normalised (entries ~1): unit-variance gate, x, B, C and dt offsets.
        return normal(0.0, 1.0 / math.sqrt(hidden))
    if name.endswith("mixer.out_proj.weight"):
        return normal(0.0, 1.0 / math.sqrt(d_inner))
    if name.endswith("proj.bias"):
        return normal(0.0, 0.05)
    if name.endswith("mixer.conv1d.weight"):
        return normal(0.0, 0.5)
    if name.endswith("mixer.conv1d.bias"):
        return normal(0.0, 0.1)
    if name.endswith("mixer.A_log"):
        # A = -exp(A_log) in -a_range ([-16, -1] by default): per-token decay exp(Δt·A) from ~1
        # down to ~e^-8 there.
        return torch.log(uniform(*spec.a_range))
    if name.endswith("mixer.dt_bias"):
        lo, hi = spec.dt_range
        dt = torch.exp(uniform(math.log(lo), math.log(hi)))
        return inverse_softplus(dt)
    if name.endswith("mixer.D"):
        return normal(1.0, 0.3)
    raise ValueError(f"make_models: no distribution for parameter {name!r} of model {spec.name}")


def build_model(spec: ModelSpec) -> Mamba2ForCausalLM:
    """The model of `spec` with every parameter overwritten by seeded values, in spec.dtype."""
    lo, hi = spec.dt_range
    config = Mamba2Config(**spec.config, time_step_min=lo, time_step_max=hi)
    torch.manual_seed(spec.seed)  # HF's own init draws from the global generator; we overwrite it all
    model = Mamba2ForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        # named_parameters() lists a tied lm_head once (as the embedding): sorted for a stable draw order.
        for name, param in sorted(model.named_parameters()):
            param.copy_(sample_parameter(name, param.shape, spec, gen))
    return model.to(spec.dtype)


def save_model(spec: ModelSpec, out_dir: Path) -> Path:
    """Write `spec`'s checkpoint to out_dir/<name>/, replacing the directory as a whole."""
    model = build_model(spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / spec.name
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=out_dir))
    try:
        kwargs = {"safe_serialization": True}
        if spec.max_shard_size is not None:
            kwargs["max_shard_size"] = spec.max_shard_size
        model.save_pretrained(staging, **kwargs)
        # safetensors writes 0600 files and mkdtemp a 0700 directory: make them plain readable files.
        os.chmod(staging, 0o755)
        for f in staging.iterdir():
            os.chmod(f, 0o644)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def summarize(spec: ModelSpec, model_dir: Path) -> str:
    """One line: parameter count, bytes on disk, max |logit| on a seeded random sequence.

    The model is reloaded from disk in float32 (as the exporters load it), so the line also
    proves that the checkpoint loads.
    """
    model = Mamba2ForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    n_params = sum(p.numel() for p in model.parameters())
    n_bytes = sum(f.stat().st_size for f in model_dir.iterdir())
    gen = torch.Generator().manual_seed(spec.seed + 1)
    tokens = torch.randint(0, spec.config["vocab_size"], (2, 64), generator=gen)  # [B, T]

    with torch.no_grad(), UnclampedDtRecorder(model) as dts:
        logits = model(tokens, use_cache=False).logits  # [B, T, V]

    # The largest sum of |Δt·A| over one chunk of one head (what exp() of a segment sum sees).
    lo, hi = spec.config["time_step_limit"]
    q = spec.config["chunk_size"]
    chunk_sum = max(
        (dt.clamp(lo, hi) * layer.mixer.A_log.float().exp()).unflatten(1, (-1, q)).sum(2).max().item()
        for dt, layer in zip(dts.values, model.backbone.layers))

    line = (f"{spec.name:9s} {n_params:6d} params  {n_bytes:7d} bytes  {str(spec.dtype)[6:]:8s} "
            f"max|logit| {logits.abs().max().item():6.2f}  std(logit) {logits.std().item():5.2f}  "
            f"max chunk Σ|Δt·A| {chunk_sum:6.1f}")
    upper = spec.config["time_step_limit"][1]
    if math.isfinite(upper):
        above = torch.cat([dt.flatten() for dt in dts.values]) > upper
        line += f"  Δt>{upper:g} on {100.0 * above.float().mean().item():.0f}% of (token, layer, head)"
    return line


def compare_trees(expected: Path, actual: Path) -> list[tuple[str, str]]:
    """(relative path, reason) for each file that differs between two directory trees."""
    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.is_dir() else set()

    exp, act = files(expected), files(actual)
    diffs = [(rel, "not generated any more") for rel in sorted(exp - act)]
    diffs += [(rel, "missing from the committed tree") for rel in sorted(act - exp)]
    diffs += [(rel, "bytes differ") for rel in sorted(exp & act)
              if not filecmp.cmp(expected / rel, actual / rel, shallow=False)]
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="directory receiving <name>/ per model (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="regenerate into a temporary directory and compare bytes with --out; exit 1 on a difference")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="write only these models")
    args = parser.parse_args(argv)

    transformers.utils.logging.set_verbosity_error()  # the "falling back to PyTorch" notices
    transformers.utils.logging.disable_progress_bar()
    specs = model_specs()
    if args.only:
        unknown = set(args.only) - {s.name for s in specs}
        if unknown:
            parser.error(f"--only: unknown model(s) {sorted(unknown)}; known: {[s.name for s in specs]}")
        specs = [s for s in specs if s.name in args.only]

    if args.check:
        with tempfile.TemporaryDirectory(prefix="make_models.") as tmp:
            failed = False
            for spec in specs:
                fresh = save_model(spec, Path(tmp))
                diffs = compare_trees(args.out / spec.name, fresh)
                for rel, reason in diffs:
                    print(f"make_models --check: {args.out / spec.name / rel}: {reason}", file=sys.stderr)
                failed |= bool(diffs)
                print(f"{spec.name}: {'DIFFERS' if diffs else 'identical'}")
            if failed:
                print(f"regenerate with: tools/make_models.py --out {args.out} "
                      f"(transformers {transformers.__version__}, torch {torch.__version__})", file=sys.stderr)
            return 1 if failed else 0

    for spec in specs:
        print(summarize(spec, save_model(spec, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
