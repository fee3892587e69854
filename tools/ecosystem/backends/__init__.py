"""One module per system under test; each defines make_backend(device) -> driver.Backend.

  stand_in   plain torch (sequential fp32 scan): tests the driver on any CPU
  mamba_ssm  mamba_ssm's Triton kernels, called as HF transformers' fast path calls them
  vllm       vLLM's Mamba2 Triton ops, called as its MambaMixer2 calls them
`hf_fast` (HF transformers' own model with mamba_ssm importable) is not a kernel backend: it runs
HF's whole model and lives in export.py.
"""

import importlib

NAMES = ("stand_in", "mamba_ssm", "vllm")


def make_backend(name, device):
    if name not in NAMES:
        raise ValueError(f"unknown backend {name!r} (known: {', '.join(NAMES)}, hf_fast)")
    return importlib.import_module(f"{__name__}.{name}_backend").make_backend(device)
