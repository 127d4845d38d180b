"""How a finding's claim is decided, on one seed and across seeds.

A judge states the claim as :class:`Check` s (a number against a bound) combined with
:func:`all_of` / :func:`any_of`. On one seed the tree is true or false. Across seeds each
check is *robust* when every seed gives the same answer and the mean margin exceeds the
seed-to-seed spread (the standard deviation of the margin, ``ddof=1``); otherwise it is
unsure. The tree is combined in three-valued (Kleene) logic: ``all_of`` fails when one part
robustly fails and passes when every part robustly passes; ``any_of`` the other way round.
The row's verdict is ``agree`` (passes), ``disagree`` (fails) or ``mixed`` (unsure).

A judge may state a precondition (``comparable``: e.g. "the softmax base forms a sink", without
which "a knob weakens the sink" tests nothing). A seed whose precondition fails is left out of
the decision and said so; the claim is decided on the seeds that can test it, at least two of
them (one seed alone is ``mixed``), and is ``not comparable`` when no seed can.

    >>> seeds = [all_of(check("Sink_1 of the K bias", v, "<", 5.0)) for v in (0.0, 0.8, 1.6)]
    >>> decide(seeds).verdict
    'agree'
    >>> decide([all_of(check("Sink_1", v, "<", 5.0)) for v in (0.0, 9.0, 1.0)]).verdict  # one seed disagrees
    'mixed'
    >>> decide([all_of(check("rise", v, ">", 10.0)) for v in (11.0, 30.0, 12.0)]).verdict  # margin 7.7 < spread 10.7
    'mixed'
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Union

#: the verdicts a row can have, in the order the table counts them
VERDICTS = ("agree", "disagree", "mixed", "not comparable")


@dataclass(frozen=True)
class Check:
    """``value op bound``: one number of a claim against its threshold (``op`` is ``<``, ``<=``, ``>`` or ``>=``)."""

    name: str
    value: float
    op: str
    bound: float

    def __post_init__(self) -> None:
        if self.op not in ("<", "<=", ">", ">="):
            raise ValueError(f"Check op must be <, <=, > or >=, got {self.op!r}")

    @property
    def margin(self) -> float:
        """How far the value is on the passing side of the bound (negative: on the failing side)."""
        return self.bound - self.value if self.op in ("<", "<=") else self.value - self.bound

    @property
    def passed(self) -> bool:
        m = self.margin
        return m > 0 if self.op in ("<", ">") else m >= 0

    def text(self) -> str:
        return f"{self.name} {self.op} {_num(self.bound)}"


@dataclass(frozen=True)
class Combo:
    """All (``kind="all"``) or any (``"any"``) of its parts hold."""

    kind: str
    parts: tuple[Node, ...]


Node = Union[Check, Combo]


def check(name: str, value: float, op: str, bound: float) -> Check:
    """A :class:`Check` (values are floats; NaN fails)."""
    return Check(name, float(value), op, float(bound))


def all_of(*parts: Node) -> Combo:
    return Combo("all", tuple(parts))


def any_of(*parts: Node) -> Combo:
    return Combo("any", tuple(parts))


def holds(node: Node) -> bool:
    """The claim on one seed."""
    if isinstance(node, Check):
        return node.passed
    results = [holds(p) for p in node.parts]
    return all(results) if node.kind == "all" else any(results)


@dataclass(frozen=True)
class Decision:
    """A claim decided across seeds: ``verdict`` (one of :data:`VERDICTS`), each check's numbers, each seed's verdict."""

    verdict: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    per_seed: list[str] = field(default_factory=list)

    @property
    def agree(self) -> bool | None:
        """``True`` / ``False`` for agree / disagree, ``None`` for mixed or not comparable."""
        return {"agree": True, "disagree": False}.get(self.verdict)


def _robust(leaves: list[Check]) -> tuple[str, dict[str, Any]]:
    """``pass``, ``fail`` or ``unsure`` for one check across seeds, with its numbers."""
    margins = [c.margin for c in leaves]
    passed = [c.passed for c in leaves]
    finite = all(math.isfinite(m) for m in margins)
    mean = statistics.fmean(margins) if finite else float("nan")
    sd = statistics.stdev(margins) if finite and len(margins) > 1 else 0.0
    clear = finite and (sd == 0.0 or abs(mean) > sd)
    state = "pass" if all(passed) and clear else "fail" if not any(passed) and clear else "unsure"
    values = [c.value for c in leaves]
    first = leaves[0]
    return state, {
        "check": first.text(),
        "values": values,
        "bounds": [c.bound for c in leaves],
        "mean": statistics.fmean(values) if all(math.isfinite(v) for v in values) else float("nan"),
        "sd": statistics.stdev(values) if len(values) > 1 and all(math.isfinite(v) for v in values) else 0.0,
        "margin_mean": mean,
        "margin_sd": sd,
        "state": state,
    }


def _combine(trees: list[Node], rows: list[dict[str, Any]]) -> str:
    first = trees[0]
    if isinstance(first, Check):
        if not all(isinstance(t, Check) and t.name == first.name for t in trees):
            raise ValueError(f"the seeds' checks differ: {[getattr(t, 'name', t) for t in trees]}")
        state, row = _robust(trees)  # type: ignore[arg-type]
        rows.append(row)
        return state
    if not all(isinstance(t, Combo) and t.kind == first.kind and len(t.parts) == len(first.parts) for t in trees):
        raise ValueError("the seeds' claims have different shapes; a judge must build the same checks for every seed")
    states = [_combine([t.parts[i] for t in trees], rows) for i in range(len(first.parts))]  # type: ignore[union-attr]
    if first.kind == "all":
        return "fail" if "fail" in states else "pass" if all(s == "pass" for s in states) else "unsure"
    return "pass" if "pass" in states else "fail" if all(s == "fail" for s in states) else "unsure"


_VERDICT = {"pass": "agree", "fail": "disagree", "unsure": "mixed"}


def decide(tests: list[Node], comparable: list[Node] | None = None) -> Decision:
    """The verdict of a claim from its check tree on each seed (and, optionally, each seed's precondition)."""
    if not tests:
        raise ValueError("decide needs the claim of at least one seed")
    rows: list[dict[str, Any]] = []
    able = list(range(len(tests)))
    if comparable is not None:
        _combine(comparable, rows)
        for row in rows:
            row["precondition"] = True
        able = [i for i, c in enumerate(comparable) if holds(c)]
    per_seed = ["not comparable"] * len(tests)
    for i in able:
        per_seed[i] = _VERDICT["pass" if holds(tests[i]) else "fail"]
    if not able:
        return Decision("not comparable", rows, per_seed)
    tested: list[dict[str, Any]] = []
    state = _combine([tests[i] for i in able], tested)
    for row in tested:
        row["seeds"] = able
    rows += tested
    if len(able) < min(2, len(tests)):  # one seed of several: no verdict rests on it
        return Decision("mixed", rows, per_seed)
    return Decision(_VERDICT[state], rows, per_seed)


def _num(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"


def checks_text(decision: Decision, seeds: list[int]) -> str:
    """One clause per check: its values per seed, mean ± sd, and whether it holds robustly."""
    word = {"pass": "holds", "fail": "fails", "unsure": "unsure"}
    parts = []
    for row in decision.checks:
        vals = " / ".join(_num(v) for v in row["values"])
        spread = f" (mean {_num(row['mean'])} ± {_num(row['sd'])})" if len(row["values"]) > 1 else ""
        pre = "precondition " if row.get("precondition") else ""
        parts.append(f"{pre}{row['check']}: {vals}{spread} {word[row['state']]}")
    label = f"seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    out = [p for p in decision.per_seed if p == "not comparable"]
    left = f" ({len(out)} of {len(seeds)} seeds not comparable: left out of the checks)" if out and len(out) < len(seeds) else ""
    return f"checks over {label}{left}: " + "; ".join(parts) + f"; verdict per seed: {', '.join(decision.per_seed)}"
