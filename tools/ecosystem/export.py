#!/usr/bin/env python3
"""Play mambadiff scenarios on the ecosystem's Mamba2 kernels and export SPEC §5 tensors.

  export.py --backend mamba_ssm SCENARIO.json --out OUT.safetensors
  export.py --backend vllm --all SCENARIO_DIR --out-dir EXPORT_DIR     (one process for a whole tree)

Backends (docs/external.md):
  mamba_ssm  mamba_ssm's Triton kernels, called as HF transformers' fast path calls them
  vllm       vLLM's Mamba2 Triton ops, called as its MambaMixer2 calls them
  hf_fast    HF transformers' own Mamba2ForCausalLM with mamba_ssm importable (its fast path)
  stand_in   plain torch: tests the driver on any CPU
The kernels' sources come from --ecosystem DIR (default .device/ecosystem, written by
tools/fetch_ecosystem_kernels.sh): DIR and DIR/site go first on sys.path.

With --all, the files mirror the tree (SCENARIO_DIR/m/s.json -> EXPORT_DIR/m/s.safetensors), as
`mambadiff check --external NAME=EXPORT_DIR` reads them. A scenario the backend cannot run writes
EXPORT_DIR/m/s.skipped (the reason), one whose kernels fail writes EXPORT_DIR/m/s.error (the
message): check reports them as skipped and error cases. Exit status: 0 written (skips and kernel
errors included: check reports them), 2 bad input (one line naming the file, key or tensor).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def put_ecosystem_on_path(ecosystem: Path | None) -> None:
    if ecosystem is None:
        return
    for p in (ecosystem / "site", ecosystem):
        if p.is_dir():
            sys.path.insert(0, str(p))


def allow_cpu_tensors_in_triton_kernels() -> None:
    """mamba_ssm wraps its launches in `with torch.cuda.device(x.device.index)`, which fails for CPU
    tensors (REFERENCE.md, "Running the ecosystem's Triton kernels on the CPU"); under Triton's
    interpreter that context does nothing useful, so a CPU index gets a null context."""
    import torch

    real = torch.cuda.device

    class device_or_null:  # noqa: N801 (stands in for the class torch.cuda.device)
        def __init__(self, index):
            self.ctx = contextlib.nullcontext() if index is None else real(index)

        def __enter__(self):
            return self.ctx.__enter__()

        def __exit__(self, *exc):
            return self.ctx.__exit__(*exc)

    torch.cuda.device = device_or_null


class HFFast:
    """HF transformers' own model and cache (tools/hf_export.py's player) with mamba_ssm importable:
    its fast path, in the scenario's dtype on the device. Which implementation HF picked for each
    kernel is read off its wrappers."""

    name = "hf_fast"

    def __init__(self, device):
        import torch  # noqa: F401
        import transformers.models.mamba2.modeling_mamba2 as mm

        self.device, self.mm = device, mm
        self.models = {}
        self.picked = {}
        for fn in ("causal_conv1d_fn", "causal_conv1d_update", "mamba2_chunk_scan", "mamba2_selective_state_update"):
            wrapped = getattr(mm, fn)
            impl = "?"
            for cell in (wrapped.__closure__ or ()):
                c = cell.cell_contents
                if callable(c) and getattr(c, "__module__", None) and c is not getattr(wrapped, "__wrapped__", None):
                    impl = f"{c.__module__}.{c.__qualname__}"
            if impl == "?" or impl.startswith("transformers."):
                impl = f"transformers torch fallback ({fn})"
            self.picked[fn] = impl

    def export(self, scenario_path: Path, out: Path) -> str:
        import torch
        import transformers

        import driver
        import hf_export

        scenario = hf_export.load_scenario(scenario_path)
        dtype_name = driver.scenario_dtype(scenario_path)
        if self.device.type == "cpu" and dtype_name == "bfloat16":
            raise driver.Unsupported("bf16 under Triton's CPU interpreter: its tl.dot multiplies raw bf16 bits "
                                     "(triton #11584); bf16 is checked on the GPU")
        key = (scenario.model_dir, dtype_name)
        if key not in self.models:
            self.models[key] = hf_export.load_model(scenario.model_dir).to(self.device, driver.DTYPES[dtype_name])
        model = self.models[key]
        first = scenario.first_forward()
        player = hf_export.HFCachePlayer(model, batch=first[1].shape[0] if first else 1)
        tensors, trace = {}, []
        with torch.no_grad():
            for i, op in enumerate(scenario.ops):
                try:
                    if op["op"] == "forward":
                        tokens = op["tokens"].to(self.device)
                        branch = {"prefill": "prefill", "decode": "step", "continue": "continue"}[player.branch(tokens.shape[1])]
                        outputs = {}  # the residual stream after each block: op.<i>.layer.<l> [B, T, D]
                        hooks = [b.register_forward_hook(lambda _m, _in, out, l=l: outputs.__setitem__(l, out))
                                 for l, b in enumerate(model.backbone.layers)]
                        try:
                            tensors[f"op.{i}.logits"] = player.forward(tokens).float().cpu().contiguous()
                        finally:
                            for h in hooks:
                                h.remove()
                        for l in sorted(outputs):
                            tensors[f"op.{i}.layer.{l}"] = outputs[l].float().cpu().contiguous()
                        trace += [{"op": i, "layer": l, "branch": branch, "kernels": driver.LOGICAL_KERNELS[branch]}
                                  for l in range(model.config.num_hidden_layers)]
                    elif op["op"] == "inject":
                        player.inject(op["layer"], hf_export.load_delta(scenario, i).to(self.device))
                    elif op["op"] == "snapshot":
                        player.snapshot(op["name"])
                    elif op["op"] == "restore":
                        player.restore(op["name"])
                    elif op["op"] == "reset":
                        player.reset()
                except ValueError as e:
                    raise hf_export.ScenarioError(f"{scenario.where(i)}: {e}") from e
        final = player.final_tensors()
        tensors.update({k: v.cpu() for k, v in final.items()})
        metadata = {
            "exporter": "tools/ecosystem/export.py --backend hf_fast",
            "backend": "hf_fast",
            "versions": json.dumps({"transformers": transformers.__version__, "torch": torch.__version__,
                                    **{k: v for k, v in ecosystem_versions().items()
                                       if k not in ("vllm", "causal_conv1d", "ninja")},
                                    **causal_conv1d_version()}, sort_keys=True),
            "dtype": dtype_name,
            "device": str(self.device),
            "scenario": scenario_path.name,
            "dispatch_trace": json.dumps(trace),
            "implementations": json.dumps(self.picked),
        }
        seed = driver.check_seed_of(scenario_path)
        if seed is not None:
            metadata["check_seed"] = seed
        hf_export.write_atomic(tensors, metadata, out)
        return f"{scenario_path} -> {out}  [hf_fast: {self.picked['mamba2_chunk_scan']}]"


def causal_conv1d_version() -> dict[str, str]:
    """{"causal_conv1d": version} when its CUDA extension imports (HF then calls it), else {}."""
    try:
        import causal_conv1d
        import causal_conv1d_cuda  # noqa: F401
    except Exception:  # noqa: BLE001 (any import failure means: HF runs its torch conv)
        return {}
    return {"causal_conv1d": getattr(causal_conv1d, "__version__", "?")}


def ecosystem_versions() -> dict[str, str]:
    """The versions tools/fetch_ecosystem_kernels.sh recorded beside the sources (VERSIONS.json)."""
    for p in sys.path:
        f = Path(p) / "VERSIONS.json"
        if f.is_file():
            try:
                return {k: str(v) for k, v in json.loads(f.read_text()).items() if not k.endswith("sha256")}
            except (OSError, ValueError, AttributeError):
                return {}
    return {}


def scenario_jobs(root: Path, out_dir: Path, dtypes: set[str] | None) -> list[tuple[Path, Path]]:
    import hf_export

    manifest = root / "manifest.json"
    if manifest.is_file():  # check --emit-scenarios: its order and its dtype per case
        cases = json.loads(manifest.read_text())["cases"]
        return [(root / c["file"], out_dir / c["export"]) for c in cases if dtypes is None or c["dtype"] in dtypes]
    jobs = [(p, out_dir / p.relative_to(root).with_suffix(".safetensors")) for p in hf_export.scenario_files(root)]
    if dtypes is not None:
        import driver
        jobs = [(p, o) for p, o in jobs if driver.scenario_dtype(p) in dtypes]
    return jobs


def marker(out: Path, suffix: str, text: str) -> None:
    """EXPORT_DIR/m/s.skipped or .error: what check --external reports instead of an export."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for other in (".safetensors", ".skipped", ".error"):
        out.with_suffix(other).unlink(missing_ok=True)
    out.with_suffix(suffix).write_text(text.strip() + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", nargs="?", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--all", type=Path, metavar="SCENARIO_DIR")
    parser.add_argument("--out-dir", type=Path, metavar="EXPORT_DIR")
    parser.add_argument("--backend", required=True, choices=["stand_in", "mamba_ssm", "vllm", "hf_fast"])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--dtypes", default=None, help="with --all: only these scenario dtypes (comma-separated)")
    parser.add_argument("--ecosystem", type=Path, default=REPO / ".device" / "ecosystem",
                        help="the extracted kernel sources (tools/fetch_ecosystem_kernels.sh)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)

    if (args.all is None) == (args.scenario is None) or (args.all is not None) != (args.out_dir is not None) \
            or (args.scenario is not None) != (args.out is not None):
        parser.error("use either SCENARIO --out OUT or --all SCENARIO_DIR --out-dir EXPORT_DIR")

    put_ecosystem_on_path(args.ecosystem if args.backend != "stand_in" else None)
    sys.path[:0] = [str(HERE), str(HERE.parent)]  # driver and backends; tools/hf_export.py
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and args.backend != "stand_in":
        os.environ.setdefault("TRITON_INTERPRET", "1")
        allow_cpu_tensors_in_triton_kernels()

    import hf_export  # noqa: F401  (after the ecosystem is on sys.path: HF picks its kernels at import)
    import transformers

    import driver
    from backends import make_backend

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    exporter = HFFast(device) if args.backend == "hf_fast" else driver.Exporter(make_backend(args.backend, device))
    dtypes = set(args.dtypes.split(",")) if args.dtypes else None
    if args.all is not None:
        jobs = scenario_jobs(args.all, args.out_dir, dtypes)
        if not jobs:
            parser.error(f"--all: no scenario under {args.all}")
    else:
        jobs = [(args.scenario, args.out)]
    bad = 0
    for scenario_path, out in jobs:
        t0 = time.monotonic()
        try:
            line = exporter.export(scenario_path, out)
            for stale in (".skipped", ".error"):
                out.with_suffix(stale).unlink(missing_ok=True)
            if not args.quiet:
                print(f"{line}  {time.monotonic() - t0:.2f} s", flush=True)
        except hf_export.ScenarioError as e:
            print(f"export: {e}", file=sys.stderr)
            bad += 1
        except driver.Unsupported as e:
            if args.all is None:
                print(f"export: {scenario_path}: {args.backend} cannot run it: {e}", file=sys.stderr)
                bad += 1
            else:
                marker(out, ".skipped", f"{args.backend}: {e}")
                print(f"{scenario_path}: skipped ({e})", flush=True)
        except Exception as e:  # a kernel's failure: reported as an error case, the batch goes on
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            msg = f"{args.backend} raised {type(e).__name__}: {first}"
            if args.all is None:
                traceback.print_exc()
                return 3
            marker(out, ".error", msg)
            print(f"{scenario_path}: ERROR {msg}", flush=True)
    return 2 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
