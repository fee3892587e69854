"""vllm.envs: the settings the Mamba2 ops and triton_utils read, from the environment as vLLM does."""
import os

VLLM_TRITON_FORCE_FIRST_CONFIG = os.environ.get("VLLM_TRITON_FORCE_FIRST_CONFIG", "0") in ("1", "true", "True")
VLLM_TRITON_USE_TD = os.environ.get("VLLM_TRITON_USE_TD", "0") in ("1", "true", "True")
VLLM_TUNED_CONFIG_FOLDER = os.environ.get("VLLM_TUNED_CONFIG_FOLDER")
