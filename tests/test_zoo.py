"""The model zoo: every family against Hugging Face's own computation, analysis by analysis.

Each family is a tiny random checkpoint saved without tokenizer files
(:mod:`sink_interp.models.tiny`, large weights so that attention is peaked, windows of
8 keys), loaded with ``load_model`` like a researcher's folder. The references
are independent of the library:

* HF eager attention (``output_attentions``) and the official sink formula;
* HF with the first token hidden by its own padding mask (for ``MaskKey``);
* HF with its attention function replaced, through transformers'
  ``AttentionInterface``, by formulas written here from the arguments HF
  passes (scaling, sliding window, soft-cap, sink logits) and the definition
  of each intervention;
* HF's own norm modules and hidden states (for the trace).

Every outcome is recorded; the last test renders the support matrix
(``docs/support.md``) from them: ``python scripts/build_support_matrix.py``
rewrites it. Under the versions stamped at its end (those of ``requirements-lock.txt``) the test fails when
the committed page differs from the run; under other versions it fails only when an outcome is checked less
than the page says (``tests/generated.py``).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AttentionInterface, AutoModelForCausalLM

from sink_interp import (
    AttentionKernel,
    KVBias,
    MaskKey,
    ScaleAttention,
    SinkLogit,
    StreamingWindow,
    ZeroValue,
    describe_attention,
    fit_bias,
    intervene,
    load_model,
    long_context_sinks,
    massive_activations,
    measure_sinks,
    probe_tokens,
    streaming_ppl,
    trace_sink,
)
from sink_interp.capture import hook_snapshot
from sink_interp.fit import FitSettings
from sink_interp.lse import LSE_MIN_LENGTH
from sink_interp.models import model_info
from sink_interp.models.tiny import FAMILIES, WINDOW, ZOO, tiny_checkpoint

from .conftest import warm
from .generated import differences, installed_versions, read_stamp, stamp_line
from .reference import official_alpha

T = 40  # five times the zoo's window
ATOL = 1e-4
DOC = Path(__file__).resolve().parents[1] / "docs" / "support.md"
RECORD: dict[str, dict[str, str]] = {family: {} for family in FAMILIES}
COLUMNS = {
    "pattern": 'sink scores, `method="pattern"`',
    "lse": 'sink scores, `method="lse"`',
    "auto": f"default method at T = {LSE_MIN_LENGTH}",
    "massive": "`massive_activations`",
    "trace": "`trace_sink`",
    "mask": "`MaskKey` + restore",
    "interventions": "interventions vs HF",
    "streaming": "`StreamingWindow` cache positions",
    "more": "`long_context_sinks`, `fit_bias`, `streaming_ppl`",
}


def record(family: str, column: str, outcome: str) -> None:
    RECORD[family][column] = outcome


def toks(n: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(3, 128, (n, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    """family -> (bridge loaded from a folder without tokenizer files, HF eager model of the same folder)."""
    root = tmp_path_factory.mktemp("zoo")
    cache = {}

    def get(family: str):
        if family not in cache:
            path = tiny_checkpoint(family, root / family)
            bridge = warm(load_model(str(path), device="cpu"))
            hf = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager").eval()
            cache[family] = (bridge, hf)
        return cache[family]

    return get


def hf_alpha(hf, tokens: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        out = hf(tokens, output_attentions=True)
    return official_alpha(torch.stack([a.float() for a in out.attentions], 1)).numpy()


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_without_tokenizer_loads_and_text_gets_a_clear_error(zoo, family):
    bridge, hf = zoo(family)
    assert bridge.tokenizer is None
    assert model_info(bridge).bos_token_id == hf.config.bos_token_id == 1
    x = probe_tokens(bridge, "random", n=2, length=12, bos=True, seed=0)
    assert (x[:, 0] == 1).all() and not torch.isin(x[:, 1:], torch.tensor([0, 1, 2])).any()
    with pytest.raises(ValueError, match="needs a tokenizer.*token ids"):
        probe_tokens(bridge, "natural", n=2, length=12)


# --------------------------------------------------------------------------- the description


@pytest.mark.parametrize("family", FAMILIES)
def test_description_rebuilds_hf_eager_attention_from_q_and_k(zoo, family):
    """q and k where the description says they are, turned into weights by its formula: HF's attentions exactly."""
    from sink_interp.capture import Keep, run_reducers

    bridge, hf = zoo(family)
    spec = describe_attention(bridge)
    x = toks(2, T, 1)
    with torch.no_grad():
        ref = hf(x, output_attentions=True).attentions
    keep = Keep([n for la in spec.layers for n in (la.q_hook, la.k_hook)], dtype=None)
    run_reducers(bridge, x, [keep], progress=False)
    got = keep.result()
    for la in spec.layers:
        q, k = la.final_qk(got[la.q_hook], got[la.k_hook])
        A = la.pattern(q.transpose(1, 2), k.transpose(1, 2))
        torch.testing.assert_close(A, ref[la.layer].float(), atol=ATOL, rtol=0)
    expected_windows = {
        "mistral": [WINDOW] * 2,
        "mixtral": [WINDOW] * 2,
        "phi3": [WINDOW] * 2,
        "qwen2": [None, WINDOW],
        "gemma2": [WINDOW, None],
        "gemma3": [WINDOW, None],
        "gpt_oss": [WINDOW, None],
        "gpt_neo": [None, WINDOW],
    }
    assert spec.windows == expected_windows.get(family, [None, None])


# --------------------------------------------------------------------------- sink scores


@pytest.mark.parametrize("family", FAMILIES)
def test_sink_scores_by_every_method_equal_hf_eager(zoo, family):
    bridge, hf = zoo(family)
    x = toks(2, T, 2)
    ref = hf_alpha(hf, x)
    before = hook_snapshot(bridge)
    pattern = measure_sinks(bridge, x, method="pattern", progress=False)
    np.testing.assert_allclose(pattern.alpha, ref, atol=ATOL)
    assert pattern.score == "softmax"
    record(family, "pattern", "exact")
    hooks = measure_sinks(bridge, x, method="lse-hooks", progress=False)
    np.testing.assert_allclose(hooks.alpha, ref, atol=ATOL)
    best = measure_sinks(bridge, x, method="lse", progress=False)
    np.testing.assert_allclose(best.alpha, ref, atol=ATOL)
    np.testing.assert_allclose(best.row_sum, pattern.row_sum, atol=ATOL)  # < 1 with gpt-oss's sink logits
    info = best.engine
    record(
        family,
        "lse",
        "exact (fused engine)" if info.engine == "fused" else f"exact (hooks engine; not fused: {_short(info.why_not_fused)})",
    )
    assert hook_snapshot(bridge) == before


def _short(reason: str) -> str:
    if "attention interface" in reason or "KeyError" in reason:
        return "attention outside transformers' interface"
    if "ALiBi" in reason:
        return "ALiBi"
    return reason.split(";")[0][:60]


@pytest.mark.parametrize("family", FAMILIES)
def test_default_method_switches_to_lse_at_long_inputs_and_stays_exact(zoo, family):
    bridge, hf = zoo(family)
    x = toks(1, LSE_MIN_LENGTH, 3)
    rep = measure_sinks(bridge, x, progress=False)
    assert rep.method == "lse"
    np.testing.assert_allclose(rep.alpha, hf_alpha(hf, x), atol=ATOL)
    record(family, "auto", f"exact (lse, {rep.engine.engine} engine)")


def test_sink_logits_are_scored_as_they_are_and_their_mass_is_reported(zoo):
    """gpt-oss: HF's weights leave the sink logit's share out; alpha uses them as they are (no proxy)."""
    bridge, hf = zoo("gpt_oss")
    rep = measure_sinks(bridge, toks(2, T, 4), method="pattern", progress=False)
    assert rep.score == "softmax" and not rep.proxy_layers
    assert (rep.row_sum < 1 - 1e-3).any()


# --------------------------------------------------------------------------- massive activations and the trace


def _hf_layers(hf):
    for path in ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers"):
        obj = hf
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise AssertionError("no decoder layers found")


def _hf_attention_norm(layer_module):
    for name in ("input_layernorm", "ln_1", "self_attn_layer_norm"):
        if hasattr(layer_module, name):
            return getattr(layer_module, name)
    return None


@pytest.mark.parametrize("family", FAMILIES)
def test_massive_and_trace_run_restore_and_match_hf_modules(zoo, family):
    bridge, hf = zoo(family)
    spec = describe_attention(bridge)
    x = toks(4, 24, 5)
    before = hook_snapshot(bridge)
    state = {k: v.clone() for k, v in bridge.state_dict().items()}
    mrep = massive_activations(bridge, x, progress=False)
    with torch.no_grad():
        hs = hf(x, output_hidden_states=True).hidden_states
    for layer in range(spec.n_layers):  # the residual entering each block is HF's hidden state
        np.testing.assert_allclose(mrep.layer_max[layer], hs[layer].abs().amax().item(), rtol=1e-5)
    record(family, "massive", "exact (vs HF hidden states)")
    rep = trace_sink(bridge, x, layer=1, head=0, massive=mrep, progress=False)
    assert hook_snapshot(bridge) == before
    for k, v in bridge.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert rep.links["wk"].reconstruction_error < 1e-4  # the key rebuilt from g*n and W_K is the model's key
    if spec.pre_norm:
        # the norm link's output at the sink is HF's own attention norm applied to HF's hidden state
        norm = _hf_attention_norm(_hf_layers(hf)[1])
        with torch.no_grad():
            out = norm(hs[1][:, 0]).float()
        dims = rep.links["spike"].dims
        np.testing.assert_allclose(rep.links["norm"].out, out[:, dims].mean(0).numpy(), rtol=1e-4, atol=1e-5)
    else:
        assert "no norm before attention" in rep.skipped["norm"]
        assert rep.links["wk"].input.startswith("residual")
    if spec.layer(1).qk_norm:
        qn = rep.links["qk_norm"]
        assert qn.kind == spec.layer(1).qk_norm and qn.k_sink_norm_after > 0
    else:
        assert "no QK-norm" in rep.skipped["qk_norm"]
    if spec.moe:
        assert "mixture of experts" in rep.skipped["gated_mlp"]
    assert rep.links["rope"].positional == spec.positional
    traced = [k for k in rep.links]
    na = sorted(k for k, why in rep.skipped.items() if "not applicable" in why or "mixture" in why or "not gated" in why)
    record(family, "trace", f"{len(traced)} links" + (f"; n/a: {', '.join(na)}" if na else ""))


# --------------------------------------------------------------------------- MaskKey against HF's own masking


@pytest.mark.parametrize("family", FAMILIES)
def test_mask_key_equals_hf_with_the_first_token_padded_and_restores_the_model(zoo, family):
    """MaskKey() hides key 0 from every later query in every head: what HF does with a padding mask on token 0.

    Position 0's own row differs (HF leaves it nothing to attend to) but nothing reads it, so
    the logits of positions >= 1 must agree.
    """
    bridge, hf = zoo(family)
    x = toks(2, 20, 6)
    kwargs = {}
    if "position_ids" in inspect.signature(hf.forward).parameters:
        kwargs["position_ids"] = torch.arange(x.shape[1])[None].expand(x.shape[0], -1)
    pad = torch.ones_like(x)
    pad[:, 0] = 0
    with torch.no_grad():
        want = hf(x, attention_mask=pad, **kwargs).logits
        clean = bridge(x)
        before = hook_snapshot(bridge)
        with intervene(bridge, MaskKey()):
            got = bridge(x)
        with pytest.raises(RuntimeError, match="inside"), intervene(bridge, MaskKey()):
            bridge(x)
            raise RuntimeError("inside the block")
        after = bridge(x)
    scale = want[:, 1:].abs().max().item()
    torch.testing.assert_close(got[:, 1:], want[:, 1:], atol=1e-5 * max(1.0, scale), rtol=1e-5)
    assert (got - clean).abs().max() > 1e-3
    assert torch.equal(after, clean) and hook_snapshot(bridge) == before
    record(family, "mask", "exact; restored")


# --------------------------------------------------------------------------- interventions against HF attention edited the same way

_REF: dict = {}


def _reference_attention(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, sliding_window=None, softcap=None, s_aux=None, **kwargs
):
    """HF's attention written out from the arguments HF passes, with the case's edit applied."""
    H, G = query.shape[1], key.shape[1]
    k = key.repeat_interleave(H // G, dim=1).float()
    v = value.repeat_interleave(H // G, dim=1).float()
    q = query.float()
    Tq, Tk = q.shape[2], k.shape[2]
    t = torch.arange(Tk - Tq, Tk)[:, None]
    j = torch.arange(Tk)[None, :]
    vis = j <= t
    if sliding_window is not None:
        vis = vis & (t - j < sliding_window)
    s = (q @ k.transpose(-1, -2)) * float(scaling)
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    sink = None if s_aux is None else s_aux.float().reshape(1, H, 1, 1).expand(s.shape[0], H, Tq, 1)
    z, A = _REF["edit"](module.layer_idx, q, s, vis, v, sink, float(scaling), softcap, _REF["hf"], t[:, 0])
    return z.to(query.dtype).transpose(1, 2).contiguous(), A


AttentionInterface.register("sink_interp_zoo_ref", _reference_attention)


@contextlib.contextmanager
def hf_edited(hf, edit):
    _REF["edit"], _REF["hf"] = edit, hf
    hf.set_attn_implementation("sink_interp_zoo_ref")
    try:
        yield hf
    finally:
        hf.set_attn_implementation("eager")
        _REF.clear()


def softmax_with(s, vis, extra=None):
    """Softmax over visible keys plus extra logit columns (virtual keys, sink logits); returns (A_real, A_extra)."""
    s = s.masked_fill(~vis, float("-inf"))
    if extra is None:
        return torch.softmax(s, -1), None
    w = torch.softmax(torch.cat([s, extra], -1), -1)
    return w[..., : s.shape[-1]], w[..., s.shape[-1] :]


def plain(layer, q, s, vis, v, sink, scaling, softcap, hf, tq):
    A, _ = softmax_with(s, vis, sink)
    return A @ v, A


def drop_key0(layer, q, s, vis, v, sink, scaling, softcap, hf, tq):
    A, _ = softmax_with(s, vis, sink)
    A = A.masked_fill((tq > 0)[None, None, :, None] & (torch.arange(A.shape[-1]) == 0), 0.0)
    return A @ v, A


def scale_keys(P, beta):
    def edit(layer, q, s, vis, v, sink, scaling, softcap, hf, tq):
        A, _ = softmax_with(s, vis, sink)
        A = A.clone()
        for p in P:
            A[:, :, tq > p, p] *= beta
        return A @ v, A

    return edit


def kv_bias(kstar, vstar):
    def edit(layer, q, s, vis, v, sink, scaling, softcap, hf, tq):
        ls = torch.einsum("bhtd,hd->bht", q, kstar[layer])[..., None] * scaling
        if softcap is not None:
            ls = torch.tanh(ls / softcap) * softcap
        extra = ls if sink is None else torch.cat([ls, sink], -1)
        A, Ae = softmax_with(s, vis, extra)
        return A @ v + Ae[..., :1] * vstar[layer][None, :, None, :], A

    return edit


def sink_logit(logits):
    def edit(layer, q, s, vis, v, sink, scaling, softcap, hf, tq):
        col = logits[layer].reshape(1, -1, 1, 1).expand(s.shape[0], -1, s.shape[2], 1)
        extra = col if sink is None else torch.cat([col, sink], -1)
        A, _ = softmax_with(s, vis, extra)
        return A @ v, A

    return edit


def sigmoid_minus_log_n(layer, q, s, vis, v, sink, scaling, softcap, hf, tq):
    A = torch.where(vis, torch.sigmoid(s - math.log(s.shape[-1])), torch.zeros_like(s))
    return A @ v, A


H, D_HEAD = 4, 16
_g = torch.Generator().manual_seed(11)
KSTAR = {layer: torch.randn(H, D_HEAD, generator=_g) * 2 for layer in range(2)}
VSTAR = {layer: torch.randn(H, D_HEAD, generator=_g) for layer in range(2)}
LOGITS = {layer: torch.randn(H, generator=_g) * 2 for layer in range(2)}
CASES = {
    "zero_value": (lambda: [ZeroValue()], drop_key0),
    "mask_no_renorm": (lambda: [MaskKey(renormalise=False)], drop_key0),
    "scale": (lambda: [ScaleAttention(0.3, positions=[0, 1])], scale_keys([0, 1], 0.3)),
    "kv_bias": (lambda: [KVBias(per_head=True, value=True, k=KSTAR, v=VSTAR)], kv_bias(KSTAR, VSTAR)),
    "sink_logit": (lambda: [SinkLogit(logits=LOGITS)], sink_logit(LOGITS)),
    "sigmoid": (lambda: [AttentionKernel("sigmoid", bias="-log n")], sigmoid_minus_log_n),
}
OUTSIDE_INTERFACE = {"falcon", "bloom", "gpt_neo"}  # HF computes their attention itself, outside transformers' AttentionInterface


def _skip_outside_interface(family):
    if family in OUTSIDE_INTERFACE:
        record(family, "interventions", "MaskKey only (HF attention outside transformers' interface)")
        pytest.skip(
            f"HF's {family} attention does not run through transformers' AttentionInterface; "
            "MaskKey is checked against HF's own masking instead"
        )


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_harness_reproduces_hf_eager(zoo, family):
    _skip_outside_interface(family)
    bridge, hf = zoo(family)
    x = toks(2, 20, 7)
    with torch.no_grad():
        want = hf(x).logits
        with hf_edited(hf, plain):
            got = hf(x).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("family", FAMILIES)
def test_interventions_equal_hf_attention_edited_the_same_way(zoo, family, case):
    _skip_outside_interface(family)
    bridge, hf = zoo(family)
    make, edit = CASES[case]
    x = toks(2, 20, 8)
    with torch.no_grad():
        clean = bridge(x)
        with intervene(bridge, *make()):
            got = bridge(x)
        with hf_edited(hf, edit):
            want = hf(x).logits
        assert torch.equal(bridge(x), clean)
    scale = max(1.0, want.abs().max().item())
    torch.testing.assert_close(got, want, atol=2e-5 * scale, rtol=1e-5)
    RECORD[family].setdefault("_cases", "")
    RECORD[family]["_cases"] += case + " "
    if len(RECORD[family]["_cases"].split()) == len(CASES):
        record(family, "interventions", f"exact ({len(CASES)} cases)")


# --------------------------------------------------------------------------- StreamingWindow at cache positions

SINKS, WIN = 2, 5


def _rotary(hf):
    for name, mod in hf.named_modules():
        if type(mod).__name__.endswith("RotaryEmbedding") and ".layers." not in name and ".h." not in name:
            return mod
    return None


def streaming_edit(family):
    """StreamingLLM with cache positions, from HF's own rotary module and apply function: once the cache is full,
    the query (already rotated to t by HF) is rotated on by c - t, c = sinks + window - 1, against the sink keys."""
    mod = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    apply = mod.apply_rotary_pos_emb

    def rotate(hf, layer, q, shift):
        rot = _rotary(hf)
        pos = shift[None, :]
        if family == "gptj":  # a table of (sin, cos) at non-negative positions; sin(-x) = -sin(x); partial, as HF does it
            sin, cos = rot(q, pos.abs())
            sin = sin * torch.where(pos < 0, -1.0, 1.0)[..., None]
            rd = hf.config.rotary_dim
            turned = apply(q[..., :rd].transpose(1, 2), sin, cos).transpose(1, 2)
            return torch.cat([turned, q[..., rd:]], -1)
        if "layer_type" in inspect.signature(rot.forward).parameters:
            kind = hf.config.layer_types[layer]
            cos, sin = rot(q, pos, kind)
            factor = getattr(rot, f"{kind}_attention_scaling", 1.0)
        else:
            cos, sin = rot(q, pos)
            factor = getattr(rot, "attention_scaling", 1.0)
        r = q.shape[-1] if family == "gpt_oss" else cos.shape[-1]  # gpt-oss passes half-width tables for full rotation
        out, _ = apply(q[..., :r], q[..., :r], cos, sin)
        out = torch.cat([out, q[..., r:]], -1)
        # tables that carry an attention factor (YaRN) scale every rotation by it: undo the second one
        return out / float(factor)

    def edit(layer, q, s, vis, v, sink, scaling, softcap, hf, tq):
        j = torch.arange(s.shape[-1])[None, :]
        t = tq[:, None]
        vis = vis & ((t - j < WIN) | (j < SINKS))
        late = (tq >= SINKS + WIN).nonzero().flatten()
        if len(late):
            c = SINKS + WIN - 1
            qc = rotate(hf, layer, q[:, :, late], c - tq[late])
            ss = (qc @ _keys[layer][:, :, :SINKS].transpose(-1, -2)) * scaling
            if softcap is not None:
                ss = torch.tanh(ss / softcap) * softcap
            s = s.clone()
            s[:, :, late, :SINKS] = ss
        A, _ = softmax_with(s, vis, sink)
        return A @ v, A

    return edit


_keys: dict = {}
ROTARY_FAMILIES = [f for f in FAMILIES if f not in ("gpt2", "opt", "bloom", "falcon", "gpt_neo")]


@pytest.mark.parametrize("family", ROTARY_FAMILIES)
def test_streaming_window_at_cache_positions_equals_hf_rerotated(zoo, family):
    bridge, hf = zoo(family)
    x = toks(1, 16, 9)

    def capture_keys(module, query, key, value, attention_mask, **kw):
        _keys[module.layer_idx] = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1).float()
        return _reference_attention(module, query, key, value, attention_mask, **kw)

    AttentionInterface.register("sink_interp_zoo_stream", capture_keys)
    with torch.no_grad():
        with intervene(bridge, StreamingWindow(WIN, n_sinks=SINKS)):
            got = bridge(x)
        _REF["edit"], _REF["hf"] = streaming_edit(family), hf
        hf.set_attn_implementation("sink_interp_zoo_stream")
        try:
            want = hf(x).logits
        finally:
            hf.set_attn_implementation("eager")
            _REF.clear()
            _keys.clear()
        with intervene(bridge, StreamingWindow(WIN, n_sinks=SINKS, rope_positions="original")):
            original = bridge(x)
    scale = max(1.0, want.abs().max().item())
    torch.testing.assert_close(got, want, atol=2e-5 * scale, rtol=1e-5)
    assert (got - original).abs().max() > 1e-4  # the re-rotation matters
    record(family, "streaming", "exact")


def test_streaming_window_at_cache_positions_runs_on_falcon(zoo):
    """Falcon's HF attention runs outside transformers' interface, so there is no edited-HF reference: check that the
    cache positions change the sink scores only (queries after the cache fills) and leave the model as it was."""
    bridge, _ = zoo("falcon")
    x = toks(1, 16, 9)
    with torch.no_grad():
        clean = bridge(x)
        with intervene(bridge, StreamingWindow(WIN, n_sinks=SINKS)):
            got = bridge(x)
        with intervene(bridge, StreamingWindow(WIN, n_sinks=SINKS, rope_positions="original")):
            original = bridge(x)
        assert torch.equal(bridge(x), clean)
    full = SINKS + WIN
    torch.testing.assert_close(got[:, :full], original[:, :full], atol=1e-5, rtol=1e-5)
    assert (got[:, full:] - original[:, full:]).abs().max() > 1e-4
    record("falcon", "streaming", "runs (no HF reference: attention outside transformers' interface)")


@pytest.mark.parametrize("family", ["gpt2", "opt", "bloom", "gpt_neo"])
def test_streaming_cache_positions_refused_with_absolute_positions(zoo, family):
    bridge, _ = zoo(family)
    with pytest.raises(ValueError, match="positions='original'") as err, intervene(bridge, StreamingWindow(WIN, n_sinks=SINKS)):
        pass
    with intervene(bridge, StreamingWindow(WIN, n_sinks=SINKS, rope_positions="original")):
        bridge(toks(1, 12, 1))
    why = "ALiBi" if "ALiBi" in str(err.value) else "learned absolute positions"
    record(family, "streaming", f"refused: {why} (positions='original' runs)")


# --------------------------------------------------------------------------- long context, fitted biases, streaming perplexity


@pytest.mark.parametrize("family", FAMILIES)
def test_long_context_fit_bias_and_streaming_ppl(zoo, family):
    bridge, hf = zoo(family)
    x = toks(2, T, 10)
    before = hook_snapshot(bridge)
    state = {k: v.clone() for k, v in bridge.state_dict().items()}
    # per-bucket sink scores: the mean attention each query bucket's queries pay to key k, from HF's attentions
    rep = long_context_sinks(bridge, x, buckets=4, progress=False)
    with torch.no_grad():
        A = torch.stack([a.float() for a in hf(x, output_attentions=True).attentions], 1)  # [n, L, H, T, T]
    for i, (a, e) in enumerate(zip(rep.edges, rep.edges[1:])):
        counts = (torch.arange(a, e)[:, None] >= torch.arange(T)[None, :]).sum(0).float()
        want = A[..., a:e, :].sum(-2) / counts
        got = torch.as_tensor(rep.bucket_alpha[..., i, :])
        ok = counts > 0
        torch.testing.assert_close(got[..., ok], want[..., ok], atol=ATOL, rtol=0)
    # a K bias grafted from the model's own mean sink key (rotated where the description rotates), 2 fitting steps
    fit = fit_bias(bridge, x, FitSettings(kind="k", init="sink", steps=2, batch_size=2), progress=False)
    assert np.isfinite([fit.loss_clean, fit.loss_masked, fit.loss_fitted]).all()
    sp = streaming_ppl(bridge, toks(1, 24, 11), n_sinks=1, window=6, progress=False)
    assert np.isfinite(sp.nll).all() and np.allclose(sp.nll[:, :6], sp.nll[:1, :6], atol=1e-4)
    assert hook_snapshot(bridge) == before
    for k, v in bridge.state_dict().items():
        assert torch.equal(v, state[k]), k
    record(family, "more", "exact (buckets); run; restored")


# --------------------------------------------------------------------------- the support matrix


def render_support_matrix(rec: dict[str, dict[str, str]]) -> str:
    lines = [
        "# Support matrix",
        "",
        "Generated by `tests/test_zoo.py` from its run (`python scripts/build_support_matrix.py` rewrites this page);",
        "do not edit by hand. Each family is a tiny random checkpoint built from its `transformers` config class",
        "(`sink_interp.models.tiny`), saved without tokenizer files, with peaked attention and sliding windows of",
        f"{WINDOW} keys; inputs are {T} tokens long (and {LSE_MIN_LENGTH} for the default method).",
        "",
        "**exact** means equal to Hugging Face's own computation (eager attention and the official sink formula,",
        "HF's padding mask for `MaskKey`, HF attention edited the same way for the interventions) within 1e-4;",
        "**restored** means the model is bit for bit the same after the `with` block, also after an exception in it.",
        "",
        "| family | features | " + " | ".join(COLUMNS.values()) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for family in FAMILIES:
        row = rec.get(family, {})
        cells = [row.get(c, "not run") for c in COLUMNS]
        lines.append(f"| {family} | {ZOO[family][2]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "More architectures (MLA, ALiBi without Falcon, sinusoidal positions, clip_qkv, the Llama-4 query scale,",
        "per-layer head counts, hybrids, families the bridge cannot load): [support-more.md](support-more.md).",
        "",
        "Engines: the **fused** engine runs the model's own Hugging Face modules with a fused attention kernel",
        "(or the blockwise pass for soft-capped, windowed or sink-logit layers); the **hooks** engine reads q and k",
        "at the bridge's hooks. Both must pass a self-check against the model's own attention before they are used.",
        "",
    ]
    return "\n".join(lines)


#: how far each cell's outcome is checked: exact against HF, or refused by name (both honest), MaskKey only,
#: runs without a reference; a drop between versions is a real contradiction (an exact result turned inexact,
#: a refusal turned silent)
def _checked(cell: str) -> int:
    if cell.startswith(("exact", "refused")) or re.fullmatch(r"\d+ links(; n/a: .*)?", cell):
        return 3
    if cell.startswith("MaskKey only"):
        return 2
    if cell.startswith("runs"):
        return 1
    return 0  # not run, or an outcome this test does not know


def contradictions(committed: str, produced: str) -> list[str]:
    """Cells of ``committed`` whose outcome ``produced`` checks less (family, column, committed -> produced)."""

    def cells(text: str) -> dict[tuple[str, int], str]:
        out = {}
        for line in text.splitlines():
            parts = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("| ") and parts[0] in FAMILIES:
                out.update({(parts[0], i): c for i, c in enumerate(parts[2:])})
        return out

    mine, theirs = cells(committed), cells(produced)
    names = list(COLUMNS)
    return [
        f"{fam} / {names[i]}: {was!r} -> {theirs.get((fam, i), 'not run')!r}"
        for (fam, i), was in mine.items()
        if _checked(theirs.get((fam, i), "not run")) < _checked(was)
    ]


def test_support_matrix_page_is_the_one_this_run_produces():
    """Under the page's stamped versions (the lock's), it is this run's page to the byte; under other versions it
    is regenerated and compared outcome by outcome, and the test skips naming the versions unless one contradicts."""
    complete = {f: r for f, r in RECORD.items() if all(c in r for c in COLUMNS)}
    if len(complete) < len(FAMILIES):
        pytest.skip("the zoo tests did not all run in this session (run tests/test_zoo.py whole)")
    text = render_support_matrix(RECORD) + stamp_line() + "\n"
    if os.environ.get("SINK_INTERP_WRITE_SUPPORT"):
        DOC.write_text(text, encoding="utf-8")
    assert DOC.is_file(), "docs/support.md is missing; fix: python scripts/build_support_matrix.py"
    committed = DOC.read_text(encoding="utf-8")
    diff = differences(read_stamp(committed), installed_versions())
    if not diff:
        assert committed == text, "docs/support.md differs from this run's outcomes; fix: python scripts/build_support_matrix.py"
        return
    worse = contradictions(committed, text)
    assert not worse, f"under other versions ({diff}) these outcomes are checked less than the page says: {worse}"
    pytest.skip(f"docs/support.md was generated under other versions ({diff}); no outcome contradicts it")


def test_a_dropped_outcome_is_a_contradiction_and_an_engine_change_is_not():
    page = render_support_matrix({f: {c: "exact" for c in COLUMNS} for f in FAMILIES})
    assert contradictions(page, page) == []
    fam = FAMILIES[0]
    other = {f: {c: "exact" for c in COLUMNS} for f in FAMILIES}
    other[fam]["lse"] = "exact (hooks engine)"
    assert contradictions(page, render_support_matrix(other)) == []
    other[fam]["streaming"] = "runs (no HF reference)"
    del other[fam]["mask"]
    assert contradictions(page, render_support_matrix(other)) == [
        f"{fam} / mask: 'exact' -> 'not run'",
        f"{fam} / streaming: 'exact' -> 'runs (no HF reference)'",
    ]
