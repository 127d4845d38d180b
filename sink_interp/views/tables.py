"""The tables of numbers that sit under each report's figure inline: functions of plain frames, rows and the
reports' plain data (they read attributes; they import no analysis and run no model).

Example:
    >>> import pandas as pd
    >>> v = table_view(pd.DataFrame({"a": [1.0, 2.0]}, index=[8, 16]), title="t", index="budget", num=".2f")
    >>> v.kind, "budget" in v._repr_html_(), "2.00" in v._repr_html_()
    ('table', True, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ._page import View, esc, html_table


def run_line(rep: Any, *more: str) -> str:
    """One line naming a report's run: model, data, inputs, BOS, then ``more``."""
    n, length = getattr(rep, "n", "?"), getattr(rep, "length", "?")
    parts = [f"{rep.model} on {rep.data}", f"n = {n}, length = {length}", f"BOS = {rep.bos}", *more]
    return "; ".join(str(p) for p in parts if p)


def table_view(
    table: pd.DataFrame | Sequence[dict[str, Any]],
    *,
    title: str,
    caption: str | None = None,
    index: str | None = None,
    columns: Sequence[str] | None = None,
    fmt: dict[str, str] | None = None,
    num: str | None = None,
    folded: bool = False,
    note: str | None = None,
) -> View:
    """A table of numbers as a view: ``table`` a list of dicts or a DataFrame (with ``index``, its index becomes the
    first column under that name); ``fmt`` formats by column, ``num`` every other float; ``folded`` puts it in a
    ``<details>`` box; ``note`` is a line under it."""
    if isinstance(table, pd.DataFrame):
        df = table.rename_axis(index).reset_index() if index is not None else table
        rows = [{str(k): v for k, v in r.items()} for r in df.to_dict("records")]
        cols = list(columns or [str(c) for c in df.columns])
    else:
        rows, cols = [dict(r) for r in table], list(columns or (list(table[0]) if len(table) else []))
    if num is not None:
        fmt = {**{c: num for c in cols}, **(fmt or {})}
    body = html_table(rows, cols, fmt=fmt)
    if folded:
        body = f"<details><summary>all numbers</summary>{body}</details>"
    parts = [body] + ([f'<p class="si-note">{esc(note)}</p>'] if note else [])
    return View(parts, title=title, caption=caption, kind="table")


def with_table(figure: View, table: View) -> View:
    """A report's figure and its table of numbers, one view of the figure's kind."""
    return View([figure, table], figure=False, kind=figure.kind)


def _pct(x: float, digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}%"


# --------------------------------------------------------------------------- one table per report
def loss_table(rep: Any, rows: str, full: str) -> View:
    """A ``KVReport`` (``rows="budget"``, columns: policies and the full cache) or a ``QuantReport`` (``rows="bits"``,
    columns: intact first tokens): its ``table()`` of losses, ``full`` naming the unchanged model's loss."""
    cols = "policy" if rows == "budget" else "intact first tokens"
    return table_view(
        rep.table(),
        title=f"Loss by {rows} and {cols}",
        caption=run_line(rep, f"{full} loss {rep.full_loss:.4f}"),
        index=rows,
        num=".4f",
    )


def stream_table(rep: Any) -> View:
    """A ``StreamReport``: perplexity with position buckets as rows and conditions as columns."""
    return table_view(
        rep.pivot(),
        title="Perplexity by position",
        caption=run_line(rep, f"{rep.n_sinks} sinks + window {rep.window}"),
        index="positions",
        num=".2f",
    )


def long_context_table(rep: Any) -> View:
    """A ``LongContextReport``: ``Sink_1`` and mean α₁ per query bucket, and the secondary sinks."""
    sr = rep.sink_report
    rates, mean = rep.bucket_rates(1), rep.bucket_mean_alpha(1)
    rows = [
        {"queries": f"{a + 1}–{b}", "Sink_1": _pct(float(rates[i])), "mean α_1": float(mean[i])}
        for i, (a, b) in enumerate(zip(rep.edges, rep.edges[1:]))
    ]
    sec = ", ".join(str(k) for k in rep.secondary_sinks()[:10]) or "none"
    return table_view(
        rows,
        title="Sink_1 by query bucket",
        caption=run_line(sr, f"T = {rep.length}", f"eps = {rep.eps}"),
        fmt={"mean α_1": ".3f"},
        note=f"secondary sinks (k): {sec}",
    )


def massive_table(rep: Any) -> View:
    """A ``MassiveReport``: per layer the largest ``|x|``, where it sits, its ratio to the median, ``||v_0|| / mean ||v||``."""
    rows = [
        {
            "layer": int(r.layer),
            "max |x|": float(r.max),
            "pos": int(r.pos),
            "dim": int(r.dim),
            "/median": float(r.ratio),
            "massive": "yes" if r.massive else "",
            "||v_0|| / mean ||v||": float(r.value_norm_ratio),
        }
        for r in rep.to_frame().itertuples()
    ]
    thr = f"thresholds |x| > {rep.abs_threshold:g} and ≥ {rep.ratio_threshold:g}× median"
    return table_view(
        rows,
        title="Largest activation per layer",
        caption=run_line(rep, thr, rep.dtype),
        fmt={"max |x|": ".1f", "/median": ".0f", "||v_0|| / mean ||v||": ".3f"},
    )


def effect_table(rep: Any) -> View:
    """An ``EffectReport``: loss, Δ loss, KL, top-1 kept, ``Sink_1`` and sink mass of each intervention."""
    rows = [
        {
            "intervention": x.label,
            "loss": x.loss,
            "Δ loss": x.delta_loss,
            "KL": x.kl,
            "top-1 kept": _pct(100 * x.top1),
            "Sink_1": _pct(x.sink_rate_1),
            "sink mass": x.sink_mass,
        }
        for x in rep.effects
    ]
    return table_view(
        rows,
        title="Effect of each intervention",
        caption=run_line(rep, f"eps = {rep.eps}", rep.dtype),
        fmt={"loss": ".4f", "Δ loss": "+.4f", "KL": ".4f", "sink mass": ".3f"},
    )


def trace_table(rep: Any) -> View:
    """A ``TraceReport``: the story in words, and every number of every link (folded)."""
    df = rep.to_frame()
    rows = [{"link": r.link, "number": r.name, "value": r.value, "how to read it": r.doc} for r in df.itertuples()]
    view = table_view(rows, title=f"{rep.model} layer {rep.layer} head {rep.head}: the chain in words", folded=True)
    view.parts.insert(0, f"<pre style='white-space:pre-wrap'>{esc(rep.story())}</pre>")
    return view


def train_table(
    rep: Any, columns: Sequence[str] = ("step", "val_loss", "sink_rate_1", "mean_alpha_1", "value_norm_ratio", "resid_norm_ratio")
) -> View:
    """A ``TrainResult``: the logged numbers of every evaluation step (folded)."""
    cfg = getattr(rep, "config", None) or {}
    return table_view(
        list(rep.metrics),
        title=f"Training run {cfg.get('name')}",
        caption=f"{rep.out_dir} ({rep.n_params:,} parameters, {rep.device}, eps = {cfg.get('eps')})",
        columns=list(columns),
        folded=True,
    )


def repro_table(rep: Any) -> View:
    """A ``ReproTable``: each finding's claim, the paper's number, ours (with its checks) and the verdict."""
    rows = [
        {
            "finding": f"{r.finding}: {r.claim}",
            "paper": r.paper,
            "ours": f"{r.ours} ({r.checks})" if r.checks else r.ours,
            "verdict": r.verdict,
        }
        for r in rep.rows
    ]
    note = rep.pending_note() or None
    return table_view(rows, title="Findings reproduced", caption=note, columns=["finding", "paper", "ours", "verdict"])


def sink_rates_table(rep: Any, k: int = 1, eps_grid: Sequence[float] = ()) -> View:
    """``Sink_k`` of a sink report (or summary) at each eps of ``eps_grid`` (its own eps when empty)."""
    grid = list(eps_grid) or [rep.eps]
    rows = [{"eps": e, f"Sink_{k} (%)": float(rep.rate(k, e))} for e in grid]
    mean = float(np.asarray(rep.mean_alpha(k)).mean())
    return table_view(
        rows,
        title=f"Sink_{k} by threshold",
        caption=run_line(rep, f"mean α_{k} = {mean:.3f}"),
        fmt={"eps": "g", f"Sink_{k} (%)": ".2f"},
    )
