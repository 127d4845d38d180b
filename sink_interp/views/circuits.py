"""A sink circuit drawn as a graph in inline SVG (offline, no JavaScript library): nodes by layer, edge width by score.

Columns are the embeddings, then one per layer (its heads from the top, its MLP at the bottom), then the metric. An edge
is a curve from its source to its destination, as wide as its ``|score|`` (relative to the largest drawn), red where
patching it raises the metric and blue where it lowers it; solid into a query or an MLP/metric input, dashed into a
key, dotted into a value. Hover an edge or a node for its numbers (an SVG ``<title>``: the browser's tooltip, copied
into the figure's read-out line).

Example:
    >>> v = circuit_graph(["emb", "A0.0", "M0", "metric"], [("emb", "A0.0", "q", 0.5, None), ("A0.0", "metric", "in", -0.2, -0.19)])
    >>> v._repr_html_().count('class="si-edge"')
    2
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ._page import View, esc
from ._svg import OTHER_COLOR, SINK_COLOR, fmt

_DASH = {"q": "", "k": "6 3", "v": "2 3", "in": ""}


def _svg(width: float, height: float, inner: str, label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{esc(label)}">{inner}</svg>'
    )


def _t(x: float, y: float, s: str, *, size: int = 11, anchor: str = "middle", fill: str = "#333") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{fill}">{esc(s)}</text>'


def _place(node: str) -> tuple[int, int]:
    """(column, row) of a node: emb column 0, layer l column l + 1 (heads by index, the MLP below), metric last."""
    if node == "emb":
        return (0, -1)
    if node == "metric":
        return (10**6, -1)
    if node.startswith("A"):
        l_, h = node[1:].split(".")
        return (int(l_) + 1, int(h))
    return (int(node[1:]) + 1, 10**5)


def circuit_graph(
    nodes: Sequence[str],
    edges: Sequence[tuple[str, str, str, float, float | None]],
    *,
    title: str | None = None,
    caption: str | None = None,
    highlight: Sequence[str] = (),
) -> View:
    """Draw ``edges`` ``(src, dst, kind, score, exact or None)`` between ``nodes`` (names ``emb``, ``A{l}.{h}``,
    ``M{l}``, ``metric``). Nodes an edge touches are drawn full size; the others as small grey dots; ``highlight``
    nodes get a red ring."""
    cols = sorted({_place(n)[0] for n in nodes})
    heads = max([_place(n)[1] for n in nodes if n.startswith("A")] or [0]) + 1
    col_x = {c: 70 + i * 34 for i, c in enumerate(cols)}
    top, row_h = 40, 22
    mlp_y = top + heads * row_h + 14
    mid_y = top + (heads * row_h) / 2

    def xy(node: str) -> tuple[float, float]:
        c, r = _place(node)
        if node.startswith("A"):
            return col_x[c], top + r * row_h
        if node.startswith("M"):
            return col_x[c], mlp_y
        return col_x[c], mid_y

    width = max(col_x.values()) + 70
    height = mlp_y + 60
    used = {e[0] for e in edges} | {e[1] for e in edges}
    big = max([abs(float(e[3])) for e in edges] or [1.0]) or 1.0
    parts: list[str] = []
    for e in sorted(edges, key=lambda e: abs(float(e[3]))):
        src, dst, kind, score, exact = e
        (x1, y1), (x2, y2) = xy(src), xy(dst)
        w = 0.6 + 7.0 * abs(float(score)) / big
        col = SINK_COLOR if float(score) > 0 else OTHER_COLOR
        cx, cy = (x1 + x2) / 2, min(y1, y2) - 12 - 0.15 * abs(x2 - x1)
        dash = f' stroke-dasharray="{_DASH.get(kind, "")}"' if _DASH.get(kind) else ""
        tip = f"{src} -> {dst} ({kind}): score {fmt(score)}" + (
            f", exact {fmt(exact)}" if exact is not None and math.isfinite(float(exact)) else ""
        )
        parts.append(
            f'<path class="si-edge" d="M{x1:.1f},{y1:.1f} Q{cx:.1f},{cy:.1f} {x2:.1f},{y2:.1f}" fill="none" stroke="{col}" '
            f'stroke-opacity="0.75" stroke-width="{w:.2f}"{dash}><title>{esc(tip)}</title></path>'
        )
    for n in nodes:
        x, y = xy(n)
        on = n in used
        r = 6.5 if on else 2.0
        fill = "#444" if n.startswith("A") else "#8a6d3b" if n.startswith("M") else "#2ca02c"
        ring = f' stroke="{SINK_COLOR}" stroke-width="2.5"' if n in highlight else ""
        parts.append(
            f'<circle class="si-node" cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{fill if on else "#ccc"}"{ring}>'
            f"<title>{esc(n)}</title></circle>"
        )
        if on:
            parts.append(_t(x, y - 9, n, size=9))
    for c in cols:
        label = "emb" if c == 0 else "metric" if c == 10**6 else f"L{c - 1}"
        parts.append(_t(col_x[c], height - 28, label, size=9, fill="#666"))
    parts.append(_t(8, mlp_y + 3, "MLP", size=9, anchor="start", fill="#666"))
    legend = "red: the edge raises the metric, blue: lowers it; solid: query/MLP/metric input, dashed: key, dotted: value"
    parts.append(_t(8, height - 8, legend, size=10, anchor="start", fill="#444"))
    svg = _svg(width, height, "".join(parts), title or "circuit")
    return View([svg], title=title or "Circuit", caption=caption, kind="circuit-graph", readout=True, meta={"edges": len(edges)})


def circuit_report_view(rep: Any, max_edges: int = 60) -> View:
    """A ``CircuitReport``: the pruned circuit as a graph (its best ``max_edges`` edges when larger, the best edges when
    no point of the curve reached ``keep``), and the faithfulness curve."""
    from .figures import training_curves

    df = rep.edges()
    chosen = df.head(min(rep.size, max_edges)) if rep.size else df.head(min(20, len(df)))
    edges = [(r.src, r.dst, r.kind, float(r.score), float(r.exact)) for r in chosen.itertuples()]
    what = f"the circuit's {rep.size} edges" if rep.size else f"no circuit reached {rep.keep:.0%}; the {len(edges)} best edges"
    if rep.size > max_edges:
        what += f" (the best {max_edges} drawn)"
    graph = circuit_graph(
        rep.nodes,
        edges,
        title=f"Circuit for {rep.metric} on {rep.model} ({rep.direction}, scores {rep.mode})",
        caption=(
            f"{what}; clean {rep.clean:.4g}, corrupted {rep.corrupted:.4g}. Edge width: |score| (the change of the metric "
            "when that edge alone carries the other input). Hover for numbers."
        ),
    )
    curve = training_curves(
        [{"edges": int(k), "faithfulness": float(f)} for k, f in zip(rep.curve_sizes, rep.curve)],
        x="edges",
        y=("faithfulness",),
        title="Faithfulness by exact patching",
        caption="(metric with the k best edges patched - base) / (other - base); 1 = the whole effect.",
    )
    return graph + curve


__all__ = ["circuit_graph", "circuit_report_view"]
