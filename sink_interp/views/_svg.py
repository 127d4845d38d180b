"""Small inline-SVG chart primitives (no JavaScript library, no CDN).

Every mark that carries a value (``.si-cell``, ``.si-bar``, ``.si-pt``) holds
its text in an SVG ``<title>``: the browser's own tooltip, and the page script
copies it into the figure's read-out line on hover, so values are readable
with or without JavaScript.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._page import esc

# sequential palettes (light -> dark), interpolated in RGB
BLUES = ["#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c", "#08306b"]
#: diverging, blue (negative) - white (0) - red (positive); used with a colour range symmetric around 0
DIVERGING = ["#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7", "#fddbc7", "#f4a582", "#d6604d", "#b2182b"]
HEAT = ["#ffffcc", "#ffeda0", "#fed976", "#feb24c", "#fd8d3c", "#fc4e2a", "#e31a1c", "#bd0026", "#800026"]
SERIES = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
SINK_COLOR = "#d62728"
OTHER_COLOR = "#1f77b4"
NAN_COLOR = "#e8e8e8"


def _hex(c: str) -> tuple[int, int, int]:
    c = c.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def color(t: float, palette: Sequence[str] = BLUES) -> str:
    """Colour for ``t`` in [0, 1] on a sequential palette (NaN -> light grey)."""
    if t is None or not math.isfinite(t):
        return NAN_COLOR
    t = min(1.0, max(0.0, float(t)))
    x = t * (len(palette) - 1)
    i = min(int(x), len(palette) - 2)
    f = x - i
    a, b = _hex(palette[i]), _hex(palette[i + 1])
    r, g, bl = (round(a[j] + (b[j] - a[j]) * f) for j in range(3))
    return f"#{r:02x}{g:02x}{bl:02x}"


def text_color(fill: str) -> str:
    r, g, b = _hex(fill)
    return "#000" if (0.299 * r + 0.587 * g + 0.114 * b) > 140 else "#fff"


def fmt(v: Any, digits: int = 3) -> str:
    """Short number: 3 significant digits, thousands without exponent up to 1e6."""
    if v is None:
        return "n/a"
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(x):
        return "n/a" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if x == 0:
        return "0"
    if 1e3 <= abs(x) < 1e6:
        return f"{x:,.0f}"
    s = f"{x:.{digits}g}"
    if "e" in s and 1 <= abs(x) < 1e3:  # 100 with 2 digits is "100", not "1e+02"
        return f"{x:.0f}"
    return s


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        return [lo]
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks = []
    v = start
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    return ticks


class Scale:
    """Linear (or log10) map from data to pixels."""

    def __init__(self, lo: float, hi: float, p0: float, p1: float, log: bool = False):
        if log:
            lo, hi = math.log10(max(lo, 1e-12)), math.log10(max(hi, 1e-12))
        if hi == lo:
            hi = lo + 1.0
        self.lo, self.hi, self.p0, self.p1, self.log = lo, hi, p0, p1, log

    def __call__(self, v: float) -> float:
        if self.log:
            v = math.log10(max(float(v), 1e-12))
        return self.p0 + (float(v) - self.lo) / (self.hi - self.lo) * (self.p1 - self.p0)


def _svg(width: float, height: float, inner: str, label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{esc(label)}">{inner}</svg>'
    )


def _t(
    x: float,
    y: float,
    s: str,
    *,
    size: int = 11,
    anchor: str = "middle",
    rotate: float | None = None,
    fill: str = "#333",
    weight: str | None = None,
    cls: str | None = None,
) -> str:
    tr = f' transform="rotate({rotate:.0f} {x:.1f} {y:.1f})"' if rotate else ""
    w = f' font-weight="{weight}"' if weight else ""
    c = f' class="{cls}"' if cls else ""
    return f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{fill}"{w}{tr}{c}>{esc(s)}</text>'


def _colorbar(x: float, y: float, h: float, vmin: float, vmax: float, palette: Sequence[str], label: str, log: bool) -> str:
    n = 40
    parts = []
    for i in range(n):
        t0 = i / n
        yy = y + h - (i + 1) * h / n
        parts.append(
            f'<rect x="{x:.1f}" y="{yy:.1f}" width="12" height="{h / n + 0.6:.2f}" fill="{color(t0 + 0.5 / n, palette)}"/>'
        )
    parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="12" height="{h:.1f}" fill="none" stroke="#999" stroke-width="0.5"/>')
    sc = Scale(vmin, vmax, y + h, y, log=log)
    if log:
        lo, hi = math.floor(math.log10(max(vmin, 1e-12))), math.ceil(math.log10(max(vmax, 1e-12)))
        ticks = [10.0**e for e in range(lo, hi + 1) if vmin <= 10.0**e <= vmax]
        if len(ticks) < 2:
            ticks = sorted({vmin, *ticks, vmax})
    else:
        ticks = [t for t in nice_ticks(vmin, vmax, 4) if vmin - 1e-12 <= t <= vmax + 1e-12] or [vmin, vmax]
    for t in ticks:
        yy = sc(t)
        parts.append(f'<line x1="{x + 12:.1f}" x2="{x + 15:.1f}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#666"/>')
        parts.append(_t(x + 17, yy + 3.5, fmt(t), size=10, anchor="start"))
    parts.append(_t(x - 2, y - 6, label, size=10, anchor="start"))
    return "".join(parts)


def heatmap_svg(
    values: np.ndarray,
    row_labels: Sequence[Any],
    col_labels: Sequence[Any],
    *,
    xlabel: str,
    ylabel: str,
    value_label: str,
    tips: Sequence[Sequence[str]] | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    log: bool = False,
    palette: Sequence[str] = BLUES,
    cell_w: float | None = None,
    cell_h: float | None = None,
    show_values: bool | None = None,
    rotate_cols: bool | None = None,
    highlight_cols: Sequence[int] = (),
    cell_attrs: Sequence[Sequence[dict[str, Any]]] | None = None,
    row_every: int = 1,
    col_every: int = 1,
) -> str:
    """An SVG heat map, rows top to bottom, with axis labels, a colour bar and hover tips.

    Cells are ``<rect class="si-cell">`` with ``data-row``/``data-col``/``data-value``.
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 2:
        raise ValueError(f"heat map values must be 2-D, got shape {v.shape}")
    R, C = v.shape
    finite = v[np.isfinite(v)]
    if log:
        pos = finite[finite > 0]
        lo = float(pos.min()) if pos.size else 1.0
        hi = float(pos.max()) if pos.size else 10.0
    else:
        lo = float(finite.min()) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 1.0
    vmin = lo if vmin is None else float(vmin)
    vmax = hi if vmax is None else float(vmax)
    if vmax <= vmin:
        vmax = vmin + (1.0 if not log else vmin * 10 + 1)
    cw = cell_w or max(12.0, min(48.0, 560.0 / max(C, 1)))
    ch = cell_h or max(10.0, min(30.0, 460.0 / max(R, 1)))
    if show_values is None:
        show_values = cw >= 30 and ch >= 13
    col_text = [str(c) for c in col_labels]
    if rotate_cols is None:
        rotate_cols = max((len(s) for s in col_text), default=1) * 6.5 > cw
    row_text = [str(r) for r in row_labels]
    left = 18 + 16 + max((len(s) for s in row_text), default=1) * 6.5 + 6
    top = 10
    grid_w, grid_h = cw * C, ch * R
    col_band = (min(140.0, max((len(s[:22]) for s in col_text), default=1) * 6.0) + 8) if rotate_cols else 16
    bottom = col_band + 22
    right = max(80.0, 14 + len(str(value_label)) * 6.0 + 8)  # room for the colour bar's title
    width = left + grid_w + right
    height = top + grid_h + bottom
    scale = Scale(vmin, vmax, 0.0, 1.0, log=log)
    out: list[str] = []
    for i in range(R):
        for j in range(C):
            x = v[i, j]
            t = scale(x) if (math.isfinite(x) and (not log or x > 0)) else float("nan")
            fill = color(t, palette) if math.isfinite(t) else NAN_COLOR
            tip = tips[i][j] if tips is not None else f"{ylabel} {row_text[i]}, {xlabel} {col_text[j]}: {value_label} = {fmt(x)}"
            extra = ""
            if cell_attrs is not None:
                extra = "".join(f' {k}="{esc(val)}"' for k, val in cell_attrs[i][j].items())
            xx, yy = left + j * cw, top + i * ch
            out.append(
                f'<rect class="si-cell" x="{xx:.1f}" y="{yy:.1f}" width="{cw:.1f}" height="{ch:.1f}" fill="{fill}" '
                f'data-row="{i}" data-col="{j}" data-value="{fmt(x, 6)}"{extra}><title>{esc(tip)}</title></rect>'
            )
            if show_values and math.isfinite(x):
                out.append(
                    _t(xx + cw / 2, yy + ch / 2 + 3.5, fmt(x, 2), size=9, fill=text_color(fill)).replace(
                        "<text", '<text pointer-events="none"'
                    )
                )
    for j in highlight_cols:
        if 0 <= j < C:
            out.append(
                f'<rect x="{left + j * cw:.1f}" y="{top:.1f}" width="{cw:.1f}" height="{grid_h:.1f}" fill="none" '
                f'stroke="{SINK_COLOR}" stroke-width="2" pointer-events="none" class="si-sinkcol"/>'
            )
    for i in range(0, R, max(1, row_every)):
        out.append(_t(left - 5, top + i * ch + ch / 2 + 3.5, row_text[i], size=10, anchor="end"))
    for j in range(0, C, max(1, col_every)):
        x = left + j * cw + cw / 2
        if rotate_cols and cw < 14:  # dense axis: vertical labels, one per column
            out.append(_t(x + 3.5, top + grid_h + 6, col_text[j][:22], size=min(10, int(cw)), anchor="end", rotate=-90))
        elif rotate_cols:
            out.append(_t(x + 3, top + grid_h + 8, col_text[j][:22], size=10, anchor="end", rotate=-60))
        else:
            out.append(_t(x, top + grid_h + 13, col_text[j], size=10))
    out.append(_t(left + grid_w / 2, height - 6, xlabel, size=12, weight="600"))
    out.append(_t(14, top + grid_h / 2, ylabel, size=12, rotate=-90, weight="600"))
    out.append(_colorbar(left + grid_w + 14, top + 14, max(60.0, min(grid_h - 14, 240.0)), vmin, vmax, palette, value_label, log))
    return _svg(width, height, "".join(out), f"heat map of {value_label} by {ylabel} and {xlabel}")


def scatter_svg(
    x: np.ndarray,
    y: np.ndarray,
    groups: Sequence[int],
    group_names: Sequence[str],
    group_colors: Sequence[str],
    tips: Sequence[str],
    *,
    xlabel: str,
    ylabel: str,
    width: float = 560,
    height: float = 400,
    radius: Sequence[float] | None = None,
) -> str:
    """Scatter plot with a legend; points are ``<circle class="si-pt">`` (later groups drawn on top)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    legend_w = 40 + 6.5 * (max((len(n) for n in group_names), default=8) + 8)  # "name (count)"
    left, right, top, bottom = 58, legend_w, 12, 44
    width = max(width, 400 + legend_w)
    pw, ph = width - left - right, height - top - bottom

    def pad(lo: float, hi: float) -> tuple[float, float]:
        span = (hi - lo) or 1.0
        return lo - 0.05 * span, hi + 0.05 * span

    x0, x1 = pad(float(np.nanmin(x)), float(np.nanmax(x))) if x.size else (0.0, 1.0)
    y0, y1 = pad(float(np.nanmin(y)), float(np.nanmax(y))) if y.size else (0.0, 1.0)
    sx, sy = Scale(x0, x1, left, left + pw), Scale(y0, y1, top + ph, top)
    out = [_axes(sx, sy, left, top, pw, ph, x0, x1, y0, y1, xlabel, ylabel, height)]
    order = np.argsort(np.asarray(groups), kind="stable")
    for i in order:
        g = int(groups[i])
        r = radius[i] if radius is not None else 3.2
        out.append(
            f'<circle class="si-pt" data-group="{esc(group_names[g])}" cx="{sx(x[i]):.1f}" cy="{sy(y[i]):.1f}" r="{r:.1f}" '
            f'fill="{group_colors[g]}" fill-opacity="0.75" stroke="#fff" stroke-width="0.4">'
            f"<title>{esc(tips[i])}</title></circle>"
        )
    counts = np.bincount(np.asarray(groups, dtype=int), minlength=len(group_names))
    for g, name in enumerate(group_names):
        ly = top + 14 + 18 * g
        out.append(f'<circle cx="{left + pw + 18:.1f}" cy="{ly - 4:.1f}" r="5" fill="{group_colors[g]}"/>')
        out.append(_t(left + pw + 28, ly, f"{name} ({counts[g]})", size=11, anchor="start"))
    return _svg(width, height, "".join(out), f"scatter of {ylabel} against {xlabel}")


def _axes(
    sx: Scale,
    sy: Scale,
    left: float,
    top: float,
    pw: float,
    ph: float,
    x0: float,
    x1: float,
    y0: float,
    y1: float,
    xlabel: str,
    ylabel: str,
    height: float,
    ylog: bool = False,
) -> str:
    out = [f'<rect x="{left}" y="{top}" width="{pw:.1f}" height="{ph:.1f}" fill="#fcfcfd" stroke="#bbb" stroke-width="0.8"/>']
    for t in nice_ticks(x0, x1, 5):
        if x0 <= t <= x1:
            xx = sx(t)
            out.append(f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{top}" y2="{top + ph:.1f}" stroke="#eee"/>')
            out.append(_t(xx, top + ph + 14, fmt(t), size=10))
    yt = nice_ticks(y0, y1, 5) if not ylog else [10.0**e for e in range(math.floor(y0), math.ceil(y1) + 1)]
    for t in yt:
        tv = math.log10(t) if ylog else t
        if y0 <= tv <= y1:
            yy = sy(t)
            out.append(f'<line x1="{left}" x2="{left + pw:.1f}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eee"/>')
            out.append(_t(left - 5, yy + 3.5, fmt(t), size=10, anchor="end"))
    out.append(_t(left + pw / 2, height - 8, xlabel, size=12, weight="600"))
    out.append(_t(14, top + ph / 2, ylabel, size=12, rotate=-90, weight="600"))
    return "".join(out)


def _clip(text: str, n: int) -> str:
    """``text`` cut to ``n`` characters with an ellipsis (full text stays in the hover titles)."""
    return text if len(text) <= n else text[: n - 1] + "…"


def bars_svg(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    value_label: str,
    tips: Sequence[str] | None = None,
    width: float = 420,
    bar_h: float = 18,
    colors: Sequence[str] | None = None,
    label_width: float | None = None,
    domain: tuple[float, float] | None = None,
) -> str:
    """Horizontal bars from a zero line (negative values go left), value printed at the bar end."""
    vals = np.asarray(values, dtype=float)
    n = len(labels)
    lw = label_width if label_width is not None else min(220.0, 12 + max((len(str(s)) for s in labels), default=4) * 6.6)
    finite = vals[np.isfinite(vals)]
    # room for the value printed left of a negative bar, so it never runs into the labels
    left, right, top = lw + (52 if finite.size and finite.min() < 0 else 0), 56, 8
    pw = width - left - right
    lo = min(0.0, float(finite.min())) if finite.size else 0.0
    hi = max(0.0, float(finite.max())) if finite.size else 1.0
    if domain is not None:
        lo, hi = min(lo, domain[0]), max(hi, domain[1])
    if hi == lo:
        hi = lo + 1.0
    sx = Scale(lo, hi, left, left + pw)
    height = top + n * (bar_h + 4) + 40
    out = []
    for t in nice_ticks(lo, hi, 4):
        if lo <= t <= hi:
            xx = sx(t)
            out.append(f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{top}" y2="{top + n * (bar_h + 4):.1f}" stroke="#eee"/>')
            out.append(_t(xx, top + n * (bar_h + 4) + 13, fmt(t), size=10))
    x0 = sx(0.0)
    for i, (lab, v) in enumerate(zip(labels, vals)):
        y = top + i * (bar_h + 4)
        tip = tips[i] if tips is not None else f"{lab}: {value_label} = {fmt(v)}"
        out.append(_t(lw - 6, y + bar_h / 2 + 4, _clip(str(lab), 34), size=11, anchor="end"))
        if math.isfinite(v):
            xa, xb = sorted((x0, sx(v)))
            c = colors[i] if colors is not None else ("#4c78a8" if v >= 0 else "#e45756")
            out.append(
                f'<rect class="si-bar" x="{xa:.1f}" y="{y:.1f}" width="{max(xb - xa, 0.8):.1f}" height="{bar_h:.1f}" fill="{c}" '
                f'data-value="{fmt(v, 6)}"><title>{esc(tip)}</title></rect>'
            )
            tx, anchor = (xb + 3, "start") if v >= 0 else (xa - 3, "end")
            out.append(_t(tx, y + bar_h / 2 + 4, fmt(v), size=10, anchor=anchor))
        else:
            out.append(_t(x0 + 4, y + bar_h / 2 + 4, "n/a", size=10, anchor="start", fill="#999"))
    out.append(f'<line x1="{x0:.1f}" x2="{x0:.1f}" y1="{top - 2}" y2="{top + n * (bar_h + 4):.1f}" stroke="#555"/>')
    out.append(_t(left + pw / 2, height - 6, value_label, size=12, weight="600"))
    return _svg(width, height, "".join(out), f"bar chart of {value_label}")


def lines_svg(
    series: Sequence[tuple[str, np.ndarray, np.ndarray]],
    *,
    xlabel: str,
    ylabel: str,
    width: float = 460,
    height: float = 280,
    ylog: bool = False,
) -> str:
    """Line chart of several ``(name, x, y)`` series, points hoverable, legend on the right if > 1 series."""
    xs = [np.asarray(s[1], dtype=float) for s in series]
    ys = [np.asarray(s[2], dtype=float) for s in series]
    allx = np.concatenate(xs) if xs else np.zeros(1)
    ally = np.concatenate(ys) if ys else np.zeros(1)
    ok = np.isfinite(allx) & np.isfinite(ally)
    if ylog:
        ok &= ally > 0
    allx, ally = allx[ok], ally[ok]
    multi = len(series) > 1
    legend_w = min(300.0, 40 + 6.4 * max((len(_clip(str(s[0]), 44)) for s in series), default=4)) if multi else 16.0
    width = width + max(0.0, legend_w - 120) if multi else width
    left, right, top, bottom = 62, legend_w, 12, 44
    pw, ph = width - left - right, height - top - bottom
    x0, x1 = (float(allx.min()), float(allx.max())) if allx.size else (0.0, 1.0)
    if x1 == x0:
        x1 = x0 + 1
    if ylog:
        y0, y1 = (math.log10(float(ally.min())), math.log10(float(ally.max()))) if ally.size else (0.0, 1.0)
        if y1 == y0:
            y1 = y0 + 1
        sy = Scale(10**y0, 10**y1, top + ph, top, log=True)
    else:
        y0, y1 = (float(ally.min()), float(ally.max())) if ally.size else (0.0, 1.0)
        span = (y1 - y0) or max(abs(y1), 1.0)
        y0, y1 = y0 - 0.05 * span, y1 + 0.05 * span
        sy = Scale(y0, y1, top + ph, top)
    sx = Scale(x0, x1, left, left + pw)
    out = [_axes(sx, sy, left, top, pw, ph, x0, x1, y0, y1, xlabel, ylabel, height, ylog=ylog)]
    for k, ((name, _, _), x, y) in enumerate(zip(series, xs, ys)):
        c = SERIES[k % len(SERIES)]
        m = np.isfinite(x) & np.isfinite(y) & ((y > 0) if ylog else True)
        pts = [(sx(a), sy(b)) for a, b in zip(x[m], y[m])]
        if len(pts) > 1:
            d = " ".join(f"{px:.1f},{py:.1f}" for px, py in pts)
            out.append(f'<polyline class="si-line" points="{d}" fill="none" stroke="{c}" stroke-width="1.8"/>')
        step = max(1, len(pts) // 200)
        for (px, py), a, b in list(zip(pts, x[m], y[m]))[::step]:
            tip = (f"{name}: " if multi else "") + f"{xlabel} {fmt(a, 6)}, {ylabel} {fmt(b, 4)}"
            out.append(f'<circle class="si-pt" cx="{px:.1f}" cy="{py:.1f}" r="2.6" fill="{c}"><title>{esc(tip)}</title></circle>')
        if multi:
            ly = top + 12 + 16 * k
            out.append(
                f'<line x1="{left + pw + 10:.1f}" x2="{left + pw + 26:.1f}" y1="{ly - 4:.1f}" y2="{ly - 4:.1f}" stroke="{c}" stroke-width="2.5"/>'
            )
            out.append(_t(left + pw + 30, ly, _clip(str(name), 44), size=11, anchor="start"))
    return _svg(width, height, "".join(out), f"line chart of {ylabel} against {xlabel}")
