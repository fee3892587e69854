"""vllm.v1.attention.backends.utils: the two slot constants the ops use (values as in vLLM 0.33)."""
PAD_SLOT_ID = -1
NULL_BLOCK_ID = 0
