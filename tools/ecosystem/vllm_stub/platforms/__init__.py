"""vllm.platforms.current_platform for the Mamba2 ops: a CUDA platform (is_cpu() must be False, or
vLLM swaps in its own CPU implementations; on the CPU the ops run under Triton's interpreter)."""
import torch


class _CudaPlatform:
    def is_cpu(self):
        return False

    def is_cuda(self):
        return True

    def is_rocm(self):
        return False

    def is_xpu(self):
        return False

    def is_device_capability(self, capability):
        if not torch.cuda.is_available():
            return False
        major, minor = torch.cuda.get_device_capability()
        return major * 10 + minor == capability

    def is_arch_support_pdl(self):
        return False

    def __getattr__(self, name):  # any other is_*() query: no
        if name.startswith("is_"):
            return lambda *a, **k: False
        raise AttributeError(name)


current_platform = _CudaPlatform()


def vllm_version_matches_substr(substr):
    return substr in "0.33.0"
