"""One rule per concept: the sink score, sink positions, soft-capping, metrics files and the massive-activation
numbers are computed once, and every caller (reports, views, pages, the engines) gets the same values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sink_interp import measure_sinks
from sink_interp._internal import scores
from sink_interp.models import tiny_model


def test_sink_alpha_is_the_gu_formula_by_hand():
    # a 3-token causal pattern: alpha_k = mean over the queries t >= k of A[t, k]
    A = torch.tensor([[1.0, 0, 0], [0.75, 0.25, 0], [0.5, 0.2, 0.3]])
    want = [(1.0 + 0.75 + 0.5) / 3, (0.25 + 0.2) / 2, 0.3]
    assert scores.sink_alpha(A).tolist() == pytest.approx(want, abs=1e-7)
    # the proxy divides each row by its sum first
    assert scores.sink_alpha(2 * A, "proxy").tolist() == pytest.approx(want, abs=1e-6)


def test_sink_positions_ignore_keys_with_few_queries():
    a = np.zeros((2, 30))
    a[0, 0] = 0.9
    a[1, 10] = 0.5
    a[0, 25] = 0.99  # 5 queries only
    assert scores.sink_positions(a, eps=0.3) == [0, 10]
    assert scores.sink_positions(a, eps=0.6) == [0]
    # Sink_k over 2 rows: 50 % each; min_rate in percent
    assert scores.sink_positions(a, eps=0.3, min_rate=60.0) == []
    # an input shorter than min_queries: its first key is seen by every query, so it counts
    assert scores.reliable_keys(5, 8).tolist() == [True, False, False, False, False]


def test_the_report_and_the_views_mark_the_same_sink_positions():
    model = tiny_model(seed=3)
    with torch.no_grad():  # peaked attention: large query/key weights
        for name, p in model.named_parameters():
            if name.endswith(("q.weight", "k.weight")):
                p.mul_(8.0)
    x = torch.randint(4, 128, (6, 20), generator=torch.Generator().manual_seed(0))
    rep = measure_sinks(model, x, progress=False)
    for eps in (0.1, 0.3, 0.5):
        df = rep.sink_positions(eps)
        from_report = [int(k) - 1 for k, ok in zip(df["k"], df["reliable"]) if ok]
        assert from_report == scores.sink_positions(rep.alpha, eps)
    assert scores.sink_positions(rep.alpha, 0.1)  # the case is not empty
    # the rate of every key is the share of (sample, layer, head) above eps, by hand
    assert rep.rates(0.3) == pytest.approx(100.0 * (rep.alpha > 0.3).mean(axis=(0, 1, 2)))


def test_softcap_is_cap_tanh_x_over_cap_everywhere():
    x = torch.linspace(-50, 50, 11)
    assert torch.equal(scores.softcap(x, 5.0), 5.0 * torch.tanh(x / 5.0))
    assert scores.softcap(x, None) is x
    # the three callers (attention description, block engine, KV-bias intervention) import this one function
    import sink_interp.architecture.spec as a
    import sink_interp.blockwise as b
    import sink_interp.interventions.keys as i

    assert a.softcap is b.softcap is i.softcap is scores.softcap


def test_metrics_files_are_read_by_one_reader(tmp_path):
    from sink_interp.training import read_metrics
    from sink_interp.views.figures import _metrics_frame

    old = [{"step": 0, "sink_rate": 1.5, "mean_alpha1": 0.2}, {"step": 2, "sink_rate": 3.0, "mean_alpha1": 0.25}]
    (tmp_path / "metrics.jsonl").write_text("".join(__import__("json").dumps(m) + "\n" for m in old))
    got = read_metrics(tmp_path)
    assert got == [{"step": 0, "sink_rate_1": 1.5, "mean_alpha_1": 0.2}, {"step": 2, "sink_rate_1": 3.0, "mean_alpha_1": 0.25}]
    assert _metrics_frame(tmp_path / "metrics.jsonl").to_dict(orient="records") == got


def _massive_cells(html: str) -> tuple[dict[tuple[int, int], str], dict[tuple[int, int], str]]:
    """(layer, dim) -> the hover text of the massive view's dims panel; (layer, token) -> that of its tokens panel."""
    import re

    dims = {(int(l), int(d)): v for l, d, v in re.findall(r"layer (\d+), dim (\d+): max \|x\| = ([^\"<]*)", html)}
    toks = {(int(l), int(t)): v for l, t, v in re.findall(r"layer (\d+), token (\d+) [^:\"<]*: ‖h‖ of input 1 = ([^\"<]*)", html)}
    return dims, toks


def test_the_report_page_shows_the_numbers_of_massive_activations():
    """Section 3 of the HTML report draws ``massive_activations`` on the detail inputs: the same numbers as the
    function (and so the CLI's ``sink-interp massive``), and both equal hook_resid_pre read by hand."""
    from sink_interp._internal import hooknames
    from sink_interp.massive import massive_activations
    from sink_interp.pages import build_report
    from sink_interp.views import token_strings, view_for
    from sink_interp.views._svg import fmt

    model = tiny_model(seed=1)
    with torch.no_grad():  # a few large weights, so that some entries stand out
        for name, p in model.named_parameters():
            if "down_proj" in name and name.endswith("weight"):
                p[::7].mul_(300.0)  # every 7th residual dim written large by the MLPs
    x = torch.randint(4, 128, (6, 12), generator=torch.Generator().manual_seed(0))
    page = build_report(model, x, sample=1, n_detail=4, trace=False, interventions=False)
    html = page.to_html()
    dims, toks = _massive_cells(html[html.index('id="massive"') : html.index('data-kind="manifold"')])
    rep = massive_activations(model, x[:4], measure_sinks=False, progress=False)
    assert (dims, toks) == _massive_cells(view_for(rep, sample=1, tokens=token_strings(model, x[1])).to_html())
    # by hand: each sample's top-5 |x| of hook_resid_pre, the largest per (layer, dim); the median |x| of the
    # sample holding the layer's maximum; ||h|| of input 1 per token
    _, cache = model.run_with_cache(x[:4])
    L, T = model.cfg.n_layers, x.shape[1]
    for layer in range(L):
        h = cache[hooknames.resid_pre(layer)].float()
        a = h.abs()  # [n, T, D]
        n, _, D = a.shape
        vals, idx = a.flatten(1).topk(5, dim=1)
        dim_max = np.zeros(D)
        for s in range(n):
            for v, i in zip(vals[s].tolist(), idx[s].tolist()):
                dim_max[i % D] = max(dim_max[i % D], v)
        med = float(np.median(a[int(vals[:, 0].argmax())].numpy()))
        for (l, d), text in dims.items():
            if l == layer:
                assert text == f"{fmt(dim_max[d])} = {fmt(dim_max[d] / med)}× median", (l, d, text)
        norms = h[1].norm(dim=-1).tolist()
        assert [toks[(layer, t)] for t in range(T)] == [fmt(v) for v in norms]
    assert len(dims) == L * 12 and len(toks) == L * T
    assert max(float(v.split()[0]) for v in dims.values()) > 1  # the case has large entries (embeddings are ~0.05)


def test_every_report_class_gives_its_provenance():
    """One field ``provenance`` (or, for a report holding another, that report's); no report rebuilds it by getattr."""
    import dataclasses

    import sink_interp
    from sink_interp._internal import providers
    from sink_interp._internal.report import REPORT_TYPES

    providers.load("reports")
    assert sink_interp  # the package registers its report modules
    for name, cls in REPORT_TYPES.items():
        if name == "Toy":
            continue
        fields = {f.name for f in dataclasses.fields(cls)}
        assert "provenance" in fields or isinstance(getattr(cls, "provenance", None), property), name
        assert not {"model", "data", "model_info"} <= fields, name  # never the five old provenance fields
    model = tiny_model()
    rep = measure_sinks(model, torch.randint(4, 128, (2, 10)), progress=False)
    assert rep.provenance.model == rep.model and rep.provenance.model_info is rep.model_info
