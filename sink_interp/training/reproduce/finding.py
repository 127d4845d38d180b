"""What a finding is (its runs, its claim as checks) and the helpers the findings share.

A :class:`Finding` names its runs (``configs(scale) -> {key: TrainConfig}``), the
measurements its judge reads beyond the metrics (``measures``) and its ``judge``: a
function of one seed's runs ``{key: Run}`` that returns a :class:`Verdict` whose ``test``
is the claim as checks (:mod:`.verdict`). The runner calls the judge once per seed, decides
the claim across seeds, and once more on the seeds' mean to describe the row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..config import TrainConfig, preset
from .runs import Run
from .verdict import Node, check

#: seeds of every arm, by scale (a finding may name its own)
SEEDS = {"cpu": (0, 1, 2), "gpu": (0,)}

#: "no massive activation" at this scale: the first token's residual norm within this factor of the others'
#: mean (Sun et al.'s |x| > 100 and >= 1000 medians never occur in these tiny models; a residual peak does)
PEAK_RATIO = 1.5


@dataclass(frozen=True)
class Verdict:
    """One seed's judgement: the row text, the claim as checks, the numbers; ``comparable`` is a precondition."""

    ours: str
    test: Node
    numbers: dict[str, Any]
    note: str = ""
    comparable: Node | None = None


@dataclass(frozen=True)
class Finding:
    """One of the paper's findings: the runs it needs, what they measure and how to judge them.

    ``not_in_seeds`` says what of ``paper`` the seed documents (the paper's abstract and talk)
    do not hold, shown in the row.
    """

    name: str
    claim: str
    paper: str
    configs: Callable[[str], dict[str, TrainConfig]]
    judge: Callable[[dict[str, Run]], Verdict]
    source: str = "Gu et al. 2025"
    measures: dict[str, tuple[str, ...]] | Callable[[str], dict[str, tuple[str, ...]]] = field(default_factory=dict)
    not_in_seeds: str = ""
    seeds: tuple[int, ...] | None = None

    def seeds_at(self, scale: str) -> tuple[int, ...]:
        return self.seeds if self.seeds is not None and scale == "cpu" else SEEDS[scale]

    def measures_at(self, scale: str) -> dict[str, tuple[str, ...]]:
        """``{run key: measurement names}`` the judge reads (:mod:`.measure`)."""
        return dict(self.measures(scale) if callable(self.measures) else self.measures)


# --------------------------------------------------------------------------- configs


def base(scale: str) -> TrainConfig:
    return preset("bb-softmax") if scale == "cpu" else preset("gpu-text-softmax")


def nobos(scale: str) -> TrainConfig:
    """The base without a BOS: BB sequences start with a data token; text is packed in random windows."""
    b = base(scale)
    return b.replace(name=b.name + "-nobos", bb_bos_num=0) if scale == "cpu" else b.replace(name=b.name + "-nobos", bos="none")


def variant(cfg: TrainConfig, suffix: str, **kw: Any) -> TrainConfig:
    return cfg.replace(name=f"{cfg.name}-{suffix}", **kw)


# --------------------------------------------------------------------------- numbers and checks


def sink(m: dict[str, Any], key: str = "sink_rate_1") -> float:
    return float(m.get(key, float("nan")))


def peak(m: dict[str, Any]) -> float:
    """The first token's residual norm over the others' mean (a residual peak above :data:`PEAK_RATIO`)."""
    return float(m.get("resid_norm_ratio", float("nan")))


#: a run "has a sink" to compare against when its Sink_1 is at least this
HAS_SINK = 10.0


def has_sink(name: str, m: dict[str, Any]) -> Node:
    """The precondition of a claim made relative to a sink: the run forms one (:data:`HAS_SINK`)."""
    return check(f"{name}: Sink_1 (a sink to compare with)", sink(m), ">=", HAS_SINK)


def no_peak(name: str, m: dict[str, Any]) -> Node:
    return check(f"{name}: first-token residual norm / mean", peak(m), "<", PEAK_RATIO)


def has_peak(name: str, m: dict[str, Any]) -> Node:
    return check(f"{name}: first-token residual norm / mean", peak(m), ">=", PEAK_RATIO)


def massive(m: dict[str, Any]) -> str:
    return f"max|h| sink/rest {m['max_abs_sink']:.1f}/{m['max_abs_rest']:.1f}, ||h_sink||/mean {m['resid_norm_ratio']:.2f}"


def fmt(m: dict[str, Any], *keys: str) -> str:
    """``Sink_1 x%`` and the asked extras (``star``, ``v``, ``massive``), then the loss."""
    parts = [f"Sink_1 {m['sink_rate_1']:.1f}%"]
    for k in keys:
        if k == "star":
            parts.append(f"Sink_* {m.get('sink_rate_star', 0.0):.1f}%")
        elif k == "v":
            parts.append(f"v-ratio {m['value_norm_ratio_top']:.2f}")
        elif k == "massive":
            parts.append(massive(m))
    parts.append(f"loss {m['val_loss']:.3f}")
    return ", ".join(parts)


def rates(m: dict[str, Any], n: int = 4) -> str:
    return "[" + ", ".join(f"{x:.1f}" for x in m["sink_rates"][:n]) + "]"
