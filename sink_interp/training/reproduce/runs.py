"""A finished run as a finding sees it: its config, its evaluations, the number a judge reads, its measurements.

The number a judge reads is :attr:`Run.final`, the mean of the evaluations in the last
:data:`TAIL` of training (on the Bigram-Backcopy testbed one evaluation has 2 heads x 64
probe sequences, so Sink_1 moves in steps of 0.78 % and swings from one evaluation to the
next; the mean of the last few is finer and steadier). :attr:`Run.last` is the last
evaluation alone, the number the table used before. :func:`mean_run` averages the runs of
several seeds into one, for the row's description.

    >>> from sink_interp.training.config import TrainConfig
    >>> ms = tuple({"step": s, "sink_rate_1": v} for s, v in [(0, 0.0), (50, 10.0), (70, 20.0), (80, 30.0), (100, 40.0)])
    >>> run = Run("base", TrainConfig(steps=100), "", ms)
    >>> run.final["sink_rate_1"], run.last["sink_rate_1"], run.final["tail_steps"]
    (30.0, 40.0, [70, 80, 100])
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import TrainConfig

#: the share of training whose evaluations :attr:`Run.final` averages (evaluations at step >= (1 - TAIL) x steps)
TAIL = 0.3

#: metrics that identify rather than measure: taken from the last evaluation, never averaged
_IDS = ("step", "tokens", "top_sink_k", "top_sink_head")

#: a run folder's measurements beyond metrics.jsonl (one JSON file each, written after training)
MEASURED = "measured"


@dataclass(frozen=True)
class Run:
    """A finished run: its label in the finding, config, folder, evaluations and measurements (``measured``)."""

    label: str
    cfg: TrainConfig
    out_dir: str
    metrics: tuple[dict[str, Any], ...]
    measured: dict[str, Any] = field(default_factory=dict)

    @property
    def last(self) -> dict[str, Any]:
        """The last evaluation."""
        return dict(self.metrics[-1])

    @property
    def final(self) -> dict[str, Any]:
        """The mean of the evaluations in the last :data:`TAIL` of training (``tail_steps`` lists their steps)."""
        return tail_mean(self.metrics, self.cfg.steps)

    @property
    def model_dir(self) -> str:
        return str(Path(self.out_dir) / "model")


def tail_mean(metrics: tuple[dict[str, Any], ...] | list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """Numbers averaged over the evaluations at step >= (1 - TAIL) x steps (identifiers from the last one)."""
    if not metrics:
        raise ValueError("a run without evaluations has no final numbers")
    start = (1.0 - TAIL) * max(int(steps), int(metrics[-1]["step"]))
    tail = [m for m in metrics if m["step"] >= start and m["step"] > 0] or [metrics[-1]]
    out = mean_of(tail)
    for k in _IDS:
        if k in metrics[-1]:
            out[k] = metrics[-1][k]
    rates = out.get("sink_rates")
    if isinstance(rates, list) and rates:
        out["top_sink_k"] = 1 + max(range(len(rates)), key=lambda i: rates[i])
    out["tail_steps"] = [int(m["step"]) for m in tail]
    return out


def mean_of(values: list[Any]) -> Any:
    """The element-wise mean of equally shaped JSON-like values: numbers averaged (equal ints stay ints),
    booleans by majority, lists and dicts element by element, anything else taken from the first."""
    first = values[0]
    if len(values) == 1:
        return _copy(first)
    if isinstance(first, bool) or all(isinstance(v, bool) for v in values):
        return sum(bool(v) for v in values) * 2 >= len(values)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        if all(isinstance(v, int) for v in values) and len(set(values)) == 1:
            return first
        nums = [float(v) for v in values]
        return statistics.fmean(nums) if all(math.isfinite(x) for x in nums) else float("nan")
    if all(isinstance(v, dict) for v in values) and all(v.keys() == first.keys() for v in values):
        return {k: mean_of([v[k] for v in values]) for k in first}
    if all(isinstance(v, (list, tuple)) for v in values) and len({len(v) for v in values}) == 1:
        return [mean_of([v[i] for v in values]) for i in range(len(first))]
    return _copy(first)


def _copy(v: Any) -> Any:
    return json.loads(json.dumps(v)) if isinstance(v, (dict, list)) else v


def mean_run(runs: list[Run]) -> Run:
    """The runs of several seeds as one: evaluations and measurements averaged (for the row's description)."""
    if len(runs) == 1:
        return runs[0]
    n = min(len(r.metrics) for r in runs)
    metrics = tuple(mean_of([r.metrics[i] for r in runs]) for i in range(n))
    keys = set.intersection(*(set(r.measured) for r in runs))
    measured = {k: mean_of([r.measured[k] for r in runs]) for k in sorted(keys)}
    return Run(runs[0].label, runs[0].cfg, runs[0].out_dir, metrics, measured)
