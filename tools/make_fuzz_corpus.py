#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target (docs/fuzz.md) into corpus/fuzz/<target>/seeds/.

Deterministic: the same bytes on every run (no clock, no randomness beyond fixed seeds), so the
committed corpus is exactly what this script writes. Each fuzz target's byte layout is described
at the top of its source file (fuzz/<target>.cpp); the seeds below name their fields.

    tools/make_fuzz_corpus.py [--out corpus/fuzz]      write (replaces each seeds/ folder)
    tools/make_fuzz_corpus.py --check [--out corpus/fuzz]
                                                       regenerate into a temporary folder and
                                                       compare bytes with the committed corpus

Fixed findings are kept beside the seeds, in corpus/fuzz/<target>/regressions/ (one file per
finding, named for the issue it reproduces); this script never touches them. Dictionaries are
corpus/fuzz/<target>.dict (outside the corpus folders, so libFuzzer and the replay do not read them
as inputs).
"""
from __future__ import annotations

import argparse
import filecmp
import json
import math
import struct
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------
# scan_diff: [H-1, P-1, N-1, group index, chunk, T-1, batch-1, limit min index, limit max index,
#             seed (4 bytes, big-endian), x scale, B/C scale, dt scale, init scale (each /32),
#             per head (A_log byte, dt byte, D byte), pokes (tensor, position, value index)]
# kLimits in fuzz/scan_diff.cpp: 0, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, inf.
LIM_0, LIM_1EM3, LIM_001, LIM_005, LIM_01, LIM_INF = 0, 2, 3, 4, 5, 10


def scan_seed(H, P, N, group_index, chunk, T, batch=1, lim=(LIM_0, LIM_INF), seed=1, scales=(32, 32, 16, 32),
              heads=None, pokes=()):
    heads = heads or [(128 + 40 * h % 120, 100 + 30 * h % 150, 128 + 16 * h) for h in range(H)]
    out = bytes([H - 1, P - 1, N - 1, group_index, chunk, T - 1, batch - 1, lim[0], lim[1]])
    out += struct.pack(">I", seed) + bytes(scales)
    for a, d, dd in heads:
        out += bytes([a % 256, d % 256, dd % 256])
    for p in pokes:
        out += bytes(p)
    return out


def scan_diff_seeds():
    s = {}
    s["basic"] = scan_seed(2, 4, 4, 0, 4, 9)
    for T in (3, 4, 5, 8, 9, 17):  # around chunk boundaries of Q = 4
        s[f"chunk4-len{T}"] = scan_seed(2, 2, 2, 0, 4, T, seed=T)
    s["chunk1"] = scan_seed(1, 3, 2, 0, 1, 6)
    s["chunk16-len64"] = scan_seed(3, 2, 3, 0, 16, 64, seed=7)
    s["groups-4-2"] = scan_seed(4, 2, 3, 1, 4, 11, seed=3)   # divisors(4) = 1, 2, 4: index 1 -> G = 2
    s["groups-6-3"] = scan_seed(6, 1, 2, 2, 3, 10, seed=4)   # divisors(6) = 1, 2, 3, 6: index 2 -> G = 3
    s["groups-equal-heads"] = scan_seed(3, 2, 2, 1, 5, 12, seed=5)  # divisors(3) = 1, 3
    s["limit-finite"] = scan_seed(2, 2, 4, 0, 4, 13, lim=(LIM_1EM3, LIM_01), scales=(32, 32, 96, 32), seed=6)
    s["limit-small"] = scan_seed(2, 2, 2, 0, 4, 9, lim=(LIM_0, LIM_001), seed=8)
    s["strong-decay"] = scan_seed(2, 2, 2, 0, 8, 20, heads=[(255, 255, 128), (250, 200, 100)], seed=9)
    s["weak-decay"] = scan_seed(2, 2, 2, 0, 8, 20, heads=[(0, 0, 128), (10, 30, 160)], seed=10)
    s["batch2-state"] = scan_seed(2, 3, 4, 0, 4, 10, batch=2, seed=11, scales=(32, 32, 16, 64))
    s["zero-state"] = scan_seed(2, 3, 4, 0, 4, 10, seed=12, scales=(32, 32, 16, 0))
    s["pokes"] = scan_seed(2, 2, 2, 0, 4, 9, seed=13, pokes=[(0, 3, 7), (1, 5, 8), (2, 1, 9), (1, 0, 10)])
    return {f"{k}.bin": v for k, v in s.items()}


# ---------------------------------------------------------------------------------------------
# model_script: [H-1, P-1, N-1, group index, expand-1, K-1, chunk-1, layers-1, vocab-8, A_log
#                range, dt range, limit, flags, seed (4 bytes), batch-1, dtype, (kind, arg)...]
# kinds: 0 forward (T = 1 + arg % 12), 1 step, 2 continue (T = 2 + arg % 8), 3 inject (layer =
# arg % layers, scale = (arg >> 1 & 31) / 8, broadcast = arg & 64), 4 snapshot, 5 restore, 6 reset.
# flags: 1 bias, 2 conv bias, 4 tied, 8 grouped norm, 16 residual not fp32.
FWD, STEP, CONT, INJ, SNAP, REST, RESET = range(7)
CONV_BIAS = 2


def model_seed(H=2, P=2, N=2, gi=0, expand=1, K=4, chunk=4, layers=1, vocab=16, a=0, dt=0, lim=0, flags=CONV_BIAS,
               seed=1, batch=1, bf16=False, ops=()):
    out = bytes([H - 1, P - 1, N - 1, gi, expand - 1, K - 1, chunk - 1, layers - 1, vocab - 8, a, dt, lim, flags])
    out += struct.pack(">I", seed) + bytes([batch - 1, 3 if bf16 else 0])
    for kind, arg in ops:
        out += bytes([kind, arg])
    return out


def model_script_seeds():
    s = {}
    s["prefill-steps"] = model_seed(ops=[(FWD, 5), (STEP, 0), (STEP, 0)])
    s["prefill-continue"] = model_seed(ops=[(FWD, 4), (CONT, 5)], chunk=3, seed=2)
    s["snapshot-restore"] = model_seed(ops=[(FWD, 3), (SNAP, 0), (STEP, 0), (CONT, 3), (REST, 0), (STEP, 0)], seed=3)
    s["inject"] = model_seed(ops=[(FWD, 3), (INJ, 8), (STEP, 0), (INJ, 64 + 16), (CONT, 2)], seed=4, batch=2)
    s["reset"] = model_seed(ops=[(FWD, 6), (RESET, 0), (FWD, 2), (STEP, 0)], seed=5)
    s["groups"] = model_seed(H=4, P=2, N=3, gi=1, expand=2, ops=[(FWD, 9), (STEP, 0), (CONT, 4)], seed=6)
    s["grouped-norm"] = model_seed(H=4, P=2, gi=2, flags=CONV_BIAS | 8, ops=[(FWD, 5), (STEP, 0)], seed=7)
    s["two-layers"] = model_seed(layers=2, K=2, ops=[(FWD, 7), (SNAP, 1), (INJ, 1 + 4), (STEP, 0), (REST, 1)], seed=8)
    s["time-limit"] = model_seed(dt=1, lim=2, ops=[(FWD, 10), (STEP, 0), (STEP, 0)], seed=9)
    s["strong-decay"] = model_seed(a=3, dt=2, ops=[(FWD, 11), (CONT, 6)], chunk=8, seed=10)
    s["bias-tied-fp32off"] = model_seed(flags=1 | 4 | 16, ops=[(FWD, 4), (STEP, 0)], seed=11)
    s["bfloat16"] = model_seed(bf16=True, ops=[(FWD, 5), (STEP, 0), (CONT, 3)], seed=12)
    s["conv1-chunk1"] = model_seed(K=1, chunk=1, H=1, P=1, N=1, ops=[(FWD, 3), (STEP, 0), (CONT, 2)], seed=13)
    return {f"{k}.bin": v for k, v in s.items()}


# ---------------------------------------------------------------------------------------------
# Parsers.
def safetensors_bytes(tensors, metadata=None):
    """tensors: [(name, dtype, shape, raw bytes)] -> the file's bytes (8-byte LE length, JSON, data)."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + data


def f32(values):
    return struct.pack(f"<{len(values)}f", *values)


def parse_safetensors_seeds():
    s = {}
    s["one-f32"] = safetensors_bytes([("w", "F32", [2, 3], f32([1, 2, 3, 4, 5, 6]))])
    s["metadata"] = safetensors_bytes([("a", "F32", [1], f32([0.5]))], {"generator": "make_fuzz_corpus"})
    s["dtypes"] = safetensors_bytes([
        ("f64", "F64", [2], struct.pack("<2d", 1.0, -2.0)),
        ("f16", "F16", [2], struct.pack("<2e", 1.0, 0.5)),
        ("bf16", "BF16", [2], b"\x80\x3f\x00\x40"),
        ("i64", "I64", [1], struct.pack("<q", -7)),
        ("i32", "I32", [1], struct.pack("<i", 7)),
        ("i16", "I16", [1], struct.pack("<h", 7)),
        ("i8", "I8", [2], b"\x01\xff"),
        ("u8", "U8", [2], b"\x01\xff"),
        ("bool", "BOOL", [2], b"\x00\x01"),
    ])
    s["scalar-and-empty"] = safetensors_bytes([("s", "F32", [], f32([3.0])), ("e", "F32", [0, 4], b"")])
    s["nonfinite"] = safetensors_bytes([("x", "F32", [3], struct.pack("<3f", math.inf, -math.inf, math.nan))])
    s["empty-header"] = safetensors_bytes([])
    return {f"{k}.safetensors": v for k, v in s.items()}


def config_json(**overrides):
    """The config.json of parse_config's model (fuzz/parse_config.cpp: ModelSpec's defaults, seed 1),
    in Mamba2Config::to_json's keys."""
    c = {"model_type": "mamba2", "vocab_size": 16, "hidden_size": 8, "num_hidden_layers": 1, "state_size": 1,
         "expand": 1, "head_dim": 8, "num_heads": 1, "n_groups": 1, "chunk_size": 4, "conv_kernel": 4,
         "time_step_limit": [0.0, {"__float__": "Infinity"}], "layer_norm_epsilon": 1e-05,
         "residual_in_fp32": True, "use_bias": False, "use_conv_bias": True, "tie_word_embeddings": False}
    c.update(overrides)
    return (json.dumps(c, indent=1) + "\n").encode()


def parse_config_seeds():
    s = {}
    s["model"] = config_json()
    s["tied"] = config_json(tie_word_embeddings=True)
    s["limit-finite"] = config_json(time_step_limit=[0.001, 0.1])
    s["grouped-norm"] = config_json(mambadiff_gated_norm="grouped")
    # Python's json.dumps writes bare Infinity (older transformers configs have it).
    s["bare-infinity"] = config_json().replace(b'{"__float__": "Infinity"}', b"Infinity")
    s["other-shapes"] = config_json(num_heads=2, head_dim=4, n_groups=2, state_size=2)  # loads to a shape error
    for name in ("tiny", "grouped", "limited", "fastdecay"):
        s[f"corpus-{name}"] = (ROOT / "corpus" / "models" / name / "config.json").read_bytes()
    return {f"{k}.json": v for k, v in s.items()}


def scenario(ops, dtype="float32"):
    j = {"format": "mambadiff.scenario.v1", "model": "model", "dtype": dtype, "ops": ops}
    return (json.dumps(j, indent=1) + "\n").encode()


def parse_scenario_seeds():
    # fuzz/parse_scenario.cpp writes d.safetensors beside the input: delta.0 [1, 8, 1], delta.1 [2, 1, 8, 1].
    fwd = lambda rows: {"op": "forward", "tokens": rows}  # noqa: E731
    inj = lambda layer, t: {"op": "inject", "layer": layer, "delta": {"file": "d.safetensors", "tensor": t}}  # noqa: E731
    s = {}
    s["forward"] = scenario([fwd([[1, 2, 3]])])
    s["decode"] = scenario([fwd([[1, 2, 3], [4, 5, 6]]), fwd([[7], [8]]), fwd([[9], [10]])])
    s["cache-ops"] = scenario([fwd([[1, 2]]), {"op": "snapshot", "name": "s0"}, inj(0, "delta.0"), fwd([[3]]),
                               {"op": "restore", "name": "s0"}, {"op": "reset"}, fwd([[4, 5]])])
    s["batch-inject"] = scenario([fwd([[1, 2], [3, 4]]), inj(0, "delta.1"), fwd([[5], [6]])], dtype="bfloat16")
    s["float64"] = scenario([fwd([[0]])], dtype="float64")
    return {f"{k}.json": v for k, v in s.items()}


def parse_case_seeds():
    s = {}
    for d in sorted((ROOT / "corpus" / "regressions").iterdir()):
        if (d / "case.json").is_file():
            s[f"regression-{d.name}.json"] = (d / "case.json").read_bytes()
    minimal = {"format": "mambadiff.case.v1", "scenario": "scenario.json", "paths": ["chunked", "reference"],
               "expected": "agree"}
    s["minimal.json"] = (json.dumps(minimal, indent=1) + "\n").encode()
    return s


TARGETS = {
    "scan_diff": scan_diff_seeds,
    "model_script": model_script_seeds,
    "parse_safetensors": parse_safetensors_seeds,
    "parse_config": parse_config_seeds,
    "parse_scenario": parse_scenario_seeds,
    "parse_case": parse_case_seeds,
}


def write(out: Path):
    for target, make in TARGETS.items():
        seeds = out / target / "seeds"
        if seeds.exists():
            for f in seeds.iterdir():
                f.unlink()
        seeds.mkdir(parents=True, exist_ok=True)
        for name, data in make().items():
            (seeds / name).write_bytes(data)


def check(out: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp))
        bad = []
        for target in TARGETS:
            want, have = Path(tmp) / target / "seeds", out / target / "seeds"
            names = sorted(p.name for p in want.iterdir())
            have_names = sorted(p.name for p in have.iterdir()) if have.is_dir() else []
            if names != have_names:
                bad.append(f"{have}: files {have_names} != {names}")
                continue
            for n in names:
                if not filecmp.cmp(want / n, have / n, shallow=False):
                    bad.append(f"{have / n}: differs from what the script writes")
        for line in bad:
            print(line, file=sys.stderr)
        if bad:
            print("make_fuzz_corpus --check: out of date; run tools/make_fuzz_corpus.py", file=sys.stderr)
            return 1
        print(f"make_fuzz_corpus --check: {out} matches")
        return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "corpus" / "fuzz")
    ap.add_argument("--check", action="store_true", help="compare with the committed corpus instead of writing")
    args = ap.parse_args()
    if args.check:
        return check(args.out)
    write(args.out)
    print(f"wrote the seed corpora of {', '.join(TARGETS)} into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
