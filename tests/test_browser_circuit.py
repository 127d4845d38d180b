"""The circuit graph in headless Chromium, offline: drawn, hover read-outs work, nothing leaves the page."""

from __future__ import annotations

import pytest

from .browser import browser, open_offline, why_no_browser

REASON = why_no_browser()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def test_circuit_graph_renders_offline_and_reads_out_on_hover(tmp_path):
    from sink_interp.circuits import CircuitSettings, sink_circuit
    from sink_interp.views import view_for

    from .test_patching import _pair, _peaked

    model = _peaked("tiny-gqa", scale=4.0, seed=2)
    clean, corr = _pair(n=2, T=6, seed=36)
    rep = sink_circuit(model, clean, corr, lambda lo: lo[:, -1, 5].float().mean(), CircuitSettings(steps=2), progress=False)
    path = view_for(rep).save(tmp_path / "circuit.html")
    best = rep.edges().iloc[0]
    with browser() as ctx:
        o = open_offline(ctx, path)
        assert o.blocked == [] and o.page_errors == [] and o.console_errors == []
        p = o.page
        fig = 'figure[data-kind="circuit-graph"]'
        n_edges = p.locator(f"{fig} path.si-edge").count()
        assert n_edges == (rep.size if rep.size else min(20, len(rep.scores)))
        box = p.evaluate(
            f"(() => {{const r = document.querySelector('{fig} svg').getBoundingClientRect(); return [r.width, r.height];}})()"
        )
        assert box[0] > 100 and box[1] > 100
        # the widest edge is drawn last (on top): hovering it shows its numbers in the read-out line
        p.locator(f"{fig} path.si-edge >> nth=-1").dispatch_event("mouseover")  # a curve's box centre may miss its stroke
        text = p.locator(f"{fig} .si-readout").inner_text()
        assert text.startswith(f"{best.src} -> {best.dst} ({best.kind}): score"), text
        p.locator(f"{fig} circle.si-node >> nth=0").hover()
        assert p.locator(f"{fig} .si-readout").inner_text() == "emb"
        o.page.close()
