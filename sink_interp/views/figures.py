"""Figures drawn as inline SVG: layer x head maps, massive activations, key manifold, effects, training curves.

They take plain arrays / DataFrames, so they work with any result object;
:func:`sink_interp.views.view_for` adapts the library's report classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._internal import files
from ._page import View, concat, esc, html_table
from ._svg import (
    BLUES,
    DIVERGING,
    HEAT,
    OTHER_COLOR,
    SINK_COLOR,
    bars_svg,
    fmt,
    heatmap_svg,
    lines_svg,
    scatter_svg,
)


def as_array(x: Any, name: str, ndim: int | None = None) -> np.ndarray:
    """numpy float array from numpy / torch / pandas / lists, with a shape check naming ``name``."""
    if isinstance(x, (pd.DataFrame, pd.Series)):
        x = x.to_numpy()
    elif hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().float().cpu().numpy()
    try:
        a = np.asarray(x, dtype=float)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a numeric array, got {type(x).__name__}: {e}") from None
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    return a


def _labels(values: Sequence[Any] | None, n: int, name: str) -> list[Any]:
    if values is None:
        return list(range(n))
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries but the data has {n}")
    return values


# --------------------------------------------------------------------------- layer x head map
def head_heatmap(
    values: Any,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    value_name: str = "mean α₁",
    extra: Mapping[str, Any] | None = None,
    vmin: float | None = 0.0,
    vmax: float | None = None,
    title: str | None = None,
    caption: str | None = None,
    highlight: Sequence[tuple[int, int]] = (),
    palette: Sequence[str] | None = None,
) -> View:
    """Layer x head heat map (rows = layers, columns = heads) with every value on hover.

    Args:
        values: ``[layers, heads]`` array (numpy, torch, or a DataFrame indexed by layer).
        layers: row labels (default ``0..n-1``; a DataFrame's index).
        heads: column labels (default ``0..n-1``; a DataFrame's columns).
        value_name: what a cell shows (legend and hover text).
        extra: more ``[layers, heads]`` arrays shown on hover, e.g. ``{"sink rate %": rates}``.
        vmin: bottom of the colour range (default 0).
        vmax: top of the colour range (default: the largest value).
        highlight: ``(layer, head)`` pairs to outline.
        palette: colours from low to high (default blues; ``DIVERGING`` for signed values).

    Example:
        >>> import numpy as np
        >>> v = head_heatmap(np.array([[0.9, 0.1], [0.5, 0.2]]), extra={"sink rate %": [[100, 0], [60, 0]]})
        >>> v._repr_html_().count('class="si-cell"')
        4
    """
    if isinstance(values, pd.DataFrame):
        layers = list(values.index) if layers is None else layers
        heads = list(values.columns) if heads is None else heads
    v = as_array(values, "values", 2)
    L, H = v.shape
    layers = _labels(layers, L, "layers")
    heads = _labels(heads, H, "heads")
    extras = {k: as_array(a, f"extra[{k!r}]", 2) for k, a in (extra or {}).items()}
    for k, a in extras.items():
        if a.shape != v.shape:
            raise ValueError(f"extra[{k!r}] has shape {a.shape}, values has {v.shape}; they must match")
    tips, attrs = [], []
    for i in range(L):
        trow, arow = [], []
        for j in range(H):
            t = f"layer {layers[i]}, head {heads[j]}: {value_name} = {fmt(v[i, j])}"
            for k, a in extras.items():
                t += f"; {k} = {fmt(a[i, j])}"
            trow.append(t)
            arow.append({"data-layer": layers[i], "data-head": heads[j]})
        tips.append(trow)
        attrs.append(arow)
    svg = heatmap_svg(
        v,
        layers,
        heads,
        xlabel="head",
        ylabel="layer",
        value_label=value_name,
        tips=tips,
        vmin=vmin,
        vmax=vmax,
        palette=BLUES if palette is None else palette,
        cell_attrs=attrs,
        row_every=1 if L <= 40 else 2,
    )
    if highlight:
        # outline chosen heads: append rects before </svg> using the same geometry as heatmap_svg
        svg = _outline_cells(svg, [(layers.index(l), heads.index(h)) for l, h in highlight if l in layers and h in heads])
    return View(
        [svg],
        title=title or f"{value_name} for every layer and head",
        caption=caption
        or f"Each cell is one attention head (row = layer, column = head); darker = higher {value_name}. Hover a cell for its values.",
        kind="head-heatmap",
        readout=True,
        meta={"shape": (L, H)},
    )


def patch_heatmap(
    values: Any,
    estimate: Any = None,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    value_name: str = "normalised effect",
    extra: Mapping[str, Any] | None = None,
    title: str | None = None,
    caption: str | None = None,
) -> View:
    """Layer x head map of patching effects (blue below 0, red above, white 0), with the attribution
    estimate side by side on the same colour range when given.

    Example:
        >>> import numpy as np
        >>> v = patch_heatmap(np.array([[0.9, -0.1], [0.5, 0.0]]), np.array([[0.7, 0.0], [0.6, 0.1]]))
        >>> v._repr_html_().count('class="si-cell"')
        8
    """
    v = as_array(values, "values", 2)
    parts = [v] if estimate is None else [v, as_array(estimate, "estimate", 2)]
    finite = np.concatenate([p[np.isfinite(p)] for p in parts])
    m = float(np.abs(finite).max()) if finite.size else 1.0
    m = m if m > 0 else 1.0
    names = ["exact"] if estimate is None else ["exact", "attribution"]
    views = [
        head_heatmap(
            p,
            layers=layers,
            heads=heads,
            value_name=value_name if estimate is None else f"{value_name} ({nm})",
            extra=extra,
            vmin=-m,
            vmax=m,
            palette=DIVERGING,
            title=title if estimate is None else f"{nm}: {title or value_name}",
            caption=caption if estimate is None else None,
        )
        for p, nm in zip(parts, names)
    ]
    if estimate is None:
        return views[0]
    out = concat(*views, title=title or f"{value_name}: exact and attribution", caption=caption)
    return out


def _outline_cells(svg: str, cells: Sequence[tuple[int, int]]) -> str:
    import re

    add = []
    for i, j in cells:
        m = re.search(
            rf'<rect class="si-cell" x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)"[^>]*data-row="{i}" data-col="{j}"',
            svg,
        )
        if m:
            add.append(
                f'<rect x="{m.group(1)}" y="{m.group(2)}" width="{m.group(3)}" height="{m.group(4)}" fill="none" '
                f'stroke="{SINK_COLOR}" stroke-width="2" pointer-events="none"/>'
            )
    return svg.replace("</svg>", "".join(add) + "</svg>")


# --------------------------------------------------------------------------- massive activations
def massive_activation_view(
    dim_max: Any,
    token_max: Any | None = None,
    *,
    layers: Sequence[int] | None = None,
    tokens: Sequence[str] | None = None,
    median: Any | None = None,
    top: int = 12,
    threshold: float = 100.0,
    ratio: float = 1000.0,
    stage: str = "residual stream after each layer",
    token_value_name: str = "max |x|",
    title: str | None = None,
    caption: str | None = None,
) -> View:
    """Where the residual stream has massive activations: layer x top dims, and layer x token.

    Args:
        dim_max: ``[layers, d_model]`` largest ``|x|`` at each (layer, dim), over tokens and samples.
        token_max: ``[layers, T]`` largest ``|x|`` over dims at each (layer, token position), optional.
        layers: layer labels (default ``0..L-1``).
        tokens: the ``T`` token strings for the token panel's axis.
        median: ``[layers]`` median ``|x|`` (for the "x times the median" in the hover text).
        top: how many dims (ranked by their largest value over layers) to show.
        threshold: the Sun et al. (2024) criterion's size, ``|x| > threshold``.
        ratio: and its ratio, ``|x| >= ratio`` x the median.
        stage: where the values were read (for the caption).
        token_value_name: what ``token_max`` holds when it is not the max ``|x|`` (e.g. ``"mean ‖h‖"``);
            the token panel then gets its own colour scale.

    Example:
        >>> import numpy as np
        >>> d = np.ones((3, 16)); d[2, 5] = 900.0
        >>> v = massive_activation_view(d, np.ones((3, 4)), median=np.ones(3), top=4)
        >>> 'data-dim="5"' in v._repr_html_()
        True
    """
    dm = np.abs(as_array(dim_max, "dim_max", 2))
    L, D = dm.shape
    layers = _labels(layers, L, "layers")
    med = None if median is None else as_array(median, "median", 1)
    if med is not None and med.shape[0] != L:
        raise ValueError(f"median has {med.shape[0]} entries but dim_max has {L} layers")
    top = max(1, min(int(top), D))
    order = np.argsort(-np.nanmax(dm, axis=0), kind="stable")[:top]
    sub = dm[:, order]

    def tip(i: int, val: float, where: str, name: str = "max |x|") -> str:
        t = f"layer {layers[i]}, {where}: {name} = {fmt(val)}"
        if med is not None and med[i] > 0 and name == "max |x|":
            t += f" = {fmt(val / med[i])}× median"
        return t

    tips = [[tip(i, sub[i, j], f"dim {order[j]}") for j in range(top)] for i in range(L)]
    attrs = [[{"data-layer": layers[i], "data-dim": int(order[j])} for j in range(top)] for i in range(L)]
    lo = max(float(np.nanmin(dm[dm > 0])) if (dm > 0).any() else 1e-3, 1e-3)
    hi = float(np.nanmax(dm)) if dm.size else 1.0

    def panel(values: np.ndarray, cols: list[str], xlabel: str, value_label: str, tips: Any, lims: tuple, **kw: Any) -> str:
        """One of the two panels: layers down, a log colour scale from ``lims``, values in the hover text only."""
        return heatmap_svg(
            values,
            layers,
            cols,
            xlabel=xlabel,
            ylabel="layer",
            value_label=value_label,
            tips=tips,
            vmin=lims[0],
            vmax=lims[1],
            log=True,
            palette=HEAT,
            show_values=False,
            **kw,
        )

    cell_w = max(16.0, min(36.0, 360.0 / top))
    cols = [f"{d}" for d in order]
    panel1 = panel(sub, cols, "hidden dimension (top by max |x|)", "max |x|", tips, (lo, hi), cell_attrs=attrs, cell_w=cell_w)
    parts = ['<div class="si-row">', f'<div class="si-panel"><h4>by dimension</h4>{panel1}</div>']
    if token_max is not None:
        tm = np.abs(as_array(token_max, "token_max", 2))
        if tm.shape[0] != L:
            raise ValueError(f"token_max has {tm.shape[0]} layers but dim_max has {L}")
        T = tm.shape[1]
        toks = list(tokens) if tokens is not None else [""] * T
        if len(toks) != T:
            raise ValueError(f"tokens has {len(toks)} entries but token_max has {T} positions")
        col_labels = [f"{p} {t!s}".rstrip() if tokens is not None else str(p) for p, t in enumerate(toks)]
        ttips = [
            [
                tip(i, tm[i, p], f"token {p} {toks[p]!r}" if tokens is not None else f"position {p}", token_value_name)
                for p in range(T)
            ]
            for i in range(L)
        ]
        same = token_value_name == "max |x|"
        tpos = tm[tm > 0]
        tlo, thi = (lo, hi) if same else ((float(tpos.min()), float(tpos.max())) if tpos.size else (1e-3, 1.0))
        tattrs = [[{"data-layer": layers[i], "data-pos": p} for p in range(T)] for i in range(L)]
        panel2 = panel(
            tm,
            col_labels,
            "token position",
            token_value_name,
            ttips,
            (tlo, thi),
            cell_attrs=tattrs,
            cell_w=max(9.0, min(24.0, 640.0 / T)),
            rotate_cols=True,
            col_every=1 if T <= 80 else 2,
        )
        parts.append(f'<div class="si-panel"><h4>by token</h4>{panel2}</div>')
    parts.append("</div>")
    # the largest entries, as a table
    flat = np.argsort(-dm, axis=None)[:5]
    rows = []
    for f in flat:
        i, d = np.unravel_index(f, dm.shape)
        r = {"layer": layers[i], "dim": int(d), "max |x|": fmt(dm[i, d])}
        if med is not None:
            r["× median"] = fmt(dm[i, d] / med[i]) if med[i] > 0 else "n/a"
            r["massive"] = bool(dm[i, d] > threshold and (med[i] <= 0 or dm[i, d] / med[i] >= ratio))
        rows.append(r)
    parts.append('<p class="si-note">Largest values:</p>' + html_table(rows))
    return View(
        parts,
        title=title or "Massive activations in the residual stream",
        caption=caption
        or (
            f"Largest |x| in the {stage}, by hidden dimension (top {top} dims) and by token, "
            f"log colour scale; massive = |x| > {threshold:g} and ~{ratio:g}× the median |x| (Sun et al. 2024)."
        ),
        kind="massive",
        readout=True,
    )


# --------------------------------------------------------------------------- key manifold
def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project rows of ``x`` on their first two principal components; returns (coords [N, 2], explained ratio [2]).

    Example:
        >>> import numpy as np
        >>> xy, r = pca_2d(np.array([[0., 0, 0], [2, 0, 0], [4, 0, 1e-9]]))
        >>> round(float(r[0]), 3)
        1.0
    """
    x = np.asarray(x, dtype=np.float64)
    xc = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    var = s**2
    total = var.sum() or 1.0
    k = min(2, vt.shape[0])
    coords = xc @ vt[:k].T
    if k < 2:
        coords = np.concatenate([coords, np.zeros((coords.shape[0], 2 - k))], axis=1)
    ratio = np.zeros(2)
    ratio[:k] = var[:k] / total
    # fix the sign so that the sink side is stable run to run: largest |loading| positive
    for c in range(k):
        if vt[c, np.argmax(np.abs(vt[c]))] < 0:
            coords[:, c] *= -1
    return coords, ratio


def key_manifold_view(
    keys: Any,
    is_sink: Any,
    *,
    labels: Sequence[str] | None = None,
    head: str | None = None,
    names: tuple[str, str] = ("other tokens", "sink token"),
    projected: bool = False,
    max_points: int = 2500,
    seed: int = 0,
    title: str | None = None,
    caption: str | None = None,
) -> View:
    """Keys projected on their first two principal components, sink-token keys in red.

    Args:
        keys: ``[N, d_head]`` key vectors (e.g. ``hook_rot_k`` of one KV head, all samples and positions).
        is_sink: ``[N]`` booleans, True for keys of the sink token(s).
        labels: ``[N]`` hover text per point (e.g. ``"sample 3, pos 0 '<bos>'"``).
        head: which head the keys belong to, for the title.
        names: legend names of the two groups (``is_sink`` False, True).
        projected: ``keys`` are already ``[N, 2]`` PCA coordinates (drawn as given, no PCA here).
        max_points: other-token points are subsampled to this many (sinks are all kept).

    Example:
        >>> import numpy as np
        >>> k = np.random.default_rng(0).normal(size=(50, 8)); k[:5] += 10
        >>> v = key_manifold_view(k, np.arange(50) < 5)
        >>> v._repr_html_().count('data-group="sink token"')
        5
    """
    k = as_array(keys, "keys", 2)
    s = np.asarray(as_array(is_sink, "is_sink", 1), dtype=bool)
    if s.shape[0] != k.shape[0]:
        raise ValueError(f"is_sink has {s.shape[0]} entries but keys has {k.shape[0]} rows")
    if projected:
        if k.shape[1] < 2:
            raise ValueError(f"projected keys must be [N, 2] coordinates, got shape {k.shape}")
        coords, ratio = k[:, :2], None
    else:
        if k.shape[0] < 3:
            raise ValueError(f"keys needs at least 3 rows for a PCA, got {k.shape[0]}")
        coords, ratio = pca_2d(k)  # PCA on all keys, then subsample for drawing
    labels = _labels(labels, k.shape[0], "labels") if labels is not None else [f"key {i}" for i in range(k.shape[0])]
    idx = np.arange(k.shape[0])
    others = idx[~s]
    if others.size > max_points:
        others = np.sort(np.random.default_rng(seed).choice(others, max_points, replace=False))
    keep = np.concatenate([others, idx[s]])
    norms = np.linalg.norm(k, axis=1)
    groups = [1 if s[i] else 0 for i in keep]
    tips = [
        f"{labels[i]}: PC1 {fmt(coords[i, 0])}, PC2 {fmt(coords[i, 1])}" + ("" if projected else f", ‖k‖ {fmt(norms[i])}")
        for i in keep
    ]
    svg = scatter_svg(
        coords[keep, 0],
        coords[keep, 1],
        groups,
        list(names),
        [OTHER_COLOR, SINK_COLOR],
        tips,
        xlabel="PC1" if ratio is None else f"PC1 ({100 * ratio[0]:.0f}% of variance)",
        ylabel="PC2" if ratio is None else f"PC2 ({100 * ratio[1]:.0f}% of variance)",
        radius=[4.5 if s[i] else 2.8 for i in keep],
    )
    rows = []
    mean_other = k[~s].mean(axis=0) if (~s).any() else None
    for name, m in ((names[1], s), (names[0], ~s)):
        if m.any():
            r = {"keys": name, "n": int(m.sum()), "mean PC1": float(coords[m, 0].mean()), "mean PC2": float(coords[m, 1].mean())}
            if not projected:
                r["mean ‖k‖"] = float(norms[m].mean())
            if mean_other is not None and not projected:
                c = k[m] @ mean_other / (norms[m] * (np.linalg.norm(mean_other) or 1.0) + 1e-12)
                r["mean cos(k, mean other key)"] = float(c.mean())
            rows.append(r)
    note = "" if others.size == (~s).sum() else f'<p class="si-note">{others.size} of {(~s).sum()} other-token keys drawn.</p>'
    return View(
        [
            svg,
            html_table(rows, fmt={"mean ‖k‖": ".2f", "mean PC1": ".2f", "mean PC2": ".2f", "mean cos(k, mean other key)": ".3f"}),
            note,
        ],
        title=title or (f"Key manifold of {head}" if head else "Key manifold"),
        caption=caption
        or "Keys projected on their two main principal components: if the sink token's keys (red) sit apart from "
        "all other keys (blue), the sink lives on its own low-dimensional manifold.",
        kind="manifold",
        readout=True,
    )


# --------------------------------------------------------------------------- intervention effects
def _to_frame(table: Any, label: str = "", must: str = "table must be a DataFrame, a list of dicts or a dict") -> pd.DataFrame:
    """A DataFrame from a DataFrame, a list of dicts or (given a ``label``) ``{label: value or dict}``; ``must`` is the
    error's rule for anything else."""
    if isinstance(table, pd.DataFrame):
        return table.reset_index() if label not in table.columns and table.index.name == label else table
    if isinstance(table, Mapping) and label:
        rows = []
        for k, v in table.items():
            rows.append({label: k, **(dict(v) if isinstance(v, Mapping) else {"value": v})})
        return pd.DataFrame(rows)
    if isinstance(table, (list, tuple)):
        return pd.DataFrame(list(table))
    raise ValueError(f"{must}, got {type(table).__name__}")


def effect_bars(
    table: Any,
    *,
    label: str = "intervention",
    values: Sequence[str] | None = None,
    units: Mapping[str, str] | None = None,
    title: str | None = None,
    caption: str | None = None,
) -> View:
    """The intervention effect table as horizontal bars: one panel per value column, one bar per row.

    Args:
        table: DataFrame / list of dicts / ``{label: value or dict}``.
        label: the column naming each row (e.g. ``"intervention"``).
        values: numeric columns to draw (default: all numeric columns but ``label``).

    Example:
        >>> v = effect_bars([{"intervention": "none", "delta_loss": 0.0}, {"intervention": "zero sink V", "delta_loss": 0.8}])
        >>> v._repr_html_().count('class="si-bar"')
        2
    """
    df = _to_frame(table, label)
    if label not in df.columns:
        raise ValueError(f"label column {label!r} not in the table; columns: {list(df.columns)}")
    if values is None:
        values = [
            c for c in df.columns if c != label and pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
        ]
    missing = [c for c in values if c not in df.columns]
    if missing:
        raise ValueError(f"values {missing} are not columns of the table; columns: {list(df.columns)}")
    if not values:
        raise ValueError(f"the table has no numeric column to draw; columns: {list(df.columns)}")
    labels = [str(x) for x in df[label]]
    units = dict(units or {})
    panels = []
    for c in values:
        vals = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float)
        name = f"{c} ({units[c]})" if c in units else str(c)
        tips = [f"{lab}: {name} = {fmt(v, 5)}" for lab, v in zip(labels, vals)]
        panels.append(f'<div class="si-panel"><h4>{esc(name)}</h4>{bars_svg(labels, vals, value_label=name, tips=tips)}</div>')
    return View(
        ['<div class="si-row">', *panels, "</div>"],
        title=title or "Intervention effects",
        caption=caption or "One bar per intervention: how far each one moves each measure (right = increase, left = decrease).",
        kind="effects",
        readout=True,
    )


# --------------------------------------------------------------------------- training curves
def _metrics_frame(metrics: Any) -> pd.DataFrame:
    """A metrics table from a ``metrics.jsonl`` path (old key names read as the new ones), a DataFrame or a list of dicts."""
    if not isinstance(metrics, (str, Path)):
        return _to_frame(metrics, must="metrics must be a path to metrics.jsonl, a DataFrame or a list of dicts")
    p = Path(metrics).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"metrics file {str(metrics)!r} does not exist (expected a metrics.jsonl written by training)")
    return pd.DataFrame(files.read_metrics_lines(p, fix="remove the damaged lines"))


def training_curves(
    metrics: Any,
    *,
    x: str = "step",
    y: Sequence[str] = ("val_loss", "sink_rate_1"),
    run: str | None = None,
    log_y: Sequence[str] = (),
    title: str | None = None,
    caption: str | None = None,
) -> View:
    """Training curves: one panel per metric in ``y`` against ``x``, one line per run.

    Args:
        metrics: path to ``metrics.jsonl``, a DataFrame, a list of dicts, or ``{run name: any of these}``.
        x: the step column.
        y: metric columns (those absent are skipped; at least one must exist).
        run: a column that separates runs (default: one run, or the dict keys).
        log_y: metrics drawn on a log axis.

    Example:
        >>> rows = [{"step": s, "val_loss": 5 - s / 100, "sink_rate_1": s / 10} for s in range(0, 300, 50)]
        >>> training_curves(rows).kind
        'training'
    """
    if isinstance(metrics, Mapping):
        frames = []
        for name, m in metrics.items():
            df = _metrics_frame(m).copy()
            df["run"] = str(name)
            frames.append(df)
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        run = "run"
    else:
        df = _metrics_frame(metrics)
    if x not in df.columns:
        raise ValueError(f"x={x!r} is not a column of the metrics; columns: {list(df.columns)}")
    if isinstance(y, str):
        y = [y]
    present = [c for c in y if c in df.columns]
    if not present:
        raise ValueError(f"none of y={list(y)} is a column of the metrics; columns: {list(df.columns)}")
    if run is not None and run not in df.columns:
        raise ValueError(f"run={run!r} is not a column of the metrics; columns: {list(df.columns)}")
    panels = []
    for c in present:
        series = []
        groups = [(None, df)] if run is None else list(df.groupby(run, sort=False))
        for name, g in groups:
            g = g[[x, c]].apply(pd.to_numeric, errors="coerce").dropna().sort_values(x)
            series.append((str(name) if name is not None else c, g[x].to_numpy(), g[c].to_numpy()))
        svg = lines_svg(series, xlabel=x, ylabel=c, ylog=c in log_y)
        panels.append(f'<div class="si-panel"><h4>{esc(c)}</h4>{svg}</div>')
    skipped = [c for c in y if c not in df.columns]
    note = f'<p class="si-note">Not in the metrics: {esc(", ".join(skipped))}.</p>' if skipped else ""
    return View(
        ['<div class="si-row">', *panels, "</div>", note],
        title=title or "Training curves",
        caption=caption or f"Each panel is one metric logged during training, against {x}; hover a point for its value.",
        kind="training",
        readout=True,
    )


# --------------------------------------------------------------------------- trace chain
#: the numbers shown in each link's box (all others are in its "all numbers" list)
TRACE_HEADLINES: dict[str, tuple[str, ...]] = {
    "spike": ("pos", "top_value", "ratio", "h_norm_ratio"),
    "writer": ("writer_layer", "writer_component", "writer_share"),
    "gated_mlp": ("layer", "top_share", "eig_ratio"),
    "norm": ("scale_ratio", "cos_sink", "share_sink"),
    "wk": ("k_sink_cos", "share_spike_dims", "n_dims_90"),
    "rope": ("cos_sink", "cos_other", "alpha"),
    "manifold": ("angle", "sink_spread", "value_norm_ratio"),
}
TRACE_TITLES: dict[str, str] = {
    "spike": "massive activation at the sink",
    "writer": "who writes the spike",
    "gated_mlp": "gated MLP as a quadratic form",
    "norm": "norm: spike → near-constant sparse vector",
    "wk": "gain and W_K: → sink key",
    "rope": "RoPE: q·k_sink after rotation",
    "manifold": "sink key on its own manifold",
}


def trace_chain_view(
    links: Sequence[tuple[str, Mapping[str, Any], Mapping[str, str]]],
    skipped: Mapping[str, str] | None = None,
    *,
    headlines: Mapping[str, Sequence[str]] | None = None,
    title: str | None = None,
    caption: str | None = None,
) -> View:
    """The mechanism as a chain of boxes, spike → norm → W_K → RoPE → sink key, each with its key numbers.

    Args:
        links: ``(name, {number: value}, {number: how to read it})`` per link, in chain order.
        skipped: ``{link name: why it was not traced}``.
        headlines: numbers to show in each box (default :data:`TRACE_HEADLINES`; else the first three).

    Example:
        >>> v = trace_chain_view([("spike", {"pos": 0, "ratio": 1200.0}, {"ratio": "medians"}), ("norm", {"scale_ratio": 30.0}, {})])
        >>> v._repr_html_().count('class="si-link"')
        2
    """
    heads = dict(TRACE_HEADLINES, **(headlines or {}))
    boxes = []
    for i, (name, numbers, docs) in enumerate(links):
        show = [k for k in heads.get(name, ()) if k in numbers] or list(numbers)[:3]

        def line(k: str, numbers: Mapping[str, Any] = numbers, docs: Mapping[str, str] = docs) -> str:
            v = numbers[k]
            txt = fmt(v, 4) if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) else str(v)
            return f'<div title="{esc(docs.get(k, ""))}"><span class="si-note">{esc(k)}</span> <b>{esc(txt)}</b></div>'

        rest = "".join(line(k) for k in numbers if k not in show)
        more = f'<details><summary class="si-note">all numbers</summary>{rest}</details>' if rest else ""
        arrow = '<div class="si-arrow">→</div>' if i < len(links) - 1 else ""
        boxes.append(
            f'<div class="si-link" data-link="{esc(name)}"><h4>{esc(name)}</h4>'
            f'<p class="si-note">{esc(TRACE_TITLES.get(name, ""))}</p>{"".join(line(k) for k in show)}{more}</div>{arrow}'
        )
    skip = ""
    if skipped:
        skip = '<p class="si-note">Not traced: ' + "; ".join(f"{esc(k)} ({esc(v)})" for k, v in skipped.items()) + "</p>"
    return View(
        ['<div class="si-chain">', *boxes, "</div>", skip],
        title=title or "Trace: from the massive activation to the sink key",
        caption=caption or "Each box is one link of the mechanism with its key numbers (hover a number for how to read it).",
        kind="trace",
    )
