#!/usr/bin/env python3
"""Export HuggingFace transformers' tensors for a mambadiff scenario (a `file:` path, SPEC §4).

Plays the scenario's ops on transformers' own ``Mamba2ForCausalLM`` and its own cache (a
``DynamicCache`` whose layers hold ``conv_states[0]`` [B, conv_dim, K] and
``recurrent_states[0]`` [B, H, P, N]) and writes what ``mambadiff run`` writes (SPEC §5):

  op.<i>.logits            [B, T, V] float32, for each forward op i (i = index in "ops")
  cache.ssm_states.<l>     [B, H, P, N] float32, the final cache
  cache.conv_states.<l>    [B, conv_dim, K] float32
  cache.seqlen_offset      [1] int64, tokens consumed since the last reset

HF picks its branch itself, per layer: prefill when the layer has no previous state,
decode (``causal_conv1d_update`` + ``selective_state_update``) when T == 1 with a previous
state, else the chunked scan with ``initial_states`` (REFERENCE.md, "The systems this
project is checked against"). Compute is float32 on CPU whatever the stored dtype.

Metadata: ``exporter`` ("transformers <version>"), ``scenario`` (file name), ``hf_branches``
(the branch HF took for each forward op), and ``hf_decode_clamps_dt``: "true" / "false" for a
model with a finite upper ``time_step_limit`` -- measured by running the first forward op's
tokens as one forward and as prefill(1) + token-by-token decode -- and "n/a" when the limit
is infinite (or the probe cannot tell); ``hf_decode_clamp_probe`` says what was measured.
transformers 5.17 clamps Δt in the chunked scan but not in decode (REFERENCE.md: ~5e-2
relative with a (0, 0.05) limit, ~1e-7 without), so "false" is the expected answer there.

Usage:
  tools/hf_export.py SCENARIO.json --out OUT.safetensors
  tools/hf_export.py --all DIR_IN --out-dir DIR_OUT     (one process for a whole tree)
Exit status: 0 written, 2 bad input (one line naming the file, key or tensor).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import DynamicCache, Mamba2ForCausalLM

SCENARIO_FORMAT = "mambadiff.scenario.v1"
OPS = ("forward", "inject", "snapshot", "restore", "reset")

# Decode-vs-full relative difference above which HF's decode is judged not to clamp Δt.
# Measured with transformers 5.17 fp32 CPU (REFERENCE.md): ~1e-7 when the clamp agrees,
# ~5e-2 when it does not; 1e-3 is HF's own caching-test tolerance, well between the two.
CLAMP_PROBE_REL_THRESHOLD = 1e-3


class ScenarioError(Exception):
    """Bad input: the message is one line naming the file, key, op or tensor."""


@dataclass
class Scenario:
    """A parsed scenario file (SPEC §5); paths inside are resolved against its directory."""

    path: Path
    model_dir: Path
    ops: list[dict]  # as in the file, with forward tokens parsed to int64 tensors [B, T]

    def where(self, op_index: int) -> str:
        return f"{self.path}: ops[{op_index}] ({self.ops[op_index].get('op')})"

    def first_forward(self) -> tuple[int, torch.Tensor] | None:
        """(op index, tokens [B, T]) of the first forward op, if any."""
        for i, op in enumerate(self.ops):
            if op["op"] == "forward":
                return i, op["tokens"]
        return None


def parse_tokens(value, where: str) -> torch.Tensor:
    """tokens [[...], ...] -> int64 tensor [B, T]; rectangular, non-empty, non-negative."""
    if (not isinstance(value, list) or not value or not all(isinstance(row, list) for row in value)):
        raise ScenarioError(f"{where}: 'tokens' must be a non-empty list of rows [B][T]")
    lengths = {len(row) for row in value}
    if len(lengths) != 1 or 0 in lengths:
        raise ScenarioError(f"{where}: 'tokens' rows must be non-empty and of equal length, got {sorted(lengths)}")
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for row in value for t in row):
        raise ScenarioError(f"{where}: 'tokens' must hold non-negative integers")
    return torch.tensor(value, dtype=torch.int64)


def load_scenario(path: Path) -> Scenario:
    """Parse and check a scenario file; raise ScenarioError naming the offending key."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ScenarioError(f"{path}: cannot read scenario: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != SCENARIO_FORMAT:
        raise ScenarioError(f"{path}: 'format' must be {SCENARIO_FORMAT!r}")
    for key in ("model", "ops"):
        if key not in doc:
            raise ScenarioError(f"{path}: missing key {key!r}")
    if not isinstance(doc["model"], str):
        raise ScenarioError(f"{path}: 'model' must be a path (relative to the scenario file)")
    if not isinstance(doc["ops"], list):
        raise ScenarioError(f"{path}: 'ops' must be a list")
    # The scenario's "dtype" is the run dtype of mambadiff's paths; HF always computes in fp32 here.
    scenario = Scenario(path=path, model_dir=(path.parent / doc["model"]).resolve(), ops=[])
    for i, op in enumerate(doc["ops"]):
        where = f"{path}: ops[{i}]"
        if not isinstance(op, dict) or op.get("op") not in OPS:
            raise ScenarioError(f"{where}: 'op' must be one of {list(OPS)}")
        op = dict(op)
        if op["op"] == "forward":
            op["tokens"] = parse_tokens(op.get("tokens"), where)
        elif op["op"] == "inject":
            delta = op.get("delta")
            if not isinstance(op.get("layer"), int) or not isinstance(delta, dict) \
                    or not {"file", "tensor"} <= delta.keys():
                raise ScenarioError(f"{where}: inject needs 'layer' (int) and 'delta' {{'file', 'tensor'}}")
        elif op["op"] in ("snapshot", "restore") and not isinstance(op.get("name"), str):
            raise ScenarioError(f"{where}: {op['op']} needs a 'name' (string)")
        scenario.ops.append(op)
    return scenario


def load_model(model_dir: Path) -> Mamba2ForCausalLM:
    """HF's own loader, fp32 compute regardless of the stored dtype, eval mode, CPU."""
    if not (model_dir / "config.json").is_file():
        raise ScenarioError(f"{model_dir}: no config.json (the scenario's 'model' must name a checkpoint directory)")
    try:
        return Mamba2ForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    except (OSError, ValueError, SafetensorError) as e:
        raise ScenarioError(f"{model_dir}: transformers cannot load the model: {e}") from e


@dataclass
class CacheSnapshot:
    cache: DynamicCache
    seqlen_offset: int
    batch: int


class HFCachePlayer:
    """Plays scenario ops on transformers' own cache, the way a user of HF would."""

    def __init__(self, model: Mamba2ForCausalLM, batch: int = 1):
        self.model = model
        self.batch = batch  # batch of the cache; shapes the zero state of a layer never written
        self.snapshots: dict[str, CacheSnapshot] = {}
        self.reset()  # sets self.cache and self.seqlen_offset

    @property
    def config(self):
        return self.model.config

    def reset(self) -> None:
        """A fresh HF cache (snapshots survive a reset)."""
        self.cache = DynamicCache(config=self.config)
        self.seqlen_offset = 0  # tokens consumed since the last reset (HF's cache does not count)

    def branch(self, seq_len: int) -> str:
        """The branch HF's mixer will take (it decides per layer; all layers agree here)."""
        if not self.cache.has_previous_state(0):
            return "prefill"
        return "decode" if seq_len == 1 else "continue"

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] -> logits [B, T, V] float32; the cache advances by T."""
        self.batch = tokens.shape[0]
        out = self.model(tokens, cache_params=self.cache, use_cache=True)
        self.seqlen_offset += tokens.shape[1]
        return out.logits.float()

    def state_shapes(self, batch: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(conv_states shape [B, conv_dim, K], ssm_states shape [B, H, P, N]) of one layer."""
        c = self.config
        d_inner = c.expand * c.hidden_size
        conv_dim = d_inner + 2 * c.n_groups * c.state_size
        return (batch, conv_dim, c.conv_kernel), (batch, c.num_heads, c.head_dim, c.state_size)

    def inject(self, layer: int, delta: torch.Tensor) -> None:
        """recurrent_states[layer] += delta ([B, H, P, N] or broadcast [H, P, N]), in place.

        A layer that holds no state yet gets zero states first (HF would create them at its
        first forward); its has_previous_state stays False, so the next forward is a prefill
        from a zero state, as SPEC §3 has it for an empty cache.
        """
        if not 0 <= layer < self.config.num_hidden_layers:
            raise ValueError(f"layer {layer} out of range [0, {self.config.num_hidden_layers})")
        cache_layer = self.cache.layers[layer]
        if not cache_layer.is_recurrent_states_initialized[0]:
            conv_shape, ssm_shape = self.state_shapes(self.batch)
            cache_layer.lazy_initialization(conv_states=torch.zeros(conv_shape),
                                            recurrent_states=torch.zeros(ssm_shape))
        state = cache_layer.recurrent_states[0]  # [B, H, P, N]
        if tuple(delta.shape) not in (tuple(state.shape), tuple(state.shape[1:])):
            raise ValueError(f"delta shape {list(delta.shape)} is neither [B, H, P, N] = {list(state.shape)} "
                             f"nor [H, P, N] = {list(state.shape[1:])}")
        state.add_(delta.to(state.dtype))

    def snapshot(self, name: str) -> None:
        self.snapshots[name] = CacheSnapshot(copy.deepcopy(self.cache), self.seqlen_offset, self.batch)

    def restore(self, name: str) -> None:
        if name not in self.snapshots:
            raise ValueError(f"no snapshot named {name!r} (taken: {sorted(self.snapshots)})")
        snap = self.snapshots[name]
        # Copy again so that the same snapshot can be restored more than once.
        self.cache, self.seqlen_offset, self.batch = copy.deepcopy(snap.cache), snap.seqlen_offset, snap.batch

    def final_tensors(self) -> dict[str, torch.Tensor]:
        """The cache in mambadiff's naming; a layer never written reads as zeros."""
        conv_shape, ssm_shape = self.state_shapes(self.batch)
        tensors = {}
        for l, cache_layer in enumerate(self.cache.layers):
            conv = cache_layer.conv_states[0] if cache_layer.is_conv_states_initialized[0] else torch.zeros(conv_shape)
            ssm = (cache_layer.recurrent_states[0] if cache_layer.is_recurrent_states_initialized[0]
                   else torch.zeros(ssm_shape))
            tensors[f"cache.ssm_states.{l}"] = ssm.float().contiguous().clone()
            tensors[f"cache.conv_states.{l}"] = conv.float().contiguous().clone()
        tensors["cache.seqlen_offset"] = torch.tensor([self.seqlen_offset], dtype=torch.int64)
        return tensors


def load_delta(scenario: Scenario, op_index: int) -> torch.Tensor:
    """The inject op's tensor, as float32 (file path relative to the scenario)."""
    spec = scenario.ops[op_index]["delta"]
    path = scenario.path.parent / spec["file"]
    try:
        tensors = load_file(path)
    except (OSError, SafetensorError) as e:
        raise ScenarioError(f"{scenario.where(op_index)}: cannot read delta file {path}: {e}") from e
    if spec["tensor"] not in tensors:
        raise ScenarioError(f"{scenario.where(op_index)}: {path} has no tensor {spec['tensor']!r} "
                            f"(has {sorted(tensors)})")
    return tensors[spec["tensor"]].float()


def play(scenario: Scenario, model: Mamba2ForCausalLM) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Run every op; return (tensors to write, HF branch per forward op)."""
    first = scenario.first_forward()
    player = HFCachePlayer(model, batch=first[1].shape[0] if first else 1)
    tensors, branches = {}, []
    vocab = model.config.vocab_size
    for i, op in enumerate(scenario.ops):
        kind = op["op"]
        try:
            if kind == "forward":
                tokens = op["tokens"]  # [B, T]
                if int(tokens.max()) >= vocab:
                    raise ValueError(f"token {int(tokens.max())} >= vocab_size {vocab}")
                if player.seqlen_offset > 0 and tokens.shape[0] != player.batch:
                    raise ValueError(f"batch {tokens.shape[0]} but the cache holds batch {player.batch}")
                branches.append(f"{i}:{player.branch(tokens.shape[1])}")
                tensors[f"op.{i}.logits"] = player.forward(tokens).contiguous()  # [B, T, V]
            elif kind == "inject":
                player.inject(op["layer"], load_delta(scenario, i))
            elif kind == "snapshot":
                player.snapshot(op["name"])
            elif kind == "restore":
                player.restore(op["name"])
            elif kind == "reset":
                player.reset()
        except ValueError as e:
            raise ScenarioError(f"{scenario.where(i)}: {e}") from e
    tensors.update(player.final_tensors())
    return tensors, branches


class UnclampedDtRecorder:
    """Context manager recording softplus(dt + dt_bias) [B, T, H] of every mixer call (before any clamp)."""

    def __init__(self, model: Mamba2ForCausalLM):
        self.model = model
        self.values: list[torch.Tensor] = []
        self.hooks = []

    def __enter__(self) -> "UnclampedDtRecorder":
        num_heads = self.model.config.num_heads
        for layer in self.model.backbone.layers:
            mixer = layer.mixer

            def record(_module, _inputs, projected, dt_bias=mixer.dt_bias):
                # in_proj output is [gate, xBC, dt]: dt is the last num_heads columns.
                self.values.append(torch.nn.functional.softplus(projected[..., -num_heads:] + dt_bias))

            self.hooks.append(mixer.in_proj.register_forward_hook(record))
        return self

    def __exit__(self, *exc) -> None:
        for hook in self.hooks:
            hook.remove()


def probe_decode_clamp(scenario: Scenario, model: Mamba2ForCausalLM) -> tuple[str, str]:
    """("true"|"false"|"n/a", evidence): does HF's single-token decode clamp Δt?

    Runs the first forward op's tokens [B, T] as one prefill and as prefill(1) + T-1 decode
    steps, each on a fresh cache, and compares the logits of positions 1..T-1. Δt above the
    limit is counted on the decode steps (from in_proj's dt columns), since a probe whose
    tokens never reach the limit cannot tell.
    """
    upper = float(model.config.time_step_limit[1])
    if not math.isfinite(upper):
        return "n/a", "time_step_limit upper bound is infinite"
    first = scenario.first_forward()
    if first is None or first[1].shape[1] < 2:
        return "n/a", "no forward op with 2 or more tokens to probe"
    op_index, tokens = first  # [B, T]
    full = HFCachePlayer(model).forward(tokens)[:, 1:]  # [B, T-1, V]

    stepper = HFCachePlayer(model)
    stepper.forward(tokens[:, :1])
    with UnclampedDtRecorder(model) as dts:
        steps = torch.cat([stepper.forward(tokens[:, t:t + 1]) for t in range(1, tokens.shape[1])], dim=1)

    rel = ((steps - full).abs().max() / full.abs().max()).item()
    above = torch.cat([dt.flatten() for dt in dts.values]) > upper
    evidence = (f"ops[{op_index}] tokens as 1 forward vs prefill(1) + {tokens.shape[1] - 1} decode steps: "
                f"max|diff|/max|logit| {rel:.2e}; Δt > {upper:g} on {100.0 * above.float().mean().item():.0f}% "
                f"of decode (token, layer, head)")
    if not above.any():
        return "n/a", evidence + " (clamp never engaged: cannot tell)"
    return ("false" if rel > CLAMP_PROBE_REL_THRESHOLD else "true"), evidence


def write_atomic(tensors: dict[str, torch.Tensor], metadata: dict[str, str], out: Path) -> None:
    """save_file to a temporary file next to `out`, then os.replace: readers never see half a file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class Exporter:
    """Exports scenarios, loading each model directory once per process."""

    models: dict[Path, Mamba2ForCausalLM] = field(default_factory=dict)

    def model(self, model_dir: Path) -> Mamba2ForCausalLM:
        if model_dir not in self.models:
            self.models[model_dir] = load_model(model_dir)
        return self.models[model_dir]

    def export(self, scenario_path: Path, out: Path) -> str:
        """Write one scenario's tensors to `out`; return a one-line summary."""
        scenario = load_scenario(scenario_path)
        model = self.model(scenario.model_dir)
        with torch.no_grad():
            tensors, branches = play(scenario, model)
            clamps, evidence = probe_decode_clamp(scenario, model)
        metadata = {
            "exporter": f"transformers {transformers.__version__}",
            "scenario": scenario_path.name,
            "compute_dtype": "float32",
            "hf_branches": " ".join(branches),
            "hf_decode_clamps_dt": clamps,
            "hf_decode_clamp_probe": evidence,
        }
        write_atomic(tensors, metadata, out)
        return f"{scenario_path} -> {out}  [{' '.join(branches)}]  hf_decode_clamps_dt={clamps}"


def scenario_files(root: Path) -> list[Path]:
    """Every scenario file under `root` (JSON files of another format, e.g. config.json, are skipped)."""
    found = []
    for path in sorted(root.rglob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(doc, dict) and doc.get("format") == SCENARIO_FORMAT:
            found.append(path)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", nargs="?", type=Path, help="scenario JSON file")
    parser.add_argument("--out", type=Path, help="output .safetensors (with SCENARIO)")
    parser.add_argument("--all", type=Path, metavar="DIR_IN", help="export every scenario under DIR_IN")
    parser.add_argument("--out-dir", type=Path, metavar="DIR_OUT",
                        help="with --all: DIR_IN/a/b.json is written to DIR_OUT/a/b.safetensors")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the corpus models are tiny, and with more "
                             "threads the export was 2-6x slower on a loaded 2-core host; one thread also "
                             "keeps reduction order, hence the bytes, independent of the host)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    args = parser.parse_args(argv)

    if args.all is not None:
        if args.scenario is not None or args.out is not None or args.out_dir is None:
            parser.error("use either SCENARIO --out OUT or --all DIR_IN --out-dir DIR_OUT")
        jobs = [(p, args.out_dir / p.relative_to(args.all).with_suffix(".safetensors"))
                for p in scenario_files(args.all)]
        if not jobs:
            parser.error(f"--all: no {SCENARIO_FORMAT} scenario under {args.all}")
    else:
        if args.scenario is None or args.out is None or args.out_dir is not None:
            parser.error("use either SCENARIO --out OUT or --all DIR_IN --out-dir DIR_OUT")
        jobs = [(args.scenario, args.out)]

    torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()  # the "falling back to PyTorch" notices
    transformers.utils.logging.disable_progress_bar()
    exporter, failures = Exporter(), 0
    for scenario_path, out in jobs:
        try:
            line = exporter.export(scenario_path, out)
            if not args.quiet:
                print(line)
        except ScenarioError as e:
            print(f"hf_export: {e}", file=sys.stderr)
            failures += 1
    return 2 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
