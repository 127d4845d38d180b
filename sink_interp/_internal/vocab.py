"""One name per metric, and the old names they replace (read where saved data are loaded).

Every frame, JSON, ``summary()`` and training metrics record names a metric the
same way (:data:`METRIC_NAMES`, also in docs/concepts/metric.md). Positions in the
API are 0-indexed like Python and torch; the paper's 1-indexed key index is
always called ``k`` (``rate(k)``, ``sink_rates[k - 1]``, ``top_sink_k``).

Files written before the names changed keep loading: :data:`RENAMED` maps each
old key to its new one, per kind of record, and :func:`upgrade` applies it where
saved data are read (``load_report``, ``read_metrics``, run resumption).

Example:
    >>> upgrade("metrics", {"sink_rate": 40.0, "sink_rate_eps0.1": 90.0, "mean_alpha1": 0.5, "sink_pos_max": 1})
    {'sink_rate_1': 40.0, 'sink_rate_1_by_eps': {'0.1': 90.0}, 'mean_alpha_1': 0.5, 'top_sink_k': 1}
    >>> upgrade("metrics", {"sink_rate_1": 40.0}) == {"sink_rate_1": 40.0}  # new names pass through
    True
"""

from __future__ import annotations

import re
from typing import Any

#: metric key -> what it holds (the same name in frames, JSON, summaries and training metrics)
METRIC_NAMES: dict[str, str] = {
    "sink_rate_1": "Sink_1 in percent: share of (sample, layer, head) with alpha_1 > eps "
    "(in training metrics: the first data token, k = 2 when the run has a learnable sink token)",
    "sink_rate_2": "Sink_2 in percent (a sink that moved to the second key shows here)",
    "sink_rates": "Sink_k for k = 1, 2, ... as a list: Sink_k is sink_rates[k - 1]",
    "sink_rate": "Sink_k in a table with a k column (SinkReport.to_frame, sink_positions, key_table)",
    "sink_rate_1_by_eps": "Sink_1 at other thresholds: {eps as text: percent}",
    "mean_alpha_1": "mean alpha_1 over (sample, layer, head)",
    "mean_alpha": "mean alpha_k in a table with a k column",
    "sink_mass": "mean 1 - row sum: attention given to no token (K-bias / sink-logit column)",
    "sink_rate_star": "Sink_* in percent: share of (sample, layer, head) with sink mass > eps",
    "top_sink_k": "the k (1-indexed) with the largest Sink_k among keys scored by at least 8 queries",
}

_EPS_KEY = re.compile(r"^sink_rate_eps(.+)$")
_SINK_K_COLUMN = re.compile(r"^Sink_k \(eps=.*\)$")

#: kind of record -> {old key: new key}; applied on load by :func:`upgrade`
RENAMED: dict[str, dict[str, str]] = {
    # training metrics records (metrics.jsonl, TrainResult.metrics/final) and the numbers reproduce derives from them
    "metrics": {
        "sink_rate": "sink_rate_1",
        "sink_rate_eps*": "sink_rate_1_by_eps[*]",
        "mean_alpha1": "mean_alpha_1",
        "sink_pos_max": "top_sink_k",
        "sink_star": "sink_rate_star",
        "sink_rate_with_first": "sink_rate_1_with_first",
        "sink_rate_without_first": "sink_rate_1_without_first",
        "mean_alpha1_with_first": "mean_alpha_1_with_first",
        "mean_alpha1_without_first": "mean_alpha_1_without_first",
        "sink_rate_visible_queries": "sink_rate_1_visible_queries",
        "mean_alpha1_visible_queries": "mean_alpha_1_visible_queries",
        "alpha1_bound": "alpha_1_bound",
        "sink_rate_raw": "sink_rate_1_raw",
        "mean_alpha1_raw": "mean_alpha_1_raw",
    },
    # EffectReport rows and Effect fields
    "Effect": {"Sink_1": "sink_rate_1", "Sink_2": "sink_rate_2", "sink_1": "sink_rate_1", "sink_2": "sink_rate_2"},
    # rows of sink_positions / key_table (LongContextReport.top_keys)
    "sink_positions": {"Sink_k (eps=*)": "sink_rate"},
    # report summaries and fields
    "SinkReport": {"rates": "sink_rates"},
    "MassiveReport": {"sinks": "sink_report"},
    "LongContextReport": {"sinks": "sink_report"},
    "StreamReport": {"sinks": "n_sinks"},
}


def upgrade(kind: str, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with the old keys of ``kind`` (see :data:`RENAMED`) renamed; values, order and new keys unchanged.

    ``kind="metrics"`` also applies to nested dicts (reproduce's numbers hold metrics records) and folds
    ``sink_rate_eps0.1`` keys into ``sink_rate_1_by_eps``.
    """
    names = RENAMED[kind]
    out: dict[str, Any] = {}
    for key, value in record.items():
        if kind == "metrics" and isinstance(value, dict):
            value = upgrade(kind, value)
        if kind == "metrics" and isinstance(value, list):
            value = [upgrade(kind, v) if isinstance(v, dict) else v for v in value]
        m = _EPS_KEY.match(key) if kind == "metrics" else None
        if m:
            out.setdefault("sink_rate_1_by_eps", {})[m.group(1)] = value
        elif kind == "sink_positions" and _SINK_K_COLUMN.match(key):
            out["sink_rate"] = value
        else:
            out[names.get(key, key)] = value
    return out


def upgrade_summary(type_name: str, d: dict[str, Any]) -> dict[str, Any]:
    """A report's summary JSON (what ``summary()`` / ``to_json`` write, the ``report`` block left as it is)
    with the old keys of ``type_name`` renamed: its own keys, effect rows, ``sink_positions``/``top_keys`` rows,
    training metrics (``final``, ``metrics``). ``type_name`` "metrics" upgrades a metrics record.

    Example:
        >>> upgrade_summary("StreamReport", {"sinks": 4, "window": 256})
        {'n_sinks': 4, 'window': 256}
    """
    if type_name == "metrics":
        return upgrade("metrics", d)
    out = upgrade(type_name, d) if type_name in RENAMED else dict(d)
    if isinstance(out.get("effects"), list):
        out["effects"] = [upgrade("Effect", e) if isinstance(e, dict) else e for e in out["effects"]]
    for key in ("sink_positions", "top_keys"):
        if isinstance(out.get(key), list):
            out[key] = [upgrade("sink_positions", r) if isinstance(r, dict) else r for r in out[key]]
    if isinstance(out.get("final"), dict):
        out["final"] = upgrade("metrics", out["final"])
    if type_name == "TrainResult" and isinstance(out.get("metrics"), list):
        out["metrics"] = [upgrade("metrics", m) for m in out["metrics"]]
    return out
