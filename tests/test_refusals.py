"""Families beyond the zoo: every analysis equals Hugging Face or refuses in one line naming the feature.

Each family of :data:`sink_interp.models.tiny.EXTRA_ZOO` carries one feature that an
analysis re-applies (a position scheme, a query scale, a clamp, multipliers,
per-layer head counts, hybrid blocks, a bridge that cannot load or run it).
:data:`EXPECT` says, per family and analysis, ``"exact"`` (checked here
against HF eager attention, HF hidden states, HF's padding mask or HF attention
re-rotated the StreamingLLM way) or the refusal's wording (a regex matched
against the one-line error). ``docs/support-more.md`` is rendered from it.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AttentionInterface, AutoModelForCausalLM

from sink_interp import (
    MaskKey,
    StreamingWindow,
    describe_attention,
    intervene,
    load_model,
    massive_activations,
    measure_sinks,
    trace_sink,
)
from sink_interp.capture import hook_snapshot
from sink_interp.models.tiny import EXTRA_FAMILIES, EXTRA_ZOO, tiny_checkpoint

from .conftest import warm
from .reference import official_alpha
from .test_zoo import _REF, SINKS, WIN, _keys, _reference_attention, hf_edited, softmax_with, streaming_edit

T = 24
ANALYSES = {
    "load": "`load_model`",
    "pattern": 'sink scores, `method="pattern"`',
    "lse": 'sink scores, `method="lse"`',
    "massive": "`massive_activations`",
    "trace": "`trace_sink`",
    "stream": "`StreamingWindow` cache positions",
    "mask": "`MaskKey` vs HF padding",
}
HYBRID = r"is a hybrid: block\(s\) \[0\] are JambaMambaDecoderLayer with mamba \(JambaMambaMixer\) \(attention only in block\(s\) \[1\]\)"
NO_PATTERN = r"exposes no blocks\.0\.attn\.hook_pattern"
CODEGEN = r"reads CodeGenAttention\.embed_positions, which transformers .* no longer has"
QK_LINKS = r"the wk, qk_norm, rope, manifold link\(s\) cannot be traced; fix: links=\['spike', 'writer', 'gated_mlp', 'norm'\]"
ROPE_INSIDE = r"rotary embedding applied inside {}"
HEADS = r"per-layer head counts \(4 heads: layers \[0\]; 8 heads: layers \[1\]\).*fix: analyse the layers of one head count"
ORIGINAL = r"fix: rope_positions='original'"

#: family -> analysis -> "exact" or a regex of the one-line refusal; "load" is "exact" when the bridge loads it
EXPECT: dict[str, dict[str, str]] = {
    "ministral3": {
        **dict.fromkeys(("load", "pattern", "lse", "massive", "trace", "mask"), "exact"),
        "stream": r"position-dependent query scale \(llama_4_scaling_beta 0\.5\).*" + ORIGINAL,
    },
    "olmo": dict.fromkeys(ANALYSES, "exact"),
    "smollm3": dict.fromkeys(ANALYSES, "exact"),
    "deepseek_v2": {
        **dict.fromkeys(("load", "pattern", "massive", "mask"), "exact"),
        "lse": r"attention bridge MLAAttentionBridge.*fix: method='pattern'",
        "trace": r"MLA's internal RoPE.*" + QK_LINKS,
        "stream": r"MLA's internal RoPE, which sink_interp cannot rebuild at other positions.*" + ORIGINAL,
    },
    "mpt": {
        **dict.fromkeys(("load", "pattern", "massive", "trace", "mask"), "exact"),
        "lse": r"MPT's ALiBi \(its own slopes.*fix: method='pattern'",
        "stream": r"absolute key positions \(MPT's ALiBi\).*Fix: rope_positions='original'",
    },
    "xglm": {
        **dict.fromkeys(("load", "pattern", "lse", "massive", "trace", "mask"), "exact"),
        "stream": r"sinusoidal absolute position embeddings.*Fix: rope_positions='original'",
    },
    "openai_gpt": {
        **dict.fromkeys(("load", "pattern", "lse", "massive", "trace", "mask"), "exact"),
        "stream": r"learned absolute position embeddings.*Fix: rope_positions='original'",
    },
    "falcon_h1": {
        **dict.fromkeys(("load", "pattern", "lse", "massive", "stream", "mask"), "exact"),
        "trace": r"wk link: the sink key rebuilt .* differs from this falcon_h1 model's own hook_k by .*"
        r"\(key_multiplier 0\.3, attention_in_multiplier 2\); fix: links=\[",
    },
    "laguna": {
        "load": "exact",
        "pattern": HEADS,
        "lse": ROPE_INSIDE.format("LagunaAttention") + ".*fix: method='pattern'",
        "massive": HEADS,
        "trace": HEADS,
        "stream": r"RoPE applied inside LagunaAttention.*" + ORIGINAL,
        "mask": ROPE_INSIDE.format("LagunaAttention") + ", which sink_interp cannot rebuild from q and k",
    },
    "cohere": {
        **dict.fromkeys(("load", "pattern", "lse", "massive", "trace", "mask"), "exact"),
        "stream": r"adjacent-pair rotary, which sink_interp does not rotate itself.*" + ORIGINAL,
    },
    "hunyuan_v1_dense": {
        **dict.fromkeys(("load", "pattern", "lse", "massive", "trace", "mask"), "exact"),
        "stream": r"QK-norm after RoPE.*" + ORIGINAL,
    },
    "nanochat": {
        **dict.fromkeys(("load", "pattern", "massive"), "exact"),
        "lse": ROPE_INSIDE.format("NanoChatAttention") + ".*fix: method='pattern'",
        "trace": r"RoPE applied inside NanoChatAttention; no hook blocks\.1\.attn\.hook_q_normed.*" + QK_LINKS,
        "stream": r"RoPE applied inside NanoChatAttention.*" + ORIGINAL,
        "mask": ROPE_INSIDE.format("NanoChatAttention") + ", which sink_interp cannot rebuild from q and k",
    },
    "jetmoe": {
        **dict.fromkeys(("load", "pattern", "massive"), "exact"),
        "lse": ROPE_INSIDE.format("JetMoeAttention") + ".*no hook blocks.0.attn.hook_q.*fix: method='pattern'",
        "trace": r"RoPE applied inside JetMoeAttention; no hook .*" + QK_LINKS,
        "stream": r"RoPE applied inside JetMoeAttention.*" + ORIGINAL,
        "mask": ROPE_INSIDE.format("JetMoeAttention"),
    },
    "codegen": {"load": "exact", **{a: CODEGEN for a in ANALYSES if a != "load"}},
    "deepseek_v4": {"load": "exact", **{a: NO_PATTERN for a in ANALYSES if a != "load"}},
    "jamba": {"load": "exact", **{a: HYBRID for a in ANALYSES if a != "load"}},
    "helium": {
        a: r"cannot load \['HeliumForCausalLM'\] \(model type helium\); the architectures it loads are listed in "
        r"transformer_lens\.factories\.architecture_adapter_factory\.SUPPORTED_ARCHITECTURES"
        for a in ANALYSES
    },
}

#: what ``describe_attention(model).summary()`` says of each family's feature
SUMMARY = {
    "ministral3": r"position-dependent query scale \(llama_4_scaling_beta 0\.5\)",
    "olmo": r"clip_qkv 1 \(q, k, v clamped\)",
    "smollm3": r"NoPE on layer\(s\) \[1\]",
    "deepseek_v2": r"MLA \(latent attention",
    "mpt": r"MPT's ALiBi",
    "xglm": r"sinusoidal absolute positions",
    "openai_gpt": r"post-norm \(ln_1 after attention\)",
    "falcon_h1": r"multipliers \(attention_in_multiplier 2, key_multiplier 0\.3\)",
    "laguna": r"per-layer head counts \(4/8\), RoPE applied inside LagunaAttention",
    "cohere": r"QK-norm, adjacent-pair rotary",
    "hunyuan_v1_dense": r"QK-norm",
    "nanochat": r"RoPE applied inside NanoChatAttention",
    "jetmoe": r"RoPE applied inside JetMoeAttention",
}
DOC = Path(__file__).resolve().parents[1] / "docs" / "support-more.md"


def toks(n: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(3, 128, (n, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def extra(tmp_path_factory):
    """family -> (bridge or the load error, HF eager model of the same folder)."""
    root = tmp_path_factory.mktemp("extra-zoo")
    cache = {}

    def get(family: str):
        if family not in cache:
            try:
                path = tiny_checkpoint(family, root / family)
            except ValueError as e:  # a transformers release without this config class (and nothing else) skips
                if "has no" not in str(e):
                    raise
                pytest.skip(str(e))
            hf = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager").eval()
            try:
                bridge = load_model(str(path), device="cpu")
            except Exception as e:  # noqa: BLE001 - the refusal is the outcome under test
                bridge = e
            else:
                with contextlib.suppress(Exception):  # a bridge that cannot run the model (CodeGen) fails here
                    warm(bridge)
            cache[family] = (bridge, hf)
        return cache[family]

    return get


def outcome(expect: str, run) -> None:
    """Run ``run()``: it checks exactness itself where ``expect`` is "exact", else must raise one line matching ``expect``."""
    if expect == "exact":
        run()
        return
    with pytest.raises(Exception) as err:  # noqa: PT011 - the type varies (ValueError, NotImplementedError); the words do not
        run()
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 700, msg
    assert re.search(expect, msg), f"{msg!r} does not match {expect!r}"
    raw = isinstance(err.value, (AttributeError, KeyError, IndexError)) or type(err.value) is RuntimeError
    assert not raw, repr(err.value)


def _model(extra, family):
    bridge, hf = extra(family)
    if isinstance(bridge, Exception):
        raise bridge
    return bridge, hf


def hf_alpha(hf, x):
    with torch.no_grad():
        out = hf(x, output_attentions=True)
    return official_alpha(torch.stack([a.float() for a in out.attentions], 1)).numpy()


def _sinks(extra, family, method):
    bridge, hf = _model(extra, family)
    x = toks(2, T, 1)
    before = hook_snapshot(bridge)
    rep = measure_sinks(bridge, x, method=method, progress=False)
    ref = hf_alpha(hf, x)
    np.testing.assert_allclose(rep.alpha, ref, atol=1e-4)
    if method == "lse":  # the hooks engine too (it reads q and k at the description's hooks: HunYuan's fire heads-first)
        hooks = measure_sinks(bridge, x, method="lse-hooks", progress=False)
        np.testing.assert_allclose(hooks.alpha, ref, atol=1e-4)
    assert hook_snapshot(bridge) == before


def _massive(extra, family):
    bridge, hf = _model(extra, family)
    x = toks(2, T, 2)
    rep = massive_activations(bridge, x, progress=False)
    with torch.no_grad():
        hs = hf(x, output_hidden_states=True).hidden_states
    for layer in range(int(bridge.cfg.n_layers)):
        np.testing.assert_allclose(rep.layer_max[layer], hs[layer].abs().amax().item(), rtol=1e-5)
    spec = describe_attention(bridge)
    unreadable = [la.layer for la in spec.layers if not la.qkv_readable or la.k_hook not in bridge.hook_dict]
    assert unreadable == ([0, 1] if family in ("deepseek_v2", "jetmoe") else [])
    assert list(rep.keys_unreadable) == unreadable
    assert np.isnan(rep.k_norm[:, unreadable]).all() and np.isfinite(np.delete(rep.k_norm, unreadable, axis=1)).all()


def _trace(extra, family):
    bridge, _ = _model(extra, family)
    rep = trace_sink(bridge, toks(4, 16, 3), layer=1, head=0, progress=False)
    assert rep.links["wk"].reconstruction_error < 1e-4


def _stream(extra, family):
    bridge, hf = _model(extra, family)
    x = toks(1, 16, 9)
    with torch.no_grad(), intervene(bridge, StreamingWindow(WIN, n_sinks=SINKS)):
        got = bridge(x)
    base = streaming_edit(family)
    nope = [i for i, r in enumerate(getattr(hf.config, "no_rope_layers", None) or []) if not r]

    def edit(layer, q, s, vis, v, sink, scaling, softcap, hf_, tq):
        if layer in nope:  # no rotation: cache positions change nothing, the window does
            j, t = torch.arange(s.shape[-1])[None, :], tq[:, None]
            A, _ = softmax_with(s, vis & ((t - j < WIN) | (j < SINKS)), sink)
            return A @ v, A
        return base(layer, q, s, vis, v, sink, scaling, softcap, hf_, tq)

    def capture_keys(module, query, key, value, attention_mask, **kw):
        _keys[module.layer_idx] = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1).float()
        return _reference_attention(module, query, key, value, attention_mask, **kw)

    AttentionInterface.register("sink_interp_refusals_stream", capture_keys)
    _REF["edit"], _REF["hf"] = edit, hf
    hf.set_attn_implementation("sink_interp_refusals_stream")
    try:
        with torch.no_grad():
            want = hf(x).logits
    finally:
        hf.set_attn_implementation("eager")
        _REF.clear()
        _keys.clear()
    torch.testing.assert_close(got, want, atol=2e-5 * max(1.0, want.abs().max().item()), rtol=1e-5)


def _hide_key0(layer, q, s, vis, v, sink, scaling, softcap, hf, tq):
    hidden = (tq > 0)[:, None] & (torch.arange(s.shape[-1]) == 0)[None, :]
    A, _ = softmax_with(s, vis & ~hidden, sink)
    return A @ v, A


def _mask(extra, family):
    """MaskKey against HF's padding mask on token 0; where a Mamba mixer beside attention reads that mask too
    (Falcon-H1), against HF attention with key 0 hidden from later queries, through transformers' interface."""
    bridge, hf = _model(extra, family)
    x = toks(2, 16, 6)
    pad = torch.ones_like(x)
    pad[:, 0] = 0
    with torch.no_grad():
        if family == "falcon_h1":
            with hf_edited(hf, _hide_key0):
                want = hf(x).logits
        else:
            want = hf(x, attention_mask=pad).logits
        with intervene(bridge, MaskKey()):
            got = bridge(x)
    scale = want[:, 1:].abs().max().item()
    torch.testing.assert_close(got[:, 1:], want[:, 1:], atol=1e-5 * max(1.0, scale), rtol=1e-5)


RUN = {
    "load": lambda extra, f: _model(extra, f),
    "pattern": lambda extra, f: _sinks(extra, f, "pattern"),
    "lse": lambda extra, f: _sinks(extra, f, "lse"),
    "massive": _massive,
    "trace": _trace,
    "stream": _stream,
    "mask": _mask,
}


@pytest.mark.parametrize("analysis", list(ANALYSES))
@pytest.mark.parametrize("family", EXTRA_FAMILIES)
def test_every_analysis_is_exact_or_refuses_in_one_line(extra, family, analysis):
    outcome(EXPECT[family][analysis], lambda: RUN[analysis](extra, family))


@pytest.mark.parametrize("family", list(SUMMARY))
def test_the_description_names_each_family_feature(extra, family):
    bridge, _ = _model(extra, family)
    assert re.search(SUMMARY[family], describe_attention(bridge).summary())


def test_per_layer_head_counts_are_exact_one_head_count_at_a_time(extra):
    bridge, hf = _model(extra, "laguna")
    x = toks(2, T, 4)
    with torch.no_grad():
        A = hf(x, output_attentions=True).attentions
    for layer, heads in ((0, 4), (1, 8)):
        rep = measure_sinks(bridge, x, method="pattern", layers=[layer], progress=False)
        assert rep.alpha.shape[2] == heads
        np.testing.assert_allclose(rep.alpha[:, 0], official_alpha(A[layer].float()[:, None]).numpy()[:, 0], atol=1e-4)


def test_clip_qkv_is_applied_before_rotating_queries(extra):
    """OLMo clamps q before RoPE and the bridge fires hook_q before the clamp: the description clamps it too."""
    bridge, _ = _model(extra, "olmo")
    la = describe_attention(bridge).layer(0)
    _, cache = bridge.run_with_cache(toks(1, 12, 5), names_filter=lambda n: n in (la.q_pre_rotary_hook, la.q_hook))
    raw = cache[la.q_pre_rotary_hook]
    assert raw.abs().max() > la.clip_qkv  # the clamp is active on this probe
    torch.testing.assert_close(la.rotary.apply(la.pre_rotary(raw)), la.final(cache[la.q_hook]), atol=1e-5, rtol=1e-5)


def test_a_bridge_failure_while_running_is_one_line(extra, monkeypatch):
    """An error raised inside TransformerLens while an analysis runs the model becomes one line naming the architecture."""
    import sink_interp.architecture.describe as arch

    monkeypatch.setattr(arch, "_BRIDGE_NEEDS", {})
    path = tiny_checkpoint("codegen")
    bridge = load_model(str(path), device="cpu")
    with pytest.raises(NotImplementedError) as err:
        measure_sinks(bridge, toks(1, 8, 0), method="pattern", progress=False)
    msg = str(err.value)
    assert "\n" not in msg and re.search(r"bridge fails to run CodeGenForCausalLM \(AttributeError: .*embed_positions", msg)


def render_page() -> str:
    lines = [
        "# Support matrix: more architectures",
        "",
        "Generated from `tests/test_refusals.py` (`EXPECT`), whose tests check every cell; do not edit by hand.",
        "Each family is a tiny random checkpoint of `sink_interp.models.tiny.EXTRA_ZOO` with one feature beyond",
        "[the zoo](support.md). **exact** means equal to Hugging Face's own computation within 1e-4 (eager attention",
        "and the official sink formula, HF hidden states, HF's padding mask, HF attention re-rotated the StreamingLLM",
        "way); **refused** means one line that names the feature and what still works; **loads** means `load_model`",
        "returns the bridge.",
        "",
        "| family | feature | " + " | ".join(ANALYSES.values()) + " |",
        "|---|---|" + "---|" * len(ANALYSES),
    ]
    for family in EXTRA_FAMILIES:
        cells = [("loads" if a == "load" else "exact") if EXPECT[family][a] == "exact" else "refused" for a in ANALYSES]
        lines.append(f"| {family} | {EXTRA_ZOO[family][2]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Refusals, in words: positions that hooks cannot re-index (ALiBi, sinusoidal or learned absolute positions,",
        "MLA's internal RoPE, RoPE inside a Hugging Face module) refuse `StreamingWindow(rope_positions='cache')`;",
        "a position-dependent query scale (Ministral-3's `llama_4_scaling_beta`) and QK-norm after RoPE (HunYuan) too.",
        "`trace_sink` refuses the links that read q and k where the hooks do not carry them, and the W_K link where",
        "its rebuilt key is not the model's `hook_k` (Falcon-H1's multipliers). Models with per-layer head counts",
        "(Laguna) are measured one head count at a time (`layers=`). Hybrids (Mamba, Jamba, ...), bridges without",
        "attention weights and architectures the bridge cannot load or run are refused by name.",
        "",
    ]
    return "\n".join(lines)


def test_support_page_lists_these_outcomes():
    import os

    text = render_page()
    if os.environ.get("SINK_INTERP_WRITE_SUPPORT"):
        DOC.write_text(text, encoding="utf-8")
    assert DOC.read_text(encoding="utf-8") == text, (
        "docs/support-more.md is stale; fix: SINK_INTERP_WRITE_SUPPORT=1 pytest tests/test_refusals.py"
    )


def test_report_page_leaves_out_the_key_view_where_keys_are_unreadable(extra):
    """MLA keys live in a latent space the hooks do not give as [n, T, kv heads, d]: the page says so instead of crashing."""
    from sink_interp.pages import build_report

    bridge, _ = _model(extra, "deepseek_v2")
    html = build_report(bridge, toks(3, 12, 7), n_detail=3, trace=False, interventions=False).to_html()
    assert 'data-kind="massive"' in html and 'data-kind="manifold"' not in html
    assert re.search(
        r"The key view is left out: layer \d&#x27;s keys are not readable from hooks \(attention bridge MLAAttentionBridge", html
    )


def test_trace_layer_must_be_a_whole_number(extra):
    bridge, _ = _model(extra, "olmo")
    with pytest.raises(ValueError) as err:
        trace_sink(bridge, toks(4, 12, 0), layer=1.0, head=0, progress=False)
    assert (
        str(err.value)
        == "layer must be a whole number (int) in 0..1, got 1.0 (float); fix: pass layer in 0..1, or layer=None for the strongest sink head"
    )


def test_edits_that_read_q_k_or_v_refuse_on_mla_and_pattern_edits_run(extra):
    from sink_interp import KVBias, ScaleAttention, ZeroValue, fit_bias
    from sink_interp.fit import FitSettings

    bridge, _ = _model(extra, "deepseek_v2")
    x = toks(2, 12, 0)
    for iv in (ZeroValue(), KVBias()):
        with pytest.raises(
            NotImplementedError, match=r"on layer 0: it uses attention bridge MLAAttentionBridge; these hooks .*fix: edits of the"
        ):
            with torch.no_grad(), intervene(bridge, iv):
                bridge(x)
    with pytest.raises(
        NotImplementedError, match=r"fit_bias\(init='sink'\) reads .*MLAAttentionBridge.*massive_activations still run"
    ):
        fit_bias(bridge, x, FitSettings(kind="k", init="sink", steps=1, batch_size=2), progress=False)
    with torch.no_grad(), intervene(bridge, ScaleAttention(0.5, positions=[0])):
        assert torch.isfinite(bridge(x)).all()


def test_fit_bias_reads_heads_first_keys(extra):
    """HunYuan's bridge fires its QK-normed keys heads-first: the sink key is picked after putting them [b, T, G, d]."""
    from sink_interp import fit_bias
    from sink_interp.fit import FitSettings

    bridge, _ = _model(extra, "hunyuan_v1_dense")
    settings = FitSettings(kind="k", init="sink", steps=1, batch_size=2)
    fit = fit_bias(bridge, toks(2, 12, 0), settings, progress=False)
    assert np.isfinite([fit.loss_clean, fit.loss_fitted]).all()


@pytest.mark.parametrize(
    ("family", "what", "words"),
    [
        (
            "deepseek_v2",
            "z",
            r"uses attention bridge MLAAttentionBridge, whose hooks do not give each head's z .*fix: what='pattern'",
        ),
        ("jetmoe", "v", r"no hook blocks\.0\.attn\.hook_q.*no head can be patched on this model"),
        ("laguna", "pattern", HEADS),
    ],
)
def test_patch_heads_refuses_heads_the_hooks_do_not_give(extra, family, what, words):
    """MLA fires hook_q/k/v heads-first with its own head sizes and hook_z with 8 'heads' of 8: patching them by head index
    would patch the wrong numbers."""
    from sink_interp import patch_heads

    bridge, _ = _model(extra, family)
    outcome(words, lambda: patch_heads(bridge, toks(2, 10, 0), toks(2, 10, 1), "logprob", what=what, progress=False))


def test_patch_heads_on_mla_patterns_runs(extra):
    from sink_interp import patch_heads

    bridge, _ = _model(extra, "deepseek_v2")
    rep = patch_heads(bridge, toks(2, 10, 0), toks(2, 10, 1), "logprob", what="pattern", progress=False)
    assert np.isfinite(rep.values).all()
