"""Plan -> run one -> tabulate: the runs of the findings, trained once each on any executor, then judged.

Every run is a resumable folder named by its config (``runs/<name>-<fingerprint>-s<steps>``),
so shared runs are trained once and a killed sweep resumes. A run is *done* when its
evaluations reach its steps and the measurements its findings read are stored
(``measured/*.json``): a folder copied without its model (``docs/results/reproduce``) still
tabulates. Each arm of a finding runs on every seed of the finding (:data:`~.finding.SEEDS`);
the judge decides each seed, :func:`~.verdict.decide` the claim across them.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..._internal import files
from ..._internal.executors import check_executor, map_jobs
from ..._internal.provenance import dumps, versions, write_atomic
from ..config import TrainConfig
from ..loop import LOCK, claim_dir, dir_lock, read_metrics, run_config, train
from .findings import FINDINGS
from .measure import measure_run, missing, read_measured
from .runs import Run, mean_run
from .table import FindingCurves, ReproRow, ReproTable, curves_file
from .verdict import checks_text, decide

#: Marks a folder as a reproduce output of ours (written first).
MARKER = "sink_interp_reproduce.json"
#: The list of runs of the last plan written to a reproduce output (``run_one(INDEX)`` reads it).
PLAN = "plan.json"


def run_dir(root: Path, cfg: TrainConfig) -> Path:
    return root / "runs" / f"{cfg.name}-{cfg.fingerprint()}-s{cfg.steps}"


def _rel(d: Path, root: Path) -> str:
    """``d`` relative to the output root, with forward slashes (the folder can move)."""
    return Path(d).relative_to(root).as_posix()


def seeded(cfg: TrainConfig, seed: int) -> TrainConfig:
    """``cfg`` on another seed (its name says so; seed 0 is the config itself)."""
    return cfg if seed == cfg.seed else cfg.replace(seed=seed, name=f"{cfg.name}-seed{seed}")


def label(finding: str, key: str, seed: int) -> str:
    return f"{finding}/{key}@{seed}"


def parse_label(text: str) -> tuple[str, str, int]:
    """``"kbias/base@1"`` -> ``("kbias", "base", 1)`` (a label without ``@`` is seed 0, as plans before seeds wrote)."""
    f, _, rest = text.partition("/")
    key, at, seed = rest.partition("@")
    return f, key, int(seed) if at else 0


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class RunSpec:
    """One run of a plan: its config, the labels (``finding/key@seed``) that use it, its folder, its measurements."""

    index: int
    labels: tuple[str, ...]
    config: TrainConfig
    dir: str
    measures: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.labels[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "labels": list(self.labels),
            "dir": self.dir,
            "measures": list(self.measures),
            "config": self.config.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        return cls(
            int(d["index"]), tuple(d["labels"]), TrainConfig.from_dict(d["config"]), str(d["dir"]), tuple(d.get("measures", ()))
        )


@dataclass(frozen=True)
class Plan:
    """The runs of a reproduction (a sequence of :class:`RunSpec`), the findings that use them and the scale."""

    findings: tuple[str, ...]
    scale: str
    runs: tuple[RunSpec, ...]
    steps: int | None = None  # the --steps override the plan was made with (None: each run's own)
    overrides: tuple[tuple[str, Any], ...] = ()  # the --set overrides, as sorted (field, value) pairs
    seeds: tuple[int, ...] | None = None  # the --seeds override (None: each finding's own)

    def command(self, finding: str, out: str = "OUT") -> str:
        """The command that makes one finding's row: ``sink-interp reproduce --finding NAME --out OUT`` (+ the plan's overrides)."""
        parts = ["sink-interp reproduce", f"--finding {finding}"]
        if self.scale != "cpu":
            parts.append(f"--scale {self.scale}")
        if self.steps is not None:
            parts.append(f"--steps {self.steps}")
        if self.seeds is not None:
            parts.append(f"--seeds {','.join(map(str, self.seeds))}")
        parts += [f"--set {k}={json.dumps(v, separators=(',', ':'))}" for k, v in self.overrides]
        parts.append(f"--out {out}")
        return " ".join(parts)

    def __len__(self) -> int:
        return len(self.runs)

    def __iter__(self) -> Any:
        return iter(self.runs)

    def __getitem__(self, i: int) -> RunSpec:
        return self.runs[i]

    def arms(self, finding: str) -> dict[str, dict[int, RunSpec]]:
        """``{run key: {seed: spec}}`` of one finding."""
        out: dict[str, dict[int, RunSpec]] = {}
        for s in self.runs:
            for lab in s.labels:
                f, key, seed = parse_label(lab)
                if f == finding:
                    out.setdefault(key, {})[seed] = s
        return out

    def runs_of(self, finding: str) -> list[RunSpec]:
        """The distinct runs one finding reads (a run shared by two of its arms once), in plan order."""
        return sorted(
            {s.index: s for by_seed in self.arms(finding).values() for s in by_seed.values()}.values(), key=lambda s: s.index
        )

    def uses(self, finding: str, seed: int | None = None) -> dict[str, RunSpec]:
        """``{run key: spec}`` of one finding on one seed (default: each key's first seed)."""
        return {k: v[min(v) if seed is None else seed] for k, v in self.arms(finding).items()}

    def to_json(self) -> str:
        return dumps(
            {
                "sink_interp_plan": 2,
                "findings": list(self.findings),
                "scale": self.scale,
                "steps": self.steps,
                "seeds": None if self.seeds is None else list(self.seeds),
                "overrides": dict(self.overrides),
                "runs": [s.to_dict() for s in self.runs],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        d = json.loads(text)
        return cls(
            tuple(d["findings"]),
            str(d["scale"]),
            tuple(RunSpec.from_dict(r) for r in d["runs"]),
            d.get("steps"),
            _over(d.get("overrides")),
            None if d.get("seeds") is None else tuple(int(s) for s in d["seeds"]),
        )

    @classmethod
    def read(cls, root: str | os.PathLike[str]) -> Plan:
        """The plan saved in a reproduce output (one-line ``FileNotFoundError`` when there is none)."""
        path = Path(root).expanduser() / PLAN
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: no plan in this folder; fix: write one first with "
                f"`sink-interp reproduce --out {root} --plan-only` (or sink_interp.training.reproduce.plan(..., out=))"
            )
        try:
            p = cls.from_json(path.read_text(encoding="utf-8"))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not a readable plan ({e}); fix: write it again with --plan-only") from None
        for s in p.runs:  # a run folder is trained and written: it stays inside the output root
            files.inside(root, s.dir, f"{path}: runs[{s.index}].dir", _PLAN_FIX.format(root=root))
        return p


_PLAN_FIX = "write the plan again (`sink-interp reproduce --out {root} --plan-only`): its run folders stay inside the output"


def _over(overrides: dict[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """Overrides as sorted (field, value) pairs (lists as tuples): hashable, and equal for equal dicts."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in (overrides or {}).items()))


def _override(c: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """``c`` with the overrides; random tokens that covered the whole sequence keep covering it under a new ``seq_len``."""
    over = dict(overrides)
    if "seq_len" in over and c.random_token_pos is not None and "random_token_count" not in over:
        if c.random_token_pos + c.random_token_count - 1 == c.seq_len:
            over["random_token_count"] = over["seq_len"] - c.random_token_pos + 1
    if c.k_bias_dims is not None and "k_bias_dims" not in over:  # d_a beyond a smaller head: the whole head
        d = over.get("d_model", c.d_model) // over.get("n_heads", c.n_heads)
        over["k_bias_dims"] = min(c.k_bias_dims, d)
    return c.replace(**over)


def _shorter(c: TrainConfig, steps: int) -> TrainConfig:
    return c.replace(
        steps=steps,
        eval_every=max(1, min(c.eval_every, steps)),
        ckpt_every=max(1, min(c.ckpt_every, steps)),
        warmup=min(c.warmup, steps // 2),
    )


def _entries(
    names: list[str], scale: str, steps: int | None, overrides: dict[str, Any] | None, seeds: Sequence[int] | None
) -> list[tuple[str, TrainConfig, tuple[str, ...]]]:
    """``(label, config, measurements)`` of every arm of every finding on every seed, in table order."""
    out = []
    for n in names:
        f = FINDINGS[n]
        measures = f.measures_at(scale)
        on = tuple(seeds) if seeds is not None else f.seeds_at(scale)
        for key, c in f.configs(scale).items():
            if overrides:
                c = _override(c, overrides)
            if steps is not None:
                c = _shorter(c, steps)
            for s in on:
                out.append((label(n, key, s), seeded(c, s), tuple(measures.get(key, ()))))
    return out


def _specs(entries: list[tuple[str, TrainConfig, tuple[str, ...]]], root: Path) -> list[RunSpec]:
    """One spec per distinct run folder, in order of first use, with the union of its measurements."""
    by_dir: dict[str, tuple[list[str], TrainConfig, list[str]]] = {}
    for lab, cfg, measures in entries:
        d = _rel(run_dir(root, cfg), root)
        labels, _, ms = by_dir.setdefault(d, ([], cfg, []))
        labels.append(lab)
        ms += [m for m in measures if m not in ms]
    return [RunSpec(i, tuple(labels), cfg, d, tuple(ms)) for i, (d, (labels, cfg, ms)) in enumerate(by_dir.items())]


def _names(finding: str | Sequence[str], scale: str) -> list[str]:
    if scale not in ("cpu", "gpu"):
        raise ValueError(f"scale must be 'cpu' or 'gpu', got {scale!r}")
    names = list(FINDINGS) if finding == "all" else ([finding] if isinstance(finding, str) else list(finding))
    unknown = [n for n in names if n not in FINDINGS]
    if unknown:
        raise ValueError(f"unknown finding(s) {unknown}; known: {', '.join(FINDINGS)} or 'all'")
    if not names:
        raise ValueError("finding is empty; fix: give a finding name, a list of them, or 'all'")
    return names


def _check_seeds(seeds: Sequence[int] | None) -> tuple[int, ...] | None:
    if seeds is None:
        return None
    out = tuple(seeds)
    if not out or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in out) or len(set(out)) != len(out):
        raise ValueError(f"seeds must be distinct whole numbers >= 0, e.g. 0,1,2; got {seeds!r}")
    return out


def _make_plan(
    finding: str | Sequence[str],
    scale: str,
    steps: int | None,
    overrides: dict[str, Any] | None,
    seeds: Sequence[int] | None,
    root: Path,
) -> Plan:
    names = _names(finding, scale)
    seeds = _check_seeds(seeds)
    return Plan(
        tuple(names), scale, tuple(_specs(_entries(names, scale, steps, overrides, seeds), root)), steps, _over(overrides), seeds
    )


def _claim(root: Path) -> None:
    """Refuse a folder that is not ours before writing anything; then mark it (under the caller's lock)."""
    claim_dir(root, _is_reproduce_root, "reproduce output")
    if not (root / MARKER).is_file():
        write_atomic(root / MARKER, dumps({"sink_interp_reproduce": 1, "versions": versions()}))


def plan(
    finding: str | Sequence[str] = "all",
    *,
    scale: str = "cpu",
    steps: int | None = None,
    overrides: dict[str, Any] | None = None,
    seeds: Sequence[int] | None = None,
    out: str | os.PathLike[str] | None = None,
) -> Plan:
    """The runs that ``finding`` needs (shared runs once), numbered in a fixed order; nothing is trained.

    With ``out``, the plan is also written to ``out/plan.json`` (atomically;
    ``out`` must be new, empty or an earlier reproduce output), where
    :func:`run_one` finds a run by its index and :func:`tabulate` the findings.
    ``steps``, ``overrides`` and ``seeds`` as in :func:`reproduce`.

        >>> p = plan(["lr", "emergence"])
        >>> len(p), p[0].labels, p[0].dir.startswith("runs/bb-softmax-")
        (6, ('lr/base@0', 'emergence/base@0'), True)
        >>> sorted(p.arms("lr")["small_lr"])
        [0, 1, 2]
    """
    root = Path(out).expanduser() if out is not None else Path("reproduce")
    p = _make_plan(finding, scale, steps, overrides, seeds, root)
    if out is not None:
        claim_dir(root, _is_reproduce_root, "reproduce output")  # refuse before writing anything
        root.mkdir(parents=True, exist_ok=True)
        with dir_lock(root, "reproduce output"):
            _claim(root)
            write_atomic(root / PLAN, p.to_json())
    return p


# --------------------------------------------------------------------------- running


def _ours(root: Path) -> None:
    if not (root / MARKER).is_file():
        raise FileNotFoundError(
            f"{root} is not a sink_interp reproduce output (no {MARKER}); fix: write a plan there first with "
            f"`sink-interp reproduce --out {root} --plan-only`"
        )


def _trained(d: Path, cfg: TrainConfig) -> bool:
    m = read_metrics(d)
    return bool(m) and m[-1]["step"] >= cfg.steps and (d / "model").is_dir()


def _done(d: Path, spec: RunSpec) -> bool:
    """Evaluated to the end and measured: enough to tabulate (the model itself is not needed)."""
    m = read_metrics(d)
    return bool(m) and m[-1]["step"] >= spec.config.steps and not missing(d, spec.measures)


def run_one(
    spec: RunSpec | int,
    root: str | os.PathLike[str],
    *,
    device: str = "cpu",
    threads: int | None = 1,
    progress: bool = True,
) -> str:
    """Train one run of a plan under ``root`` and take its measurements (resumable, idempotent); returns its folder.

    ``spec`` is a :class:`RunSpec` or its index in ``root/plan.json`` (what a
    SLURM array task passes as ``$SLURM_ARRAY_TASK_ID``). A done run is left as
    it is; an unfinished one resumes from its checkpoint. Two processes on one
    run: the second is refused with a one-line error.
    """
    root = Path(root).expanduser()
    _ours(root)
    if not isinstance(spec, RunSpec):
        p = Plan.read(root)
        if isinstance(spec, bool) or not isinstance(spec, int) or not 0 <= spec < len(p):
            raise ValueError(
                f"run index must be a whole number in 0..{len(p) - 1} (the plan in {root / PLAN} has {len(p)} runs), got {spec!r}"
            )
        spec = p[spec]
    d = files.inside(root, spec.dir, f"run {spec.index}'s folder", _PLAN_FIX.format(root=root))
    if not _done(d, spec):
        if not _trained(d, spec.config):
            train(spec.config, d, resume=True, device=device, threads=threads, progress=progress)
        if spec.measures:
            if threads is not None:
                import torch

                torch.set_num_threads(threads)
            measure_run(Run(spec.label, spec.config, str(d), tuple(read_metrics(d))), spec.measures)
    return spec.dir


def _run_specs(
    specs: Sequence[RunSpec],
    root: Path,
    *,
    device: str,
    threads: int | None,
    jobs: int,
    progress: bool,
    executor: Any,
    options: dict[str, Any] | None,
) -> None:
    """Run the specs not yet done on ``executor``, then check that every one is done (never tabulate a partial plan)."""
    todo = [s for s in specs if not _done(root / s.dir, s)]
    local_serial = executor == "local" and (jobs == 1 or len(todo) <= 1)
    fn = functools.partial(run_one, root=str(root), device=device, threads=threads, progress=progress and local_serial)
    map_jobs(fn, todo, executor=executor, jobs=jobs, options=options, folder=root / "submitit")
    _check_done(specs, root)


def _check_done(specs: Sequence[RunSpec], root: Path) -> None:
    left = [s.index for s in specs if not _done(root / s.dir, s)]
    if left:
        shown = ", ".join(map(str, left[:8])) + (f" and {len(left) - 8} more" if len(left) > 8 else "")
        raise ValueError(
            f"{len(left)} of {len(specs)} runs under {root} are not finished (plan index {shown}); nothing was tabulated; "
            f"fix: run them (`sink-interp reproduce --out {root} --run-one INDEX`), or the same reproduce command again; "
            "`--tabulate --partial` tabulates the findings already finished"
        )


def _is_reproduce_root(root: Path) -> bool:
    """A folder :func:`reproduce` wrote: its marker, or (older versions) only runs/, curves/ and the table, every run one of ours."""
    if (root / MARKER).is_file():
        return True
    names = {e.name for e in root.iterdir()} - {LOCK}
    if not names <= {"runs", "curves", "reproduce.json", "reproduce.md"} or not (root / "runs").is_dir():
        return False
    return all(e.is_dir() and run_config(e) is not None for e in (root / "runs").iterdir())


def reproduce(
    finding: str | Sequence[str] = "all",
    *,
    scale: str = "cpu",
    out: str | os.PathLike[str] = "reproduce",
    steps: int | None = None,
    overrides: dict[str, Any] | None = None,
    seeds: Sequence[int] | None = None,
    device: str = "cpu",
    threads: int | None = 1,
    jobs: int = 1,
    progress: bool = True,
    executor: Any = "local",
    executor_options: dict[str, Any] | None = None,
) -> ReproTable:
    """Run the paired experiments of ``finding`` (a name, a list, or ``"all"``) and write the table.

    The same as :func:`plan` (with ``out``), :func:`run_one` for every run,
    then :func:`tabulate`. ``steps`` overrides every run's step count,
    ``overrides`` any other :class:`TrainConfig` field of every run and
    ``seeds`` the seeds of every arm (default: each finding's, three at CPU
    scale); for smoke tests, where the numbers then mean little. Finished runs
    under ``out/runs`` are reused and unfinished ones resumed. ``executor`` runs
    the list (see :func:`sink_interp._internal.executors.map_jobs`): ``"local"``
    (default; ``jobs`` runs in parallel processes with ``threads`` threads
    each), ``"submitit"`` (a SLURM array; ``executor_options`` such as
    ``{"slurm_partition": "gpu", "timeout_min": 120}``), ``"ray"``, or any
    object with ``map(fn, items)``. ``out`` must be new, empty or an earlier
    reproduce output (one-line ``FileExistsError`` otherwise, before anything
    is written); a second process on the same ``out`` is refused while the
    first one runs.
    """
    check_executor(executor, jobs)
    root = Path(out).expanduser()
    p = _make_plan(finding, scale, steps, overrides, seeds, root)
    claim_dir(root, _is_reproduce_root, "reproduce output")  # refuse before writing anything
    root.mkdir(parents=True, exist_ok=True)
    with dir_lock(root, "reproduce output"):
        _claim(root)
        write_atomic(root / PLAN, p.to_json())
        _run_specs(
            p.runs,
            root,
            device=device,
            threads=threads,
            jobs=jobs,
            progress=progress,
            executor=executor,
            options=executor_options,
        )
        return _tabulate(p, root)


# --------------------------------------------------------------------------- tabulating


def tabulate(root: str | os.PathLike[str], *, partial: bool = False) -> ReproTable:
    """The findings table of the plan in ``root`` from its finished runs; writes ``reproduce.json`` and ``reproduce.md``.

    Refuses (one line, nothing written) while any run of the plan is not done; with ``partial``, tabulates the
    findings whose runs are all done and lists the others in ``pending`` (a sweep spread over days, read as it goes).
    """
    root = Path(root).expanduser()
    _ours(root)
    p = Plan.read(root)
    with dir_lock(root, "reproduce output"):
        return _tabulate(p, root, partial=partial)


def _load(spec: RunSpec, key: str, root: Path) -> Run:
    d = root / spec.dir
    return Run(key, spec.config, str(d), tuple(read_metrics(d)), read_measured(d, spec.measures))


def row(p: Plan, name: str, root: Path) -> ReproRow:
    """One finding's row: its judge on every seed, the claim decided across them, the seeds' mean described."""
    f = FINDINGS[name]
    arms = p.arms(name)
    runs = {key: {s: _load(spec, key, root) for s, spec in by_seed.items()} for key, by_seed in arms.items()}
    seeds = sorted({s for by_seed in runs.values() for s in by_seed})
    verdicts = [f.judge({k: v[s] for k, v in runs.items()}) for s in seeds]
    comparable = [v.comparable for v in verdicts]
    decision = decide([v.test for v in verdicts], comparable if all(c is not None for c in comparable) else None)
    described = f.judge({k: mean_run(list(v.values())) for k, v in runs.items()})
    ours = (f"mean of {len(seeds)} seeds: " if len(seeds) > 1 else "") + described.ours
    last = {k: {s: r.last.get("sink_rate_1") for s, r in v.items()} for k, v in runs.items()}
    return ReproRow(
        finding=name,
        claim=f.claim,
        paper=f.paper,
        ours=ours,
        agree=decision.agree,
        verdict=decision.verdict,
        source=f.source,
        runs={k: {str(s): spec.dir for s, spec in sorted(v.items())} for k, v in arms.items()},
        numbers={
            "mean": described.numbers,
            "per_seed": {str(s): v.numbers for s, v in zip(seeds, verdicts)},
            "checks": decision.checks,
            "verdict_per_seed": dict(zip(map(str, seeds), decision.per_seed)),
            "sink_rate_1_last_eval": last,  # the number the table used before (the last evaluation alone)
        },
        checks=checks_text(decision, seeds),
        note="; ".join(x for x in {described.note, *(v.note for v in verdicts)} if x),
        command=p.command(name),
        not_in_seeds=f.not_in_seeds,
        seeds=tuple(seeds),
    )


def _tabulate(p: Plan, root: Path, partial: bool = False) -> ReproTable:
    pending: dict[str, int] = {}
    if partial:
        for n in p.findings:
            left = sum(not _done(root / spec.dir, spec) for spec in p.runs_of(n))
            if left:
                pending[n] = left
        if len(pending) == len(p.findings):
            raise ValueError(f"no finding of {root}/plan.json has all its runs finished yet; nothing was tabulated")
    else:
        _check_done(p.runs, root)
    rows = []
    for n in (n for n in p.findings if n not in pending):
        r = row(p, n, root)
        arms = p.arms(n)
        metrics = {
            (f"{k}" if len(v) == 1 else f"{k} (seed {s})"): list(read_metrics(root / spec.dir))
            for k, v in arms.items()
            for s, spec in sorted(v.items())
        }
        path = curves_file(root / "curves" / f"{n}.html", FindingCurves(f"{n}: {FINDINGS[n].claim}", metrics))
        if path:
            r = r.with_curves(_rel(Path(path), root))
        rows.append(r)
    table = ReproTable(rows=tuple(rows), scale=p.scale, out=str(root), versions=versions(), pending=pending)
    table.to_json(str(root / "reproduce.json"))
    write_atomic(root / "reproduce.md", table.to_markdown())
    return table


__all__ = ["MARKER", "PLAN", "Plan", "RunSpec", "plan", "reproduce", "row", "run_dir", "run_one", "tabulate"]
