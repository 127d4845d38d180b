"""The description of attention: mask rules with a model window, score rules in the blockwise pass, refusals by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sink_interp import AttentionMask, describe_attention, measure_sinks
from sink_interp.architecture import UnsupportedAttention, check_attention, register_attention_facts
from sink_interp.interventions import masked
from sink_interp.lse import ScoreRule, block_alpha, lse_column_sums
from sink_interp.models import tiny_checkpoint

from .reference import official_alpha
from .test_lse import visible_by_loops

MASKS = {
    "limit": AttentionMask(limit=6),
    "window+sinks+limit": AttentionMask(window=4, n_sinks=2, limit=9),
    "prefix+limit": AttentionMask(prefix=7, limit=5),
    "sinks beyond limit": AttentionMask(window=3, n_sinks=3, limit=4),
}


@pytest.mark.parametrize("name", list(MASKS))
def test_mask_with_a_model_window_matches_the_rule_written_out(name):
    mask = MASKS[name]
    T = 23
    vis = visible_by_loops(mask, T)
    assert torch.equal(mask.dense(T), vis)
    for a, e in [(0, 5), (5, 11), (11, 23), (17, 18)]:  # every key a block of queries sees is in its span
        span = mask.key_span(a, e, T)
        keys = torch.arange(T)[span] if isinstance(span, slice) else span
        needed = vis[a:e].any(0).nonzero().flatten()
        assert set(needed.tolist()) <= set(keys.tolist())
        assert len(keys) <= len(needed) + (e - a)  # and not much more


def test_within_keeps_the_tighter_limit_and_records_it():
    m = AttentionMask(window=4).within(8).within(16)
    assert m.limit == 8 and not m.is_causal and "model window 8" in m.describe()
    assert AttentionMask().within(None).is_causal
    assert "limit" not in AttentionMask(window=3).to_dict()
    with pytest.raises(ValueError, match="limit"):
        AttentionMask(limit=0)


def dense_reference(q, k, v, scale, vis, softcap=None, alibi=None, sinks=None):
    """softmax over visible keys of softcap(scale q.k) + alibi[h, j], with a sink logit per head in the normaliser."""
    H, G = q.shape[1], k.shape[1]
    kk = k.double().repeat_interleave(H // G, 1)
    s = (q.double() @ kk.transpose(-1, -2)) * scale
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    if alibi is not None:
        s = s + alibi.double()[None, :, None, :]
    s = s.masked_fill(~vis, float("-inf"))
    if sinks is not None:
        col = sinks.double().reshape(1, H, 1, 1).expand(s.shape[0], H, s.shape[2], 1)
        A = torch.softmax(torch.cat([s, col], -1), -1)[..., :-1]
    else:
        A = torch.softmax(s, -1)
    out = A @ v.double().repeat_interleave(H // G, 1)
    return A, out


@pytest.mark.parametrize("mask_name", ["causal", *MASKS])
@pytest.mark.parametrize("feature", ["plain", "softcap", "alibi", "sinks", "all"])
def test_block_pass_equals_the_dense_formula(mask_name, feature, monkeypatch):
    from sink_interp import blockwise

    monkeypatch.setattr(blockwise, "_MIN_BLOCK", 4)
    g = torch.Generator().manual_seed(0)
    b, H, G, T, d = 2, 4, 2, 23, 8
    q, k, v = (torch.randn(b, n, T, d, generator=g) * 2 for n in (H, G, G))
    mask = AttentionMask() if mask_name == "causal" else MASKS[mask_name]
    softcap = 3.0 if feature in ("softcap", "all") else None
    alibi = torch.randn(H, T, generator=g) if feature in ("alibi", "all") else None
    sinks = torch.randn(H, generator=g) * 2 if feature in ("sinks", "all") else None
    rule = ScoreRule(0.35, softcap, alibi, sinks)
    A, out = dense_reference(q, k, v, 0.35, mask.dense(T), softcap, alibi, sinks)
    col, rows, got = block_alpha(q, k, rule, mask=mask, query_edges=[0, 9, T], block_bytes=4 * b * H * T * 5, v=v)
    np.testing.assert_allclose(col.sum(2).numpy(), A.sum(-2).numpy(), atol=1e-5)
    np.testing.assert_allclose(col[:, :, 0].numpy(), A[:, :, :9].sum(-2).numpy(), atol=1e-5)
    np.testing.assert_allclose(rows.numpy(), A.sum(-1).mean(-1).numpy(), atol=1e-5)
    np.testing.assert_allclose(got.numpy(), out.numpy(), atol=1e-4)


def test_a_kernel_lse_is_refused_for_nonlinear_logits():
    q, k = torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)
    with pytest.raises(ValueError, match="plain softmax"):
        block_alpha(q, k, ScoreRule(0.5, softcap=2.0), lse=torch.zeros(1, 2, 6))


@pytest.mark.parametrize("family", ["gemma2", "bloom", "gpt_oss"])
def test_layer_logits_and_pattern_follow_the_written_formula(family):
    from sink_interp import load_model

    model = load_model(str(tiny_checkpoint(family)))
    la = describe_attention(model).layer(0)
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, la.n_heads, 12, la.d_head, generator=g), torch.randn(1, la.n_kv_heads, 12, la.d_head, generator=g)
    alibi = la.alibi_bias(torch.arange(12)) if la.alibi else None
    sinks = la.sink_logits().detach() if la.has_sink_logits else None
    A, _ = dense_reference(q, k, torch.zeros_like(k), la.scale, la.mask().dense(12), la.softcap, alibi, sinks)
    np.testing.assert_allclose(la.pattern(q, k).numpy(), A.numpy(), atol=1e-6)
    if family == "bloom":  # HF's own ALiBi table: slope_h * j
        from transformers.models.bloom.modeling_bloom import build_alibi_tensor

        want = build_alibi_tensor(torch.ones(1, 12, dtype=torch.long), la.n_heads, torch.float32).reshape(la.n_heads, 12)
        assert torch.equal(alibi, want)


def test_knobs_that_change_attention_make_lse_refuse_by_name(tiny_models):
    model, hf = tiny_models("tiny-mha")
    tokens = torch.randint(4, 128, (2, 20), generator=torch.Generator().manual_seed(0))
    register_attention_facts(model, attention_knobs=["a custom score hook"])
    try:
        with pytest.raises(UnsupportedAttention, match="a custom score hook.*method='pattern'"):
            measure_sinks(model, tokens, method="lse", progress=False)
        with pytest.raises(UnsupportedAttention, match="a custom score hook"):
            lse_column_sums(model, tokens, progress=False)
        rep = measure_sinks(model, torch.randint(4, 128, (1, 600)), progress=False)  # auto: the exact method
        assert rep.method == "pattern"
        assert "training knobs: a custom score hook" in describe_attention(model).features()
    finally:
        register_attention_facts(model)
    assert not describe_attention(model).knobs


def test_trained_lab_model_registers_its_knobs():
    from sink_interp.tasks import BigramBackcopy
    from sink_interp.training import preset
    from sink_interp.training.model import build_model

    task = BigramBackcopy(n_vocab=16, source="random", seq_len=16)
    lab = build_model(preset("bb-kbias", seq_len=16, d_model=32, n_heads=2, d_mlp=64), task.d_vocab, task.tokenizer())
    spec = describe_attention(lab.bridge)
    assert "K bias" in spec.knobs and any("K bias" in u for u in spec.layer(0).unsupported)
    with pytest.raises(UnsupportedAttention, match="K bias"):
        measure_sinks(lab.bridge, torch.randint(0, task.d_vocab, (2, 16)), method="lse", progress=False)


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "gptj", "opt"])
def test_prefix_mask_on_every_kind_of_layer_equals_hf_with_that_mask(family):
    """Hooks mode (llama), q/k rotated by the description (NeoX), and attention rebuilt at hook_z (GPT-J, OPT):
    a prefix LM mask through the one intervention pipeline equals HF given the same 4-D mask."""
    from transformers import AutoModelForCausalLM

    from sink_interp import load_model

    path = tiny_checkpoint(family)
    model = load_model(str(path))
    hf = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager").eval()
    mask = AttentionMask(prefix=6)
    T = 20
    x = torch.randint(3, 128, (2, T), generator=torch.Generator().manual_seed(2))
    add = torch.zeros(2, 1, T, T).masked_fill(~mask.dense(T), torch.finfo(torch.float32).min)
    import inspect

    kw = (
        {"position_ids": torch.arange(T)[None].expand(2, -1)}
        if "position_ids" in inspect.signature(hf.forward).parameters
        else {}
    )
    with torch.no_grad():
        out = hf(x, attention_mask=add, output_attentions=True, **kw)
    ref = official_alpha(torch.stack(out.attentions, 1).float()).numpy()
    pattern = measure_sinks(model, x, method="pattern", mask=mask, progress=False)
    lse = measure_sinks(model, x, method="lse-hooks", mask=mask, progress=False)
    np.testing.assert_allclose(pattern.alpha, ref, atol=1e-4)
    np.testing.assert_allclose(lse.alpha, ref, atol=1e-4)
    with torch.no_grad(), masked(model, mask):
        logits = model(x)
    torch.testing.assert_close(logits, out.logits, atol=1e-4 * max(1.0, out.logits.abs().max().item()), rtol=1e-5)


def test_check_attention_reports_every_layer(tiny_models):
    model, _ = tiny_models("tiny-learned-mqa")
    diffs = check_attention(model, length=16)
    assert sorted(diffs) == [0, 1] and max(diffs.values()) < 1e-5


def test_a_wrong_description_is_never_used_to_rebuild_attention():
    """OPT's attention runs inside HF, so edits rebuild it from q and k: with a wrong scale in its description the
    gate refuses by name instead of returning other logits, and the lse self-check refuses too."""
    import dataclasses

    from sink_interp import MaskKey, intervene, load_model
    from sink_interp.architecture import checks as arch_checks
    from sink_interp.architecture import describe as arch_describe
    from sink_interp.lse import SelfCheckFailed

    model = load_model(str(tiny_checkpoint("opt")))
    spec = describe_attention(model)
    wrong = dataclasses.replace(spec, layers=tuple(dataclasses.replace(la, scale=la.scale * 2) for la in spec.layers))
    arch_describe._CACHE[model] = wrong
    try:
        x = torch.randint(3, 128, (1, 12))
        with pytest.raises(UnsupportedAttention, match=r"does not reproduce this opt model's own attention.*method='pattern'"):
            with intervene(model, MaskKey()):
                model(x)
        with pytest.raises(SelfCheckFailed, match="self-check of the hooks engine"):
            measure_sinks(model, x, method="lse-hooks", progress=False)
        # the fused engine runs HF's own attention with HF's own scale: its self-check passes and its numbers are right
        exact = measure_sinks(model, x, method="pattern", progress=False)
        np.testing.assert_allclose(measure_sinks(model, x, method="lse", progress=False).alpha, exact.alpha, atol=1e-5)
    finally:
        arch_describe._CACHE.pop(model, None)
        arch_checks._VERIFIED.pop(model, None)
    with intervene(model, MaskKey()):  # the true description passes the gate
        model(x)


@pytest.mark.parametrize("family", ["gemma2", "gpt_oss", "mistral"])
@pytest.mark.parametrize("mask", [AttentionMask(window=5, n_sinks=1), AttentionMask(prefix=6)], ids=["window+sink", "prefix"])
def test_user_masks_on_windowed_models_agree_across_engines(family, mask):
    """A user's mask inside the model's own (alternating) windows: pattern path, hooks engine and fused engine agree."""
    from sink_interp import load_model

    model = load_model(str(tiny_checkpoint(family)))
    x = torch.randint(3, 128, (2, 30), generator=torch.Generator().manual_seed(4))
    pattern = measure_sinks(model, x, method="pattern", mask=mask, progress=False)
    hooks = measure_sinks(model, x, method="lse-hooks", mask=mask, progress=False)
    fused = measure_sinks(model, x, method="lse", mask=mask, progress=False)
    assert fused.engine.engine == "fused"
    np.testing.assert_allclose(hooks.alpha, pattern.alpha, atol=1e-4)
    np.testing.assert_allclose(fused.alpha, pattern.alpha, atol=1e-4)
    np.testing.assert_allclose(fused.row_sum, pattern.row_sum, atol=1e-4)
