#!/usr/bin/env python3
"""Run a tools/ecosystem script under Triton's CPU interpreter with one of the NVIDIA card's fp32
behaviours emulated, so that a GPU-only divergence can be reproduced (or ruled out) on a CPU.

  emulate_card.py [--tf32 MODE] [--log-dots] -- SCRIPT.py ARGS...

--tf32 MODE  every fp32 tl.dot whose input precision is tf32 (Triton's default for fp32 dots on an
             NVIDIA card, which the interpreter computes in exact fp32) gets its operands rounded to
             TF32 (10 mantissa bits) first: `trunc` drops the low 13 bits (what the tensor cores do
             with fp32 registers they are handed), `rne` rounds to nearest even, `rna` to nearest,
             ties away (PTX cvt.rna.tf32.f32). The product is then accumulated in fp32 (np.matmul).
             `off` (the default) leaves the interpreter as it is. TRITON_F32_DEFAULT=ieee makes
             the kernels' dots ieee, which this never touches.
--exp MODE   tl.exp: `np` (the interpreter's np.exp, correctly rounded fp32; default) or `approx`:
             what Triton emits for an fp32 tl.exp on NVIDIA, ex2.approx of fl(x * log2(e)) -- the
             product rounded to fp32 first (a relative error up to |x|*2^-24 in the result, large for
             |x| in the hundreds), ex2 itself emulated as exact then rounded to fp32 (the card's
             ex2.approx adds up to ~2 ulp, which this does not model); `approx-ftz` also flushes
             subnormal results to 0.
--cumsum M   tl.cumsum: `seq` (the interpreter's np.cumsum, left to right; default) or `ks`: a
             Kogge-Stone (Hillis-Steele) scan in the input's dtype, x[i] += x[i-d] for d = 1, 2, 4...,
             the association order of a warp-shuffle scan (Triton's GPU lowering when each thread
             holds one element; with several per thread the order is a mix of both).
--bf16-dots  give tl.dot on bf16 operands their bf16 values (the interpreter multiplies the raw
             uint16 bits, triton #11584), products accumulated in fp32 as on the card's tensor
             cores; and let the mamba_ssm backend run bf16 scenarios on the CPU (it refuses them
             because of that bug). With it the kernels' own bf16 roundings (operands cast to bf16
             before their dots) run on the CPU.
--log-dots   print each dot's input precision and shapes once per distinct signature (stderr).
"""

import os
import runpy
import sys

import numpy as np


def tf32_round(x: np.ndarray, mode: str) -> np.ndarray:
    if x.dtype != np.float32 or mode == "off":
        return x
    u = np.ascontiguousarray(x).view(np.uint32).astype(np.uint64)
    low = np.uint64(0x1FFF)
    if mode == "trunc":
        r = u & ~low
    elif mode == "rna":
        r = (u + np.uint64(0x1000)) & ~low
    elif mode == "rne":
        lsb = (u >> np.uint64(13)) & np.uint64(1)
        r = (u + np.uint64(0xFFF) + lsb) & ~low
    else:
        raise ValueError(mode)
    r = r.astype(np.uint32)
    finite = np.isfinite(x)
    out = np.where(finite, r.view(np.float32), x)
    return out.astype(np.float32)


def exp_approx(x: np.ndarray, ftz: bool) -> np.ndarray:
    if x.dtype != np.float32:
        return np.exp(x)
    t = (x * np.float32(1.4426950408889634)).astype(np.float32)  # the fp32 product (fmul)
    with np.errstate(over="ignore", under="ignore"):
        r = np.exp2(t.astype(np.float64)).astype(np.float32)
    if ftz:
        r = np.where(np.abs(r) < np.float32(2.0 ** -126), np.float32(0), r).astype(np.float32)
    return r


def cumsum_ks(x: np.ndarray, axis: int) -> np.ndarray:
    y = np.array(x, copy=True)
    n = y.shape[axis]
    d = 1
    while d < n:
        prev = np.take(y, np.arange(0, n - d), axis=axis)
        idx = [slice(None)] * y.ndim
        idx[axis] = slice(d, n)
        upd = (np.take(y, np.arange(d, n), axis=axis) + prev).astype(y.dtype)
        y[tuple(idx)] = upd
        d *= 2
    return y


def patch_exp_cumsum(exp_mode: str, cumsum_mode: str) -> None:
    from triton.runtime import interpreter as it

    if exp_mode != "np":
        ftz = exp_mode == "approx-ftz"
        it.InterpreterBuilder.create_exp = lambda self, arg: self.unary_op(arg, lambda a: exp_approx(a, ftz))
    if cumsum_mode == "ks":
        def cumsum(self, input):
            return [self.to_tensor(cumsum_ks(input.handle.data, self.axis), dtype=input.dtype)]
        it.ScanOps.cumsum = cumsum


BF16_DOTS = False


def allow_bf16_on_cpu() -> None:
    import importlib

    for name, cls in (("mamba_ssm_backend", "MambaSsm"), ("vllm_backend", "Vllm")):
        try:
            mod = importlib.import_module(f"backends.{name}")
        except Exception:  # noqa: BLE001 (a backend whose sources are absent is left as it is)
            continue
        for c in vars(mod).values():
            if isinstance(c, type) and "check_supported" in vars(c) and c.__module__ == mod.__name__:
                c.check_supported = lambda self, dtype, shape: None


def patch(mode: str, log: bool) -> None:
    from triton.runtime import interpreter as it

    real = it.InterpreterBuilder.create_dot
    seen = set()

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        prec = str(input_precision).lower()
        if log:
            sig = (prec, a.data.dtype.name, a.data.shape, b.data.shape)
            if sig not in seen:
                seen.add(sig)
                print(f"emulate_card: dot {sig}", file=sys.stderr)
        if BF16_DOTS and a.data.dtype == np.uint16 and b.data.dtype == np.uint16:
            f = lambda h: (h.data.astype(np.uint32) << np.uint32(16)).view(np.float32)
            return it.TensorHandle(np.matmul(f(a), f(b), dtype=np.float32).astype(d.data.dtype) + d.data,
                                   d.dtype.scalar)
        if mode != "off" and "tf32" in prec and "x3" not in prec and a.data.dtype == np.float32:
            a = it.TensorHandle(tf32_round(a.data, mode), a.dtype.scalar)
            b = it.TensorHandle(tf32_round(b.data, mode), b.dtype.scalar)
        return real(self, a, b, d, input_precision, max_num_imprecise_acc)

    it.InterpreterBuilder.create_dot = create_dot


def main() -> int:
    args = sys.argv[1:]
    mode, log, exp_mode, cumsum_mode = "off", False, "np", "seq"
    while args and args[0] != "--":
        if args[0] == "--tf32":
            mode = args[1]
            args = args[2:]
        elif args[0] == "--exp":
            exp_mode, args = args[1], args[2:]
        elif args[0] == "--cumsum":
            cumsum_mode, args = args[1], args[2:]
        elif args[0] == "--bf16-dots":
            global BF16_DOTS
            BF16_DOTS, args = True, args[1:]
        elif args[0] == "--log-dots":
            log, args = True, args[1:]
        else:
            print(__doc__, file=sys.stderr)
            return 2
    if not args or os.environ.get("TRITON_INTERPRET") != "1":
        print("emulate_card.py: needs TRITON_INTERPRET=1 and `-- SCRIPT ARGS`", file=sys.stderr)
        return 2
    patch(mode, log)
    patch_exp_cumsum(exp_mode, cumsum_mode)
    script = args[1]
    sys.argv = args[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    if BF16_DOTS:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        allow_bf16_on_cpu()
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
