"""CircuitsVis attention views with the sink column marked, and tokens coloured by alpha.

The CircuitsVis components are drawn from the bundle in the installed wheel,
inlined once per page (see :mod:`sink_interp.views._page`); we build their
props ourselves and never call CircuitsVis' ``render`` (which reads the bundle
per call and probes the internet in ``_repr_html_``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .._internal.errors import check_eps
from .._internal.scores import sink_alpha
from .._internal.scores import sink_positions as find_sinks
from ._page import View, Widget, esc, safe_token
from ._svg import BLUES, fmt, heatmap_svg
from .figures import as_array

SINK_MARK = "\u25c6"  # ◆ in front of sink tokens in CircuitsVis labels


def _visible(token: str) -> str:
    """Newlines and tabs as visible marks (an axis label cannot show a line break)."""
    return token.replace("\n", "\u21b5").replace("\t", "\u21e5") or "\u2205"


def _norm_patterns(patterns: Any, layers: Sequence[int] | None) -> dict[int, np.ndarray]:
    if isinstance(patterns, Mapping):
        out = {int(l): as_array(p, f"patterns[{l}]") for l, p in patterns.items()}
    else:
        p = as_array(patterns, "patterns")
        if p.ndim == 3:
            out = {int(layers[0]) if layers else 0: p}
        elif p.ndim == 4:
            layers = list(layers) if layers is not None else list(range(p.shape[0]))
            if len(layers) != p.shape[0]:
                raise ValueError(f"layers has {len(layers)} entries but patterns has {p.shape[0]} layers")
            out = {int(l): p[i] for i, l in enumerate(layers)}
        else:
            raise ValueError(
                f"patterns must be [heads, T, T] (one layer), [layers, heads, T, T] or {{layer: [heads, T, T]}}, got shape {p.shape}"
            )
    for l, p in out.items():
        if p.ndim == 4 and p.shape[0] == 1:
            out[l] = p = p[0]
        if p.ndim != 3 or p.shape[1] != p.shape[2]:
            raise ValueError(f"the pattern of layer {l} must be [heads, T, T] for one sample, got shape {p.shape}")
    return out


def attention_view(
    patterns: Any,
    tokens: Sequence[str] | None = None,
    *,
    layers: Sequence[int] | None = None,
    sink_positions: Sequence[int] | None = None,
    eps: float = 0.3,
    max_value: float | None = None,
    order: str = "index",
    title: str | None = None,
    caption: str | None = None,
) -> View:
    """Attention of every head of the chosen layers for one input, with the sink column marked.

    Per layer: a strip of ``alpha_k`` (head x key position, sink columns outlined
    in red) and a CircuitsVis ``AttentionHeads`` widget (click a head to zoom;
    sink tokens are marked ◆ in its labels).

    Args:
        patterns: ``[heads, T, T]`` for one layer, ``[layers, heads, T, T]``, or ``{layer: [heads, T, T]}``.
        tokens: the ``T`` token strings (escaped for display).
        layers: layer numbers when ``patterns`` is an array.
        sink_positions: 0-indexed key positions to mark (default: the rule of ``SinkReport.sink_positions``
            over this layer's heads: some head has ``alpha_k > eps``, averaged over at least 8 queries).
        max_value: colour ceiling for CircuitsVis (default: each widget's max).
        order: heads in the widget by ``"index"`` or by ``"alpha"`` (strongest α₁ first, so
            the widget opens zoomed on the strongest sink head); names keep the real index.

    Example:
        >>> import numpy as np
        >>> p = np.tril(np.ones((2, 5, 5))); p /= p.sum(-1, keepdims=True)
        >>> v = attention_view(p, ["<bos>", "a", "b", "c", "d"], layers=[3])
        >>> v.n_widgets, "‹bos›" in v._repr_html_()
        (1, True)
    """
    eps = check_eps(eps)
    if order not in ("index", "alpha"):
        raise ValueError(f"order must be 'index' or 'alpha', got {order!r}")
    pats = _norm_patterns(patterns, layers)
    T = next(iter(pats.values())).shape[-1]
    toks = [str(t) for t in tokens] if tokens is not None else [str(i) for i in range(T)]
    if len(toks) != T:
        raise ValueError(f"tokens has {len(toks)} entries but the patterns have {T} positions")
    parts: list[Any] = []
    for layer, p in sorted(pats.items()):
        if p.shape[-1] != T:
            raise ValueError(f"all layers must have the same length; layer {layer} has {p.shape[-1]}, expected {T}")
        H = p.shape[0]
        alpha = sink_alpha(torch.as_tensor(np.asarray(p, dtype=np.float32))).numpy()
        sinks = list(sink_positions) if sink_positions is not None else find_sinks(alpha, eps)
        bad = [k for k in sinks if not 0 <= k < T]
        if bad:
            raise ValueError(f"sink_positions {bad} out of range 0..{T - 1} (0-indexed key positions)")
        labels = [f"{(SINK_MARK + ' ') if i in sinks else ''}{_visible(safe_token(t))}" for i, t in enumerate(toks)]
        heads = list(np.argsort(-alpha[:, 0], kind="stable")) if order == "alpha" else list(range(H))
        names = [f"L{layer}H{h}" for h in heads]
        causal = bool(np.allclose(np.triu(p, 1), 0.0))
        strip_tips = [
            [
                f"layer {layer}, head {h}, key {k} {toks[k]!r}: α = {fmt(alpha[h, k])} (mean over {T - k} queries)"
                for k in range(T)
            ]
            for h in range(H)
        ]
        strip = heatmap_svg(
            alpha,
            [f"H{h}" for h in range(H)],
            [f"{k} {toks[k]}" for k in range(T)],
            xlabel="key position (token)",
            ylabel="head",
            value_label="α_k",
            tips=strip_tips,
            vmin=0.0,
            vmax=1.0,
            palette=BLUES,
            cell_w=max(9.0, min(28.0, 700.0 / T)),
            cell_h=13.0,
            show_values=False,
            rotate_cols=True,
            highlight_cols=sinks,
            cell_attrs=[[{"data-head": h, "data-pos": k} for k in range(T)] for h in range(H)],
        )
        heads_txt = ", ".join(f"H{h} ({alpha[h, 0]:.2f})" for h in np.argsort(-alpha[:, 0])[:3])
        props: dict[str, Any] = {
            "attention": np.round(p[heads].astype(np.float64), 4),
            "tokens": labels,
            "attentionHeadNames": names,
            "maskUpperTri": causal,
        }
        if max_value is not None:
            props["maxValue"] = float(max_value)
            props["minValue"] = 0.0
        sink_txt = ", ".join(f"{k} {toks[k]!r}" for k in sinks) or "none above eps"
        parts.append(
            View(
                [
                    f'<h4 class="si-layer" data-layer="{layer}">Layer {layer} <span class="si-note">'
                    f"&mdash; sink columns: {esc(sink_txt)}; strongest α₁: {esc(heads_txt)}</span></h4>",
                    strip,
                    Widget("AttentionHeads", props),
                ],
                figure=False,
                kind="attention-layer",
            )
        )
    return View(
        parts,
        title=title or f"Attention patterns, layer{'s' if len(pats) > 1 else ''} {', '.join(map(str, sorted(pats)))}",
        caption=caption
        or "Strip: α_k = mean attention key k receives (rows = heads, red box = sink column); widget: each head's "
        "query × key attention (click a head to zoom; ◆ marks sink tokens).",
        kind="attention",
        readout=True,
    )


def alpha_tokens_view(
    alpha: Any,
    tokens: Sequence[str],
    labels: Sequence[str] | None = None,
    *,
    title: str | None = None,
    caption: str | None = None,
) -> View:
    """The input's tokens coloured by ``alpha_k`` of each chosen head (CircuitsVis ``ColoredTokensMulti``).

    Args:
        alpha: ``[heads, T]`` sink scores of one sample (e.g. ``report.alpha[i, layer, heads]``).
        tokens: the ``T`` token strings.
        labels: a name per head (default ``"head 0"``, ...).

    Example:
        >>> import numpy as np
        >>> alpha_tokens_view(np.random.rand(2, 3), ["a", "<b>", "c"], ["L0H0", "L0H1"]).n_widgets
        1
    """
    a = as_array(alpha, "alpha", 2)
    K, T = a.shape
    if len(tokens) != T:
        raise ValueError(f"tokens has {len(tokens)} entries but alpha has {T} positions")
    labels = [str(x) for x in labels] if labels is not None else [f"head {i}" for i in range(K)]
    if len(labels) != K:
        raise ValueError(f"labels has {len(labels)} entries but alpha has {K} heads")
    w = Widget(
        "ColoredTokensMulti",
        {"tokens": [safe_token(t) for t in tokens], "values": np.round(a.T, 4), "labels": [safe_token(x) for x in labels]},
    )
    return View(
        [w],
        title=title or "Tokens coloured by sink score α_k",
        caption=caption
        or "Pick a head: each token is coloured by the mean attention it receives from later tokens (α_k); hover a token for all heads.",
        kind="alpha-tokens",
    )


# --------------------------------------------------------------------------- token strings
def token_strings(model: Any, ids: Sequence[int]) -> list[str]:
    """Each token id decoded on its own (``" the"``, ``"<|endoftext|>"``)."""
    tok = getattr(model, "tokenizer", None)
    ids = [int(i) for i in ids]
    if tok is None:
        return [str(i) for i in ids]
    return [tok.decode([i]) for i in ids]
