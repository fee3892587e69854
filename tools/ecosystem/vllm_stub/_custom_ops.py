"""vllm._custom_ops: only Mamba1's selective_scan_fwd is referenced by the extracted files, never called."""
