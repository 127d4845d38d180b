"""Views of the "sinks in practice" reports: loss against KV budget per policy, loss against bits with and without
intact sinks, and the activation-outlier map before and after a prefix. Functions of the reports' plain data;
they run no model.

Example:
    >>> import numpy as np
    >>> from types import SimpleNamespace as NS
    >>> import pandas as pd
    >>> rep = NS(model="m", n=1, length=8, n_sinks=1, full_loss=2.0, to_frame=lambda: pd.DataFrame(
    ...     {"policy": ["window", "window"], "budget": [2, 8], "loss": [3.0, 2.0]}))
    >>> kv_budget_view(rep).kind
    'training'
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ._page import View, esc
from ._svg import BLUES, fmt, heatmap_svg, lines_svg


def _loss_lines(df: pd.DataFrame, by: str, x: str, reference: str, ref_loss: float, label: Any) -> list:
    """One (name, xs, losses) line per group of ``df[by]`` against ``df[x]``, and a flat ``reference`` line."""
    series = []
    for key, g in df.groupby(by, sort=False):
        g = g.sort_values(x)
        series.append((label(key), g[x].to_numpy(float), g["loss"].to_numpy(float)))
    if len(df):
        xs = np.array([float(df[x].min()), float(df[x].max())])
        series.append((reference, xs, np.full(2, float(ref_loss))))
    return series


def _lines_view(svg: str, title: str, caption: str) -> View:
    return View(
        ['<div class="si-row"><div class="si-panel">', svg, "</div></div>"],
        title=title,
        caption=caption,
        kind="training",
        readout=True,
    )


def kv_budget_view(rep: Any) -> View:
    """A ``KVReport``: next-token loss against the cache budget, one line per policy, the full cache as a line."""
    series = _loss_lines(rep.to_frame(), "policy", "budget", "full cache", rep.full_loss, str)
    return _lines_view(
        lines_svg(series, xlabel="budget (keys)", ylabel="loss"),
        f"KV-cache policies on {rep.model}: loss against budget",
        f"Mean next-token loss over {rep.n} text(s) of {rep.length} tokens when each query sees only the keys its "
        f"policy keeps ({rep.n_sinks} sink token(s) where a policy keeps sinks); lower is better. Hover a point.",
    )


def quant_bits_view(rep: Any) -> View:
    """A ``QuantReport``: loss against KV bits, one line per number of intact first tokens, full precision as a line."""
    df = rep.to_frame()
    series = _loss_lines(df[df["bits"] != 16], "intact", "bits", "full precision", rep.full_loss, lambda s: f"{s} intact")
    mode = "per token" if rep.key_mode == "token" else "keys per channel"
    return _lines_view(
        lines_svg(series, xlabel="bits", ylabel="loss", ylog=True),
        f"KV-cache quantization on {rep.model}: loss against bits, with and without intact sinks",
        f"Keys (after RoPE) and values fake-quantized {mode} "
        f"(asymmetric min-max), the first s tokens kept in full precision; {rep.n} text(s) of {rep.length} tokens.",
    )


def outlier_map_view(rep: Any, positions: int = 32) -> View:
    """An ``OutlierReport``: ``max |x|`` per block (rows) and text position (columns), without and with the prefix
    (same log colour scale), and the loss with quantized activations."""
    P = min(int(positions), rep.max_abs.shape[-1])
    vmin = float(max(rep.max_abs[..., :P].min(), 1e-6))
    vmax = float(rep.max_abs[..., :P].max())
    panels = []
    for c, name in enumerate(rep.conditions):
        v = rep.max_abs[c, :, :P]
        tips = [
            [
                f"{name}, block {layer}, text position {t}: max |x| = {fmt(v[layer, t])}, "
                f"ratio to median {fmt(rep.ratio[c, layer, t])}, top dims {list(map(int, rep.top_dims[c, layer, t]))}"
                for t in range(P)
            ]
            for layer in range(v.shape[0])
        ]
        svg = heatmap_svg(
            v,
            list(range(v.shape[0])),
            list(range(P)),
            xlabel="text position",
            ylabel="block",
            value_label="max |x|",
            tips=tips,
            vmin=vmin,
            vmax=vmax,
            log=True,
            palette=BLUES,
            row_every=1 if v.shape[0] <= 40 else 2,
            col_every=1 if P <= 40 else 4,
        )
        label = name if name == "no prefix" else f"{name} {list(rep.prefix_tokens)!r}"
        panels.append(f'<div class="si-panel"><h4>{esc(label)}</h4>{svg}</div>')
    lf = pd.DataFrame(rep.loss, index=list(rep.conditions), columns=list(rep.quant_labels))
    table = lf.to_html(float_format=lambda x: f"{x:.4f}", classes="si-table")
    return View(
        ['<div class="si-row">', *panels, "</div>", "<h4>loss with quantized linear inputs</h4>", table],
        title=f"Activation outliers on {rep.model}, without and with a prefix",
        caption=(
            f"max |x| of each block's output at the first {P} text positions (mean over {rep.n} text(s)); the prefix "
            f"({rep.prefix_method}) sits before the text and stays in full precision. Hover a cell for the ratio to the median "
            "and the top dims."
        ),
        kind="outliers",
        readout=True,
    )
