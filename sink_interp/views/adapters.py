"""``view_for(result)``: the matching view for each result type of the library.

Adapters are keyed by class name (so this module imports none of the result
modules); each one turns a result into plain arrays and calls a figure function.
They live in the registry of :mod:`sink_interp._internal.display`, which the
result classes ask without importing the view layer::

    def _repr_html_(self) -> str:
        from ._internal import display
        return display.html_of(self)

``register_view`` adds more.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._internal import display
from ._page import View, concat, html_table
from .circuits import circuit_report_view
from .figures import (
    effect_bars,
    key_manifold_view,
    massive_activation_view,
    patch_heatmap,
    trace_chain_view,
    training_curves,
)
from .practice import kv_budget_view, outlier_map_view, quant_bits_view
from .report import layer_rate_view, sink_report_view
from .tables import (
    effect_table,
    long_context_table,
    loss_table,
    massive_table,
    repro_table,
    sink_rates_table,
    stream_table,
    trace_table,
    train_table,
    with_table,
)


def massive_report_view(rep: Any, top: int = 12, sample: int | None = None, tokens: Any = None) -> View:
    """A ``MassiveReport``: layer x top dims from its top-k entries, and ‖h‖ per token.

    ``top_abs/top_dim [n, layer, k]`` give, per layer, the largest ``|x|`` seen in each dim
    (dims never in a sample's top-k stay empty); ``h_norm [n, layer, pos]`` is averaged over samples,
    or is that of input ``sample`` (whose token strings ``tokens`` label the axis).
    """
    top_abs = np.asarray(rep.top_abs, dtype=float)
    top_dim = np.asarray(rep.top_dim, dtype=int)
    n, L, _ = top_abs.shape
    D = int((rep.model_info or {}).get("d_model") or (top_dim.max() + 1))
    dim_max = np.zeros((L, D))
    layer_idx = np.broadcast_to(np.arange(L)[None, :, None], top_dim.shape)
    np.maximum.at(dim_max, (layer_idx.ravel(), top_dim.ravel()), np.abs(top_abs).ravel())
    h_all = np.asarray(rep.h_norm, dtype=float)
    h_norm = h_all.mean(axis=0) if sample is None else h_all[sample]
    who = "mean ‖h‖" if sample is None else f"‖h‖ of input {sample}"
    return massive_activation_view(
        dim_max,
        h_norm,
        tokens=tokens,
        median=np.asarray(rep.layer_median, dtype=float),
        top=top,
        threshold=float(rep.abs_threshold),
        ratio=float(rep.ratio_threshold),
        stage=f"residual stream entering each block (hook_resid_pre; {rep.model}, {n} inputs; each sample's top-{top_abs.shape[2]} entries)",
        token_value_name=who,
        caption=(
            f"Largest |x| entering each block by hidden dimension (grey: in no sample's top-{top_abs.shape[2]}), and {'the mean' if sample is None else f'input {sample}’s'} residual norm ‖h‖ of each token (log colour); "
            f"massive = |x| > {float(rep.abs_threshold):g} and ≥ {float(rep.ratio_threshold):g}× the median |x| (Sun et al. 2024)."
        ),
    )


def trace_report_view(rep: Any, massive: bool = True, keys: bool = True) -> View:
    """A ``TraceReport``: the chain of links, (``keys``) the key PCA it stored, and (``massive``) its massive activations."""
    n_heads = int((rep.model_info or {}).get("n_heads") or 0)
    links = []
    for name, link in rep.links.items():
        d = link.to_dict() if hasattr(link, "to_dict") else dict(vars(link))
        docs = link.docs() if hasattr(link, "docs") else {}
        nums = {}
        for k, v in d.items():
            if isinstance(v, (list, tuple)) and n_heads and len(v) == n_heads and name == "rope":
                v = v[rep.head]  # per-head lists: the traced head
            if isinstance(v, (int, float, str, bool, np.integer, np.floating)):
                nums[k] = v
        links.append((name, nums, docs))
    parts: list[View] = [
        trace_chain_view(
            links,
            getattr(rep, "skipped", None),
            title=f"Trace of the sink at position {rep.sink_pos}, layer {rep.layer} head {rep.head} ({rep.model})",
        )
    ]
    pca = getattr(rep, "key_pca", None) or {}
    if keys and "sink" in pca and "other" in pca and len(pca["sink"]) and len(pca["other"]):
        s, o = np.asarray(pca["sink"], dtype=float), np.asarray(pca["other"], dtype=float)
        parts.append(
            key_manifold_view(
                np.concatenate([o, s]),
                np.arange(len(o) + len(s)) >= len(o),
                projected=True,
                names=("other keys", f"sink keys (pos {rep.sink_pos})"),
                head=f"layer {rep.layer}, KV head {rep.kv_head}",
            )
        )
    if massive and getattr(rep, "massive", None) is not None:
        parts.append(massive_report_view(rep.massive))
    return concat(*parts)


def effect_report_view(rep: Any, values: tuple[str, ...] = ("delta_loss", "kl", "sink_rate_1", "mean_alpha_1")) -> View:
    """An ``EffectReport``: one bar per intervention for Δ loss, KL, Sink_1 and mean α₁."""
    df = rep.to_frame()
    label = "label" if "label" in df.columns else df.columns[0]
    cols = [c for c in values if c in df.columns]
    return effect_bars(
        df,
        label=label,
        values=cols or None,
        title=f"Intervention effects on {getattr(rep, 'model', 'the model')}",
        caption=f"One bar per intervention (the first row is the clean model) on {getattr(rep, 'n', '?')} inputs × "
        f"{getattr(rep, 'length', '?')} tokens: change in loss, KL to the clean model, Sink_1 and mean α₁ after it.",
    )


def patch_report_view(rep: Any) -> View:
    """A ``PatchReport``: the normalised effect of patching each head, exact and attribution side by side (the effect in
    metric units where normalising is refused: a clean-corrupted gap too small or of the wrong sign)."""
    what = {"noise": "clean run, corrupted activation written in", "denoise": "corrupted run, clean activation written in"}
    est = np.asarray(rep.estimate, dtype=float)
    vals = np.asarray(rep.values, dtype=float)
    extra = {"metric": vals}
    if est.size:
        extra["estimate"] = est
    why = rep.gap_problem() if hasattr(rep, "gap_problem") else None
    if why is None:
        shown, shown_est = rep.normalised(), rep.normalised(est) if est.size else None
        name, cell = (
            "normalised effect",
            "(patched - base) / (other - base); 1 = this head alone carries the whole difference, 0 = nothing",
        )
    else:
        shown, shown_est = vals - rep.base, est - rep.base if est.size else None
        name, cell = "effect", f"patched - base, in metric units (normalising refused: {why})"
    if not np.isfinite(shown).any() and shown_est is not None:  # an estimate alone (no head patched exactly)
        shown, shown_est = shown_est, None
    top = rep.top(5)
    cols = [c for c in ("layer", "head", "metric", "effect", "normalised", "estimate") if c in top.columns]
    table = View(
        [
            html_table(
                top[cols].to_dict("records"),
                cols,
                fmt={"metric": ".4f", "effect": "+.4f", "normalised": ".3f", "estimate": ".4f"},
            )
        ],
        title=f"Top heads ({rep.method})",
        caption=f"The 5 heads with the largest |effect| (by the estimate where a head was not patched exactly); base {rep.base:.4f}.",
        kind="patch-top",
    )
    return (
        patch_heatmap(
            shown,
            shown_est,
            value_name=name,
            extra=extra,
            title=f"Patching {rep.what} of each head on {rep.model} ({rep.method})",
            caption=(
                f"{what.get(rep.direction, rep.direction)}; metric {rep.metric}: clean {rep.clean:.4g}, corrupted "
                f"{rep.corrupted:.4g}. Each cell: {cell}; grey = not patched. Hover a cell for the metric."
            ),
        )
        + table
    )


def train_result_view(rep: Any) -> View:
    """A training run (``TrainResult``): val_loss, Sink_1 and mean α₁ against step."""
    name = (getattr(rep, "config", None) or {}).get("name")
    return training_curves(
        rep.to_frame(),
        y=("val_loss", "sink_rate_1", "mean_alpha_1"),
        title=f"Training curves{f' of {name}' if name else ''}",
    )


def stream_report_view(rep: Any) -> View:
    """A ``StreamReport``: perplexity by position bucket, one line per condition."""
    df = rep.to_frame().copy()
    df["position"] = df["end"]
    return training_curves(
        df,
        x="position",
        y=["ppl"],
        run="condition",
        log_y=["ppl"],
        title=f"Streaming with {rep.n_sinks} sink(s) + a window of {rep.window} on {rep.model}",
        caption=(
            f"Perplexity of the next token by position (bucket end) over {rep.n} texts of {rep.length} tokens: full attention, "
            f"sinks + window, and the window alone; past position {rep.n_sinks + rep.window} evicted tokens are missing."
        ),
    )


def long_context_view(rep: Any) -> View:
    """A ``LongContextReport``: Sink_1 and mean α₁ by query bucket."""
    df = rep.bucket_frame() if hasattr(rep, "bucket_frame") else rep.to_frame()
    df = df[df["k"] == 1].copy() if "k" in df.columns else df.copy()
    df = df.rename(columns={"sink_rate": "Sink_1 (%)", "mean_alpha": "mean alpha_1"})
    df["query position"] = df["query_stop"]  # the bucket's last query, 1-indexed (its 0-indexed stop)
    return training_curves(
        df,
        x="query position",
        y=["Sink_1 (%)", "mean alpha_1"],
        title=f"First-token sink by query position on {rep.sink_report.model} (T = {rep.length})",
        caption=(
            f"alpha_1 restricted to the queries of each bucket (bucket end on the x axis), over {rep.sink_report.n} input(s); "
            f"Sink_1 = share of (sample, layer, head) with alpha_1 > {rep.eps}. A flat line: the sink holds at long range."
        ),
    )


def finding_curves_view(rep: Any) -> View:
    """A finding's runs (``training.reproduce.FindingCurves``): Sink_1, val_loss and mean α₁ against step, one line per run."""
    return training_curves(dict(rep.metrics), y=("sink_rate_1", "val_loss", "mean_alpha_1"), title=rep.title)


def sink_summary_view(rep: Any, k: int = 1) -> View:
    """A ``SinkSummary`` (counts only): ``Sink_k`` per layer, and at every eps of its grid."""
    return with_table(layer_rate_view(rep, k), sink_rates_table(rep, k, rep.eps_grid))


def fit_report_view(rep: Any) -> View:
    """A ``FitReport``: the share of the loss gap the fitted bias recovers, and the effects it was judged by."""
    if rep.effects is None:
        return View(["<p>not evaluated (no eval tokens)</p>"], title=f"Fitted {rep.kind} bias", kind="fit")
    head = View(
        [f"<p><b>{100 * rep.recovered:.1f}%</b> of the loss gap recovered</p>"], title=f"Fitted {rep.kind} bias", kind="fit"
    )
    return View([head, effect_report_view(rep.effects), effect_table(rep.effects)], figure=False, kind="fit")


def training_view(rep: Any) -> View:
    """A ``TrainResult``: the curves (when it logged any evaluation) and the table of its logged numbers."""
    table = train_table(rep)
    return with_table(train_result_view(rep), table) if rep.metrics else table


def repro_view(rep: Any) -> View:
    """A ``ReproTable``: one row per finding."""
    return repro_table(rep)


#: report class name -> view function: the registry of :mod:`sink_interp._internal.display` (one dict)
ADAPTERS: dict[str, Callable[..., View]] = display.REGISTRY
for _name, _fn in {
    "SinkReport": sink_report_view,
    "SinkSummary": sink_summary_view,
    "MassiveReport": lambda rep, **kw: with_table(massive_report_view(rep, **kw), massive_table(rep)),
    "TraceReport": lambda rep, **kw: with_table(trace_report_view(rep, **kw), trace_table(rep)),
    "EffectReport": lambda rep, **kw: with_table(effect_report_view(rep, **kw), effect_table(rep)),
    "FitReport": fit_report_view,
    "PatchReport": patch_report_view,
    "TrainResult": training_view,
    "StreamReport": lambda rep: with_table(stream_report_view(rep), stream_table(rep)),
    "LongContextReport": lambda rep: with_table(long_context_view(rep), long_context_table(rep)),
    "FindingCurves": finding_curves_view,
    "ReproTable": repro_view,
    "KVReport": lambda rep: with_table(kv_budget_view(rep), loss_table(rep, "budget", "full cache")),
    "QuantReport": lambda rep: with_table(quant_bits_view(rep), loss_table(rep, "bits", "full-precision")),
    "OutlierReport": outlier_map_view,
    "CircuitReport": circuit_report_view,
}.items():
    display.register_view(_name, _fn)
del _name, _fn


def register_view(class_name: str, fn: Callable[..., View]) -> None:
    """Make :func:`view_for` draw objects of class ``class_name`` with ``fn(obj, **kw)``.

    Example:
        >>> from sink_interp.views import View, register_view, view_for
        >>> class Mine: pass
        >>> register_view("Mine", lambda obj: View(["<p>mine</p>"], title="mine"))
        >>> view_for(Mine()).title
        'mine'
    """
    display.register_view(class_name, fn)


def view_for(obj: Any, **kw: Any) -> View:
    """The matching view for a result: a report dataclass, a ``metrics.jsonl`` path, an effect table.

    Example:
        >>> view_for([{"step": 0, "val_loss": 3.0}, {"step": 10, "val_loss": 2.5}]).kind
        'training'
    """
    if isinstance(obj, View):
        return obj
    fn = display.view_fn(obj)
    if fn is not None:
        return fn(obj, **kw)
    if isinstance(obj, (str, Path)) and str(obj).endswith(".jsonl"):
        return training_curves(obj, **kw)
    if isinstance(obj, (list, tuple)) and obj and isinstance(obj[0], dict):
        obj = pd.DataFrame(list(obj))
    if isinstance(obj, pd.DataFrame):
        if "step" in obj.columns:
            return training_curves(obj, **kw)
        if "intervention" in obj.columns or "label" in obj.columns:
            return effect_bars(obj, label="intervention" if "intervention" in obj.columns else "label", **kw)
    raise ValueError(
        f"no view for {type(obj).__name__}; known: {sorted(ADAPTERS)}, a metrics.jsonl path, "
        "a DataFrame with a 'step' (training) or 'intervention'/'label' (effects) column"
    )
