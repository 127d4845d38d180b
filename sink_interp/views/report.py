"""Views of a whole :class:`~sink_interp.SinkReport`, and the placeholder box of a report section.

The standalone report page that runs the model is put together one layer up,
in :mod:`sink_interp.pages` (``build_report``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._page import View, esc, html_table, section
from ._svg import bars_svg
from .figures import head_heatmap


# --------------------------------------------------------------------------- SinkReport
def _numbers(items: Sequence[tuple[str, str]]) -> str:
    cells = "".join(f'<div class="si-number"><b>{esc(v)}</b><span>{esc(k)}</span></div>' for k, v in items)
    return f'<div class="si-numbers">{cells}</div>'


def layer_rate_view(report: Any, k: int = 1, eps: float | None = None) -> View:
    """``Sink_k`` of each layer as bars."""
    rates = report.layer_rates(k, eps)
    e = report.eps if eps is None else eps
    labels = [f"layer {l}" for l in report.layers]
    tips = [f"layer {l}: Sink_{k} = {r:.1f}% of (sample, head) pairs have α_{k} > {e}" for l, r in zip(report.layers, rates)]
    svg = bars_svg(
        labels,
        rates,
        value_label=f"Sink_{k} (%)",
        tips=tips,
        bar_h=11 if len(labels) > 16 else 16,
        width=440,
        domain=(0.0, 100.0),
    )
    return View(
        [svg],
        title=f"Sink_{k} per layer",
        caption=f"Percent of (sample, head) pairs in each layer whose α_{k} exceeds eps = {e}.",
        kind="layer-rates",
        readout=True,
    )


def sink_report_view(report: Any, k: int = 1, top: int = 10) -> View:
    """A :class:`sink_interp.SinkReport` as numbers, a layer x head map, per-layer bars and the top heads.

    Example:
        >>> import torch
        >>> from sink_interp import measure_sinks, tiny_model
        >>> r = measure_sinks(tiny_model(), torch.randint(4, 100, (2, 8)), progress=False)
        >>> sink_report_view(r).kind
        'sink-report'
    """
    mean = report.mean_alpha(k)
    rates = report.head_rates(k)
    extra = {f"sink rate (% of samples, eps {report.eps})": rates}
    mass = report.sink_mass()
    if np.abs(mass).max() > 1e-6:
        extra["sink mass"] = mass
    table = report.head_table(k).head(top)
    best = table.iloc[0]
    sec = report.secondary_sinks()
    nums = [
        (f"Sink_{k} at eps {report.eps}", f"{report.rate(k):.1f}%"),
        (f"mean α_{k}", f"{float(report.alpha[..., k - 1].mean()):.3f}"),
        ("strongest head", f"L{int(best['layer'])}H{int(best['head'])} ({best[f'mean_alpha_{k}']:.2f})"),
        ("other sink positions", ("k = " + ", ".join(map(str, sec[:6]))) if sec else "none"),
        ("inputs", f"{report.n} × {report.length} tokens, BOS {'yes' if report.bos else 'no'}"),
    ]
    sweep = [{"eps": e, f"Sink_{k} (%)": report.rate(k, e)} for e in (0.1, 0.2, 0.3, 0.5, 0.8)]
    sweep_html = html_table(sweep, fmt={f"Sink_{k} (%)": ".1f", "eps": "g"})
    rows = table.to_dict(orient="records")
    top_html = html_table(rows, fmt={f"mean_alpha_{k}": ".3f", f"sink_rate_{k}": ".1f", "sink_mass": ".3f"})
    heat = head_heatmap(
        mean,
        layers=list(report.layers),
        value_name=f"mean α_{k}",
        extra=extra,
        vmin=0.0,
        vmax=1.0,
        title=f"Sink score α_{k} of every head",
        caption=f"Rows = layers, columns = heads; colour = α_{k} (mean attention to token {k}) averaged over {report.n} inputs; hover for the sink rate.",
    )
    head = View(
        [
            _numbers(nums),
            '<div class="si-row"><div class="si-panel"><h4>Sink rate by threshold</h4>',
            sweep_html,
            f'</div><div class="si-panel"><h4>Top {len(rows)} heads by mean α_{k}</h4>',
            top_html,
            "</div></div>",
        ],
        title=f"Attention sinks in {report.model}",
        caption=f"Gu et al. metric on {report.data}: a head is a sink head on token {k} when α_{k} > eps = {report.eps}; "
        f"Sink_{k} = percent of (sample, layer, head) triples that are.",
        kind="sink-summary",
    )
    return View(
        [head, '<div class="si-row si-figrow">', heat, layer_rate_view(report, k), "</div>"], figure=False, kind="sink-report"
    )


# --------------------------------------------------------------------------- report sections
def pending(title: str, what: str, needs: str, anchor: str, error: str | None = None, skipped: str | None = None) -> View:
    """A clearly marked placeholder section for results that were skipped (``skipped``: how to get them),
    failed (``error``) or whose module is not in this build."""
    if skipped is not None:
        text = f"Skipped: <code>{esc(needs)}</code> was not run for this report. {esc(what)}"
        head = "Not measured in this report"
        cap = f"To include it: {skipped}."
    elif error is None:
        text = f"Not in this report: <code>{esc(needs)}</code> is not available in this build of sink_interp. {esc(what)}"
        head = "Not measured in this build"
        cap = "This section is filled automatically once the module is installed; nothing was measured for it."
    else:
        text = f"<code>{esc(needs)}</code> raised an error, so this section is empty: <code>{esc(error)}</code>. {esc(what)}"
        head = "Could not be computed"
        cap = "The rest of the report is unaffected; run the analysis on its own to see the full error."
    box = View([f"<p>{text}</p>"], title=head, caption=cap, kind="pending")
    return section(title, None, [box], anchor=anchor)
