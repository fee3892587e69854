"""vLLM 0.33's Mamba2 Triton ops, called as its MambaMixer2.conv_ssm_forward calls them
(vllm/model_executor/layers/mamba/mamba_mixer2.py), with tensor parallelism 1 and no prefix
caching, speculative decoding or ReplaySSM:

  prefill / continue  the batch packed as varlen sequences (query_start_loc = [0, T, 2T, ...]):
                      causal_conv1d_fn(x [dim, tokens], conv_weights [dim, K], bias, conv_states,
                      query_start_loc, cache_indices, has_initial_state) and
                      mamba_chunk_scan_combined_varlen(..., chunk metadata as vLLM's
                      compute_varlen_chunk_metadata builds it, initial_states = the cached states
                      on continue, dt_softplus=True, dt_limit=(0.0, inf) -- vLLM passes that
                      whatever the model's time_step_limit --, state_dtype = the cache's,
                      final states written into the cache slots).
  step                causal_conv1d_update(x [B, dim], conv_states, ..., conv_state_indices) and
                      selective_state_update(state slots, x, dt, A, B, C, D, dt_bias,
                      dt_softplus=True, state_batch_indices, dst_state_batch_indices, out) with
                      A (float32), dt, dt_bias, D expanded over head_dim.
  gated norm          Mixer2RMSNormGated.forward_cuda: the Triton rms_norm_gated (one group) when
                      n_groups == 1, otherwise forward_native's torch norm grouped by
                      d_inner / n_groups -- whatever the model's own grouping.
State dtypes: vLLM's defaults (mamba_cache_dtype = mamba_ssm_cache_dtype = "auto"): conv and SSM
states in the model dtype, so a bf16 run keeps a bf16 SSM state, rounded at every step (vLLM
#43301). MAMBADIFF_VLLM_SSM_CACHE_DTYPE=float32 plays `--mamba-ssm-cache-dtype float32` instead.
vLLM's cache slot 0 is its null block (a row with index 0 is skipped): rows use slots 1..B.
vLLM's conv state holds K-1 inputs; the export's window [B, conv_dim, K] takes those K-1 from vLLM
and the oldest column from the driver's own bookkeeping.
A is -exp(A_log) from the stored A_log in float32, D and dt_bias in the model dtype, as vLLM's
loader holds them. The model around the ops (RMSNorm, linear layers, residual) is HF's modules,
not vLLM's: this checks vLLM's Mamba2 ops, not its model glue.
"""

import itertools
import os
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from driver import Backend, Unsupported, conv_window_after


def varlen_chunk_metadata(query_start_loc: torch.Tensor, chunk_size: int):
    """vLLM's compute_varlen_chunk_metadata (v1/attention/backends/mamba2_attn.py, which "mirrors the
    V1 Mamba2 metadata builder"): logical chunks split at sequence and physical chunk boundaries.
    Returns (cu_chunk_seqlens [nchunks+1], last_chunk_indices [B], seq_idx [nchunks]), int32."""
    starts, ends = query_start_loc[:-1].tolist(), query_start_loc[1:].tolist()
    chunk_lens, seq_idx, last = [], [], [-1] * len(starts)
    for b, (s, e) in enumerate(zip(starts, ends)):
        pos = s
        while pos < e:
            take = min(chunk_size - pos % chunk_size, e - pos)
            chunk_lens.append(take)
            seq_idx.append(b)
            last[b] = len(chunk_lens) - 1
            pos += take
    dev = query_start_loc.device
    cu = torch.tensor([0] + list(itertools.accumulate(chunk_lens)), dtype=torch.int32, device=dev)
    return cu, torch.tensor(last, dtype=torch.int32, device=dev), torch.tensor(seq_idx, dtype=torch.int32, device=dev)


def conv1d_metadata(query_start_loc_cpu: torch.Tensor, device):
    """vLLM's compute_causal_conv1d_metadata (v1/attention/backends/utils.py), what its Mamba2
    metadata builder hands causal_conv1d_fn as `metadata` (nums_dict, batch_ptr,
    token_chunk_offset_ptr): the Triton programs per sequence for BLOCK_M 8."""
    seqlens = query_start_loc_cpu.diff()
    nums_dict, batch_ptr, offset_ptr = {}, None, None
    for block_m in [8]:
        nums = -(-seqlens // block_m)
        mlist = torch.repeat_interleave(torch.arange(len(nums)), nums).to(torch.int32)
        offsets = torch.tensor([i for n in nums.tolist() for i in range(n)], dtype=torch.int32)
        max_programs = max(1024, len(mlist)) * 2
        batch_ptr = torch.full((max_programs,), -1, dtype=torch.int32, device=device)  # PAD_SLOT_ID
        offset_ptr = torch.full((max_programs,), -1, dtype=torch.int32, device=device)
        batch_ptr[:len(mlist)] = mlist.to(device)
        offset_ptr[:len(mlist)] = offsets.to(device)
        nums_dict[block_m] = {"nums": nums, "tot": int(nums.sum()), "mlist": mlist, "mlist_len": len(mlist),
                              "offsetlist": offsets, "batch_ptr": batch_ptr, "token_chunk_offset_ptr": offset_ptr}
    return SimpleNamespace(nums_dict=nums_dict, batch_ptr=batch_ptr, token_chunk_offset_ptr=offset_ptr)


class Vllm(Backend):
    name = "vllm"

    def __init__(self, device):
        super().__init__(device)
        from vllm.model_executor.layers.mamba.ops import causal_conv1d, layernorm_gated, mamba_ssm, ssd_combined

        self.ops = (causal_conv1d, layernorm_gated, mamba_ssm, ssd_combined)
        self.ssm_cache_dtype = os.environ.get("MAMBADIFF_VLLM_SSM_CACHE_DTYPE", "auto")
        if self.ssm_cache_dtype not in ("auto", "float32"):
            raise ValueError(f"MAMBADIFF_VLLM_SSM_CACHE_DTYPE={self.ssm_cache_dtype!r}: expected auto or float32")
        self.notes["mamba_ssm_cache_dtype"] = self.ssm_cache_dtype
        self.notes["dt_limit"] = "(0.0, inf) in the chunked scan, as MambaMixer2 passes it; none in the step"
        if device.type == "cpu":
            self.notes["interpreter"] = "TRITON_INTERPRET=1 on CPU tensors (bf16 tl.dot wrong: triton #11584)"

    def versions(self):
        import triton
        import vllm

        return {"torch": torch.__version__, "triton": triton.__version__, "vllm": getattr(vllm, "__version__", "?")}

    def check_supported(self, dtype, shape):
        if self.device.type == "cpu" and dtype == torch.bfloat16:
            raise Unsupported("bf16 under Triton's CPU interpreter: its tl.dot multiplies raw bf16 bits "
                              "(triton #11584); bf16 is checked on the GPU")
        if shape.chunk_size & (shape.chunk_size - 1):
            raise Unsupported(f"chunk_size {shape.chunk_size} is not a power of two (vLLM's SSD kernels need one)")

    def state_dtype(self, dtype):
        return dtype if self.ssm_cache_dtype == "auto" else torch.float32

    def _slots(self, per_row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """vLLM's cache: slot 0 is the null block; row b lives in slot b + 1. -> (slots, indices int32)."""
        B = per_row.shape[0]
        slots = torch.zeros((B + 1, *per_row.shape[1:]), dtype=per_row.dtype, device=per_row.device)
        slots[1:] = per_row
        return slots, torch.arange(1, B + 1, dtype=torch.int32, device=per_row.device)

    def conv(self, branch, xBC, cache, w, shape):
        if self.device.type == "cpu" and branch != "step":
            return self._conv_torch(branch, xBC, cache, w, shape)
        causal_conv1d = self.ops[0]
        Bsz, T, dim = xBC.shape
        conv_states, idx = self._slots(cache.conv[..., 1:].contiguous())  # [B+1, dim, K-1]
        weight = w.conv_weight.contiguous()  # [dim, K]
        if branch == "step":
            out = causal_conv1d.causal_conv1d_update(xBC[:, 0, :], conv_states, weight, w.conv_bias, "silu",
                                                     conv_state_indices=idx)  # [B, dim]
            out = out[:, None, :]
            self.implementations["conv_update"] = "vllm ops.causal_conv1d.causal_conv1d_update (Triton)"
        else:
            x = xBC.reshape(Bsz * T, dim).transpose(0, 1)  # [dim, tokens], as the mixer passes it
            qsl = torch.arange(0, Bsz * T + 1, T, dtype=torch.int32, device=xBC.device)
            has_initial = torch.full((Bsz,), branch == "continue", dtype=torch.bool, device=xBC.device)
            out = causal_conv1d.causal_conv1d_fn(x, weight, w.conv_bias, activation="silu", conv_states=conv_states,
                                                 has_initial_state=has_initial, cache_indices=idx,
                                                 query_start_loc=qsl, metadata=conv1d_metadata(qsl.cpu(), xBC.device))
            out = out.transpose(0, 1).reshape(Bsz, T, dim)
            self.implementations["conv"] = "vllm ops.causal_conv1d.causal_conv1d_fn (Triton, varlen)"
        window = conv_window_after(cache.conv, xBC.transpose(1, 2), branch != "prefill")
        window[..., 1:] = conv_states[1:]  # vLLM's own K-1 newest inputs
        cache.conv.copy_(window)
        return out.to(xBC.dtype)

    def _conv_torch(self, branch, xBC, cache, w, shape):
        """On the CPU only, prefill and continue: vLLM's causal_conv1d_fn does not run under Triton 3.6's
        interpreter ('builtin_function_or_method' object has no attribute 'scalar' in its kernel; its
        causal_conv1d_update does run, tools/ecosystem/probe_vllm_conv.py), so the CPU export runs the
        textbook conv in the model dtype there and says so; on the GPU the Triton kernel runs."""
        xt = xBC.transpose(1, 2)  # [B, dim, T]
        history = cache.conv[..., 1:] if branch != "prefill" else torch.zeros_like(cache.conv[..., 1:])
        full = torch.cat([history, xt.to(cache.conv.dtype)], dim=-1)
        out = F.silu(F.conv1d(full, w.conv_weight.unsqueeze(1), w.conv_bias, groups=shape.conv_dim))
        cache.conv.copy_(conv_window_after(cache.conv, xt, branch != "prefill"))
        self.implementations["conv"] = "torch F.conv1d (CPU: vLLM's causal_conv1d_fn does not run under the interpreter)"
        return out.transpose(1, 2).to(xBC.dtype)

    def scan(self, x, dt, B_, C, initial, w, shape):
        ssd_combined = self.ops[3]
        Bsz, T, H, P = x.shape
        n = Bsz * T
        qsl = torch.arange(0, n + 1, T, dtype=torch.int32, device=x.device)
        cu_chunk, last_chunk, seq_idx = varlen_chunk_metadata(qsl.cpu(), shape.chunk_size)
        state = initial if initial is not None else torch.zeros(
            Bsz, H, P, shape.state_size, dtype=self.state_dtype(x.dtype), device=x.device)
        slots, idx = self._slots(state.contiguous())
        out = torch.empty(n, H, P, dtype=x.dtype, device=x.device)
        ssd_combined.mamba_chunk_scan_combined_varlen(
            x.reshape(n, H, P), dt.reshape(n, H), w.A_checkpoint, B_.reshape(n, shape.n_groups, -1),
            C.reshape(n, shape.n_groups, -1), chunk_size=shape.chunk_size, D=w.D, z=None, dt_bias=w.dt_bias,
            seq_idx=seq_idx.to(x.device), cu_seqlens=qsl, cu_chunk_seqlens=cu_chunk.to(x.device),
            last_chunk_indices=last_chunk.to(x.device),
            initial_states=slots[idx.long()] if initial is not None else None, dt_softplus=True,
            dt_limit=(0.0, float("inf")), out=out, state_dtype=slots.dtype, final_states_out=slots,
            final_state_indices=idx)
        self.implementations["scan"] = ("vllm ops.ssd_combined.mamba_chunk_scan_combined_varlen (dt_limit=(0, inf), "
                                        f"initial_states={'cache' if initial is not None else 'None'}, "
                                        f"state {str(slots.dtype)[6:]})")
        return out.reshape(Bsz, T, H, P), slots[1:]

    def step(self, state, x, dt, B_, C, w, shape):
        mamba_ssm = self.ops[2]
        P, N = shape.head_dim, shape.state_size
        slots, idx = self._slots(state)
        out = torch.empty_like(x)
        mamba_ssm.selective_state_update(
            slots, x, dt[:, :, None].expand(-1, -1, P), w.A_checkpoint[:, None, None].expand(-1, P, N).float(), B_, C,
            w.D[:, None].expand(-1, P), w.dt_bias[:, None].expand(-1, P), dt_softplus=True,
            state_batch_indices=idx, dst_state_batch_indices=idx, out=out)
        state.copy_(slots[1:])
        self.implementations["step"] = (f"vllm ops.mamba_ssm.selective_state_update (Triton, state "
                                        f"{str(slots.dtype)[6:]} in place, no dt_limit)")
        return out

    def gated_norm(self, y, gate, w, shape):
        layernorm_gated = self.ops[1]
        if shape.n_groups == 1:
            self.implementations["norm"] = "vllm ops.layernorm_gated.rms_norm_gated (Triton, one group)"
            return layernorm_gated.rms_norm_gated(y, w.norm_weight, None, z=gate, eps=shape.norm_eps,
                                                  norm_before_gate=False)
        # Mixer2RMSNormGated.forward_native, tp_size 1: grouped by d_inner / n_groups.
        group = shape.d_inner // shape.n_groups
        h = y * F.silu(gate.to(torch.float32))
        g = h.view(*h.shape[:-1], shape.n_groups, group)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + shape.norm_eps)
        self.implementations["norm"] = f"vllm Mixer2RMSNormGated.forward_native (torch, grouped by {group})"
        return w.norm_weight * g.view(h.shape).to(y.dtype)


def make_backend(device):
    return Vllm(device)
