"""Reproduce the paper's findings with paired training runs on several seeds, and tabulate them.

``reproduce("all", scale="cpu", out="repro/")`` trains the runs each finding
needs on every seed (shared runs are trained once: run directories are named by
the config fingerprint and resume), measures what the judges read beyond the
metrics, and writes ``reproduce.json`` and ``reproduce.md`` (finding, the
paper's number or direction, ours, the verdict across seeds) plus training
curves (``curves/<finding>.html``, drawn by :mod:`sink_interp.views`).

A verdict is ``agree`` or ``disagree`` only when every seed says so and the
margin of each deciding check exceeds its seed-to-seed spread; otherwise it is
``mixed`` (:mod:`.verdict`). A judge reads the mean of each run's last
evaluations (:attr:`.runs.Run.final`), not the last one alone.

At ``scale="cpu"`` the findings run on the Bigram-Backcopy task (see
:mod:`sink_interp.tasks`), which develops a sink in minutes, on three seeds; the
intra-document rows run on the shipped natural-text corpus, and ``text-emergence``
on the big offline corpus (``scripts/build_corpus.py``), where a first-token sink
needs ~10M tokens (hours on one CPU thread; two seeds). ``scale="gpu"`` uses the
paper's 60M-model recipe on natural text (``gpu-text-softmax``; give it a large
corpus with ``text_corpus``); it is a recipe, not run in CI.

Modules: :mod:`.findings` (the findings by group: optimisation, data, loss,
biases, attention, architecture), :mod:`.finding` (what a finding is),
:mod:`.verdict` (checks and the decision across seeds), :mod:`.runs` (a run's
numbers), :mod:`.measure` (measurements stored in run folders), :mod:`.runner`
(plan -> run one -> tabulate) and :mod:`.table` (the table).

The work splits into plan -> run one -> tabulate, so that the runs can go to
any executor (a local process pool by default, SLURM arrays through submitit,
Ray) and every run is a resumable directory keyed by its config:

    >>> import tempfile
    >>> small = dict(d_model=32, d_mlp=64, seq_len=16, batch_size=4, eval_batches=1, probe_n=4, bb_vocab=16)
    >>> p = plan(["lr"], steps=2, overrides=small, seeds=[0])
    >>> [s.labels for s in p]
    [('lr/base@0',), ('lr/small_lr@0',)]
    >>> root = tempfile.mkdtemp()
    >>> _ = plan(["lr"], steps=2, overrides=small, seeds=[0], out=root)   # writes root/plan.json
    >>> [run_one(i, root, progress=False) for i in range(len(p))]  # e.g. one SLURM array task each  # doctest: +ELLIPSIS
    ['runs/bb-softmax-...-s2', 'runs/bb-softmax-lr8x-smaller-...-s2']
    >>> tabulate(root).rows[0].finding
    'lr'
"""

from __future__ import annotations

from .finding import SEEDS, Finding, Verdict
from .findings import FINDINGS
from .measure import bos_dependence, head_stats, massive_stats, raw_stats, window_stats
from .runner import MARKER, PLAN, Plan, RunSpec, plan, reproduce, run_dir, run_one, tabulate
from .runs import Run
from .table import FindingCurves, ReproRow, ReproTable
from .verdict import Check, decide

__all__ = [
    "FINDINGS",
    "MARKER",
    "PLAN",
    "SEEDS",
    "Check",
    "Finding",
    "FindingCurves",
    "Plan",
    "ReproRow",
    "ReproTable",
    "Run",
    "RunSpec",
    "Verdict",
    "bos_dependence",
    "decide",
    "head_stats",
    "massive_stats",
    "plan",
    "raw_stats",
    "reproduce",
    "run_dir",
    "run_one",
    "tabulate",
    "window_stats",
]
