#!/usr/bin/env python3
"""Measure two known behaviours of the ecosystem's Triton kernels (docs/external.md "Known
behaviour"), on their own, with the kernels' own entry points:

1. softplus flushing: mamba_ssm's and vLLM's Triton softplus is log(exp(u) + 1), which is exactly 0
   in fp32 once exp(u) < 2^-24 (u below about -16.6); torch's softplus returns ~e^u there. Measured
   through selective_state_update with a zero state, x = B = C = 1, D = 0, A = -1, dt_bias = 0: the
   output is then softplus(dt) itself.
2. bf16 decode state: selective_state_update updates the state in place in the state's dtype, so a
   bf16 state (vLLM's default for a bf16 model: mamba_ssm_cache_dtype "auto") is rounded at every
   step. Measured as the state's error after N steps against a float64 recurrence on the same
   inputs, fp32 state vs bf16 state (x, B, C, dt in bf16 both times).

  measure_known_behaviour.py [--device cpu|cuda] [--ecosystem DIR]   (CPU: Triton's interpreter)
Prints a JSON object and a readable summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default=None)
    ap.add_argument("--ecosystem", type=Path, default=HERE.parent.parent / ".device" / "ecosystem")
    ap.add_argument("--steps", type=int, default=64)
    args = ap.parse_args(argv)
    sys.path[:0] = [str(args.ecosystem / "site"), str(args.ecosystem), str(HERE)]
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
        from export import allow_cpu_tensors_in_triton_kernels
        allow_cpu_tensors_in_triton_kernels()
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update as ms_ssu
    from vllm.model_executor.layers.mamba.ops.mamba_ssm import selective_state_update as vl_ssu

    result = {"device": str(device)}
    # 1. softplus: dt values [u], one head, head_dim 1, d_state 1.
    us = torch.tensor([-10.0, -14.0, -15.0, -16.0, -16.5, -16.6, -16.7, -17.0, -18.0, -20.0, -25.0, -30.0],
                      device=device)
    n = us.numel()

    def softplus_of(ssu, vllm_style):
        state = torch.zeros(n, 1, 1, 1, device=device)
        x = torch.ones(n, 1, 1, device=device)
        A = -torch.ones(1, 1, 1, device=device)
        B = torch.ones(n, 1, 1, device=device)
        D = torch.zeros(1, 1, device=device)
        dt_bias = torch.zeros(1, 1, device=device)
        dt = us.view(n, 1, 1).clone()
        if vllm_style:
            out = torch.empty_like(x)
            idx = torch.arange(1, n + 1, dtype=torch.int32, device=device)
            slots = torch.zeros(n + 1, 1, 1, 1, device=device)
            ssu(slots, x, dt, A, B, B.clone(), D, dt_bias, dt_softplus=True, state_batch_indices=idx,
                dst_state_batch_indices=idx, out=out)
            return out.view(-1)
        return ssu(state, x, dt, A, B, B.clone(), D=D, dt_bias=dt_bias, dt_softplus=True).view(-1)

    torch_sp = torch.nn.functional.softplus(us.double())
    for name, fn, vs in (("mamba_ssm", ms_ssu, False), ("vllm", vl_ssu, True)):
        got = softplus_of(fn, vs).double()
        rows = [{"u": float(u), "kernel": float(g), "torch": float(t)} for u, g, t in zip(us, got, torch_sp)]
        zero = [r["u"] for r in rows if r["kernel"] == 0.0]
        result[f"softplus_{name}"] = {"rows": rows, "largest_u_flushed_to_0": max(zero) if zero else None,
                                      "smallest_u_not_flushed": min((r["u"] for r in rows if r["kernel"] != 0.0),
                                                                    default=None)}

    # 2. bf16 state rounded every step: H=4 heads, P=16, N=16, batch 2, random inputs of decode size.
    g = torch.Generator().manual_seed(20261201)
    Bsz, H, P, N, steps = 2, 4, 16, 16, args.steps
    xs = torch.randn(steps, Bsz, H, P, generator=g).to(torch.bfloat16)
    dts = (torch.rand(steps, Bsz, H, generator=g) * 2 - 3).to(torch.bfloat16)  # softplus(-3..-1): ~0.05..0.3
    Bs = torch.randn(steps, Bsz, 1, N, generator=g).to(torch.bfloat16)
    Cs = torch.randn(steps, Bsz, 1, N, generator=g).to(torch.bfloat16)
    A = -torch.rand(H, generator=g) * 2 - 0.1  # fp32
    Dh = torch.ones(H)
    dtb = torch.zeros(H)
    s64 = torch.zeros(Bsz, H, P, N, dtype=torch.float64)
    s32 = torch.zeros(Bsz, H, P, N, device=device)
    s16 = torch.zeros(Bsz, H, P, N, device=device, dtype=torch.bfloat16)
    report, checkpoints = [], {1, 8, 16, 32, 64, 128, 256, steps}
    for t in range(steps):
        x, dt, Bt, Ct = xs[t], dts[t], Bs[t], Cs[t]
        d = torch.nn.functional.softplus(dt.double() + dtb.double())  # [B, H]
        s64 = s64 * torch.exp(d * A.double())[..., None, None] + (d[..., None] * x.double())[..., None] * Bt.double()[:, :, None, :]
        for s in (s32, s16):
            vl_ssu_args = dict(dt_softplus=True)
            out = torch.empty(Bsz, H, P, device=device, dtype=torch.bfloat16)
            slots = torch.zeros(Bsz + 1, H, P, N, device=device, dtype=s.dtype)
            slots[1:] = s
            idx = torch.arange(1, Bsz + 1, dtype=torch.int32, device=device)
            vl_ssu(slots, x.to(device), dt.to(device)[:, :, None].expand(-1, -1, P),
                   A.to(device)[:, None, None].expand(-1, P, N), Bt.to(device), Ct.to(device),
                   Dh.to(device)[:, None].expand(-1, P), dtb.to(device)[:, None].expand(-1, P),
                   state_batch_indices=idx, dst_state_batch_indices=idx, out=out, **vl_ssu_args)
            s.copy_(slots[1:])
        if t + 1 in checkpoints:
            scale = s64.abs().max().item()
            report.append({"steps": t + 1,
                           "fp32_state_error": ((s32.double().cpu() - s64).abs().max() / scale).item(),
                           "bf16_state_error": ((s16.double().cpu() - s64).abs().max() / scale).item()})
    result["bf16_state_every_step"] = report
    print(json.dumps(result, indent=1))
    for name in ("mamba_ssm", "vllm"):
        r = result[f"softplus_{name}"]
        print(f"softplus {name}: kernel returns 0 for u <= {r['largest_u_flushed_to_0']} "
              f"(nonzero down to {r['smallest_u_not_flushed']}); torch's softplus(-17) = {float(torch_sp[7]):.3g}")
    for r in report:
        print(f"state error vs float64 after {r['steps']:4d} steps: fp32 state {r['fp32_state_error']:.2e}, "
              f"bf16 state {r['bf16_state_error']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
