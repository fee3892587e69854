"""A plain torch backend: the driver's model and cache with the textbook kernels (SPEC §2), a
sequential scan accumulated in float32. No system is under test here: it exists so that the
driver itself (op playing, cache bookkeeping, conv windows, injection, snapshot/restore, the
writer) is tested on any CPU against `mambadiff run` (tests/external_export_test.cpp)."""

import os

import torch
import torch.nn.functional as F

from driver import Backend, conv_window_after


# MAMBADIFF_STAND_IN_SOFTPLUS=triton: the softplus of mamba_ssm's and vLLM's Triton kernels,
# log(exp(u) + 1) in fp32 (linear above 20), instead of torch's: it loses relative precision as u
# falls (exp(u) + 1 rounds away all but ~2^-24 / exp(u) of exp(u)) and is 0 below about -16.7. With
# it the stand-in reproduces those kernels' fp32 results, which attributes their deviation from the
# reference to that formula (docs/external.md, "Known behaviour").
SOFTPLUS = os.environ.get("MAMBADIFF_STAND_IN_SOFTPLUS", "torch")


def softplus_dt(dt, dt_bias, limit):
    """dt [..., H] -> clamp(softplus(dt + dt_bias), limit) in float32 (torch's softplus, linear above 20)."""
    u = dt.float() + dt_bias.float()
    if SOFTPLUS == "triton":
        sp = torch.where(u <= 20.0, torch.log(torch.exp(u) + 1), u)
    else:
        sp = F.softplus(u)
    return torch.clamp(sp, min=limit[0], max=limit[1])


class StandIn(Backend):
    name = "stand_in"

    def conv(self, branch, xBC, cache, w, shape):
        xt = xBC.transpose(1, 2)  # [B, conv_dim, T]
        K = shape.conv_kernel
        history = cache.conv[..., 1:] if branch != "prefill" else torch.zeros_like(cache.conv[..., 1:])
        full = torch.cat([history.float(), xt.float()], dim=-1)  # [B, conv_dim, K-1+T]
        out = F.conv1d(full, w.conv_weight.float().unsqueeze(1), None if w.conv_bias is None else w.conv_bias.float(),
                       groups=shape.conv_dim)  # [B, conv_dim, T]
        cache.conv.copy_(conv_window_after(cache.conv, xt, branch != "prefill"))
        assert out.shape[-1] == xt.shape[-1] and K == w.conv_weight.shape[-1]
        self.implementations["conv"] = "torch F.conv1d (stand-in)"
        return F.silu(out).to(xBC.dtype).transpose(1, 2)

    def _recurrence(self, state, x, dt, B_, C, w, shape):
        """One token. state [B,H,P,N] fp32; x [B,H,P]; dt [B,H] (clamped); B_, C [B,G,N] -> y [B,H,P]."""
        rep = shape.num_heads // shape.n_groups
        Bh = B_.float().repeat_interleave(rep, dim=1)  # [B, H, N]
        Ch = C.float().repeat_interleave(rep, dim=1)
        dA = torch.exp(dt * w.A.float())  # [B, H]
        state = state * dA[..., None, None] + (dt[..., None] * x.float())[..., None] * Bh[:, :, None, :]
        y = (state * Ch[:, :, None, :]).sum(-1) + w.D.float()[None, :, None] * x.float()
        return state, y

    def scan(self, x, dt, B_, C, initial, w, shape):
        Bsz, T, H, P = x.shape
        dtc = softplus_dt(dt, w.dt_bias, shape.time_step_limit)  # [B, T, H]
        state = initial.float().clone() if initial is not None else torch.zeros(
            Bsz, H, P, shape.state_size, device=x.device)
        ys = []
        for t in range(T):
            state, y = self._recurrence(state, x[:, t], dtc[:, t], B_[:, t], C[:, t], w, shape)
            ys.append(y)
        self.implementations["scan"] = f"torch sequential recurrence, float32, {SOFTPLUS} softplus (stand-in)"
        return torch.stack(ys, dim=1).to(x.dtype), state

    def step(self, state, x, dt, B_, C, w, shape):
        new, y = self._recurrence(state.float(), x, softplus_dt(dt, w.dt_bias, shape.time_step_limit), B_, C, w, shape)
        state.copy_(new.to(state.dtype))
        self.implementations["step"] = "torch recurrence, float32 (stand-in)"
        return y.to(x.dtype)

    def gated_norm(self, y, gate, w, shape):
        h = y.float() * F.silu(gate.float())
        g = h.reshape(*h.shape[:-1], -1, shape.norm_group_size)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + shape.norm_eps)
        self.implementations["norm"] = f"torch gated RMSNorm, group size {shape.norm_group_size} (stand-in)"
        return w.norm_weight * g.reshape(h.shape).to(y.dtype)


def make_backend(device):
    return StandIn(device)
