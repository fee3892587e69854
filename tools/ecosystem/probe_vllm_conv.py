#!/usr/bin/env python3
"""vLLM's causal-conv1d Triton kernels, called as tools/ecosystem/backends/vllm_backend.py calls them,
against the textbook conv on random inputs: tells a calling-convention mistake of the exporter from
a divergence of vLLM's kernels before the whole-model exports are read. Under Triton 3.6's CPU
interpreter causal_conv1d_update agrees with the textbook conv (2e-7 .. 5e-7, either state layout)
and causal_conv1d_fn raises in its kernel -- which is why the CPU exports run a torch conv for
prefill and continue; on the GPU both run (PROBE_DIM sets the channel count, default 40):

  probe_vllm_conv.py [--device cuda] [--ecosystem DIR]     prints one line per kernel and layout
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--ecosystem", type=Path, default=HERE.parent.parent / ".device" / "ecosystem")
    args = ap.parse_args(argv)
    sys.path[:0] = [str(args.ecosystem / "site"), str(args.ecosystem), str(HERE), str(HERE / "backends")]
    import torch
    import torch.nn.functional as F
    from vllm.model_executor.layers.mamba.ops.causal_conv1d import causal_conv1d_fn, causal_conv1d_update

    from vllm_backend import conv1d_metadata

    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(1)
    B, T, dim, K = 2, 11, int(__import__("os").environ.get("PROBE_DIM", "40")), 4
    w = torch.randn(dim, K, generator=g).to(dev)
    bias = torch.randn(dim, generator=g).to(dev)
    init = torch.randn(B, dim, K - 1, generator=g).to(dev)
    xs = torch.randn(B, T, dim, generator=g).to(dev)
    idx = torch.arange(1, B + 1, dtype=torch.int32, device=dev)
    ok = True
    for layout in ("dim-major [slots, dim, K-1]", "token-major [slots, K-1, dim] transposed"):
        for has_init in (False, True):
            st = (torch.zeros(B + 1, dim, K - 1, device=dev) if layout.startswith("dim")
                  else torch.zeros(B + 1, K - 1, dim, device=dev).transpose(1, 2))
            st[1:] = init
            past = init if has_init else torch.zeros_like(init)
            full = torch.cat([past, xs.transpose(1, 2)], dim=-1)  # [B, dim, K-1+T]
            ref = F.silu(F.conv1d(full, w.unsqueeze(1), bias, groups=dim))  # [B, dim, T]
            x = xs.reshape(B * T, dim).transpose(0, 1)
            qsl = torch.arange(0, B * T + 1, T, dtype=torch.int32, device=dev)
            try:
                out = causal_conv1d_fn(x, w, bias, activation="silu", conv_states=st,
                                       has_initial_state=torch.full((B,), has_init, device=dev), cache_indices=idx,
                                       query_start_loc=qsl, metadata=conv1d_metadata(qsl.cpu(), dev))
                err = (out.transpose(0, 1).reshape(B, T, dim).transpose(1, 2) - ref).abs().max().item()
                serr = (st[1:] - full[..., -(K - 1):]).abs().max().item()
                ok &= err < 1e-4 and serr < 1e-6
                print(f"causal_conv1d_fn, {layout}, initial state {has_init}: output error {err:.2e}, state error {serr:.2e}")
            except Exception as e:  # noqa: BLE001
                ok = False
                print(f"causal_conv1d_fn, {layout}, initial state {has_init}: raised {type(e).__name__}: {str(e)[:160]}")
        st = (torch.zeros(B + 1, dim, K - 1, device=dev) if layout.startswith("dim")
              else torch.zeros(B + 1, K - 1, dim, device=dev).transpose(1, 2))
        st[1:] = init
        full = torch.cat([init, xs[:, 0, :, None]], dim=-1)
        ref = F.silu((full * w).sum(-1) + bias)
        try:
            out = causal_conv1d_update(xs[:, 0, :], st, w, bias, "silu", conv_state_indices=idx)
            err = (out - ref).abs().max().item()
            serr = (st[1:] - full[..., 1:]).abs().max().item()
            ok &= err < 1e-4 and serr < 1e-6
            print(f"causal_conv1d_update, {layout}: output error {err:.2e}, state error {serr:.2e}")
        except Exception as e:  # noqa: BLE001
            ok = False
            print(f"causal_conv1d_update, {layout}: raised {type(e).__name__}: {str(e)[:160]}")
    print("vLLM conv probe:", "the kernels compute the textbook conv" if ok else "MISMATCH (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
