"""sink_circuit against an independent path-patching loop written here (hooks only, two runs per edge), on tiny
models with peaked attention, for every edge type; the report's round trip and its view."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sink_interp import load_report
from sink_interp.circuits import (
    CircuitMetric,
    CircuitReport,
    CircuitSettings,
    alpha_metric,
    massive_metric,
    path_patch,
    sink_circuit,
)

from .test_patching import _pair, _peaked


@pytest.fixture(scope="module")
def gqa():
    return _peaked("tiny-gqa", scale=4.0, seed=2)


def _metric(lo):
    return lo[:, -1, 5].float().mean()


def _run(model, tokens, hooks):
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=hooks)


def _capture(model, tokens, names, hooks=()):
    got = {}

    def keeper(name):
        def keep(x, hook):
            got[name] = x.detach().clone()

        return keep

    logits = _run(model, tokens, [*hooks] + [(nm, keeper(nm)) for nm in names])
    return logits, got


def _outputs(model, tokens, L, H):
    """Each node's write to the residual stream: embeddings, z_h @ W_O[h] per head, the MLP outputs."""
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.attn.hook_z" for l in range(L)]
    names += [f"blocks.{l}.hook_mlp_out" for l in range(L)]
    _, got = _capture(model, tokens, names)
    out = {"emb": got["blocks.0.hook_resid_pre"]}
    for l in range(L):
        W_O = model.blocks[l].attn.W_O.detach()  # [H, d, D]
        for h in range(H):
            out[f"A{l}.{h}"] = got[f"blocks.{l}.attn.hook_z"][:, :, h] @ W_O[h]
        out[f"M{l}"] = got[f"blocks.{l}.hook_mlp_out"]
    return out


def _reference(model, base, src, fn, edge, L, H, G, top=None):
    """Path patching of one edge by hooks alone: the receiver's input computed in a first run from the residual with
    the sender's write swapped, then written into a second run of the base input (for a key or value of a grouped
    query head, a third run keeps only that head's pattern or output)."""
    u, d, kind = edge
    ob, os_ = _outputs(model, base, L, H), _outputs(model, src, L, H)
    delta = os_[u] - ob[u]

    def add(x, hook):
        return x + delta.to(x.dtype)

    if d == "metric":
        layer = L - 1 if top is None else top
        if top is None:
            return float(fn(_run(model, base, [(f"blocks.{layer}.hook_resid_post", add)])))
        _, got = _capture(model, base, [f"blocks.{layer}.hook_resid_post"])
        return float(fn(got[f"blocks.{layer}.hook_resid_post"] + delta))
    if d.startswith("M"):
        l = int(d[1:])
        _, got = _capture(model, base, [f"blocks.{l}.hook_mlp_out"], [(f"blocks.{l}.hook_resid_mid", add)])
        new = got[f"blocks.{l}.hook_mlp_out"]
        return _final(model, base, fn, [(f"blocks.{l}.hook_mlp_out", lambda x, hook: new.to(x.dtype))], top)
    l, h = (int(x) for x in d[1:].split("."))
    g = h // (H // G)
    name = f"blocks.{l}.attn.hook_{kind}"
    _, got = _capture(model, base, [name], [(f"blocks.{l}.hook_resid_pre", add)])
    new = got[name]
    if kind == "q":

        def put_q(x, hook):
            x = x.clone()
            x[:, :, h] = new[:, :, h].to(x.dtype)
            return x

        return _final(model, base, fn, [(name, put_q)], top)

    def put_kv(x, hook):
        x = x.clone()
        x[:, :, g] = new[:, :, g].to(x.dtype)
        return x

    keep_name = f"blocks.{l}.attn.hook_pattern" if kind == "k" else f"blocks.{l}.attn.hook_z"
    _, kept = _capture(model, base, [keep_name], [(name, put_kv)])

    def write(x, hook):
        x = x.clone()
        if kind == "k":
            x[:, h] = kept[keep_name][:, h].to(x.dtype)
        else:
            x[:, :, h] = kept[keep_name][:, :, h].to(x.dtype)
        return x

    return _final(model, base, fn, [(keep_name, write)], top)


def _final(model, base, fn, hooks, top):
    if top is None:
        return float(fn(_run(model, base, hooks)))
    _, got = _capture(model, base, [f"blocks.{top}.hook_resid_post"], hooks)
    return float(fn(got[f"blocks.{top}.hook_resid_post"]))


def _types(df):
    """One edge of every type: source emb / head / MLP into a head's q, k, v, an MLP, the metric."""
    seen, rows = set(), []
    for r in df.itertuples():
        t = (r.src[0], r.dst[0], r.kind)
        if t not in seen:
            seen.add(t)
            rows.append(r)
    return rows


def _check_exact(model, direction, every):
    clean, corr = _pair(n=2, T=6, seed=31)
    L, H, G = model.cfg.n_layers, model.cfg.n_heads, model.cfg.n_key_value_heads
    rep = sink_circuit(model, clean, corr, _metric, CircuitSettings(scores="exact", direction=direction), progress=False)
    base, src = (clean, corr) if direction == "noise" else (corr, clean)
    base_value = float(_metric(_run(model, base, [])))
    assert rep.base == pytest.approx(base_value, abs=1e-5)
    assert set(rep.edge_kind) == {"q", "k", "v", "in"} and len(rep.scores) == 110
    rows = list(rep.edges().itertuples()) if every else _types(rep.edges())
    if not every:  # emb, heads and MLPs into q, k and v; emb and heads into an MLP; all three into the metric
        assert len(rows) == 3 * 3 + 3 + 3
    for r in rows:
        want = _reference(model, base, src, _metric, (r.src, r.dst, r.kind), L, H, G) - base_value
        assert r.score == pytest.approx(want, abs=1e-4), (r.src, r.dst, r.kind)
    np.testing.assert_array_equal(rep.exact, rep.scores)


@pytest.mark.parametrize("direction", ["noise", "denoise"])
def test_exact_edge_scores_equal_independent_path_patching(gqa, direction):
    _check_exact(gqa, direction, every=False)


@pytest.mark.slow
def test_every_exact_edge_score_equals_independent_path_patching(gqa):
    _check_exact(gqa, "noise", every=True)


def test_a_residual_metric_stops_at_its_block(gqa):
    """The metric reads the residual leaving block 0: nodes above are not in the graph; exact scores = the loop."""
    clean, corr = _pair(n=2, T=6, seed=32)
    L, H, G = gqa.cfg.n_layers, gqa.cfg.n_heads, gqa.cfg.n_key_value_heads
    metric = massive_metric(0, 3)
    rep = sink_circuit(gqa, clean, corr, metric, CircuitSettings(scores="exact"), progress=False)
    assert not any(n.startswith(("A1", "M1")) for n in rep.nodes) and rep.metric == "massive L0 pos 0 dim 3"
    base_value = float(metric.fn(_capture(gqa, clean, ["blocks.0.hook_resid_post"])[1]["blocks.0.hook_resid_post"]))
    for r in _types(rep.edges()):
        want = _reference(gqa, clean, corr, metric.fn, (r.src, r.dst, r.kind), L, H, G, top=0) - base_value
        assert r.score == pytest.approx(want, abs=1e-4), (r.src, r.dst, r.kind)


@pytest.mark.parametrize("head", [0, 3])
def test_alpha_metric_is_the_models_own_sink_score_and_its_circuit_is_exact(gqa, head):
    clean, corr = _pair(n=2, T=6, seed=37)
    L, H, G = gqa.cfg.n_layers, gqa.cfg.n_heads, gqa.cfg.n_key_value_heads
    metric = alpha_metric(gqa, 1, head)
    _, got = _capture(gqa, clean, ["blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern"])
    alpha = got["blocks.1.attn.hook_pattern"][:, head, :, 0].mean()  # alpha_1: every query attends to key 0
    assert float(metric.fn(got["blocks.0.hook_resid_post"])) == pytest.approx(float(alpha), abs=1e-5)
    rep = sink_circuit(gqa, clean, corr, metric, CircuitSettings(scores="exact"), progress=False)
    assert rep.metric == f"alpha_1 L1H{head}" and rep.metric_layer == 0
    for r in _types(rep.edges()):
        want = _reference(gqa, clean, corr, metric.fn, (r.src, r.dst, r.kind), L, H, G, top=0) - rep.clean
        assert r.score == pytest.approx(want, abs=1e-5), (r.src, r.dst, r.kind)
    with pytest.raises(ValueError, match="needs a head above block 0"):
        alpha_metric(gqa, 0, 0)


def test_patching_every_edge_is_the_other_run_and_ig_approaches_exact(gqa):
    clean, corr = _pair(n=2, T=6, seed=33)
    rep = sink_circuit(gqa, clean, corr, _metric, CircuitSettings(scores="ig", steps=8), progress=False)
    every = list(zip(rep.edge_src, rep.edge_dst, rep.edge_kind))
    assert path_patch(gqa, clean, corr, _metric, every) == pytest.approx(rep.corrupted, abs=1e-5)
    assert path_patch(gqa, clean, corr, _metric, []) == pytest.approx(rep.clean, abs=1e-6)
    assert rep.faithfulness()["faithfulness"].iloc[-1] == pytest.approx(1.0, abs=1e-4)
    ex = sink_circuit(gqa, clean, corr, _metric, CircuitSettings(scores="exact"), progress=False)
    att = sink_circuit(gqa, clean, corr, _metric, CircuitSettings(scores="attribution"), progress=False)
    err_ig = np.abs(rep.scores - ex.scores).sum()
    assert err_ig < np.abs(ex.scores).sum() * 0.5 and np.corrcoef(rep.scores, ex.scores)[0, 1] > 0.8
    assert np.isnan(att.exact).all() and att.steps == 0
    with pytest.raises(ValueError, match="not an edge"):
        path_patch(gqa, clean, corr, _metric, [("M1", "A0.0", "q")])


def test_pruning_report_round_trip_and_view(gqa, tmp_path):
    clean, corr = _pair(n=2, T=6, seed=34)
    rep = sink_circuit(gqa, clean, corr, _metric, CircuitSettings(keep=0.5, sizes=(1, 4, 16, 1000)), progress=False)
    assert rep.curve_sizes == (1, 4, 16, 110)
    f = rep.faithfulness()
    ok = f[f.faithfulness >= 0.5]
    assert rep.size == (int(ok.edges.iloc[0]) if len(ok) else 0)
    # each point of the curve is the exact patched run of the best edges
    best = rep.edges().head(4)
    v = path_patch(gqa, clean, corr, _metric, list(zip(best.src, best.dst, best.kind)))
    assert (v - rep.clean) / (rep.corrupted - rep.clean) == pytest.approx(float(f.faithfulness.iloc[1]), abs=1e-5)
    path = tmp_path / "c.json"
    rep.to_json(path)
    back = load_report(path)
    assert isinstance(back, CircuitReport) and back.summary() == rep.summary()
    assert back.edges().equals(rep.edges())
    html = rep._repr_html_()
    assert "<svg" in html and "A1." in html and "http" not in html.replace("http://www.w3.org", "")


def test_one_line_errors(gqa):
    clean, corr = _pair(n=2, T=6, seed=35)
    with pytest.raises(ValueError, match="scores must be one of"):
        CircuitSettings(scores="eap")
    with pytest.raises(ValueError, match="keep must be a fraction"):
        CircuitSettings(keep=1.5)
    with pytest.raises(ValueError, match="metric must be a function of the logits or a CircuitMetric"):
        sink_circuit(gqa, clean, corr, 3, progress=False)
    with pytest.raises(ValueError, match="the metric's layer must lie in"):
        sink_circuit(gqa, clean, corr, CircuitMetric(_metric, layer=9), progress=False)
    with pytest.raises(ValueError, match="corrupted has shape"):
        sink_circuit(gqa, clean, corr[:, :5], _metric, progress=False)
