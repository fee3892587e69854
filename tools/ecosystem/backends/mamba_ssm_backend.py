"""mamba_ssm's Triton kernels, called as HF transformers 5.17's fast path calls them
(modeling_mamba2.py Mamba2Mixer.forward with mamba_ssm importable):

  prefill / continue  causal_conv1d_fn over [cached window, new inputs] (HF's update_conv_state),
                      then mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=D, z=None,
                      dt_bias=dt_bias, initial_states=<cache> on continue, dt_softplus=True,
                      dt_limit=config.time_step_limit, return_final_states=True); the final state
                      (float32) becomes the cache's.
  step                causal_conv1d_update on the cached window, then the in-place
                      selective_state_update(state, x [B,H,P], dt, A, B, C, D, z=None, dt_bias,
                      dt_softplus=True) with A, dt, dt_bias, D expanded over head_dim (stride 0), as
                      HF expands them. No dt_limit: neither HF's call nor the kernel has one.
  gated norm          mamba_ssm's Triton rmsnorm_fn(y, weight, None, z=gate, eps,
                      group_size, norm_before_gate=False), group_size as the model's config says
                      (d_inner: HF's ungrouped norm; d_inner/G with mambadiff_gated_norm=grouped,
                      mamba_ssm's own Mamba2). HF 5.17 itself runs its torch MambaRMSNormGated
                      here (the hf_fast backend exercises that).
causal_conv1d_fn/update are the causal-conv1d CUDA extension's when it imports (it is built apart
from mamba_ssm), otherwise HF's torch fallbacks -- the export's `implementations` says which.
"""

import importlib

import torch
import torch.nn.functional as F

from driver import Backend, Unsupported, conv_window_after


class MambaSsm(Backend):
    name = "mamba_ssm"

    def __init__(self, device):
        super().__init__(device)
        from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

        self.chunk_scan, self.state_update, self.rmsnorm_fn = mamba_chunk_scan_combined, selective_state_update, rmsnorm_fn
        try:
            cc = importlib.import_module("causal_conv1d")
            self.conv_fn, self.conv_update = cc.causal_conv1d_fn, cc.causal_conv1d_update
            self.conv_impl = f"causal_conv1d {getattr(cc, '__version__', '?')} CUDA extension"
        except Exception as e:  # noqa: BLE001 (any import failure means: not available)
            self.conv_fn = self.conv_update = None
            self.conv_impl = f"HF's torch fallback (causal_conv1d not importable: {type(e).__name__})"
        self.notes["conv"] = self.conv_impl
        if device.type == "cpu":
            self.notes["interpreter"] = "TRITON_INTERPRET=1 on CPU tensors (fp32 dots exact; bf16 tl.dot wrong: triton #11584)"

    def versions(self):
        import mamba_ssm
        import triton

        v = {"torch": torch.__version__, "triton": triton.__version__,
             "mamba_ssm": getattr(mamba_ssm, "__version__", "?")}
        if self.conv_fn is not None:
            import causal_conv1d
            v["causal_conv1d"] = getattr(causal_conv1d, "__version__", "?")
        return v

    def check_supported(self, dtype, shape):
        if self.device.type == "cpu" and dtype == torch.bfloat16:
            raise Unsupported("bf16 under Triton's CPU interpreter: its tl.dot multiplies raw bf16 bits "
                              "(triton #11584); bf16 is checked on the GPU")

    def state_dtype(self, dtype):
        return torch.float32  # HF keeps the chunk scan's final state, which mamba_ssm returns in float32

    def conv(self, branch, xBC, cache, w, shape):
        xt = xBC.transpose(1, 2)  # [B, conv_dim, T]
        T = xt.shape[-1]
        if branch == "step":
            if self.conv_update is not None:
                out = self.conv_update(xt, cache.conv, w.conv_weight, w.conv_bias, "silu")  # updates cache.conv
            else:  # HF's torch fallback (modeling_mamba2.causal_conv1d_update)
                full = torch.cat([cache.conv, xt], dim=-1).to(w.conv_weight.dtype)
                cache.conv.copy_(full[:, :, -cache.conv.shape[-1]:])
                out = F.silu(F.conv1d(full, w.conv_weight.unsqueeze(1), w.conv_bias, groups=shape.conv_dim)[:, :, -T:])
            self.implementations["conv_update"] = "causal_conv1d_update: " + self.conv_impl
            return out.to(xBC.dtype).transpose(1, 2)
        # HF's update_conv_state, layout included: on continue the conv sees the cached window before
        # the new inputs (a new, contiguous tensor); on prefill HF hands causal_conv1d_fn the transposed
        # view of in_proj's output as it is -- channel-last strides, so the extension runs its
        # channel-last kernel, which requires x.stride(0) and x.stride(2) to be multiples of 8 -- or,
        # when T < K, that view zero-padded on the left to K tokens (a new, contiguous tensor).
        K = cache.conv.shape[-1]
        if branch == "continue":
            full = torch.cat([cache.conv, xt], dim=-1)
        else:
            full = F.pad(xt, (K - T, 0)) if T < K else xt
        cache.conv.copy_(conv_window_after(cache.conv, xt, branch == "continue"))
        if self.conv_fn is not None:
            out = self.conv_fn(full, w.conv_weight, w.conv_bias, activation="silu")
        else:  # HF's torch fallback (modeling_mamba2.causal_conv1d_fn)
            out = F.silu(F.conv1d(full.to(w.conv_weight.dtype), w.conv_weight.unsqueeze(1), w.conv_bias,
                                  padding=shape.conv_kernel - 1, groups=shape.conv_dim)[:, :, :full.shape[-1]])
        self.implementations["conv"] = "causal_conv1d_fn: " + self.conv_impl
        return out[:, :, -T:].to(xBC.dtype).transpose(1, 2)

    def scan(self, x, dt, B_, C, initial, w, shape):
        y, final = self.chunk_scan(x, dt, w.A, B_, C, chunk_size=shape.chunk_size, D=w.D, z=None, dt_bias=w.dt_bias,
                                   initial_states=initial, dt_softplus=True, dt_limit=shape.time_step_limit,
                                   return_final_states=True)
        self.implementations["scan"] = ("mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined"
                                        f" (initial_states={'cache' if initial is not None else 'None'},"
                                        f" dt_limit={shape.time_step_limit}, final state {str(final.dtype)[6:]})")
        return y, final

    def step(self, state, x, dt, B_, C, w, shape):
        P, N = shape.head_dim, shape.state_size
        y = self.state_update(state, x, dt[:, :, None].expand(-1, -1, P), w.A[:, None, None].expand(-1, P, N), B_, C,
                              w.D[:, None].expand(-1, P), z=None, dt_bias=w.dt_bias[:, None].expand(-1, P),
                              dt_softplus=True)
        self.implementations["step"] = ("mamba_ssm.ops.triton.selective_state_update.selective_state_update"
                                        f" (in place, state {str(state.dtype)[6:]}, no dt_limit)")
        return y

    def gated_norm(self, y, gate, w, shape):
        out = self.rmsnorm_fn(y.contiguous(), w.norm_weight, None, z=gate.contiguous(), eps=shape.norm_eps,
                              group_size=shape.norm_group_size, norm_before_gate=False)
        self.implementations["norm"] = (f"mamba_ssm.ops.triton.layernorm_gated.rmsnorm_fn (group_size "
                                        f"{shape.norm_group_size}, norm_before_gate=False)")
        return out


def make_backend(device):
    return MambaSsm(device)
