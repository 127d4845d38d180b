"""The reproduction table: one row per finding (the paper's claim, ours, the verdict across seeds) and its files."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from ..._internal import display
from ..._internal.provenance import dumps, write_atomic
from .verdict import VERDICTS


@dataclass(frozen=True)
class ReproRow:
    """One finding: the paper's claim and number, ours (the seeds' mean), the verdict across seeds and the checks behind it.

    ``agree`` is ``True`` / ``False`` for agree / disagree and ``None`` for mixed or not comparable (``verdict`` says
    which); ``runs`` maps each run key to its folder per seed; ``not_in_seeds`` says what of ``paper`` the seed
    documents do not hold.
    """

    finding: str
    claim: str
    paper: str
    ours: str
    agree: bool | None
    source: str
    runs: dict[str, dict[str, str]]
    numbers: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    command: str = ""  # re-makes this row; OUT is the folder holding reproduce.json (a new one trains the runs again)
    verdict: str = ""
    checks: str = ""
    not_in_seeds: str = ""
    seeds: tuple[int, ...] = ()
    curves: str = ""

    def with_curves(self, path: str) -> ReproRow:
        return replace(self, curves=path)


@dataclass(frozen=True, eq=False)
class ReproTable:
    """The reproduction table: one row per finding (paper vs ours, the verdict across seeds).

    ``pending`` (a table of a sweep still running, ``tabulate(root, partial=True)``): each finding left out because
    some of its runs are not finished, with how many; empty in a whole table.
    """

    rows: tuple[ReproRow, ...]
    scale: str
    out: str
    versions: dict[str, str]
    pending: dict[str, int] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "finding": r.finding,
                    "paper": r.paper,
                    "ours": r.ours,
                    "verdict": r.verdict,
                    "agree": r.agree,
                    "seeds": len(r.seeds),
                    "source": r.source,
                    "command": r.command,
                }
                for r in self.rows
            ]
        )

    def counts(self) -> dict[str, int]:
        """Rows per verdict (agree, disagree, mixed, not comparable)."""
        return {v: sum(1 for r in self.rows if r.verdict == v) for v in VERDICTS}

    def summary(self) -> dict[str, Any]:
        c = self.counts()
        return {
            "scale": self.scale,
            "out": self.out,
            "agree": c["agree"],
            "disagree": c["disagree"],
            "mixed": c["mixed"],
            "not_comparable": c["not comparable"],
            "n": len(self.rows),
            "versions": self.versions,
            **({"pending": self.pending} if self.pending else {}),
        }

    def to_json(self, path: str | None = None) -> str:
        text = dumps({**self.summary(), "rows": [{**r.__dict__, "seeds": list(r.seeds)} for r in self.rows]})
        if path is not None:
            write_atomic(path, text)
        return text

    def to_markdown(self) -> str:
        def cell(s: str) -> str:  # a table cell: no column breaks, and brackets never read as link references
            return code(s).replace("[", "\\[").replace("]", "\\]")

        def code(s: str) -> str:  # inside a code span only the column break needs escaping
            return str(s).replace("|", "\\|").replace("\n", " ")

        c = self.counts()
        lines = [
            f"{len(self.rows)} findings: " + ", ".join(f"{n} {v}" for v, n in c.items()) + ".",
            "",
            *([f"**{self.pending_note()}**", ""] if self.pending else []),
            "| finding | paper | ours | verdict | command |",
            "|---|---|---|---|---|",
        ]
        for r in self.rows:
            paper = f"{cell(r.paper)} ({cell(r.source)})" + (
                f" — *not in the seeds:* {cell(r.not_in_seeds)}" if r.not_in_seeds else ""
            )
            ours = cell(r.ours) + (f" — *{cell(r.checks)}*" if r.checks else "")
            lines.append(f"| {cell(r.finding + ': ' + r.claim)} | {paper} | {ours} | {r.verdict} | `{code(r.command)}` |")
        return "\n".join(lines) + "\n"

    def pending_note(self) -> str:
        """One sentence naming the pending findings (a table of a sweep in progress); "" for a whole table."""
        if not self.pending:
            return ""
        left = ", ".join(f"{f} ({n} {'run' if n == 1 else 'runs'} left)" for f, n in self.pending.items())
        k = len(self.pending)
        return f"A sweep in progress, not the whole table: {k} finding{' is' if k == 1 else 's are'} pending: {left}."

    def _repr_html_(self) -> str | None:
        """The view registered for this class (one row per finding)."""
        return display.html_of(self, fallback=lambda: None)


@dataclass(frozen=True)
class FindingCurves:
    """The training curves of one finding's runs: ``{run label: metrics rows}``, drawn by the view registered for this class."""

    title: str
    metrics: dict[str, list[dict[str, Any]]]


def curves_file(path: Path, curves: FindingCurves) -> str | None:
    """The curves as a standalone HTML file; None when no view is registered."""
    if display.view_fn(curves) is None:
        return None
    display.view_of(curves).save(path)
    return str(path)
