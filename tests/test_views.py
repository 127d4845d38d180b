"""Views: offline HTML (bundle once, no network, escaped tokens) and the numbers they draw,
checked against values computed here independently. The browser half is in test_browser.py."""

from __future__ import annotations

import json
import re
import socket
import urllib.request

import numpy as np
import pandas as pd
import pytest
import torch

from sink_interp import measure_sinks
from sink_interp.pages import attention_patterns_for, build_report
from sink_interp.views import (
    alpha_tokens_view,
    attention_view,
    circuitsvis_bundle,
    concat,
    effect_bars,
    head_heatmap,
    json_for_html,
    key_manifold_view,
    massive_activation_view,
    safe_token,
    trace_chain_view,
    training_curves,
    view_for,
)
from sink_interp.views.adapters import (
    effect_report_view,
    massive_report_view,
    trace_report_view,
    train_result_view,
)
from sink_interp.views.report import sink_report_view

from .reference import hf_attentions

BUNDLE_MARK = 'data-si="circuitsvis-bundle"'


def causal(H: int, T: int, sink: float = 0.0, seed: int = 0) -> np.ndarray:
    """Random causal softmax-like patterns [H, T, T]; `sink` adds weight to key 0."""
    rng = np.random.default_rng(seed)
    a = rng.random((H, T, T)) + 0.05
    a[:, :, 0] += sink
    a = np.tril(a)
    return a / a.sum(-1, keepdims=True)


def cells(html: str, kind: str | None = None) -> list[dict[str, str]]:
    """Attributes of every heat-map cell (optionally inside the figure of data-kind `kind`)."""
    if kind is not None:
        m = re.search(rf'<figure class="si-fig" data-kind="{kind}".*?</figure>', html, flags=re.DOTALL)
        assert m, f"no figure of kind {kind}"
        html = m.group(0)
    out = []
    for tag in re.findall(r'<rect class="si-cell"[^>]*>', html):
        out.append(dict(re.findall(r'([\w-]+)="([^"]*)"', tag)))
    return out


def props_of(html: str) -> list[dict]:
    return [json.loads(p) for p in re.findall(r'<script type="application/json">(.*?)</script>', html, flags=re.DOTALL)]


# --------------------------------------------------------------------------- offline page mechanics
def test_safe_token_and_json_cannot_break_out_of_html():
    evil = '</script><img src=x onerror="alert(1)">&amp;'
    s = safe_token(evil)
    assert "<" not in s and ">" not in s
    j = json_for_html({"t": evil})
    assert "</script" not in j.lower() and "<" not in j and json.loads(j) == {"t": evil}


def test_tokens_are_escaped_in_every_widget_and_axis():
    toks = ["<bos>", "</script><script>alert(1)</script>", "a & b", '"q"', "<img src=x onerror=alert(2)>"]
    v = attention_view(causal(2, 5, sink=3), toks, layers=[1]) + alpha_tokens_view(np.random.rand(2, 5), toks)
    html = v._repr_html_()
    assert "<img" not in html and "alert(1)</script>" not in html
    rest = html.replace(circuitsvis_bundle(), "")  # (the bundle holds the string "<script>" in a JS literal)
    assert rest.count("<script") == rest.count("</script>")  # every script closes where we closed it
    labels = props_of(html)[0]["tokens"]
    assert labels[0] == "\u25c6 \u2039bos\u203a"  # sink marked, brackets replaced by look-alikes
    assert labels[2] == "a & b"
    assert "&lt;bos&gt;" in html  # SVG axis text is entity-escaped


def test_bundle_is_inlined_once_however_many_widgets():
    pats = {l: causal(3, 6, sink=2, seed=l) for l in range(3)}
    page = concat(
        attention_view(pats, list("abcdef")),
        alpha_tokens_view(np.random.rand(2, 6), list("abcdef")),
        attention_view(causal(3, 6), list("abcdef"), layers=[7]),
        head_heatmap(np.random.rand(2, 3)),
    )
    assert page.n_widgets == 5
    for html in (page._repr_html_(), page.to_html()):
        assert html.count(BUNDLE_MARK) == 1
        assert html.count(circuitsvis_bundle()[:200]) == 1
        assert html.count('class="si-cv"') == 5
        ids = re.findall(r'class="si-cv-mount" id="([^"]+)"', html)
        assert len(set(ids)) == 5
    # figures without widgets carry no bundle at all
    assert BUNDLE_MARK not in head_heatmap(np.ones((2, 2)))._repr_html_()
    # two renders of the same view get different element ids (a notebook may show a view twice)
    a, b = page._repr_html_(), page._repr_html_()
    assert re.findall(r'id="(si[0-9a-f]+)-1"', a) != re.findall(r'id="(si[0-9a-f]+)-1"', b)


def test_pages_reference_nothing_on_the_network():
    html = concat(attention_view(causal(2, 4), list("abcd")), training_curves([{"step": 1, "val_loss": 2.0}])).to_html()
    assert not re.findall(r"<(?:script|link|img|iframe)[^>]+(?:src|href)=", html)
    assert "unpkg.com" not in html and "cdn.jsdelivr" not in html
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")


def test_repr_html_makes_no_network_call(monkeypatch):
    calls = []

    def refuse(*a, **k):
        calls.append(a)
        raise OSError("network is off in this test")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    v = attention_view(causal(2, 4), list("abcd")) + alpha_tokens_view(np.random.rand(1, 4), list("abcd"))
    html = v._repr_html_()
    assert BUNDLE_MARK in html and calls == []
    # (CircuitsVis' own RenderedHTML._repr_html_ would call urlopen("http://google.com") here)
    from circuitsvis.utils.render import RenderedHTML

    RenderedHTML("local", "cdn")._repr_html_()
    assert calls, "expected CircuitsVis' own _repr_html_ to probe the network (the reason we do not use it)"


def test_save_is_a_standalone_file(tmp_path):
    v = head_heatmap(np.random.rand(3, 2), title="t <1>")
    p = v.save(tmp_path / "sub" / "fig.html")
    text = p.read_text(encoding="utf-8")
    assert "<title>t &lt;1&gt;</title>" in text and text.count('class="si-cell"') == 6
    assert not list(p.parent.glob(".fig.html.*"))  # no temp file left behind


# --------------------------------------------------------------------------- figures draw the right numbers
def test_head_heatmap_has_one_cell_per_layer_and_head_with_its_values():
    vals = np.arange(12, dtype=float).reshape(4, 3) / 11
    rates = vals * 100
    html = head_heatmap(vals, layers=[2, 3, 5, 7], extra={"sink rate %": rates}, highlight=[(5, 1)])._repr_html_()
    cs = cells(html)
    assert len(cs) == 12
    for c in cs:
        i, j = [2, 3, 5, 7].index(int(c["data-layer"])), int(c["data-head"])
        assert float(c["data-value"]) == pytest.approx(vals[i, j], rel=1e-5, abs=1e-6)
    tips = re.findall(r"<title>(layer 5, head 1:[^<]*)</title>", html)
    assert tips == [f"layer 5, head 1: mean α₁ = {vals[2, 1]:.3g}; sink rate % = {rates[2, 1]:.3g}"]
    assert 'stroke="#d62728"' in html  # the highlighted head


def test_head_heatmap_rejects_bad_shapes():
    with pytest.raises(ValueError, match="values must be 2-D"):
        head_heatmap(np.ones(3))
    with pytest.raises(ValueError, match="layers has 2 entries"):
        head_heatmap(np.ones((3, 2)), layers=[0, 1])
    with pytest.raises(ValueError, match="extra"):
        head_heatmap(np.ones((3, 2)), extra={"x": np.ones((2, 2))})


def test_attention_view_strip_is_alpha_and_props_are_the_pattern():
    H, T = 3, 8
    p = causal(H, T, sink=4.0)
    p[1] = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]  # head 1: uniform
    v = attention_view(p, [f"w{i}" for i in range(T)], layers=[4], order="alpha")
    html = v._repr_html_()
    # independent alpha: column sum over queries t >= k divided by the number of such queries
    ref = np.array([[p[h, k:, k].sum() / (T - k) for k in range(T)] for h in range(H)])
    got = np.zeros((H, T))
    for c in cells(html):
        got[int(c["data-head"]), int(c["data-pos"])] = float(c["data-value"])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert ref[1, 0] == pytest.approx(np.sum(1 / np.arange(1, T + 1)) / T)  # uniform: mean of 1/t
    (props,) = props_of(html)
    order = list(np.argsort(-ref[:, 0], kind="stable"))
    assert props["attentionHeadNames"] == [f"L4H{h}" for h in order]
    np.testing.assert_allclose(np.array(props["attention"]), np.round(p[order], 4))
    assert props["maskUpperTri"] is True
    assert html.count('class="si-sinkcol"') == 1  # key 0 is the sink column


def test_attention_view_input_errors():
    with pytest.raises(ValueError, match="tokens has 3 entries"):
        attention_view(causal(2, 4), ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"\[heads, T, T\]"):
        attention_view(np.ones((4, 4)))
    with pytest.raises(ValueError, match="sink_positions"):
        attention_view(causal(2, 4), sink_positions=[9])
    with pytest.raises(ValueError, match="order"):
        attention_view(causal(2, 4), order="random")


def test_alpha_tokens_view_props():
    a = np.array([[0.9, 0.1, 0.2], [0.3, 0.4, 0.5]])
    (props,) = props_of(alpha_tokens_view(a, ["x", "y", "z"], ["L1H0", "L1H1"])._repr_html_())
    assert props["values"] == a.T.tolist() and props["labels"] == ["L1H0", "L1H1"] and props["tokens"] == ["x", "y", "z"]


def test_massive_view_picks_the_top_dims_and_ratios():
    dm = np.ones((3, 20))
    dm[2, 7], dm[1, 3], dm[0, 11] = 5000.0, 300.0, 50.0
    tm = np.ones((3, 5))
    tm[2, 0] = 5000.0
    med = np.array([1.0, 1.0, 2.0])
    html = massive_activation_view(dm, tm, tokens=["<s>", "a", "b", "c", "d"], median=med, top=3)._repr_html_()
    dims = [int(c["data-dim"]) for c in cells(html) if "data-dim" in c]
    assert sorted(set(dims)) == [3, 7, 11] and len(dims) == 9
    assert len([c for c in cells(html) if "data-pos" in c]) == 15
    assert "layer 2, dim 7: max |x| = 5,000 = 2,500× median" in html
    # table: largest first, marked massive only above both thresholds
    rows = re.findall(r"<tr><td>(\d+)</td><td>(\d+)</td><td>([^<]*)</td><td>([^<]*)</td><td>(True|False)</td></tr>", html)
    assert rows[0] == ("2", "7", "5,000", "2,500", "True") and rows[1] == ("1", "3", "300", "300", "False")


def test_key_manifold_pca_matches_an_independent_eigendecomposition():
    rng = np.random.default_rng(1)
    k = rng.normal(size=(200, 6)) * np.array([5, 2, 1, 0.5, 0.2, 0.1])
    k[:10] = np.array([30.0, 0, 0, 0, 0, 0]) + rng.normal(scale=0.01, size=(10, 6))
    is_sink = np.arange(200) < 10
    html = key_manifold_view(k, is_sink, labels=[f"p{i}" for i in range(200)])._repr_html_()
    xc = k - k.mean(0)
    w = np.linalg.eigvalsh(xc.T @ xc)[::-1]
    ratio = w / w.sum()
    assert f"PC1 ({100 * ratio[0]:.0f}% of variance)" in html and f"PC2 ({100 * ratio[1]:.0f}% of variance)" in html
    assert html.count('data-group="sink token"') == 10 and html.count('data-group="other tokens"') == 190
    norms = np.linalg.norm(k, axis=1)
    assert f"<td>{norms[:10].mean():.2f}</td>" in html


def test_effect_bars_and_training_curves(tmp_path):
    df = pd.DataFrame(
        {"intervention": ["none", "zero sink V", "mask sink"], "delta_loss": [0.0, 0.75, -0.1], "Sink_1": [72.0, 70.0, 0.0]}
    )
    html = effect_bars(df)._repr_html_()
    bars = re.findall(r'<rect class="si-bar"[^>]*data-value="([^"]+)"', html)
    assert [float(b) for b in bars] == [0.0, 0.75, -0.1, 72.0, 70.0, 0.0]
    with pytest.raises(ValueError, match="not columns"):
        effect_bars(df, values=["loss"])
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        "".join(json.dumps({"step": s, "val_loss": 4 - s / 100, "sink_rate": s / 10}) + "\n" for s in range(0, 500, 100))
    )
    v = training_curves(path, y=("val_loss", "sink_rate_1", "alpha_1"))  # the file's old key sink_rate is read as sink_rate_1
    html = v._repr_html_()
    assert html.count('class="si-line"') == 2 and "Not in the metrics: alpha_1" in html
    assert "<title>step 100, val_loss 3</title>" in html
    with pytest.raises(ValueError, match="none of y"):
        training_curves(path, y=("nope",))
    runs = training_curves({"softmax": path, "sigmoid": path}, y=("val_loss",))
    assert runs._repr_html_().count('class="si-line"') == 2
    assert view_for(str(path)).kind == "training" and view_for(df).kind == "effects"


# --------------------------------------------------------------------------- library results
@pytest.fixture(scope="module")
def tiny(tiny_models):
    model, hf = tiny_models("tiny-gqa")
    tokens = torch.randint(4, 120, (6, 12), generator=torch.Generator().manual_seed(0))
    return model, hf, tokens


def test_sink_report_repr_html_uses_the_view(tiny):
    model, _, tokens = tiny
    r = measure_sinks(model, tokens, progress=False)
    html = r._repr_html_()
    L, H = r.alpha.shape[1:3]
    cs = cells(html, "head-heatmap")
    assert len(cs) == L * H
    mean = r.mean_alpha(1)
    for c in cs:
        assert float(c["data-value"]) == pytest.approx(mean[int(c["data-layer"]), int(c["data-head"])], rel=1e-5)
    assert BUNDLE_MARK not in html  # no CircuitsVis needed, stays light in notebooks
    assert view_for(r).kind == "sink-report" and sink_report_view(r).kind == "sink-report"
    with pytest.raises(ValueError, match="no view for"):
        view_for(object())


def test_attention_patterns_for_equal_hf_eager_attention(tiny):
    model, hf, tokens = tiny
    pats = attention_patterns_for(model, tokens, layers=[0, 1], sample=2)
    ref = hf_attentions(hf, tokens[2:3])[0]  # [layers, heads, T, T]
    for layer in (0, 1):
        np.testing.assert_allclose(pats[layer], ref[layer].numpy(), atol=1e-5)


def test_build_report_tiny(tiny):
    model, _, tokens = tiny
    page = build_report(model, tokens, sample=1, attention_layers=2)
    html = page.to_html()
    assert html.count(BUNDLE_MARK) == 1 and page.n_widgets == 3
    for anchor in ("summary", "heads", "massive", "trace", "effects", "provenance"):
        assert f'id="{anchor}"' in html
    assert len(cells(html, "head-heatmap")) == model.cfg.n_layers * model.cfg.n_heads
    assert 'data-kind="massive"' in html and 'data-kind="manifold"' in html
    assert "tiny-gqa" in html and "BOS" in html and "eps = 0.3" in html and "circuitsvis 1." in html
    with pytest.raises(ValueError, match="sample"):
        build_report(model, tokens, sample=99)


def test_report_measures_massive_activations_once_and_says_each_phase(tiny, monkeypatch, capsys):
    """Section 3, the trace and the intervention battery share one massive-activation pass; every phase says it starts."""
    import sink_interp.battery
    import sink_interp.pages
    import sink_interp.trace.tracer
    from sink_interp.massive import massive_activations

    model, _, tokens = tiny
    calls = []

    def counted(*a, **kw):
        calls.append(tuple(a[1].shape))
        return massive_activations(*a, **kw)

    def forbidden(*a, **kw):
        raise AssertionError("a second massive-activation pass over the detail inputs")

    monkeypatch.setattr(sink_interp.pages, "massive_activations", counted)
    monkeypatch.setattr(sink_interp.battery, "massive_activations", forbidden)
    monkeypatch.setattr(sink_interp.trace.tracer, "massive_activations", forbidden)
    page = build_report(model, tokens, n_detail=4, progress=True)
    assert calls == [(4, 12)]
    assert {"measure", "details", "massive", "trace", "interventions", "layout"} <= set(page.meta["timings"])
    phases = [line for line in capsys.readouterr().err.splitlines() if line.startswith("report: ")]
    assert [p.split()[1] for p in phases] == ["sink", "attention", "massive", "trace", "interventions:", "assembling"], phases
    html = page.to_html()
    assert "Skipped" not in html and 'id="effects"' in html


def test_report_without_interventions_or_trace_says_they_were_skipped(tiny, monkeypatch):
    import sink_interp.pages

    def forbidden(*a, **kw):
        raise AssertionError("ran although skipped")

    monkeypatch.setattr(sink_interp.pages, "compare", forbidden)
    monkeypatch.setattr(sink_interp.pages, "trace_sink", forbidden)
    model, _, tokens = tiny
    page = build_report(model, tokens, trace=False, interventions=False)
    html = page.to_html()
    assert html.count("Skipped:") == 2 and "--no-interventions" in html and "--no-trace" in html
    assert "Could not be computed" not in html
    assert not {"trace", "interventions"} & set(page.meta["timings"])  # section 3's massive pass still runs


def test_cli_report_tiny(tmp_path, capsys):
    from sink_interp.cli import main

    out = tmp_path / "r.html"
    assert (
        main(["report", "--model", "tiny-mha", "--data", "random", "--n", "4", "--length", "16", "--out", str(out), "--quiet"])
        == 0
    )
    text = out.read_text(encoding="utf-8")
    assert "Attention-sink report: tiny-mha" in text and text.count(BUNDLE_MARK) == 1
    assert "sink-interp report --model tiny-mha" in text
    assert "wrote" in capsys.readouterr().out
    assert main(["report", "--model", "tiny-mha", "--eps", "2", "--out", str(out)]) == 2
    argv = ["report", "--model", "tiny-mha", "--data", "random", "--n", "3", "--length", "12", "--no-interventions"]
    assert main([*argv, "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "Skipped:" in text and "sink-interp report --model tiny-mha" in text and "--no-interventions" in text
    err = capsys.readouterr().err
    assert "report: loading tiny-mha" in err and "report: assembling the page" in err and "report: interventions" not in err


# --------------------------------------------------------------------------- adapters (duck-typed result objects)
class _Link:
    def __init__(self, **kw):
        self.__dict__.update(kw)

    def to_dict(self):
        return dict(self.__dict__)

    def docs(self):
        return {k: f"how to read {k}" for k in self.__dict__}


class MassiveReport:  # the adapters key on the class name; fields as in issue 3's MassiveReport
    def __init__(self):
        n, L, k, T = 2, 3, 2, 5
        self.top_abs = np.zeros((n, L, k))
        self.top_dim = np.zeros((n, L, k), dtype=int)
        self.top_abs[1, 2] = [900.0, 4.0]
        self.top_dim[1, 2] = [6, 1]
        self.top_abs[0, 0] = [3.0, 2.0]
        self.top_dim[0, 0] = [2, 6]
        self.h_norm = np.arange(n * L * T, dtype=float).reshape(n, L, T) + 1
        self.layer_median = np.array([1.0, 1.0, 0.5])
        self.abs_threshold, self.ratio_threshold = 100.0, 1000.0
        self.model, self.model_info = "m", {"d_model": 8, "n_heads": 2}


class TraceReport:
    def __init__(self):
        self.layer, self.head, self.kv_head, self.sink_pos, self.model = 2, 1, 0, 0, "m"
        self.model_info = {"n_heads": 2}
        self.links = {
            "spike": _Link(pos=0, top_value=900.0, ratio=1800.0, h_norm_ratio=30.0, dims=[6]),
            "rope": _Link(cos_sink=[0.1, 0.7], cos_other=[0.0, -0.2], alpha=[0.2, 0.95]),
        }
        self.skipped = {"gated_mlp": "the model has no gated MLP"}
        self.key_pca = {"sink": np.array([[5.0, 1.0], [5.1, 1.0]]), "other": np.array([[0.0, 0.0], [1.0, -1.0], [-1.0, 0.5]])}
        self.massive = MassiveReport()


class EffectReport:
    n, length, model = 4, 16, "m"

    def to_frame(self):
        return pd.DataFrame(
            {
                "label": ["clean", "mask"],
                "loss": [3.0, 3.5],
                "delta_loss": [0.0, 0.5],
                "kl": [0.0, 0.2],
                "sink_rate_1": [70.0, 0.0],
                "score": ["softmax"] * 2,
            }
        )


class TrainResult:
    config = {"name": "bb-softmax"}

    def to_frame(self):
        return pd.DataFrame(
            {"step": [0, 10, 20], "val_loss": [5.0, 4.0, 3.5], "sink_rate_1": [0.0, 10.0, 40.0], "mean_alpha_1": [0.1, 0.2, 0.4]}
        )


def test_massive_report_adapter_rebuilds_dim_maxima_from_top_k():
    html = massive_report_view(MassiveReport())._repr_html_()
    got = {(int(c["data-layer"]), int(c["data-dim"])): float(c["data-value"]) for c in cells(html) if "data-dim" in c}
    assert got[(2, 6)] == 900.0 and got[(0, 2)] == 3.0 and got[(0, 6)] == 2.0 and got[(1, 6)] == 0.0
    tok = {(int(c["data-layer"]), int(c["data-pos"])): float(c["data-value"]) for c in cells(html) if "data-pos" in c}
    h = MassiveReport().h_norm.mean(axis=0)
    assert all(tok[(l, p)] == pytest.approx(h[l, p]) for l in range(3) for p in range(5))
    assert "mean ‖h‖" in html and massive_report_view(MassiveReport()).kind == "massive"


def test_trace_adapter_chain_pca_and_massive():
    v = trace_report_view(TraceReport())
    html = v._repr_html_()
    assert html.count('class="si-link"') == 2 and 'data-kind="trace"' in html
    # the rope link's per-head lists are shown for the traced head (1)
    assert re.search(r'data-link="rope".*?cos_sink</span> <b>0.7</b>', html, flags=re.DOTALL)
    assert 'title="how to read ratio"' in html and "gated_mlp (the model has no gated MLP)" in html
    assert html.count('data-group="sink keys (pos 0)"') == 2 and 'data-kind="massive"' in html
    assert 'data-kind="massive"' not in trace_report_view(TraceReport(), massive=False)._repr_html_()
    chain = trace_chain_view([("norm", {"scale_ratio": 30.0, "kind": "RMSNorm"}, {})])._repr_html_()
    assert "scale_ratio</span> <b>30</b>" in chain


def test_effect_and_training_adapters():
    html = effect_report_view(EffectReport())._repr_html_()
    bars = re.findall(r'<rect class="si-bar"[^>]*data-value="([^"]+)"', html)
    assert [float(b) for b in bars] == [0.0, 0.5, 0.0, 0.2, 70.0, 0.0]
    assert effect_report_view(EffectReport()).kind == "effects"
    t = train_result_view(TrainResult())
    assert t.kind == "training" and "bb-softmax" in t.title and t._repr_html_().count('class="si-line"') == 3
    assert train_result_view(TrainResult()).kind == "training"


def test_numbers_print_without_exponents_below_a_million_and_titles_fit():
    from sink_interp.views._svg import fmt

    assert [fmt(100, 2), fmt(250, 2), fmt(99.6, 2), fmt(12345), fmt(0.25), fmt(2e-5, 2), fmt(3e6)] == [
        "100",
        "250",
        "100",
        "12,345",
        "0.25",
        "2e-05",
        "3e+06",
    ]
    html = head_heatmap(np.array([[100.0, 50.0]]), value_name="Sink_1 (% of inputs)")._repr_html_()
    assert "e+02" not in html and ">100<" in html
    width = float(re.search(r'<svg[^>]*width="([0-9.]+)"', html).group(1))
    assert width >= 14 * 2 + len("Sink_1 (% of inputs)") * 6.0  # the colour bar's title is not cut off


def test_a_report_made_through_a_submodule_finds_its_view_in_a_fresh_process():
    """Nothing imports the views up front (`import sink_interp` is lazy); the registry is filled when first read."""
    import subprocess
    import sys

    probe = (
        "import sys, torch\n"
        "from sink_interp.metrics import measure_sinks\n"
        "from sink_interp.models import tiny_model\n"
        "r = measure_sinks(tiny_model(), torch.randint(4, 100, (2, 8)), progress=False)\n"
        "assert 'sink_interp.views' not in sys.modules\n"
        "html = r._repr_html_()\n"
        "print('sink_interp.views' in sys.modules, 'head-heatmap' in html)\n"
    )
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["True", "True"]
