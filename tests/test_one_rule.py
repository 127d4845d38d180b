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
    import sink_interp.architecture as a
    import sink_interp.blockwise as b
    import sink_interp.interventions as i

    assert a.softcap is b.softcap is i.softcap is scores.softcap


def test_metrics_files_are_read_by_one_reader(tmp_path):
    from sink_interp.training import read_metrics
    from sink_interp.views.figures import _metrics_frame

    old = [{"step": 0, "sink_rate": 1.5, "mean_alpha1": 0.2}, {"step": 2, "sink_rate": 3.0, "mean_alpha1": 0.25}]
    (tmp_path / "metrics.jsonl").write_text("".join(__import__("json").dumps(m) + "\n" for m in old))
    got = read_metrics(tmp_path)
    assert got == [{"step": 0, "sink_rate_1": 1.5, "mean_alpha_1": 0.2}, {"step": 2, "sink_rate_1": 3.0, "mean_alpha_1": 0.25}]
    assert _metrics_frame(tmp_path / "metrics.jsonl").to_dict(orient="records") == got
