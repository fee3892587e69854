"""The shared driver of the ecosystem exporters: plays a mambadiff.scenario.v1 scenario on a Mamba2
model whose mixer kernels come from a backend (mamba_ssm, vllm, stand_in), and writes what
``mambadiff run`` writes (SPEC §5), so that ``mambadiff diff --paths reference,file:X`` and
``mambadiff check --external NAME=DIR`` compare it.

The model around the kernels is HF transformers' own ``Mamba2ForCausalLM`` modules (embedding,
block RMSNorm, in_proj, out_proj, norm_f, lm_head, in the run dtype, residual as ``Mamba2Block``
keeps it): the mixer's kernel calls are the backend's, made the way the system's own mixer makes
them (HF's fast path for mamba_ssm, vLLM's MambaMixer2 for vllm). The driver owns the cache (one
conv window [B, conv_dim, K] and one SSM state [B, H, P, N] per layer, in the dtypes the backend
chooses) and dispatches as SPEC §3 does: prefill on an empty cache, step for T == 1 on a non-empty
one, continue otherwise -- which is also how HF 5.x and vLLM pick their branch.

Written tensors (float32 unless said):
  op.<i>.logits            [B, T, V]
  op.<i>.layer.<l>         [B, T, D]   the residual stream after layer l (locates a divergence's layer)
  cache.ssm_states.<l>     [B, H, P, N]
  cache.conv_states.<l>    [B, conv_dim, K]
  cache.seqlen_offset      [1] int64
Metadata: ``exporter``, ``backend``, ``versions`` (JSON), ``environment`` (JSON: TRITON_INTERPRET,
TRITON_F32_DEFAULT, forced configs, ...), ``dtype`` (the run dtype), ``device``,
``scenario``, ``check_seed`` (when the scenario came from ``check --emit-scenarios``),
``dispatch_trace`` (JSON [{op, layer, branch, kernels}] with mambadiff's logical kernel names, so
a different dispatch is found at its op and layer) and ``implementations`` (JSON: per forward op,
the functions that actually ran, e.g. ``mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined``
or ``torch reference (causal_conv1d not importable)``), plus the backend's own notes.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tools/: hf_export's scenario reader and writer
import hf_export  # noqa: E402
from hf_export import ScenarioError  # noqa: E402

# mambadiff's logical kernel names per branch (engine/mamba2_cache.cpp logical_kernels): the
# dispatch trace names the op a branch runs, whatever implements it.
LOGICAL_KERNELS = {
    "prefill": "causal_conv1d+ssd_chunk_scan+gated_rms_norm",
    "continue": "causal_conv1d+ssd_chunk_scan+gated_rms_norm",
    "step": "causal_conv1d_update+selective_state_update+gated_rms_norm",
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Unsupported(Exception):
    """The backend cannot run this case (a dtype, a shape): the export is skipped, with the reason."""


@dataclass
class LayerWeights:
    """One mixer's parameters, as its system holds them."""

    conv_weight: torch.Tensor  # [conv_dim, K]
    conv_bias: torch.Tensor | None  # [conv_dim]
    dt_bias: torch.Tensor  # [H]
    A: torch.Tensor  # [H] float32, -exp(A_log) of the A_log parameter as HF holds it in the run dtype
    A_checkpoint: torch.Tensor  # [H] float32, -exp(A_log) of the stored A_log (what vLLM's loader computes)
    D: torch.Tensor  # [H]
    norm_weight: torch.Tensor  # [d_inner]


@dataclass
class ModelShape:
    d_inner: int
    conv_dim: int
    num_heads: int
    head_dim: int
    n_groups: int
    state_size: int
    conv_kernel: int
    chunk_size: int
    time_step_limit: tuple[float, float]
    norm_eps: float
    norm_group_size: int  # d_inner for HF's ungrouped gated norm, d_inner / G for mamba_ssm's grouped one

    @staticmethod
    def of(config) -> "ModelShape":
        d_inner = int(config.expand * config.hidden_size)
        grouped = getattr(config, "mambadiff_gated_norm", "ungrouped") == "grouped"
        return ModelShape(
            d_inner=d_inner, conv_dim=d_inner + 2 * config.n_groups * config.state_size, num_heads=config.num_heads,
            head_dim=config.head_dim, n_groups=config.n_groups, state_size=config.state_size,
            conv_kernel=config.conv_kernel, chunk_size=config.chunk_size,
            time_step_limit=(float(config.time_step_limit[0]), float(config.time_step_limit[1])),
            norm_eps=float(config.layer_norm_epsilon),
            norm_group_size=d_inner // config.n_groups if grouped else d_inner)


@dataclass
class LayerCache:
    conv: torch.Tensor  # [B, conv_dim, K], the last K pre-conv inputs (zeros on the left), run dtype
    ssm: torch.Tensor  # [B, H, P, N], in the backend's state dtype

    def clone(self) -> "LayerCache":
        return LayerCache(self.conv.clone(), self.ssm.clone())


class Backend:
    """The kernels of one system. Subclasses implement conv, scan, step and gated_norm the way the
    system's own mixer calls them, and say what ran in `implementations`."""

    name = "?"

    def __init__(self, device: torch.device):
        self.device = device
        self.implementations: dict[str, str] = {}  # logical op -> what ran
        self.notes: dict[str, str] = {}

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__}

    def check_supported(self, dtype: torch.dtype, shape: ModelShape) -> None:
        """Raise Unsupported for a case the system cannot run."""

    def state_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The SSM state's dtype for a run in `dtype` (the system's own choice)."""
        return torch.float32

    # xBC: [B, T, conv_dim]; cache.conv updated in place; returns SiLU(conv(xBC)) [B, T, conv_dim].
    def conv(self, branch: str, xBC: torch.Tensor, cache: LayerCache, w: LayerWeights, shape: ModelShape) -> torch.Tensor:
        raise NotImplementedError

    # x: [B, T, H, P], dt: [B, T, H] (before bias and softplus), B_, C: [B, T, G, N]; initial: [B, H, P, N] or
    # None. Returns (y [B, T, H, P], final state [B, H, P, N]).
    def scan(self, x, dt, B_, C, initial, w: LayerWeights, shape: ModelShape):
        raise NotImplementedError

    # One token: x [B, H, P], dt [B, H], B_, C [B, G, N]; updates state [B, H, P, N] in place; y [B, H, P].
    def step(self, state, x, dt, B_, C, w: LayerWeights, shape: ModelShape):
        raise NotImplementedError

    # y, gate: [B, T, d_inner] -> [B, T, d_inner]: weight * RMSNorm(y * SiLU(gate)) (groups of norm_group_size).
    def gated_norm(self, y, gate, w: LayerWeights, shape: ModelShape):
        raise NotImplementedError


def conv_window_after(cache_conv: torch.Tensor, xBC_t: torch.Tensor, continuing: bool) -> torch.Tensor:
    """The last K pre-conv inputs after xBC_t [B, conv_dim, T]: the cached window's history when
    continuing, zeros on the left otherwise. [B, conv_dim, K]."""
    K = cache_conv.shape[-1]
    history = cache_conv if continuing else torch.zeros_like(cache_conv)
    return torch.cat([history, xBC_t.to(cache_conv.dtype)], dim=-1)[..., -K:]


class KernelModel:
    """HF's Mamba2 modules around a backend's mixer kernels, with mambadiff's cache semantics."""

    def __init__(self, model, backend: Backend, dtype: torch.dtype, a_checkpoint: list[torch.Tensor]):
        self.model, self.backend, self.dtype = model, backend, dtype
        self.config = model.config
        self.shape = ModelShape.of(self.config)
        backend.check_supported(dtype, self.shape)
        self.layers = []
        for block, a_ckpt in zip(model.backbone.layers, a_checkpoint):
            m = block.mixer
            self.layers.append(LayerWeights(
                conv_weight=m.conv1d.weight.squeeze(1), conv_bias=m.conv1d.bias, dt_bias=m.dt_bias,
                A=-torch.exp(m.A_log.float()), A_checkpoint=a_ckpt.to(backend.device), D=m.D,
                norm_weight=m.norm.weight))

    def new_cache(self, batch: int) -> list[LayerCache]:
        s, dev = self.shape, self.backend.device
        return [LayerCache(torch.zeros(batch, s.conv_dim, s.conv_kernel, dtype=self.dtype, device=dev),
                           torch.zeros(batch, s.num_heads, s.head_dim, s.state_size,
                                       dtype=self.backend.state_dtype(self.dtype), device=dev))
                for _ in self.layers]

    def mixer(self, l: int, h: torch.Tensor, cache: LayerCache, branch: str) -> torch.Tensor:
        """h: [B, T, D] normed hidden states -> mixer output [B, T, D] (HF Mamba2Mixer.forward's order)."""
        s, w, be = self.shape, self.layers[l], self.backend
        m = self.model.backbone.layers[l].mixer
        Bsz, T, _ = h.shape
        projected = m.in_proj(h)  # [B, T, d_inner + conv_dim + H]
        gate, xBC, dt = projected.split([s.d_inner, s.conv_dim, s.num_heads], dim=-1)
        xBC = be.conv(branch, xBC, cache, w, s)  # [B, T, conv_dim]
        x, B_, C = torch.split(xBC, [s.d_inner, s.n_groups * s.state_size, s.n_groups * s.state_size], dim=-1)
        if branch == "step":
            y = be.step(cache.ssm, x.reshape(Bsz, s.num_heads, s.head_dim), dt.reshape(Bsz, s.num_heads),
                        B_.reshape(Bsz, s.n_groups, s.state_size), C.reshape(Bsz, s.n_groups, s.state_size), w, s)
            y = y.reshape(Bsz, 1, s.d_inner)
        else:
            y, final = be.scan(x.reshape(Bsz, T, s.num_heads, s.head_dim), dt,
                               B_.reshape(Bsz, T, s.n_groups, s.state_size), C.reshape(Bsz, T, s.n_groups, s.state_size),
                               cache.ssm if branch == "continue" else None, w, s)
            cache.ssm.copy_(final.to(cache.ssm.dtype))
            y = y.reshape(Bsz, T, s.d_inner)
        y = be.gated_norm(y, gate, w, s)
        return m.out_proj(y.to(self.dtype))

    def forward(self, tokens: torch.Tensor, caches: list[LayerCache], branch: str):
        """tokens [B, T] -> (logits [B, T, V] float32, per-layer residual streams [B, T, D] float32)."""
        bb = self.model.backbone
        x = bb.embeddings(tokens.to(self.backend.device))
        outputs = []
        for l, block in enumerate(bb.layers):
            residual = x
            h = block.norm(x.to(dtype=block.norm.weight.dtype))
            if block.residual_in_fp32:
                residual = residual.to(torch.float32)
            x = residual + self.mixer(l, h, caches[l], branch)
            outputs.append(x.float().cpu())
        logits = self.model.lm_head(bb.norm_f(x).to(self.model.lm_head.weight.dtype))
        return logits.float().cpu(), outputs


@dataclass
class KernelPlayer:
    """Plays scenario ops on a KernelModel with mambadiff's cache semantics (SPEC §3)."""

    km: KernelModel
    batch: int
    snapshots: dict = field(default_factory=dict)

    def __post_init__(self):
        self.reset()

    def reset(self):
        self.caches = self.km.new_cache(self.batch)
        self.seqlen_offset = 0

    def branch(self, T: int) -> str:
        if self.seqlen_offset == 0:
            return "prefill"
        return "step" if T == 1 else "continue"

    def forward(self, tokens: torch.Tensor, branch: str):
        logits, layers = self.km.forward(tokens, self.caches, branch)
        self.seqlen_offset += tokens.shape[1]
        return logits, layers

    def inject(self, layer: int, delta: torch.Tensor):
        n = len(self.caches)
        if not 0 <= layer < n:
            raise ValueError(f"layer {layer} out of range [0, {n})")
        state = self.caches[layer].ssm  # [B, H, P, N]
        if tuple(delta.shape) not in (tuple(state.shape), tuple(state.shape[1:])):
            raise ValueError(f"delta shape {list(delta.shape)} is neither [B, H, P, N] = {list(state.shape)} "
                             f"nor [H, P, N] = {list(state.shape[1:])}")
        # In the state's own dtype, as a user of the system adds to its cache tensor.
        state.add_(delta.to(device=state.device, dtype=state.dtype))

    def snapshot(self, name: str):
        self.snapshots[name] = ([c.clone() for c in self.caches], self.seqlen_offset)

    def restore(self, name: str):
        if name not in self.snapshots:
            raise ValueError(f"no snapshot named {name!r}")
        caches, offset = self.snapshots[name]
        for dst, src in zip(self.caches, caches):  # in place: the system's cache storage stays where it is
            dst.conv.copy_(src.conv)
            dst.ssm.copy_(src.ssm)
        self.seqlen_offset = offset

    def final_tensors(self) -> dict[str, torch.Tensor]:
        t = {}
        for l, c in enumerate(self.caches):
            t[f"cache.ssm_states.{l}"] = c.ssm.float().cpu().contiguous()
            t[f"cache.conv_states.{l}"] = c.conv.float().cpu().contiguous()
        t["cache.seqlen_offset"] = torch.tensor([self.seqlen_offset], dtype=torch.int64)
        return t


def scenario_dtype(path: Path) -> str:
    doc = json.loads(path.read_text())
    name = doc.get("dtype", "float32")
    if name not in DTYPES:
        raise ScenarioError(f"{path}: key 'dtype': {name!r} is not one of {sorted(DTYPES)}")
    return name


def check_seed_of(path: Path) -> str | None:
    """The base seed of `check --emit-scenarios`' manifest beside (or above) the scenario, if any."""
    for d in (path.parent, path.parent.parent):
        m = d / "manifest.json"
        if m.is_file():
            try:
                return str(json.loads(m.read_text())["seed"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
    return None


def play(scenario, player, trace_layers: int):
    """Runs every op; returns (tensors, dispatch trace entries, implementations per forward op)."""
    tensors, trace, impls = {}, [], []
    vocab = player.km.config.vocab_size
    for i, op in enumerate(scenario.ops):
        kind = op["op"]
        try:
            if kind == "forward":
                tokens = op["tokens"]  # [B, T]
                if int(tokens.max()) >= vocab:
                    raise ValueError(f"token {int(tokens.max())} >= vocab_size {vocab}")
                if tokens.shape[0] != player.batch:
                    raise ValueError(f"batch {tokens.shape[0]} but the cache holds batch {player.batch}")
                branch = player.branch(tokens.shape[1])
                player.km.backend.implementations = {}
                logits, layers = player.forward(tokens, branch)
                tensors[f"op.{i}.logits"] = logits.contiguous()
                for l, out in enumerate(layers):
                    tensors[f"op.{i}.layer.{l}"] = out.contiguous()
                trace += [{"op": i, "layer": l, "branch": branch, "kernels": LOGICAL_KERNELS[branch]}
                          for l in range(trace_layers)]
                impls.append({"op": i, "branch": branch, **player.km.backend.implementations})
            elif kind == "inject":
                player.inject(op["layer"], hf_export.load_delta(scenario, i))
            elif kind == "snapshot":
                player.snapshot(op["name"])
            elif kind == "restore":
                player.restore(op["name"])
            elif kind == "reset":
                player.reset()
        except ValueError as e:
            raise ScenarioError(f"{scenario.where(i)}: {e}") from e
    tensors.update(player.final_tensors())
    return tensors, trace, impls


@dataclass
class Exporter:
    """Exports scenarios with one backend, loading each model once per (directory, dtype)."""

    backend: Backend
    models: dict = field(default_factory=dict)

    def model(self, model_dir: Path, dtype: torch.dtype):
        key = (model_dir, dtype)
        if key not in self.models:
            model = hf_export.load_model(model_dir)  # fp32 on the CPU, HF's own loader
            a_checkpoint = [-torch.exp(b.mixer.A_log.detach().float()) for b in model.backbone.layers]
            self.models[key] = KernelModel(model.to(device=self.backend.device, dtype=dtype), self.backend, dtype,
                                           a_checkpoint)
        return self.models[key]

    def export(self, scenario_path: Path, out: Path) -> str:
        scenario = hf_export.load_scenario(scenario_path)
        dtype_name = scenario_dtype(scenario_path)
        km = self.model(scenario.model_dir, DTYPES[dtype_name])
        first = scenario.first_forward()
        player = KernelPlayer(km, batch=first[1].shape[0] if first else 1)
        with torch.no_grad():
            tensors, trace, impls = play(scenario, player, len(km.layers))
        metadata = {
            "exporter": f"tools/ecosystem/export.py --backend {self.backend.name}",
            "backend": self.backend.name,
            "versions": json.dumps(self.backend.versions(), sort_keys=True),
            "dtype": dtype_name,
            "state_dtype": str(self.backend.state_dtype(DTYPES[dtype_name])).replace("torch.", ""),
            "device": str(self.backend.device) + (f" ({torch.cuda.get_device_name()})" if self.backend.device.type == "cuda" else ""),
            "scenario": scenario_path.name,
            "dispatch_trace": json.dumps(trace),
            "implementations": json.dumps(impls),
            "environment": json.dumps(environment_flags(), sort_keys=True),
            **{f"note.{k}": v for k, v in self.backend.notes.items()},
        }
        seed = check_seed_of(scenario_path)
        if seed is not None:
            metadata["check_seed"] = seed
        hf_export.write_atomic(tensors, metadata, out)
        branches = " ".join(f"{x['op']}:{x['branch']}" for x in impls)
        return f"{scenario_path} -> {out}  [{branches}]"


def environment_flags() -> dict[str, str]:
    """The settings that change what the kernels compute or which config they launch with."""
    return {k: os.environ[k] for k in ("TRITON_INTERPRET", "MAMBA_DETERMINISTIC", "VLLM_TRITON_FORCE_FIRST_CONFIG",
                                       "TRITON_F32_DEFAULT", "MAMBADIFF_VLLM_SSM_CACHE_DTYPE",
                                       "MAMBADIFF_STAND_IN_SOFTPLUS") if k in os.environ}
