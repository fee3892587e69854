#!/usr/bin/env python3
"""Build causal-conv1d's CUDA extension from its registry sdist, offline (the GPU machine has no
registry and no network), for one GPU architecture, into a folder to put on PYTHONPATH.

  build_causal_conv1d.py --sdist .device/ecosystem/causal_conv1d-1.7.0.tar.gz --dest /tmp/ccd [--arch 90]

DEST then holds the package `causal_conv1d/` and the extension `causal_conv1d_cuda*.so` beside it:
with DEST on PYTHONPATH, mamba_ssm's backend and HF's fast path import it (their exports then say
"causal_conv1d <version> CUDA extension" in `implementations`). The last line printed is one of
  causal_conv1d: built <version> for sm_<arch> in <s> s: <DEST>
  causal_conv1d: not built (<reason>)
and the exit status 0 or 1. scripts/gpu_ecosystem.sh runs it in the background under `timeout`
while mambadiff builds, and the exporters fall back to HF's torch conv when it did not finish.

What is changed in the sdist (nothing else):
  * setup.py's -gencode list (CUDA 13: sm_75, 80, 87, 90, 100, 120, 103, 110, 121 -- nine
    architectures, nine times the compile) is replaced by the one card's, --arch;
  * `from wheel.bdist_wheel import ...` is made optional: build_ext never uses it, and a machine
    without the `wheel` package would fail at that import. setup.py's prebuilt-wheel download lives
    only in bdist_wheel, which build_ext does not run (CAUSAL_CONV1D_FORCE_BUILD=TRUE is set anyway);
  * unless --with-backward: csrc/causal_conv1d_bwd.cu -- the backward kernels, by far the longest
    compile (on this 2-core machine under load it ran past 20 min where the forward took ~12) -- is
    replaced by a small C++ file defining the same template instantiations to raise "built without
    the backward". The exporters run under torch.no_grad(): only causal_conv1d_fwd and _update run.
ninja, when on PATH, compiles the sources in parallel (MAX_JOBS); without it torch compiles them
one after another.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

GENCODE_ANCHOR = "    # HACK: The compiler flag -D_GLIBCXX_USE_CXX11_ABI"
WHEEL_IMPORT = "from wheel.bdist_wheel import bdist_wheel as _bdist_wheel"


BWD_STUB = """// mambadiff (tools/ecosystem/build_causal_conv1d.py): causal-conv1d built for inference only. The
// backward kernels of causal_conv1d_bwd.cu are replaced by these, which raise when called.
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "causal_conv1d.h"

template <typename input_t, typename weight_t>
void causal_conv1d_bwd_cuda(ConvParamsBwd&, cudaStream_t) {
  TORCH_CHECK(false, "causal_conv1d: built without the backward (mambadiff's inference-only build)");
}
template <typename input_t, typename weight_t>
void causal_conv1d_channellast_bwd_cuda(ConvParamsBwd&, cudaStream_t) {
  TORCH_CHECK(false, "causal_conv1d: built without the backward (mambadiff's inference-only build)");
}
"""


def stub_backward(src: Path) -> None:
    """csrc/mambadiff_bwd_stub.cpp with the explicit instantiations of causal_conv1d_bwd.cu, in
    setup.py's sources instead of that file."""
    bwd = (src / "csrc" / "causal_conv1d_bwd.cu").read_text()
    lines = [l.replace("at::", "c10::") for l in bwd.splitlines() if l.startswith("template void causal_conv1d_")]
    if len(lines) < 2:
        raise RuntimeError(f"{src}/csrc/causal_conv1d_bwd.cu: no explicit instantiations found")
    (src / "csrc" / "mambadiff_bwd_stub.cpp").write_text(BWD_STUB + "\n".join(lines) + "\n")
    setup = src / "setup.py"
    s = setup.read_text()
    if s.count('"csrc/causal_conv1d_bwd.cu"') != 1:
        raise RuntimeError(f"{setup}: its sources list is not the one this patch was written for")
    setup.write_text(s.replace('"csrc/causal_conv1d_bwd.cu"', '"csrc/mambadiff_bwd_stub.cpp"'))


def patch_setup(setup: Path, arch: str) -> None:
    s = setup.read_text()
    if GENCODE_ANCHOR not in s or WHEEL_IMPORT not in s:
        raise RuntimeError(f"{setup}: not the setup.py this patch was written for (causal-conv1d 1.7.0)")
    s = s.replace(GENCODE_ANCHOR, f'    cc_flag = ["-gencode", "arch=compute_{arch},code=sm_{arch}"]  '
                                  f"# mambadiff: the one card's architecture\n" + GENCODE_ANCHOR, 1)
    s = s.replace(WHEEL_IMPORT, "try:\n    " + WHEEL_IMPORT + "\nexcept ImportError:  # mambadiff: "
                  "build_ext does not need it\n    from setuptools.command.build_ext import build_ext as _bdist_wheel", 1)
    setup.write_text(s)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sdist", type=Path, required=True)
    ap.add_argument("--dest", type=Path, required=True)
    ap.add_argument("--arch", default="90", help="compute capability without the dot (H200: 90)")
    ap.add_argument("--with-backward", action="store_true", help="also compile causal_conv1d_bwd.cu (slow)")
    ap.add_argument("--configure-only", action="store_true",
                    help="patch and run setup.py up to the extension's definition (no nvcc): a check on a CPU machine")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    if not args.sdist.is_file():
        print(f"causal_conv1d: not built (no sdist {args.sdist}: run tools/fetch_ecosystem_kernels.sh)")
        return 1
    shutil.rmtree(args.dest, ignore_errors=True)
    args.dest.mkdir(parents=True)
    with tarfile.open(args.sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        try:
            tar.extractall(args.dest, filter="data")
        except TypeError:  # Python < 3.11.4: no extraction filters (the sdist is the registry's)
            tar.extractall(args.dest)
    src = args.dest / top
    patch_setup(src / "setup.py", args.arch)
    if not args.with_backward:
        stub_backward(src)
    env = dict(os.environ, CAUSAL_CONV1D_FORCE_BUILD="TRUE", MAX_JOBS=os.environ.get("MAX_JOBS", str(os.cpu_count())),
               TORCH_CUDA_ARCH_LIST=f"{args.arch[:-1]}.{args.arch[-1]}")
    cmd = [sys.executable, "setup.py", "--version"] if args.configure_only else \
          [sys.executable, "setup.py", "build_ext", "--inplace"]
    r = subprocess.run(cmd, cwd=src, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (args.dest / "build.log").write_text(r.stdout)
    if r.returncode != 0:
        last = [l for l in r.stdout.splitlines() if l.strip()][-1:] or ["(no output)"]
        print(f"causal_conv1d: not built (setup.py exit {r.returncode}: {last[0][:200]}; log {args.dest / 'build.log'})")
        return 1
    version = r.stdout.strip().splitlines()[-1] if args.configure_only else "?"
    if args.configure_only:
        print(f"causal_conv1d: configured {version} for sm_{args.arch} (setup.py --version ran; not compiled)")
        return 0
    # The package and the extension side by side in DEST: DEST goes on PYTHONPATH.
    for so in src.glob("causal_conv1d_cuda*.so"):
        shutil.move(str(so), args.dest / so.name)
    shutil.move(str(src / "causal_conv1d"), args.dest / "causal_conv1d")
    probe = subprocess.run([sys.executable, "-c", "import causal_conv1d, causal_conv1d_cuda; print(causal_conv1d.__version__)"],
                           cwd="/", env=dict(os.environ, PYTHONPATH=f"{args.dest}:{os.environ.get('PYTHONPATH', '')}"),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if probe.returncode != 0:
        last = [l for l in probe.stdout.splitlines() if l.strip()][-1:] or ["(no output)"]
        print(f"causal_conv1d: not built (compiled, but the import fails: {last[0][:200]})")
        return 1
    version = probe.stdout.strip().splitlines()[-1]
    print(f"causal_conv1d: built {version} for sm_{args.arch}{'' if args.with_backward else ' (forward and update only)'} "
          f"in {time.monotonic() - t0:.0f} s: {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
