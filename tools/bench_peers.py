#!/usr/bin/env python3
"""Time the ecosystem's Mamba2 kernels at `mambadiff bench`'s shapes, on the same card in the same
run (scripts/gpu_bench.sh; docs/bench.md): mamba_ssm's Triton `mamba_chunk_scan_combined` and
`selective_state_update`, and vLLM's `mamba_chunk_scan_combined_varlen` and `selective_state_update`,
from the sources tools/fetch_ecosystem_kernels.sh extracts into .device/ecosystem.

  tools/bench_peers.py --out peers.json [--ecosystem DIR] [--what scan,state-update]
                       [--systems mamba_ssm,vllm] [--warmup-ms 25] [--rep-ms 200] [--no-initial-states]
  tools/bench_peers.py --device cpu --small --out /tmp/p.json   # a dry run under Triton's interpreter

The calls do the work `mambadiff bench` times (bench/scan_ops.h): the scan reads bf16 x/B/C, fp32 dt
(already discretized: no dt_bias, no softplus in the kernel), A and D, and an fp32 initial state
(shared/anchors/mamba_ssm_kernels.py passes none: --no-initial-states measures that), and returns y
and the final state; the state update reads bf16 x/B/C and updates an fp32 state in place with
dt_bias and softplus (the anchor's call, which our step does outside the kernel: a few flops per
head). vLLM's scan packs the batch as varlen sequences (cu_seqlens, chunk metadata as its Mamba2
metadata builder computes it: once per batch, outside the timing) and writes the final states into
cache slots; its state update reads and writes state slots by index (slot 0 is vLLM's null block).

Timing: triton.testing.do_bench (CUDA events around each call after a 256 MB L2 flush; median,
p10 and p90 of the calls that fit in --rep-ms), autotuning on (what deploys; the first call of
each shape tunes and is not timed). On the CPU (--device cpu) the interpreter runs and wall-clock
medians of a few calls are recorded: only a check that the calls are right, never a figure.
A call that raises is recorded under "errors" and the others still run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ECOSYSTEM_TOOLS = HERE / "ecosystem"

# `mambadiff bench`'s GPU shapes (bench/benchmark.cpp): (b, L, h, p, g, n) with chunk 256, and the
# state update's (b, h, p, g, n). --small: shapes the CPU interpreter runs in seconds.
SCAN_SHAPES = [(8, 8192, 80, 64, 1, 128), (4, 4096, 64, 64, 8, 128), (1, 2048, 24, 64, 1, 128)]
STEP_SHAPES = [(1, 80, 64, 1, 128), (64, 80, 64, 1, 128)]
SMALL_SCAN_SHAPES = [(2, 64, 4, 16, 2, 16)]
SMALL_STEP_SHAPES = [(2, 4, 16, 1, 16)]
CHUNK = 256
SMALL_CHUNK = 16


def scan_label(b, L, h, p, g, n):
    return f"b{b} L{L} h{h} p{p} g{g} n{n}"  # ScanShape::label() in bench/op_costs.cpp


def step_label(b, h, p, g, n):
    return f"b{b} h{h} p{p} g{g} n{n}"  # ScanShape::step_label()


class Timer:
    """do_bench on a GPU; wall-clock on the CPU interpreter (a plumbing check, not a figure)."""

    def __init__(self, device, warmup_ms, rep_ms):
        self.device, self.warmup_ms, self.rep_ms = device, warmup_ms, rep_ms
        self.method = (f"triton.testing.do_bench(warmup={warmup_ms}, rep={rep_ms}, quantiles=[0.5, 0.1, 0.9])"
                       if device.type == "cuda" else "wall clock, 3 calls, Triton interpreter (not a figure)")

    def __call__(self, fn):
        fn()  # the first call compiles and autotunes; not timed
        if self.device.type == "cuda":
            from triton.testing import do_bench

            median, p10, p90 = do_bench(fn, warmup=self.warmup_ms, rep=self.rep_ms, quantiles=[0.5, 0.1, 0.9])
            return median, p10, p90
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts), min(ts), max(ts)


def scan_inputs(torch, shape, dtype, device, initial):
    """shared/anchors/mamba_ssm_kernels.py's inputs (x, B, C standard normal; dt = softplus(N - 4);
    A in [-4.5, -0.5]; D standard normal), plus an fp32 initial state."""
    b, L, h, p, g, n = shape
    torch.manual_seed(0)
    return dict(
        x=torch.randn(b, L, h, p, device=device, dtype=dtype),
        dt=torch.nn.functional.softplus(torch.randn(b, L, h, device=device) - 4),
        A=-torch.rand(h, device=device) * 4 - 0.5,
        B=torch.randn(b, L, g, n, device=device, dtype=dtype),
        C=torch.randn(b, L, g, n, device=device, dtype=dtype),
        D=torch.randn(h, device=device),
        initial=torch.randn(b, h, p, n, device=device) if initial else None,
    )


def step_inputs(torch, shape, dtype, device):
    """The anchor's selective_state_update inputs: fp32 state, bf16 x/B/C, dt/A/D/dt_bias expanded
    over head_dim (stride 0), as HF and vLLM expand them."""
    b, h, p, g, n = shape
    torch.manual_seed(0)
    return dict(
        state=torch.randn(b, h, p, n, device=device),
        x=torch.randn(b, h, p, device=device, dtype=dtype),
        dt=torch.randn(b, h, device=device)[:, :, None].expand(b, h, p),
        A=(-torch.rand(h, device=device))[:, None, None].expand(h, p, n),
        B=torch.randn(b, g, n, device=device, dtype=dtype),
        C=torch.randn(b, g, n, device=device, dtype=dtype),
        D=torch.randn(h, device=device)[:, None].expand(h, p),
        dt_bias=torch.randn(h, device=device)[:, None].expand(h, p),
    )


def mamba_ssm_calls(torch, chunk):
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    def scan(t):
        call = (f"mamba_chunk_scan_combined(x, dt, A, B, C, {chunk}, D=D, "
                f"initial_states={'state' if t['initial'] is not None else 'None'}, return_final_states=True)")
        return call, lambda: mamba_chunk_scan_combined(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk, D=t["D"],
                                                       initial_states=t["initial"], return_final_states=True)

    def step(t):
        call = "selective_state_update(state, x, dt, A, B, C, D=D, dt_bias=dt_bias, dt_softplus=True)  # in place"
        return call, lambda: selective_state_update(t["state"], t["x"], t["dt"], t["A"], t["B"], t["C"], D=t["D"],
                                                    dt_bias=t["dt_bias"], dt_softplus=True)

    return scan, step


def vllm_calls(torch, chunk):
    from vllm.model_executor.layers.mamba.ops.mamba_ssm import selective_state_update
    from vllm.model_executor.layers.mamba.ops.ssd_combined import mamba_chunk_scan_combined_varlen

    sys.path.insert(0, str(ECOSYSTEM_TOOLS))
    from backends.vllm_backend import varlen_chunk_metadata  # how vLLM's metadata builder chunks a batch

    def scan(t):
        b, L, h, p = t["x"].shape
        g, n = t["B"].shape[2:]
        dev = t["x"].device
        tokens = b * L
        cu_seqlens = torch.arange(0, tokens + 1, L, dtype=torch.int32, device=dev)
        cu_chunks, last_chunks, seq_idx = (m.to(dev) for m in varlen_chunk_metadata(cu_seqlens.cpu(), chunk))
        slots = torch.zeros(b + 1, h, p, n, device=dev)  # slot 0: vLLM's null block; row i lives in slot i + 1
        idx = torch.arange(1, b + 1, dtype=torch.int32, device=dev)
        initial = t["initial"]
        out = torch.empty(tokens, h, p, dtype=t["x"].dtype, device=dev)
        x, dt, B, C = (t["x"].reshape(tokens, h, p), t["dt"].reshape(tokens, h), t["B"].reshape(tokens, g, n),
                       t["C"].reshape(tokens, g, n))
        call = (f"mamba_chunk_scan_combined_varlen(x, dt, A, B, C, {chunk}, cu_seqlens, cu_chunk_seqlens, "
                f"last_chunk_indices, seq_idx, out, D=D, initial_states={'state' if initial is not None else 'None'}, "
                "state_dtype=float32, final_states_out=slots, final_state_indices=idx)")
        return call, lambda: mamba_chunk_scan_combined_varlen(
            x, dt, t["A"], B, C, chunk, cu_seqlens, cu_chunks, last_chunks, seq_idx, out, D=t["D"],
            initial_states=initial, state_dtype=torch.float32, final_states_out=slots, final_state_indices=idx)

    def step(t):
        b = t["x"].shape[0]
        dev = t["x"].device
        slots = torch.cat([torch.zeros_like(t["state"][:1]), t["state"]])  # [b + 1, h, p, n]
        idx = torch.arange(1, b + 1, dtype=torch.int32, device=dev)
        out = torch.empty_like(t["x"])
        call = ("selective_state_update(slots, x, dt, A, B, C, D, dt_bias, dt_softplus=True, "
                "state_batch_indices=idx, dst_state_batch_indices=idx, out=out)  # in place")
        return call, lambda: selective_state_update(
            slots, t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], t["dt_bias"], dt_softplus=True,
            state_batch_indices=idx, dst_state_batch_indices=idx, out=out)

    return scan, step


def versions(torch):
    v = {"torch": torch.__version__}
    try:
        import triton

        v["triton"] = triton.__version__
    except ImportError:
        pass
    return v


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON report (written whole or not at all)")
    ap.add_argument("--ecosystem", type=Path, default=REPO / ".device" / "ecosystem")
    ap.add_argument("--device", default=None, help="cuda (default when present) or cpu (Triton's interpreter)")
    ap.add_argument("--what", default="scan,state-update")
    ap.add_argument("--systems", default="mamba_ssm,vllm")
    ap.add_argument("--warmup-ms", type=float, default=25)
    ap.add_argument("--rep-ms", type=float, default=200)
    ap.add_argument("--no-initial-states", action="store_true", help="the scan from a zero state (the anchor's call)")
    ap.add_argument("--small", action="store_true", help="tiny shapes and fp32 (the CPU interpreter's dry run)")
    args = ap.parse_args(argv)
    what = args.what.split(",")
    systems = args.systems.split(",")
    for w in what:
        if w not in ("scan", "state-update"):
            ap.error(f"--what: {w!r} is not scan or state-update")
    for s in systems:
        if s not in ("mamba_ssm", "vllm"):
            ap.error(f"--systems: {s!r} is not mamba_ssm or vllm")
    if not (args.ecosystem / "VERSIONS.json").is_file():
        ap.error(f"--ecosystem: no {args.ecosystem / 'VERSIONS.json'}: run tools/fetch_ecosystem_kernels.sh")

    if args.device == "cpu":
        # REFERENCE.md "Running the ecosystem's Triton kernels on the CPU": the interpreter, and an
        # empty CUDA_VISIBLE_DEVICES for vLLM (unset, it disables Triton).
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        os.environ.setdefault("MAMBA_DETERMINISTIC", "1")  # autotuning fails in the interpreter
        os.environ.setdefault("VLLM_TRITON_FORCE_FIRST_CONFIG", "1")
    for p in (args.ecosystem / "site", args.ecosystem):
        sys.path.insert(0, str(p))
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        sys.path.insert(0, str(ECOSYSTEM_TOOLS))
        from export import allow_cpu_tensors_in_triton_kernels

        allow_cpu_tensors_in_triton_kernels()
    # bf16 tl.dot is wrong under the interpreter (triton #11584): the dry run uses fp32.
    dtype = torch.float32 if args.small else torch.bfloat16
    chunk = SMALL_CHUNK if args.small else CHUNK
    timer = Timer(device, args.warmup_ms, args.rep_ms)
    report = {
        "format": "mambadiff.bench_peers.v1",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (Triton interpreter)",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join(["tools/bench_peers.py"] + (argv if argv is not None else sys.argv[1:])),
        "timer": timer.method,
        "versions": {**versions(torch), **json.loads((args.ecosystem / "VERSIONS.json").read_text())},
        "initial_states": not args.no_initial_states,
        "chunk": chunk,
        "results": [],
        "errors": [],
    }

    # The card's copy bandwidth the same way (bytes read + written), beside bench's own measurement.
    n = (1 << 28) if device.type == "cuda" else (1 << 20)
    src, dst = torch.ones(n, device=device), torch.empty(n, device=device)
    ms = timer(lambda: dst.copy_(src))[0]
    report["copy_bandwidth_gbs"] = 2 * n * 4 / (ms * 1e-3) / 1e9
    del src, dst

    for system in systems:
        try:
            scan, step = (mamba_ssm_calls if system == "mamba_ssm" else vllm_calls)(torch, chunk)
        except Exception as e:  # noqa: BLE001 (a system that does not import is reported, the others run)
            report["errors"].append({"system": system, "what": "import", "shape": "",
                                     "error": f"{type(e).__name__}: {e}".splitlines()[0]})
            continue
        jobs = []
        if "scan" in what:
            for shape in SMALL_SCAN_SHAPES if args.small else SCAN_SHAPES:
                jobs.append(("scan", scan_label(*shape),
                             lambda s=shape: scan(scan_inputs(torch, s, dtype, device, not args.no_initial_states))))
        if "state-update" in what:
            for shape in SMALL_STEP_SHAPES if args.small else STEP_SHAPES:
                jobs.append(("state-update", step_label(*shape), lambda s=shape: step(step_inputs(torch, s, dtype, device))))
        for item, label, make in jobs:
            try:
                call, fn = make()
                median, p10, p90 = timer(fn)
                report["results"].append({"system": system, "what": item, "shape": label,
                                          "dtype": str(dtype).replace("torch.", ""), "call": call,
                                          "median_ms": median, "p10_ms": p10, "p90_ms": p90})
                print(f"{system:<10} {item:<13} {label:<26} {median * 1e3:10.1f} us  (p10 {p10 * 1e3:.1f}, "
                      f"p90 {p90 * 1e3:.1f})", flush=True)
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                report["errors"].append({"system": system, "what": item, "shape": label,
                                         "error": (f"{type(e).__name__}: {e}".splitlines() or ["?"])[0][:300]})
            if device.type == "cuda":
                torch.cuda.empty_cache()

    tmp = args.out.with_name(args.out.name + f".tmp.{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(args.out)
    print(f"bench_peers: {len(report['results'])} results, {len(report['errors'])} errors -> {args.out}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
