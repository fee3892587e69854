"""Stand-ins for the few vllm modules that vLLM's Mamba2 Triton ops import (tools/ecosystem/vllm_stub,
copied beside the extracted ops by tools/fetch_ecosystem_kernels.sh). Ours, not vLLM's: only what
those files touch. REFERENCE.md, "vLLM's Mamba2 kernels"."""
__version__ = "0.33.0"
