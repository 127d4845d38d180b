"""Integration on the offline SmolLM2 (30 layers, 9 query heads, 3 KV heads): interventions against HF eager
with the attention written by hand (the reference harness of test_interventions)."""

from __future__ import annotations

import pytest
import torch

from sink_interp import KVBias, MaskKey, StreamingWindow, ZeroValue, compare, intervene, probe_tokens
from sink_interp.capture import hook_snapshot

from .test_interventions import hf_attention, streaming_ref, zero_value_ref

pytestmark = pytest.mark.smollm2


def both(model, hf, x, ivs, fn):
    with torch.no_grad():
        with intervene(model, *ivs):
            got = model(x)
        with hf_attention(hf, fn):
            want = hf(x).logits
    return got, want


def test_zero_value_in_single_query_heads_of_a_gqa_group(smollm2, smollm2_hf):
    x = probe_tokens(smollm2, "natural", n=2, length=24).tokens
    heads = {3: [0], 7: [4, 5], 20: [8]}  # query heads that share their value head with untouched heads
    got, want = both(smollm2, smollm2_hf, x, [ZeroValue(heads=heads)], zero_value_ref([0], heads=heads, layers=list(heads)))
    assert torch.allclose(got, want, atol=2e-4), (got - want).abs().max()
    with torch.no_grad():
        clean = smollm2(x)
    assert (got - clean).abs().max() > 1e-2


def test_masked_sink_plus_key_bias_on_smollm2(smollm2, smollm2_hf):
    x = probe_tokens(smollm2, "natural", n=2, length=24).tokens
    g = torch.Generator().manual_seed(0)
    ks = {layer: torch.randn(9, 64, generator=g) for layer in range(30)}

    def fn(layer, q, k, v, scale, tq, hf):
        # both: key 0 removed for queries t > 0, k* prepended
        b, H, T, d = q.shape
        s = (q @ k.transpose(-1, -2)) * scale
        vis = (torch.arange(T)[None, :] <= tq[:, None]) & ~((torch.arange(T)[None, :] == 0) & (tq[:, None] > 0))
        s = s.masked_fill(~vis, float("-inf"))
        s_star = torch.einsum("bhtd,hd->bht", q, ks[layer])[..., None] * scale
        A = torch.softmax(torch.cat([s_star, s], -1), -1)[..., 1:]
        return A @ v, A

    got, want = both(smollm2, smollm2_hf, x, [MaskKey(), KVBias(k=ks)], fn)
    assert torch.allclose(got, want, atol=2e-4), (got - want).abs().max()


def test_streaming_cache_positions_on_smollm2(smollm2, smollm2_hf):
    x = probe_tokens(smollm2, "natural", n=1, length=40).tokens
    got, want = both(smollm2, smollm2_hf, x, [StreamingWindow(12, n_sinks=4)], streaming_ref(4, 12, True))
    assert torch.allclose(got, want, atol=2e-4), (got - want).abs().max()


def test_compare_on_smollm2_restores_the_model(smollm2):
    x = probe_tokens(smollm2, "natural", n=2, length=32).tokens
    before = hook_snapshot(smollm2)
    with torch.no_grad():
        ref = smollm2(x)
    rep = compare(smollm2, x, {"zero": ZeroValue(), "mask q>=2": MaskKey(min_query=2)}, progress=False)
    assert rep.clean.sink_rate_1 > 50  # SmolLM2 without BOS: most heads sink on the first token
    assert rep["mask q>=2"].sink_rate_1 == 0 and rep["mask q>=2"].delta_loss > 0
    assert hook_snapshot(smollm2) == before
    with torch.no_grad():
        assert torch.equal(smollm2(x), ref)
