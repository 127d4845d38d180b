"""Views of whole results, the adapter ``view_for(result)``, and the standalone sink report page.

``build_report(model, tokens, ...)`` measures what the page shows and lays it
out in sections. A section is a function ``section(ctx) -> View | None``;
:data:`REPORT_SECTIONS` lists them in page order, so adding one (e.g. the
trace chain of issue 3 or the intervention effects of issue 4) is one
function and one list entry.
"""

from __future__ import annotations

import importlib.util
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._internal import hooknames
from ..capture import Reducer
from ._page import View, circuitsvis_version, esc, html_table, section
from ._svg import bars_svg
from .attention import (
    alpha_tokens_view,
    attention_view,
    find_sink_positions,
    token_strings,
)
from .figures import head_heatmap, key_manifold_view, massive_activation_view


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


def sink_report_html(report: Any) -> str:
    """HTML of :func:`sink_report_view` (what ``SinkReport._repr_html_`` shows in notebooks)."""
    return sink_report_view(report)._repr_html_()


# --------------------------------------------------------------------------- report data
class _ResidStats(Reducer):
    """Reducer: per layer, max |x| per dim (all tokens), max |x| per token of one sample, median |x|."""

    def __init__(self, layers: Sequence[int], sample: int = 0):
        self.layers = list(layers)
        self.sample = sample

    def hook_names(self, model: Any) -> list[str]:
        return [hooknames.resid_post(l) for l in self.layers]

    def begin(self, model: Any, n: int, T: int) -> None:
        D = int(model.cfg.d_model)
        self.dim_max = torch.zeros(len(self.layers), D)
        self.token_max = torch.zeros(len(self.layers), T)
        self.medians: list[list[float]] = [[] for _ in self.layers]

    def update(self, name: str, x: torch.Tensor) -> None:
        i = self.layers.index(hooknames.layer_of(name))
        a = x.detach().abs().float()
        self.dim_max[i] = torch.maximum(self.dim_max[i], a.amax(dim=(0, 1)).cpu())
        s = self.sample - self.batch_start
        if 0 <= s < a.shape[0]:
            self.token_max[i] = a[s].amax(dim=-1).cpu()
        self.medians[i].append(float(a.median()))

    def result(self) -> dict[str, np.ndarray]:
        return {
            "dim_max": self.dim_max.numpy(),
            "token_max": self.token_max.numpy(),
            "median": np.array([np.mean(m) if m else np.nan for m in self.medians]),
        }


@dataclass
class ReportContext:
    """Everything the report sections read."""

    model: Any
    tokens: torch.Tensor
    report: Any  # SinkReport
    sample: int
    strings: list[str]
    eps: float
    attention_layers: list[int]
    top_heads: list[tuple[int, int]]
    patterns: dict[int, np.ndarray]
    resid: dict[str, np.ndarray] | None
    keys: dict[str, Any] | None
    timings: dict[str, float]
    command: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def _collect_details(
    model: Any, tokens: torch.Tensor, report: Any, sample: int, n_detail: int, n_layers_shown: int
) -> dict[str, Any]:
    from ..architecture import describe_attention
    from ..capture import Keep, run_reducers

    table = report.head_table(1)
    top_heads = [(int(r.layer), int(r.head)) for r in table.head(8).itertuples()]
    att_layers: list[int] = []
    for l, _ in top_heads:
        if l not in att_layers:
            att_layers.append(l)
        if len(att_layers) >= n_layers_shown:
            break
    key_layer, key_head = top_heads[0]
    la = describe_attention(model).layer(key_layer)  # keys as attention sees them (rotated here where no hook is)
    group = la.group
    key_name = la.k_hook
    n_det = max(1, min(n_detail, tokens.shape[0]))
    sub = tokens[:n_det]
    s = min(sample, n_det - 1)
    stats = _ResidStats(range(int(model.cfg.n_layers)), sample=s)
    keep_p = Keep([hooknames.pattern(l) for l in att_layers], select=None)
    keep_k = Keep([key_name])
    run_reducers(model, sub, [stats, keep_p, keep_k], progress=False)
    pats = {l: keep_p.result()[hooknames.pattern(l)][s].numpy() for l in att_layers}
    k_all = la.final(keep_k.result()[key_name])[:, :, key_head // group].numpy()  # [n, T, d]
    return {
        "top_heads": top_heads,
        "att_layers": att_layers,
        "patterns": pats,
        "resid": stats.result(),
        "keys": {"keys": k_all, "layer": key_layer, "head": key_head, "kv_head": key_head // group, "hook": key_name},
        "sample": s,
    }


# --------------------------------------------------------------------------- sections
def _summary_section(ctx: ReportContext) -> View:
    return section(
        "1. Summary: where the sinks are",
        "A sink is a token that many heads attend to regardless of content. "
        "Each head's score α_k is the mean attention token k receives from the tokens after it (Gu et al.).",
        [sink_report_view(ctx.report)],
        anchor="summary",
    )


def _attention_section(ctx: ReportContext) -> View:
    r = ctx.report
    heads = [(l, h) for l, h in ctx.top_heads if l in ctx.attention_layers][:6]
    alpha = np.stack([r.alpha[ctx.sample, r.layers.index(l), h] for l, h in heads])
    toks = alpha_tokens_view(
        alpha,
        ctx.strings,
        [f"L{l}H{h}" for l, h in heads],
        title=f"Input {ctx.sample} coloured by α_k of the top sink heads",
    )
    att = attention_view(
        ctx.patterns,
        ctx.strings,
        eps=ctx.eps,
        order="alpha",
        title=f"Attention of input {ctx.sample} in the layers of the top sink heads",
    )
    return section(
        "2. Top sink heads and their attention",
        f"The layers holding the strongest sink heads ({', '.join(f'L{l}H{h}' for l, h in ctx.top_heads[:4])}), "
        f"on input {ctx.sample} of the probe set.",
        [att, toks],
        anchor="heads",
    )


def _massive_section(ctx: ReportContext) -> View | None:
    if ctx.resid is None:
        return None
    r = ctx.resid
    v = massive_activation_view(
        r["dim_max"],
        r["token_max"],
        tokens=ctx.strings,
        median=r["median"],
        stage=f"residual stream after each layer (hook_resid_post; dims over {ctx.extras.get('n_detail', '?')} inputs, tokens of input {ctx.sample})",
    )
    parts: list[Any] = [v]
    k = ctx.keys
    if k is not None:
        keys = k["keys"]  # [n, T, d]
        n, T, d = keys.shape
        found = find_sink_positions(ctx.report.alpha.mean(axis=0), ctx.eps)
        sinks = found or [0]
        sink_name = f"sink token (pos {', '.join(map(str, found))})" if found else "first token (no sink above eps)"
        is_sink = np.zeros((n, T), dtype=bool)
        is_sink[:, sinks] = True
        ids = ctx.tokens[:n]
        strings_cache: dict[int, str] = {}

        def s(i: int) -> str:
            if i not in strings_cache:
                strings_cache[i] = token_strings(ctx.model, [i])[0]
            return strings_cache[i]

        labels = [f"input {i}, pos {p} {s(int(ids[i, p]))!r}" for i in range(n) for p in range(T)]
        parts.append(
            key_manifold_view(
                keys.reshape(n * T, d),
                is_sink.reshape(-1),
                labels=labels,
                names=("other tokens", sink_name),
                head=f"layer {k['layer']}, KV head {k['kv_head']} (used by the top sink head L{k['layer']}H{k['head']}; {k['hook']})",
            )
        )
    return section(
        "3. Massive activations and the sink key",
        "The sink token carries a few huge residual values (massive activations); after the norm and W_K they give it a key "
        "that lies apart from all other keys.",
        parts,
        anchor="massive",
    )


def pending(title: str, what: str, needs: str, anchor: str, error: str | None = None) -> View:
    """A clearly marked placeholder section for results whose module is not in this build (or failed)."""
    if error is None:
        text = f"Not in this report: <code>{esc(needs)}</code> is not available in this build of sink_interp. {esc(what)}"
        head = "Not measured in this build"
        cap = "This section is filled automatically once the module is installed; nothing was measured for it."
    else:
        text = f"<code>{esc(needs)}</code> raised an error, so this section is empty: <code>{esc(error)}</code>. {esc(what)}"
        head = "Could not be computed"
        cap = "The rest of the report is unaffected; run the analysis on its own to see the full error."
    box = View([f"<p>{text}</p>"], title=head, caption=cap, kind="pending")
    return section(title, None, [box], anchor=anchor)


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # pragma: no cover
        return False


TRACE_TITLE = "4. Trace chain: spike → norm → W_K → RoPE → sink key"
EFFECTS_TITLE = "5. Intervention effects"


def _trace_section(ctx: ReportContext) -> View | None:
    """The trace of the strongest sink head (issue 3's ``trace_sink``), when that module is installed."""
    what = "It shows which MLP/attention writes the spike and how the norm, W_K and RoPE turn it into the sink key."
    if not _available("sink_interp.trace"):
        return pending(TRACE_TITLE, what, "sink_interp.trace (issue 3)", "trace")
    from .adapters import trace_report_view

    layer, head = ctx.top_heads[0]
    n = int(ctx.extras.get("n_detail", 16))
    try:
        from ..trace import trace_sink

        t0 = time.perf_counter()
        rep = trace_sink(ctx.model, ctx.tokens[:n], layer=layer, head=head, progress=False)
        ctx.timings["trace"] = time.perf_counter() - t0
        view = trace_report_view(rep, massive=False, keys=False)  # both are in section 3 already
    except Exception as e:  # the report still renders; the box says what failed
        return pending(TRACE_TITLE, what, f"trace_sink(layer={layer}, head={head})", "trace", error=f"{type(e).__name__}: {e}")
    return section(
        TRACE_TITLE, f"Traced at the strongest sink head L{layer}H{head} on the first {n} inputs.", [view], anchor="trace"
    )


def _effects_section(ctx: ReportContext) -> View | None:
    """Standard interventions on the sink (issue 4's ``compare``), when that module is installed."""
    what = "It shows how zeroing the sink's values, masking the sink and ablating the massive dims change loss and the sinks."
    if not (_available("sink_interp.effects") and _available("sink_interp.interventions")):
        return pending(EFFECTS_TITLE, what, "sink_interp.interventions (issue 4)", "effects")
    n = int(ctx.extras.get("n_detail", 16))
    try:
        from ..effects import compare
        from ..interventions import AblateDims, MaskKey, ZeroValue, sink_heads
        from .adapters import effect_report_view

        heads = sink_heads(ctx.report)
        items: dict[str, Any] = {}
        if heads:
            items["zero the sink's values (sink heads)"] = ZeroValue(heads=heads)
            items["mask the sink, renormalise (sink heads)"] = MaskKey(heads=heads)
        # all heads, but queries 0-1 untouched: masking key 0 for token 1 too would just move the sink to token 1
        items["mask the sink, renormalise (all heads, queries >= 2)"] = MaskKey(min_query=2)
        if ctx.resid is not None:
            dm = ctx.resid["dim_max"]
            dim = int(np.unravel_index(np.argmax(dm), dm.shape)[1])
            items[f"zero massive dim {dim} at the sink"] = AblateDims([dim])
            items[f"mean-ablate dim {dim} at the sink"] = AblateDims([dim], mode="mean")
        t0 = time.perf_counter()
        rep = compare(ctx.model, ctx.tokens[:n], items, eps=ctx.eps, progress=False)
        ctx.timings["interventions"] = time.perf_counter() - t0
        view = effect_report_view(rep)
    except Exception as e:
        return pending(EFFECTS_TITLE, what, "compare(...) of sink_interp.effects", "effects", error=f"{type(e).__name__}: {e}")
    return section(
        EFFECTS_TITLE,
        f"Each intervention acts on the sink token (position 0), in the sink heads (mean alpha_1 > eps) or in every head, on the first {n} inputs. "
        "Masking key 0 for every query would only move the sink to token 1, so the all-heads mask leaves queries 0-1 alone.",
        [view],
        anchor="effects",
    )


def _provenance_section(ctx: ReportContext) -> View:
    r = ctx.report
    mi = r.model_info
    probe = (r.extra or {}).get("probe", {}) if isinstance(r.extra, dict) else {}
    rows = [
        {
            "what": "model",
            "value": f"{r.model} ({mi.get('n_layers')} layers × {mi.get('n_heads')} heads, {mi.get('n_kv_heads')} KV heads, d_model {mi.get('d_model')}, {mi.get('positional', mi.get('positions', ''))})",
        },
        {
            "what": "data",
            "value": f"{r.data}: {r.n} inputs × {r.length} tokens"
            + (f", seed {probe.get('seed')}" if probe.get("seed") is not None else ""),
        },
        {
            "what": "BOS",
            "value": "first token is BOS"
            if r.bos
            else ("no BOS (the model sees the text only)" if r.bos is False else "unknown"),
        },
        {
            "what": "metric",
            "value": f"α_k = mean over t ≥ k of A[t, k] (Gu et al.); sink head when α_k > eps = {r.eps}; score {r.score}",
        },
        {"what": "dtype / device", "value": f"{r.dtype} / {r.device}"},
        {
            "what": "details",
            "value": f"attention of input {ctx.sample}; massive activations and keys over the first {ctx.extras.get('n_detail', '?')} inputs",
        },
        {"what": "timings", "value": ", ".join(f"{k} {v:.1f} s" for k, v in ctx.timings.items())},
    ]
    if ctx.command:
        rows.append({"what": "command", "value": ctx.command})
    vers = dict(r.versions)
    vers["circuitsvis"] = circuitsvis_version()
    vers["platform"] = platform.platform()
    rows.append({"what": "versions", "value": ", ".join(f"{k} {v}" for k, v in vers.items())})
    return section(
        "6. How this report was produced",
        None,
        [
            View(
                [html_table(rows, cls="si-table si-meta")],
                title="Provenance",
                caption="Model, data, BOS policy, threshold and versions: each changes the numbers.",
                kind="provenance",
            )
        ],
        anchor="provenance",
    )


REPORT_SECTIONS: list[Callable[[ReportContext], View | None]] = [
    _summary_section,
    _attention_section,
    _massive_section,
    _trace_section,
    _effects_section,
    _provenance_section,
]


def build_report(
    model: Any,
    tokens: torch.Tensor,
    *,
    eps: float = 0.3,
    sample: int = 0,
    n_detail: int = 16,
    attention_layers: int = 3,
    batch_size: int | None = None,
    progress: bool = False,
    command: str | None = None,
    sections: Sequence[Callable[[ReportContext], View | None]] | None = None,
    sink_report: Any | None = None,
) -> View:
    """Measure sinks on ``tokens`` and lay out the standalone report page.

    Args:
        model: a TransformerBridge.
        tokens: ``[n, length]`` probe tokens (e.g. from :func:`sink_interp.probe_tokens`).
        eps: sink threshold.
        sample: which input's attention and tokens to show.
        n_detail: how many inputs the massive-activation and key statistics use.
        attention_layers: how many layers (of the strongest sink heads) get attention widgets.
        sections: section functions (default :data:`REPORT_SECTIONS`).
        sink_report: a :class:`SinkReport` already measured on ``tokens`` (skips the measurement).

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> page = build_report(tiny_model(), torch.randint(4, 100, (3, 12)))
        >>> page.n_widgets   # 2 attention layers + the coloured tokens
        3
    """
    from ..metrics import measure_sinks

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if sink_report is None:
        sink_report = measure_sinks(model, tokens, eps=eps, batch_size=batch_size, progress=progress)
    timings["measure"] = time.perf_counter() - t0
    if not 0 <= sample < tokens.shape[0]:
        raise ValueError(f"sample must be in 0..{tokens.shape[0] - 1}, got {sample}")
    t1 = time.perf_counter()
    det = _collect_details(model, tokens, sink_report, sample, n_detail, attention_layers)
    timings["details"] = time.perf_counter() - t1
    s = det["sample"]
    ctx = ReportContext(
        model=model,
        tokens=tokens,
        report=sink_report,
        sample=s,
        strings=token_strings(model, tokens[s]),
        eps=float(sink_report.eps),
        attention_layers=det["att_layers"],
        top_heads=det["top_heads"],
        patterns=det["patterns"],
        resid=det["resid"],
        keys=det["keys"],
        timings=timings,
        command=command,
        extras={"n_detail": min(n_detail, tokens.shape[0])},
    )
    return layout_report(ctx, sections)


def layout_report(ctx: ReportContext, sections: Sequence[Callable[[ReportContext], View | None]] | None = None) -> View:
    """Lay out the report page from measured data (``build_report`` = measure + this)."""
    t2 = time.perf_counter()
    measured_before = sum(ctx.timings.values())
    parts: list[View] = []
    for fn in sections if sections is not None else REPORT_SECTIONS:
        v = fn(ctx)
        if v is not None:
            parts.append(v)
    measured_in_sections = sum(ctx.timings.values()) - measured_before  # trace / interventions
    ctx.timings["layout"] = time.perf_counter() - t2 - measured_in_sections
    r = ctx.report
    toc = " · ".join(
        f'<a href="#{a}">{esc(t)}</a>'
        for a, t in (
            ("summary", "summary"),
            ("heads", "top heads"),
            ("massive", "massive activations"),
            ("trace", "trace"),
            ("effects", "interventions"),
            ("provenance", "provenance"),
        )
    )
    header = (
        f'<header><h1 style="font-size:24px;margin:6px 0 2px 0">Attention-sink report: {esc(r.model)}</h1>'
        f'<p class="si-intro">{esc(r.data)}, {r.n} inputs × {r.length} tokens, BOS {"yes" if r.bos else "no"}, eps {r.eps}. '
        f"Sink_1 = <b>{r.rate(1):.1f}%</b>. Made with sink_interp {esc(r.versions.get('sink_interp', ''))}; works offline.</p>"
        f'<nav class="si-note">{toc}</nav></header>'
    )
    page = View([header, *parts], figure=False, kind="report", title=f"Sink report: {r.model}")
    page.meta.update({"timings": ctx.timings, "top_heads": ctx.top_heads, "attention_layers": ctx.attention_layers})
    return page
