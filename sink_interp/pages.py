"""Pages built by running a model: the standalone sink report and the attention of one input.

This is orchestration, the layer above the analyses and the views: it runs
the analyses (:func:`~sink_interp.measure_sinks`, :func:`~sink_interp.trace_sink`,
the standard battery of :mod:`sink_interp.battery` through
:func:`~sink_interp.compare`) and hands their arrays and reports to the
functions of :mod:`sink_interp.views`, which run no model.

``build_report(model, tokens, ...)`` measures what the page shows and lays it
out in sections. A section is a function ``section(ctx) -> View | None``;
:data:`REPORT_SECTIONS` lists them in page order, so adding one is one
function and one list entry.
"""

from __future__ import annotations

import functools
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ._internal import hooknames
from ._internal.errors import check_tokens
from ._internal.probe import ProbeSet, as_tokens
from .architecture import describe_attention
from .battery import standard_battery
from .capture import Keep, run_reducers
from .effects import compare
from .massive import massive_activations
from .metrics import measure_sinks
from .trace import trace_sink
from .views import (
    View,
    alpha_tokens_view,
    attention_view,
    key_manifold_view,
    pending,
    section,
    token_strings,
    view_for,
)
from .views._page import circuitsvis_version, esc, html_table


# --------------------------------------------------------------------------- report data
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
    keys: dict[str, Any] | None
    timings: dict[str, float]
    command: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    progress: bool = False

    def phase(self, what: str) -> None:
        """Say which phase of the page is being computed (one line on stderr, with ``progress``)."""
        _say(self.progress, what)


def _say(progress: bool, what: str) -> None:
    if progress:
        print(f"report: {what}", file=sys.stderr, flush=True)


def _collect_details(
    model: Any, tokens: torch.Tensor, report: Any, sample: int, n_detail: int, n_layers_shown: int, progress: bool = False
) -> dict[str, Any]:
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
    # keys the description cannot read as [n, T, G, d] (MLA's latent attention, no hook): the key view is left out, said why
    why_no_keys = None
    if not la.qkv_readable or key_name not in model.hook_dict:
        why_no_keys = f"layer {key_layer}'s keys are not readable from hooks ({', '.join(la.unsupported) or 'no key hook'})"
    keep_p = Keep([hooknames.pattern(l) for l in att_layers], select=None)
    keep_k = Keep([key_name]) if why_no_keys is None else None
    reducers = [keep_p] + ([keep_k] if keep_k is not None else [])
    run_reducers(model, sub, reducers, progress=progress, desc="patterns, keys")
    pats = {l: keep_p.result()[hooknames.pattern(l)][s].numpy() for l in att_layers}
    keys = None
    if keep_k is not None:
        k = la.final(keep_k.result()[key_name])
        if k.dim() == 4 and tuple(k.shape[1:3]) == (sub.shape[1], la.n_kv_heads):
            k_all = k[:, :, key_head // group].numpy()  # [n, T, d]
            keys = {"keys": k_all, "layer": key_layer, "head": key_head, "kv_head": key_head // group, "hook": key_name}
        else:
            why_no_keys = f"layer {key_layer}'s key hook {key_name} holds {list(k.shape)}, not [n, T, kv heads, d]"
    return {
        "top_heads": top_heads,
        "att_layers": att_layers,
        "patterns": pats,
        "keys": keys,
        "why_no_keys": why_no_keys,
        "sample": s,
    }


# --------------------------------------------------------------------------- sections
def _summary_section(ctx: ReportContext) -> View:
    return section(
        "1. Summary: where the sinks are",
        "A sink is a token that many heads attend to regardless of content. "
        "Each head's score α_k is the mean attention token k receives from the tokens after it (Gu et al.).",
        [view_for(ctx.report)],
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
    try:  # the numbers of massive_activations on the detail inputs (the CLI's `sink-interp massive`), drawn by its view
        v = view_for(_shared_massive(ctx), sample=ctx.sample, tokens=ctx.strings)
    except Exception as e:  # the report still renders; the box says what failed
        n = int(ctx.extras.get("n_detail", 16))
        return pending(
            "3. Massive activations and the sink key",
            "It shows the largest residual values entering each block and the keys of the sink.",
            f"massive_activations on the first {n} inputs",
            "massive",
            error=f"{type(e).__name__}: {e}",
        )
    parts: list[Any] = [v]
    k = ctx.keys
    if k is not None:
        keys = k["keys"]  # [n, T, d]
        n, T, d = keys.shape
        pos = ctx.report.sink_positions(ctx.eps)
        found = [int(k) - 1 for k, ok in zip(pos["k"], pos["reliable"]) if ok]
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
    why = ctx.extras.get("why_no_keys")
    return section(
        "3. Massive activations and the sink key",
        "The sink token carries a few huge residual values (massive activations); after the norm and W_K they give it a key "
        "that lies apart from all other keys." + (f" The key view is left out: {why}." if k is None and why else ""),
        parts,
        anchor="massive",
    )


TRACE_TITLE = "4. Trace chain: spike → norm → W_K → RoPE → sink key"
EFFECTS_TITLE = "5. Intervention effects"


def _shared_massive(ctx: ReportContext) -> Any:
    """One massive-activation pass over the detail inputs, shared by section 3, the trace and the battery."""
    if "massive_report" not in ctx.extras:
        n = int(ctx.extras.get("n_detail", 16))
        ctx.phase(f"massive activations of the first {n} inputs")
        t0 = time.perf_counter()
        ctx.extras["massive_report"] = massive_activations(ctx.model, ctx.tokens[:n], measure_sinks=False, progress=ctx.progress)
        ctx.timings["massive"] = time.perf_counter() - t0
    return ctx.extras["massive_report"]


def _trace_section(ctx: ReportContext) -> View | None:
    """The trace of the strongest sink head (:func:`sink_interp.trace_sink`); a marked box when it fails or is skipped."""
    what = "It shows which MLP/attention writes the spike and how the norm, W_K and RoPE turn it into the sink key."
    layer, head = ctx.top_heads[0]
    n = int(ctx.extras.get("n_detail", 16))
    if not ctx.extras.get("trace", True):
        return pending(TRACE_TITLE, what, "trace_sink", "trace", skipped="build the report without --no-trace (trace=False)")
    try:
        massive = _shared_massive(ctx)
        ctx.phase(f"trace of L{layer}H{head} on the first {n} inputs")
        t0 = time.perf_counter()
        rep = trace_sink(ctx.model, ctx.tokens[:n], layer=layer, head=head, massive=massive, progress=ctx.progress)
        ctx.timings["trace"] = time.perf_counter() - t0
        view = view_for(rep, massive=False, keys=False)  # both are in section 3 already
    except Exception as e:  # the report still renders; the box says what failed
        return pending(TRACE_TITLE, what, f"trace_sink(layer={layer}, head={head})", "trace", error=f"{type(e).__name__}: {e}")
    return section(
        TRACE_TITLE, f"Traced at the strongest sink head L{layer}H{head} on the first {n} inputs.", [view], anchor="trace"
    )


#: the groups of :func:`sink_interp.battery.standard_battery` that the report runs
REPORT_BATTERY = ("sink", "massive")


def _effects_section(ctx: ReportContext) -> View | None:
    """The standard battery's interventions on the sink (:func:`sink_interp.compare`); a marked box when it fails or is skipped."""
    what = "It shows how zeroing the sink's values, masking the sink and ablating the massive dims change loss and the sinks."
    n = int(ctx.extras.get("n_detail", 16))
    if not ctx.extras.get("interventions", True):
        return pending(
            EFFECTS_TITLE, what, "compare(...) of sink_interp.effects", "effects",
            skipped="build the report without --no-interventions (interventions=False)",
        )  # fmt: skip
    try:
        massive = _shared_massive(ctx)
        battery = standard_battery(
            ctx.model, ctx.tokens[:n], sink_report=ctx.report, massive_report=massive, progress=ctx.progress
        )
        items = battery.items(*REPORT_BATTERY)
        ctx.phase(f"interventions: {len(items)} conditions and the clean model on the first {n} inputs")
        t0 = time.perf_counter()
        rep = compare(ctx.model, ctx.tokens[:n], items, eps=ctx.eps, progress=ctx.progress)
        ctx.timings["interventions"] = time.perf_counter() - t0
        view = view_for(rep)
    except Exception as e:
        return pending(EFFECTS_TITLE, what, "compare(...) of sink_interp.effects", "effects", error=f"{type(e).__name__}: {e}")
    return section(
        EFFECTS_TITLE,
        f"The standard battery on the first {n} inputs: the sink token (position 0) zeroed or masked in the sink heads "
        "(mean alpha_1 > eps) and in every head, and the massive dims (if any recur) ablated where they recur. "
        "Masking key 0 for every query would only move the sink to token 1, so one all-heads mask leaves queries 0-1 alone.",
        [view],
        anchor="effects",
    )


def _provenance_section(ctx: ReportContext) -> View:
    r = ctx.report
    mi = r.model_info
    probe = r.provenance.probe or {}
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
    tokens: torch.Tensor | ProbeSet,
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
    trace: bool = True,
    interventions: bool = True,
) -> View:
    """Measure sinks on ``tokens`` and lay out the standalone report page.

    Args:
        model: a TransformerBridge.
        tokens: ``[n, length]`` probe tokens: a :class:`~sink_interp.ProbeSet` (e.g. from
            :func:`sink_interp.probe_tokens`, whose facts the measurement records) or a tensor.
        eps: sink threshold.
        sample: which input's attention and tokens to show.
        n_detail: how many inputs the massive-activation and key statistics use.
        attention_layers: how many layers (of the strongest sink heads) get attention widgets.
        sections: section functions (default :data:`REPORT_SECTIONS`).
        sink_report: a :class:`SinkReport` already measured on ``tokens`` (skips the measurement).
        progress: progress bars, and one line on stderr as each phase starts.
        trace: run the trace chain (``False``: its section says it was skipped).
        interventions: run the intervention battery, the slowest phase (``False``: its section says it
            was skipped).

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> page = build_report(tiny_model(), torch.randint(4, 100, (3, 12)))
        >>> page.n_widgets   # 2 attention layers + the coloured tokens
        3
    """
    timings: dict[str, float] = {}
    say = functools.partial(_say, progress)
    n_all = int(tokens.shape[0])
    if not 0 <= sample < n_all:
        raise ValueError(f"sample must be in 0..{n_all - 1}, got {sample}")
    t0 = time.perf_counter()
    if sink_report is None:
        say(f"sink scores of {n_all} inputs")
        sink_report = measure_sinks(model, tokens, eps=eps, batch_size=batch_size, progress=progress)
    timings["measure"] = time.perf_counter() - t0
    tokens = as_tokens(tokens)  # the page's sections run on (slices of) the plain tensor
    n_det = max(1, min(n_detail, n_all))
    say(f"attention patterns and keys of the first {n_det} inputs")
    t1 = time.perf_counter()
    det = _collect_details(model, tokens, sink_report, sample, n_detail, attention_layers, progress=progress)
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
        keys=det["keys"],
        timings=timings,
        command=command,
        extras={
            "n_detail": min(n_detail, tokens.shape[0]),
            "trace": bool(trace),
            "interventions": bool(interventions),
            "why_no_keys": det["why_no_keys"],
        },
        progress=progress,
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
    ctx.phase("assembling the page")
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


# --------------------------------------------------------------------------- attention of one input
def attention_patterns_for(
    model: Any, tokens: torch.Tensor | ProbeSet, layers: Sequence[int], sample: int = 0
) -> dict[int, np.ndarray]:
    """``{layer: [heads, T, T]}`` attention patterns of one input row (only the asked layers are kept)."""
    tokens = as_tokens(tokens)
    toks = check_tokens(tokens if getattr(tokens, "ndim", 2) == 2 else tokens[None], d_vocab=int(model.cfg.d_vocab))
    if not 0 <= sample < toks.shape[0]:
        raise ValueError(f"sample must be in 0..{toks.shape[0] - 1}, got {sample}")
    L = int(model.cfg.n_layers)
    bad = [l for l in layers if not 0 <= int(l) < L]
    if bad:
        raise ValueError(f"layers {bad} out of range; the model has layers 0..{L - 1}")
    keep = Keep([hooknames.pattern(int(l)) for l in layers])
    run_reducers(model, toks[sample : sample + 1], [keep], progress=False)
    res = keep.result()
    return {int(l): res[hooknames.pattern(int(l))][0].numpy() for l in layers}


def show_attention(
    model: Any, tokens: torch.Tensor | ProbeSet, layers: Sequence[int], *, sample: int = 0, eps: float = 0.3, **kw: Any
) -> View:
    """:func:`~sink_interp.views.attention_view` for one row of ``tokens`` run through ``model``.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> show_attention(tiny_model(), torch.randint(4, 100, (2, 8)), layers=[1]).n_widgets
        1
    """
    tokens = as_tokens(tokens)
    pats = attention_patterns_for(model, tokens, layers, sample)
    row = tokens[sample] if getattr(tokens, "ndim", 1) == 2 else tokens
    return attention_view(pats, token_strings(model, row), eps=eps, **kw)
