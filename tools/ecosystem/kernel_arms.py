#!/usr/bin/env python3
"""Control arms for the GPU-only divergences of issue 12 (docs/external.md, "Follow-up"): run an
exporter with one kernel behaviour changed or recorded, on the card or under Triton's interpreter.

  kernel_arms.py run [--capture FILE] [--pad-cumsum] [--conv textbook] -- SCRIPT.py ARGS...
      --capture FILE  record every mamba_ssm scan call (its inputs, final state, and the dA_cumsum
                      and dt that mamba_ssm's _chunk_cumsum_fwd computes for them, on the same
                      device: the scan order can be worked out from them offline) into FILE
                      (torch.save)
      --pad-cumsum    the fix arm for the padded-chunk cumsum: after _chunk_cumsum_fwd, every padded
                      position of a partial last chunk (t >= seqlen - c*chunk_size) gets the cumsum
                      of the last real token, so that _chunk_state_fwd's dA_cs_last (read at position
                      chunk_size - 1) is the value at the last token, as in the math
      --conv textbook the mamba_ssm backend's conv replaced by the stand-in's (fp32 conv and SiLU,
                      rounded once to the model dtype) instead of HF's torch fallback (conv rounded to
                      the model dtype, then SiLU rounded again)
  kernel_arms.py cumsum-verdict FILE
      for each captured scan: per (row, head), the last chunk's dA_cumsum at chunk_size-1 minus at
      the last real token, in ulps of the latter; the predicted factor exp(min(that, 0)) on the
      head's final state (what _chunk_state_fwd applies to every token of the chunk), against the
      measured factor: the kernel's final state / a float64 recompute of it from the same inputs
      (softplus in float64, sequential recurrence). Prints EXPLAINED when every head with a
      nonzero state matches the prediction within 2e-6 and some head's prediction is not 1.
  kernel_arms.py compare A.safetensors B.safetensors
      per tensor of B: max |A - B| / max |B| and how many elements differ (bit-identical or not)
  kernel_arms.py prefixes SCENARIO OUTDIR
      OUTDIR/ops<N>.json: the scenario cut after its first N ops (N = 1 .. all), the model by
      absolute path, so that a cache tensor is compared after every op (an export holds the
      cache only after the last op).
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def patch_backend(capture: str | None, pad_cumsum: bool, conv: str | None) -> list:
    import torch

    sys.path.insert(0, str(HERE))
    import backends.mamba_ssm_backend as mb

    records = []
    real_init, real_scan = mb.MambaSsm.__init__, mb.MambaSsm.scan

    def init(self, device):
        real_init(self, device)
        import mamba_ssm.ops.triton.ssd_combined as sc
        from mamba_ssm.ops.triton import ssd_chunk_state as cs

        self._cumsum = cs._chunk_cumsum_fwd
        if pad_cumsum and not getattr(sc, "_mambadiff_padded", False):
            real = sc._chunk_cumsum_fwd

            def padded(dt, A, chunk_size, dt_bias=None, dt_softplus=False, dt_limit=(0.0, float("inf"))):
                dA_cumsum, dt_out = real(dt, A, chunk_size, dt_bias=dt_bias, dt_softplus=dt_softplus,
                                         dt_limit=dt_limit)
                seqlen = dt.shape[1]
                last = seqlen - (dA_cumsum.shape[2] - 1) * chunk_size  # real tokens in the last chunk
                if last < chunk_size:
                    dA_cumsum[:, :, -1, last:] = dA_cumsum[:, :, -1, last - 1:last]
                return dA_cumsum, dt_out

            sc._chunk_cumsum_fwd = padded
            sc._mambadiff_padded = True
            self.notes["arm"] = "pad-cumsum: padded positions of the last chunk hold the last token's dA_cumsum"

    def scan(self, x, dt, B_, C, initial, w, shape):
        init_state = None if initial is None else initial.detach().clone()
        y, final = real_scan(self, x, dt, B_, C, initial, w, shape)
        if capture:
            dA_cumsum, dt_out = self._cumsum(dt, w.A, shape.chunk_size, dt_bias=w.dt_bias, dt_softplus=True,
                                             dt_limit=shape.time_step_limit)
            cpu = lambda t: None if t is None else t.detach().float().cpu()  # noqa: E731
            records.append(dict(x=cpu(x), dt=cpu(dt), B=cpu(B_), C=cpu(C), init=cpu(init_state), A=cpu(w.A),
                                dt_bias=cpu(w.dt_bias), final=cpu(final), dA_cumsum=cpu(dA_cumsum), dt_out=cpu(dt_out),
                                chunk_size=shape.chunk_size, time_step_limit=list(shape.time_step_limit)))
            torch.save(records, capture)
        return y, final

    mb.MambaSsm.__init__, mb.MambaSsm.scan = init, scan
    if conv == "textbook":
        import backends.stand_in_backend as sb

        mb.MambaSsm.conv = sb.StandIn.conv
    return records


def float64_final(r):
    """The final state of one scan from its inputs, sequentially in float64."""
    import torch
    import torch.nn.functional as F

    x, dt, B, C, A = (r[k].double() for k in ("x", "dt", "B", "C", "A"))
    Bsz, T, H, P = x.shape
    G = B.shape[2]
    lo, hi = r["time_step_limit"]
    d = torch.clamp(F.softplus(dt + r["dt_bias"].double()), min=lo, max=hi)  # [B, T, H]
    h = torch.zeros(Bsz, H, P, B.shape[3], dtype=torch.float64) if r["init"] is None else r["init"].double()
    Bh = B.repeat_interleave(H // G, dim=2)  # [B, T, H, N]
    for t in range(T):
        a = torch.exp(d[:, t] * A)  # [B, H]
        h = a[:, :, None, None] * h + (d[:, t, :, None, None] * x[:, t, :, :, None]) * Bh[:, t, :, None, :]
    return h


def ks_fma_cumsum(dt, A):
    """mamba_ssm's tl.cumsum(dt * A) as Triton 3.6 compiles _chunk_cumsum_fwd_kernel for sm_90 with
    BLOCK_SIZE_H 1 and a chunk of at most 32 (layout [1, 32] lanes, one element a lane; read off the
    PTX, docs/external.md "Follow-up"): a Kogge-Stone warp scan, shfl.up by 1, 2, 4, 8, 16, whose
    first step is contracted into fma(dt_i, A, dt_{i-1} * A). dt: [..., n] float32 numpy; A: [...]."""
    import numpy as np

    f32, f64 = np.float32, np.float64
    A = np.asarray(A, f32)[..., None]
    prod = (dt * A).astype(f32)
    y = prod.copy()
    y[..., 1:] = (dt[..., 1:].astype(f64) * A.astype(f64) + prod[..., :-1].astype(f64)).astype(f32)
    d, n = 2, dt.shape[-1]
    while d < n:
        prev = y.copy()
        y[..., d:] = (prev[..., d:] + prev[..., :-d]).astype(f32)
        d *= 2
    return y


def cumsum_verdict(path: str) -> int:
    import numpy as np
    import torch

    recs = torch.load(path)
    explained, any_factor, worst = True, False, 0.0
    for i, r in enumerate(recs):
        cs = r["dA_cumsum"]  # [B, H, nchunks, chunk_size]
        T = r["x"].shape[1]
        cz = r["chunk_size"]
        last = T - (cs.shape[2] - 1) * cz
        end, at_last = cs[:, :, -1, cz - 1], cs[:, :, -1, last - 1]
        diff = (end - at_last).double()
        ulps = diff / torch.from_numpy(np.spacing(np.abs(at_last.numpy()))).double()
        predicted = torch.exp(torch.clamp(diff, max=0.0))
        ref = float64_final(r)
        got = r["final"].double()
        lines = []
        for b in range(got.shape[0]):
            for h in range(got.shape[1]):
                s = ref[b, h]
                big = s.abs() > 0.1 * s.abs().max()
                if not big.any() or s.abs().max() == 0:
                    continue
                measured = (got[b, h][big] / s[big]).median().item()
                p = predicted[b, h].item()
                dev = abs(measured - p)
                worst = max(worst, dev)
                if p != 1.0:
                    any_factor = True
                if dev > 2e-6:
                    explained = False
                if p != 1.0 or dev > 2e-6:
                    lines.append(f"    row {b} head {h}: cumsum end - last token {diff[b, h].item():+.3g} "
                                 f"({ulps[b, h].item():+.2f} ulp of |{at_last[b, h].item():.4g}|), predicted factor "
                                 f"{p:.8f}, measured {measured:.8f}")
        if cz <= 32 and "dt_out" in r:
            emu = ks_fma_cumsum(r["dt_out"].numpy(), r["A"].numpy()[None, :, None])  # [B, H, nchunks, cz]
            same = (emu == cs.numpy()).all(axis=-1)
            lines.append(f"    the PTX's scan order (Kogge-Stone, first step an FMA) from the kernel's own dt: "
                         f"{int(same.sum())}/{same.size} chunk rows bit-identical to its dA_cumsum")
        print(f"scan {i}: T={T}, chunk {cz}, last chunk {last} real tokens; heads off the prediction or with a "
              f"factor != 1: {sum(1 for l in lines if 'row ' in l)}")
        print("\n".join(lines))
    verdict = "EXPLAINED" if explained and any_factor else ("NO FACTOR (nothing to explain here)" if explained else "NOT EXPLAINED")
    print(f"cumsum-verdict: {verdict} (largest |measured - predicted| {worst:.3g})")
    return 0


def compare(a_path: str, b_path: str) -> int:
    from safetensors.torch import load_file

    a, b = load_file(a_path), load_file(b_path)
    same = True
    for k in sorted(b):
        if k not in a:
            print(f"  {k}: missing in {a_path}")
            same = False
            continue
        x, y = a[k].double(), b[k].double()
        ne = int((x != y).sum())
        same = same and ne == 0
        scale = y.abs().max().item() or 1.0
        print(f"  {k:24s} max|a-b|/scale {(x - y).abs().max().item() / scale:.3g}  differing {ne}/{y.numel()}")
    print(f"compare: {'BIT-IDENTICAL' if same else 'DIFFERENT'} ({a_path} vs {b_path})")
    return 0


def prefixes(scenario: str, outdir: str) -> int:
    s = json.loads(Path(scenario).read_text())
    model = (Path(scenario).resolve().parent / s["model"]).resolve()
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    for n in range(1, len(s["ops"]) + 1):
        t = dict(s, model=str(model), ops=s["ops"][:n])
        for op in t["ops"]:
            if isinstance(op.get("delta"), dict) and "file" in op["delta"]:
                op["delta"] = dict(op["delta"], file=str((Path(scenario).resolve().parent / op["delta"]["file"]).resolve()))
        (out / f"ops{n}.json").write_text(json.dumps(t) + "\n")
        print(out / f"ops{n}.json")
    return 0


def main() -> int:
    a = sys.argv[1:]
    if a[:1] == ["cumsum-verdict"] and len(a) == 2:
        return cumsum_verdict(a[1])
    if a[:1] == ["compare"] and len(a) == 3:
        return compare(a[1], a[2])
    if a[:1] == ["prefixes"] and len(a) == 3:
        return prefixes(a[1], a[2])
    if a[:1] != ["run"] or "--" not in a:
        print(__doc__, file=sys.stderr)
        return 2
    opts, rest = a[1:a.index("--")], a[a.index("--") + 1:]
    capture, pad, conv = None, False, None
    while opts:
        o = opts.pop(0)
        if o == "--capture":
            capture = opts.pop(0)
        elif o == "--pad-cumsum":
            pad = True
        elif o == "--conv":
            conv = opts.pop(0)
        else:
            print(f"kernel_arms.py: unknown option {o}", file=sys.stderr)
            return 2
    patch_backend(capture, pad, conv)
    sys.argv = rest
    sys.path.insert(0, os.path.dirname(os.path.abspath(rest[0])))
    runpy.run_path(rest[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
