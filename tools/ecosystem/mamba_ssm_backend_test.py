#!/usr/bin/env python3
"""The mamba_ssm backend hands causal-conv1d's conv what HF transformers 5.17's fast path hands it
(CTest `ecosystem_mamba_ssm_conv_layout`, label unit; CPU, no mamba_ssm or causal-conv1d needed).

causal-conv1d's CUDA extension picks its kernel by the input's layout -- channel-last strides
(x.stride(1) == 1) run a kernel that requires x.stride(0) and x.stride(2) to be multiples of 8 and
raises otherwise -- so calling it "as HF calls it" includes the layout. HF's own Mamba2 model is run
here on `tiny` with a recorder in place of `modeling_mamba2.causal_conv1d_fn` (it records shape,
strides and contiguity, then runs HF's torch conv), and the backend's `conv` with the same recorder,
on the same in_proj output: a prefill longer than the conv window (HF: the strided view of in_proj's
output, channel-last, stride 164 on `tiny`: the layout that made the GPU call of 2026-12-02 09:19
UTC raise in hf_fast_cc and not in mamba_ssm_cc, which made it contiguous), one shorter (zero-padded
to K, contiguous) and a continue (cached window + new inputs, contiguous). The outputs must agree too.
    python3 tools/ecosystem/mamba_ssm_backend_test.py [-v]
"""

from __future__ import annotations

import sys
import unittest
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "backends"))

from transformers import DynamicCache, Mamba2ForCausalLM  # noqa: E402
from transformers.models.mamba2 import modeling_mamba2  # noqa: E402

from driver import LayerCache, LayerWeights, ModelShape  # noqa: E402
from mamba_ssm_backend import MambaSsm  # noqa: E402


def layout(x: torch.Tensor):
    return tuple(x.shape), tuple(x.stride()), x.is_contiguous()


def torch_conv(x, weight, bias=None, activation=None):
    """HF 5.17's torch causal_conv1d_fn (modeling_mamba2.py), x [B, C, T] -> [B, C, T]."""
    out = F.conv1d(x.to(weight.dtype), weight.unsqueeze(1), bias, padding=weight.shape[-1] - 1,
                   groups=x.shape[1])[:, :, :x.shape[-1]]
    return (F.silu(out) if activation == "silu" else out).to(x.dtype)


class Recorder:
    """Stands in for causal_conv1d_fn: records the layout it is given, computes HF's torch conv."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, weight, bias=None, activation=None, **kwargs):
        self.calls.append(layout(x))
        return torch_conv(x, weight, bias, activation)


class MambaSsmConvLayout(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.manual_seed(0)
        cls.model = Mamba2ForCausalLM.from_pretrained(ROOT / "corpus" / "models" / "tiny", dtype=torch.float32).eval()
        cls.shape = ModelShape.of(cls.model.config)

    def hf_calls(self, lengths):
        """HF's model on a fresh cache, one forward per length; the layer-0 conv call of each."""
        rec = Recorder()
        saved = modeling_mamba2.causal_conv1d_fn
        modeling_mamba2.causal_conv1d_fn = rec
        try:
            cache = DynamicCache(config=self.model.config)
            with torch.no_grad():
                for t in lengths:
                    self.model(torch.randint(0, self.model.config.vocab_size, (2, t)), cache_params=cache, use_cache=True)
        finally:
            modeling_mamba2.causal_conv1d_fn = saved
        layers = self.model.config.num_hidden_layers
        self.assertEqual(len(rec.calls), layers * len(lengths), "HF called causal_conv1d_fn once per layer and forward")
        return rec.calls[::layers]

    def backend_call(self, branch, T, conv_cache):
        """The backend's conv on layer 0's in_proj output of T tokens; (layout, output, hf_like_output)."""
        be = MambaSsm.__new__(MambaSsm)  # no mamba_ssm needed: only conv runs
        be.implementations, be.notes, be.conv_impl = {}, {}, "recorder"
        be.conv_fn = rec = Recorder()
        be.conv_update = None
        m = self.model.backbone.layers[0].mixer
        w = LayerWeights(conv_weight=m.conv1d.weight.squeeze(1), conv_bias=m.conv1d.bias, dt_bias=m.dt_bias,
                         A=-torch.exp(m.A_log.float()), A_checkpoint=None, D=m.D, norm_weight=m.norm.weight)
        s = self.shape
        with torch.no_grad():
            projected = m.in_proj(torch.randn(2, T, self.model.config.hidden_size))
            _, xBC, _ = projected.split([s.d_inner, s.conv_dim, s.num_heads], dim=-1)
            cache = LayerCache(conv_cache.clone(), torch.zeros(2, s.num_heads, s.head_dim, s.state_size))
            out = be.conv(branch, xBC, cache, w, s)
            # The same conv the torch way, from the same inputs: [cached window (continue) | new inputs].
            xt = xBC.transpose(1, 2)
            full = torch.cat([conv_cache, xt], dim=-1) if branch == "continue" else xt
            want = torch_conv(full.contiguous(), w.conv_weight, w.conv_bias, activation="silu")[:, :, -T:]
        self.assertEqual(len(rec.calls), 1)
        return rec.calls[0], out, want.transpose(1, 2)

    def test_prefill_longer_than_the_window_is_hfs_channel_last_view(self):
        K = self.model.config.conv_kernel
        (hf,) = self.hf_calls([K + 3])
        mine, out, want = self.backend_call("prefill", K + 3, torch.zeros(2, self.shape.conv_dim, K))
        self.assertEqual(mine, hf)
        self.assertFalse(hf[2], "HF hands the conv a strided view of in_proj's output")
        self.assertEqual(hf[1][1], 1, "channel-last: stride 1 along the channels")
        self.assertNotEqual(hf[1][2] % 8, 0, "tiny's in_proj width (164) is the stride the CUDA extension rejects")
        torch.testing.assert_close(out, want)

    def test_prefill_shorter_than_the_window_is_padded_and_contiguous(self):
        K = self.model.config.conv_kernel
        (hf,) = self.hf_calls([K - 2])
        mine, out, want = self.backend_call("prefill", K - 2, torch.zeros(2, self.shape.conv_dim, K))
        self.assertEqual(mine, hf)
        self.assertTrue(hf[2])
        self.assertEqual(hf[0][-1], K)
        torch.testing.assert_close(out, want)

    def test_continue_is_the_cached_window_and_the_new_inputs_contiguous(self):
        K = self.model.config.conv_kernel
        _, hf = self.hf_calls([K + 1, 3])
        mine, out, want = self.backend_call("continue", 3, torch.randn(2, self.shape.conv_dim, K))
        self.assertEqual(mine, hf)
        self.assertTrue(hf[2])
        self.assertEqual(hf[0][-1], K + 3)
        torch.testing.assert_close(out, want)


if __name__ == "__main__":
    unittest.main()
