"""The lse method: blockwise sink scores from q, k and the row LSE, against dense references and the pattern path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sink_interp import AttentionMask, blockwise, measure_sinks
from sink_interp import fused as fused_mod
from sink_interp import lse as lse_mod
from sink_interp._internal import hooknames
from sink_interp.capture import attach_hooks, hook_snapshot
from sink_interp.lse import block_alpha, bucket_counts, choose_method, lse_column_sums

from .conftest import ARCHS
from .reference import official_alpha

MASKS = {
    "causal": AttentionMask(),
    "window": AttentionMask(window=7),
    "window+sinks": AttentionMask(window=5, n_sinks=2),
    "prefix": AttentionMask(prefix=9),
    "prefix+window+sink": AttentionMask(prefix=6, window=4, n_sinks=1),
}


def visible_by_loops(mask: AttentionMask, T: int) -> torch.Tensor:
    """The mask rule written out element by element (independent of AttentionMask.visible)."""
    out = torch.zeros(T, T, dtype=torch.bool)
    for t in range(T):
        for j in range(T):
            seen = j <= t or (mask.prefix > 1 and j < mask.prefix and t < mask.prefix)
            if mask.window is not None and not (t - j < mask.window or j < mask.n_sinks):
                seen = False
            if mask.limit is not None and not t - j < mask.limit:
                seen = False
            out[t, j] = seen
    return out


def dense_attention(q, k, scale, vis):
    """Softmax attention [b, H, T, T] with GQA by repeating KV heads (the reference)."""
    rep = q.shape[1] // k.shape[1]
    s = (q.double() @ k.double().repeat_interleave(rep, 1).transpose(-1, -2)) * scale
    s = s.masked_fill(~vis, float("-inf"))
    return torch.softmax(s, -1), torch.logsumexp(s, -1)


@pytest.mark.parametrize("name", list(MASKS))
def test_mask_rule_matches_element_by_element_definition(name):
    mask = MASKS[name]
    assert torch.equal(mask.dense(23), visible_by_loops(mask, 23))


def test_mask_validation_and_key_span():
    with pytest.raises(ValueError, match="window"):
        AttentionMask(window=0)
    with pytest.raises(ValueError, match="sinks only matter with a window"):
        AttentionMask(n_sinks=2)
    with pytest.raises(ValueError, match="prefix"):
        AttentionMask(prefix=-1)
    m = AttentionMask(window=4, n_sinks=2)
    assert m.key_span(0, 3, 20) == slice(0, 3)
    assert m.key_span(10, 12, 20).tolist() == [0, 1, 7, 8, 9, 10, 11]
    assert AttentionMask(prefix=8).key_span(0, 4, 20) == slice(0, 8)


@pytest.mark.parametrize("heads, kv", [(4, 4), (4, 1), (6, 2)])
@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("with_lse, threads", [(False, 1), (True, 1), (False, 3), (True, 3)])
def test_block_alpha_equals_dense_softmax_column_sums(heads, kv, mask_name, with_lse, threads, monkeypatch):
    monkeypatch.setattr(blockwise, "_MIN_BLOCK", 4)  # force many query blocks
    g = torch.Generator().manual_seed(heads * 10 + kv)
    b, T, d = 2, 37, 8
    q, k = 2 * torch.randn(b, heads, T, d, generator=g), 2 * torch.randn(b, kv, T, d, generator=g)
    mask = MASKS[mask_name]
    A, lse = dense_attention(q, k, 0.3, mask.dense(T))
    edges = [0, 10, 11, 30, T]
    col, rows = block_alpha(
        q,
        k,
        0.3,
        lse=lse.float() if with_lse else None,
        mask=mask,
        query_edges=edges,
        block_bytes=4 * b * heads * T * 5,
        threads=threads,
    )
    assert col.shape == (b, heads, 4, T) and col.dtype == torch.float32
    for i, (lo, hi) in enumerate(zip(edges, edges[1:])):
        np.testing.assert_allclose(col[:, :, i].numpy(), A[:, :, lo:hi].sum(-2).numpy(), rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(rows.numpy(), 1.0, atol=1e-5)


def test_bucket_counts_is_the_official_normaliser_for_one_bucket():
    assert bucket_counts([0, 5], 5).tolist() == [[5, 4, 3, 2, 1]]
    assert bucket_counts([0, 2, 5], 5).tolist() == [[2, 1, 0, 0, 0], [3, 3, 3, 2, 1]]


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("mask_name", ["causal", "window", "prefix"])
def test_mask_hooks_make_the_bridge_equal_hf_eager_with_that_mask(tiny_models, name, mask_name):
    """Independent reference: the HF model with the same 4-D mask passed in, output_attentions, official formula."""
    model, hf = tiny_models(name)
    mask = MASKS[mask_name]
    T = 26
    tokens = torch.randint(4, 128, (3, T), generator=torch.Generator().manual_seed(3))
    add = torch.zeros(3, 1, T, T).masked_fill(~visible_by_loops(mask, T), torch.finfo(torch.float32).min)
    with torch.no_grad():
        out = hf(tokens, attention_mask=add, output_attentions=True)
    ref = official_alpha(torch.stack(out.attentions, 1))
    rep = measure_sinks(model, tokens, method="pattern", mask=mask, progress=False)
    np.testing.assert_allclose(rep.alpha, ref.numpy(), atol=1e-6)


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("mask_name", ["causal", "window", "prefix", "prefix+window+sink"])
@pytest.mark.parametrize("method", ["lse-hooks", "lse-fused"])
def test_lse_equals_pattern_on_every_tiny_architecture(tiny_models, name, mask_name, method, monkeypatch):
    monkeypatch.setattr(blockwise, "_MIN_BLOCK", 4)
    model, _ = tiny_models(name)
    mask = MASKS[mask_name]
    tokens = torch.randint(4, 128, (5, 40), generator=torch.Generator().manual_seed(7))
    before = hook_snapshot(model)
    pattern = measure_sinks(model, tokens, method="pattern", mask=mask, progress=False)
    sums = lse_column_sums(model, tokens, mask=mask, batch_size=2, progress=False, method=method, block_bytes=4 * 2 * 4 * 40 * 6)
    assert sums.engine == method.removeprefix("lse-")
    np.testing.assert_allclose(sums.alpha().numpy(), pattern.alpha, atol=1e-5)
    np.testing.assert_allclose(sums.row_sum.numpy(), 1.0, atol=1e-5)
    assert hook_snapshot(model) == before


@pytest.mark.parametrize("name", ["tiny-gqa", "tiny-learned-mqa"])
def test_measure_sinks_lse_report_records_method_and_engine(tiny_models, name):
    model, hf = tiny_models(name)
    tokens = torch.randint(4, 128, (4, 24), generator=torch.Generator().manual_seed(1))
    rep = measure_sinks(model, tokens, method="lse", progress=False)
    assert rep.method == "lse" and rep.score == "softmax"
    assert rep.engine.engine == "fused"
    assert rep.engine.kernel == (fused_mod.CPU_KERNEL,) and rep.engine.lse == ("kernel",)
    with torch.no_grad():
        ref = official_alpha(torch.stack(hf(tokens, output_attentions=True).attentions, 1))
    np.testing.assert_allclose(rep.alpha, ref.numpy(), atol=1e-5)
    assert rep.summary()["method"] == "lse"
    assert measure_sinks(model, tokens, progress=False).method == "pattern"  # auto at T=24


@pytest.mark.parametrize("mask_name", ["causal", "window+sinks"])
def test_fused_engine_without_the_cpu_kernel_takes_the_row_normaliser_blockwise(tiny_models, mask_name, monkeypatch):
    """The path CUDA/MPS take: F.scaled_dot_product_attention for the output, LSE formed inside the blocks."""
    monkeypatch.setattr(fused_mod, "USE_CPU_LSE_KERNEL", False)
    model, _ = tiny_models("tiny-gqa")
    tokens = torch.randint(4, 128, (3, 33), generator=torch.Generator().manual_seed(8))
    mask = MASKS[mask_name]
    rep = measure_sinks(model, tokens, method="lse", mask=mask, progress=False)
    assert rep.engine.kernel == (fused_mod.SDPA,) and rep.engine.lse == ("blockwise",)
    pattern = measure_sinks(model, tokens, method="pattern", mask=mask, progress=False)
    np.testing.assert_allclose(rep.alpha, pattern.alpha, atol=1e-5)


def test_fused_engine_leaves_the_model_bit_for_bit_and_shares_weights(tiny_models):
    model, _ = tiny_models("tiny-gqa")
    tokens = torch.randint(4, 128, (2, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = model(tokens).clone()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    before = hook_snapshot(model)
    twin = fused_mod.hf_twin(model)
    shared = {p.data_ptr() for p in model.parameters()}
    assert all(p.data_ptr() in shared for p in twin.parameters())
    measure_sinks(model, tokens, method="lse", progress=False)
    assert hook_snapshot(model) == before
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]), n
    with torch.no_grad():
        assert torch.equal(model(tokens), logits)


def test_hooks_on_the_model_send_lse_through_the_hooks_engine(tiny_models):
    """An intervention (here: the first token's values zeroed in layer 0) is seen by the hooks engine only."""
    model, _ = tiny_models("tiny-gqa")
    tokens = torch.randint(4, 128, (3, 20), generator=torch.Generator().manual_seed(4))

    def zero_first_value(v, hook):
        v = v.clone()
        v[:, 0] = 0
        return v

    with attach_hooks(model, [(hooknames.v(0), zero_first_value)]):
        ok, why = fused_mod.fused_supported(model, tokens)
        assert not ok and "hooks" in why
        lse = measure_sinks(model, tokens, method="lse", progress=False)
        pattern = measure_sinks(model, tokens, method="pattern", progress=False)
        with pytest.raises(ValueError, match="fused engine cannot run"):
            measure_sinks(model, tokens, method="lse-fused", progress=False)
    clean = measure_sinks(model, tokens, method="pattern", progress=False)
    assert lse.engine.engine == "hooks"
    np.testing.assert_allclose(lse.alpha, pattern.alpha, atol=1e-5)
    assert np.abs(lse.alpha[:, 1] - clean.alpha[:, 1]).max() > 1e-4  # the intervention changed layer 1


def test_failed_self_check_falls_back_to_hooks(tiny_models, monkeypatch):
    """A fused engine that gets the scores wrong is caught on a short slice; the hooks engine takes over."""
    model, _ = tiny_models("tiny-mha")
    tokens = torch.randint(4, 128, (2, 16), generator=torch.Generator().manual_seed(5))
    real = fused_mod.fused_column_sums

    def wrong(*args, **kwargs):
        col, rows, info = real(*args, **kwargs)
        return col * 1.01, rows, info

    monkeypatch.setattr(fused_mod, "fused_column_sums", wrong)
    sums = lse_column_sums(model, tokens, progress=False)
    assert sums.engine == "hooks" and "self-check" in sums.info.why_not_fused
    assert "self-check on" in sums.info.self_check


def test_failed_self_check_everywhere_refuses_lse_and_auto_falls_back_to_pattern(tiny_models, monkeypatch):
    """When no lse engine reproduces the model's own attention: method='lse' refuses, 'auto' measures the pattern."""
    model, hf = tiny_models("tiny-gqa")
    tokens = torch.randint(4, 128, (1, lse_mod.LSE_MIN_LENGTH), generator=torch.Generator().manual_seed(5))
    from sink_interp import architecture

    monkeypatch.setitem(architecture.ATTENTION_ATOL, torch.float32, -1.0)
    with pytest.raises(lse_mod.SelfCheckFailed, match="method='pattern'"):
        measure_sinks(model, tokens, method="lse", progress=False)
    rep = measure_sinks(model, tokens, progress=False)
    assert rep.method == "pattern" and "self-check" in rep.why_not_lse
    with torch.no_grad():
        ref = official_alpha(torch.stack(hf(tokens, output_attentions=True).attentions, 1))
    np.testing.assert_allclose(rep.alpha, ref.numpy(), atol=1e-5)


def test_choose_method_by_length_memory_and_needs(tiny_models, monkeypatch):
    model, _ = tiny_models("tiny-gqa")
    short = torch.randint(4, 128, (2, 32))
    long = torch.randint(4, 128, (1, lse_mod.LSE_MIN_LENGTH))
    assert choose_method(model, short) == "pattern"
    assert choose_method(model, long) == "lse"
    monkeypatch.setattr(lse_mod, "available_bytes", lambda device=None: 1000)
    assert choose_method(model, short) == "lse"  # the maps would not fit
    with pytest.raises(ValueError, match=r"needs about .* GiB .* free on cpu; fix: shorter inputs"):
        choose_method(model, long, score="proxy")  # the proxy needs the maps, and they cannot fit: refused up front
    monkeypatch.setattr(lse_mod, "available_bytes", lambda device=None: 1 << 40)
    assert choose_method(model, long, score="proxy") == "pattern"
    with pytest.raises(ValueError, match="method='pattern'"):
        choose_method(model, short, "lse", score="abs-proxy")
    with attach_hooks(model, [(hooknames.attn_scores(1), lambda x, hook: x)]):
        assert choose_method(model, long) == "pattern"
        with pytest.raises(ValueError, match="hook_attn_scores|attn_scores"):
            choose_method(model, long, "lse")
    with pytest.raises(ValueError, match="method must be one of"):
        choose_method(model, short, "flash")
    assert choose_method(model, short, "lse-fused") == choose_method(model, short, "lse-hooks") == "lse"  # engines of lse
    with pytest.raises(ValueError, match=r"^method must be one of \('lse', 'lse-fused', 'lse-hooks'\), got 'auto'; fix: "):
        lse_column_sums(model, short, method="auto")


def test_the_lse_engine_is_one_method_and_the_report_records_lse(tiny_models):
    model, _ = tiny_models("tiny-gqa")
    tokens = torch.randint(4, 128, (2, 24), generator=torch.Generator().manual_seed(3))
    hooks = measure_sinks(model, tokens, method="lse-hooks", progress=False)
    fused = measure_sinks(model, tokens, method="lse-fused", progress=False)
    assert (hooks.method, hooks.engine.engine, hooks.engine.why_not_fused) == ("lse", "hooks", "method='lse-hooks'")
    assert (fused.method, fused.engine.engine) == ("lse", "fused")
    np.testing.assert_allclose(hooks.alpha, fused.alpha, atol=1e-5)


def test_lse_measures_long_inputs_without_quadratic_memory(tiny_models):
    """T = 4096 on a tiny model: one T x T float32 map per head would be 64 MB; the blocks stay near BLOCK_BYTES."""
    model, _ = tiny_models("tiny-gqa")
    tokens = torch.randint(4, 128, (1, 4096), generator=torch.Generator().manual_seed(6))
    rep = measure_sinks(model, tokens, progress=False)
    assert rep.method == "lse" and rep.alpha.shape == (1, 2, 4, 4096)
    # every query pays 1 in total: sum_k alpha_k (T - k + 1) = T
    np.testing.assert_allclose((rep.alpha * np.arange(4096, 0, -1)).sum(-1), 4096, rtol=1e-4)
