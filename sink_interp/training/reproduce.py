"""Reproduce the paper's findings with paired training runs and tabulate them.

``reproduce("all", scale="cpu", out="repro/")`` trains the runs each finding
needs (shared runs are trained once: run directories are named by the config
fingerprint and resume), evaluates them, and writes ``reproduce.json`` and
``reproduce.md`` (finding, the paper's number or direction, ours, agree?) plus
training curves (``curves/<finding>.html``, drawn by :mod:`sink_interp.views`).

At ``scale="cpu"`` the findings run on the Bigram-Backcopy task (see
:mod:`sink_interp.tasks`), which develops a sink in minutes; the intra-document
rows run on the shipped natural-text corpus, and ``text-emergence`` on the big
offline corpus (``scripts/build_corpus.py``), where a first-token sink needs
~10M tokens (hours on one CPU thread). ``scale="gpu"`` uses the paper's
60M-model recipe on natural text (``gpu-text-softmax``; give it a large corpus
with ``text_corpus``); it is a recipe, not run in CI.

The work splits into plan -> run one -> tabulate, so that the runs can go to
any executor (a local process pool by default, SLURM arrays through submitit,
Ray) and every run is a resumable directory keyed by its config:

    >>> import tempfile
    >>> small = dict(d_model=32, d_mlp=64, seq_len=16, batch_size=4, eval_batches=1, probe_n=4, bb_vocab=16)
    >>> p = plan(["kbias"], steps=2, overrides=small)
    >>> [s.labels for s in p]
    [('kbias/base',), ('kbias/kbias',)]
    >>> root = tempfile.mkdtemp()
    >>> _ = plan(["kbias"], steps=2, overrides=small, out=root)   # writes root/plan.json
    >>> [run_one(i, root, progress=False) for i in range(len(p))]  # e.g. one SLURM array task each  # doctest: +ELLIPSIS
    ['runs/bb-softmax-...-s2', 'runs/bb-softmax-kbias-...-s2']
    >>> tabulate(root).rows[0].finding
    'kbias'
"""

from __future__ import annotations

import functools
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .._internal import display
from .._internal.executors import check_executor, map_jobs
from .._internal.provenance import dumps, versions, write_atomic
from .config import TrainConfig, preset
from .loop import LOCK, claim_dir, dir_lock, make_sampler, make_task, read_metrics, run_config, train

#: Marks a folder as a reproduce output of ours (written first).
MARKER = "sink_interp_reproduce.json"
#: The list of runs of the last plan written to a reproduce output (``run_one(INDEX)`` reads it).
PLAN = "plan.json"


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Run:
    """A finished run as a finding sees it."""

    label: str
    cfg: TrainConfig
    out_dir: str
    metrics: tuple[dict[str, Any], ...]

    @property
    def final(self) -> dict[str, Any]:
        return dict(self.metrics[-1])

    @property
    def model_dir(self) -> str:
        return str(Path(self.out_dir) / "model")


def run_dir(root: Path, cfg: TrainConfig) -> Path:
    return root / "runs" / f"{cfg.name}-{cfg.fingerprint()}-s{cfg.steps}"


def _rel(d: Path, root: Path) -> str:
    """``d`` relative to the output root, with forward slashes (the folder can move)."""
    return Path(d).relative_to(root).as_posix()


def run_all(
    configs: dict[str, TrainConfig],
    root: Path,
    *,
    device: str = "cpu",
    threads: int | None = 1,
    jobs: int = 1,
    progress: bool = True,
    executor: Any = "local",
    executor_options: dict[str, Any] | None = None,
) -> dict[str, Run]:
    """Train every config (finished runs are reused) on ``executor`` (``jobs`` local processes by default)."""
    specs = _specs({label: cfg for label, cfg in configs.items()}, root)
    _run_specs(
        specs, root, device=device, threads=threads, jobs=jobs, progress=progress, executor=executor, options=executor_options
    )
    return {
        label: Run(label, cfg, str(run_dir(root, cfg)), tuple(read_metrics(run_dir(root, cfg)))) for label, cfg in configs.items()
    }


# --------------------------------------------------------------------------- plan -> run one -> tabulate


@dataclass(frozen=True)
class RunSpec:
    """One training run of a plan: its config, the findings' labels that use it, and its folder relative to the output root."""

    index: int
    labels: tuple[str, ...]
    config: TrainConfig
    dir: str

    @property
    def label(self) -> str:
        return self.labels[0]

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "labels": list(self.labels), "dir": self.dir, "config": self.config.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        return cls(int(d["index"]), tuple(d["labels"]), TrainConfig.from_dict(d["config"]), str(d["dir"]))


@dataclass(frozen=True)
class Plan:
    """The runs of a reproduction (a sequence of :class:`RunSpec`), the findings that use them and the scale."""

    findings: tuple[str, ...]
    scale: str
    runs: tuple[RunSpec, ...]
    steps: int | None = None  # the --steps override the plan was made with (None: each run's own)
    overrides: tuple[tuple[str, Any], ...] = ()  # the --set overrides, as sorted (field, value) pairs

    def command(self, finding: str, out: str = "OUT") -> str:
        """The command that makes one finding's row: ``sink-interp reproduce --finding NAME --out OUT`` (+ the plan's overrides)."""
        parts = ["sink-interp reproduce", f"--finding {finding}"]
        if self.scale != "cpu":
            parts.append(f"--scale {self.scale}")
        if self.steps is not None:
            parts.append(f"--steps {self.steps}")
        parts += [f"--set {k}={json.dumps(v, separators=(',', ':'))}" for k, v in self.overrides]
        parts.append(f"--out {out}")
        return " ".join(parts)

    def __len__(self) -> int:
        return len(self.runs)

    def __iter__(self) -> Any:
        return iter(self.runs)

    def __getitem__(self, i: int) -> RunSpec:
        return self.runs[i]

    def uses(self, finding: str) -> dict[str, RunSpec]:
        """``{run key: spec}`` of one finding (the keys its judge reads, e.g. ``base``)."""
        out = {}
        for s in self.runs:
            for lab in s.labels:
                f, _, key = lab.partition("/")
                if f == finding:
                    out[key] = s
        return out

    def to_json(self) -> str:
        return dumps(
            {
                "sink_interp_plan": 1,
                "findings": list(self.findings),
                "scale": self.scale,
                "steps": self.steps,
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
            return cls.from_json(path.read_text(encoding="utf-8"))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not a readable plan ({e}); fix: write it again with --plan-only") from None


def _over(overrides: dict[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """Overrides as sorted (field, value) pairs (lists as tuples): hashable, and equal for equal dicts."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in (overrides or {}).items()))


def _specs(configs: dict[str, TrainConfig], root: Path) -> list[RunSpec]:
    """One spec per distinct run folder, in order of first use; ``configs`` maps ``finding/key`` labels to configs."""
    by_dir: dict[str, tuple[list[str], TrainConfig]] = {}
    for label, cfg in configs.items():
        d = _rel(run_dir(root, cfg), root)
        by_dir.setdefault(d, ([], cfg))[0].append(label)
    return [RunSpec(i, tuple(labels), cfg, d) for i, (d, (labels, cfg)) in enumerate(by_dir.items())]


def _configs(
    names: list[str], scale: str, steps: int | None, overrides: dict[str, Any] | None
) -> dict[str, dict[str, TrainConfig]]:
    out: dict[str, dict[str, TrainConfig]] = {}
    for n in names:
        cfgs = FINDINGS[n].configs(scale)
        if overrides:
            cfgs = {k: _override(c, overrides) for k, c in cfgs.items()}
        if steps is not None:
            cfgs = {
                k: c.replace(
                    steps=steps,
                    eval_every=max(1, min(c.eval_every, steps)),
                    ckpt_every=max(1, min(c.ckpt_every, steps)),
                    warmup=min(c.warmup, steps // 2),
                )
                for k, c in cfgs.items()
            }
        out[n] = cfgs
    return out


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
    out: str | os.PathLike[str] | None = None,
) -> Plan:
    """The runs that ``finding`` needs (shared runs once), numbered in a fixed order; nothing is trained.

    With ``out``, the plan is also written to ``out/plan.json`` (atomically;
    ``out`` must be new, empty or an earlier reproduce output), where
    :func:`run_one` finds a run by its index and :func:`tabulate` the findings.
    ``steps`` and ``overrides`` as in :func:`reproduce`.

        >>> p = plan(["lr", "kbias"])
        >>> len(p), p[0].labels, p[0].dir.startswith("runs/bb-softmax-")
        (3, ('lr/base', 'kbias/base'), True)
    """
    names = _names(finding, scale)
    cfgs = _configs(names, scale, steps, overrides)
    root = Path(out).expanduser() if out is not None else Path("reproduce")
    p = Plan(
        tuple(names),
        scale,
        tuple(_specs({f"{n}/{k}": c for n in names for k, c in cfgs[n].items()}, root)),
        steps,
        _over(overrides),
    )
    if out is not None:
        claim_dir(root, _is_reproduce_root, "reproduce output")  # refuse before writing anything
        root.mkdir(parents=True, exist_ok=True)
        with dir_lock(root, "reproduce output"):
            _claim(root)
            write_atomic(root / PLAN, p.to_json())
    return p


def _ours(root: Path) -> None:
    if not (root / MARKER).is_file():
        raise FileNotFoundError(
            f"{root} is not a sink_interp reproduce output (no {MARKER}); fix: write a plan there first with "
            f"`sink-interp reproduce --out {root} --plan-only`"
        )


def run_one(
    spec: RunSpec | int,
    root: str | os.PathLike[str],
    *,
    device: str = "cpu",
    threads: int | None = 1,
    progress: bool = True,
) -> str:
    """Train one run of a plan under ``root`` (resumable and idempotent); returns its folder relative to ``root``.

    ``spec`` is a :class:`RunSpec` or its index in ``root/plan.json`` (what a
    SLURM array task passes as ``$SLURM_ARRAY_TASK_ID``). A finished run is
    left as it is; an unfinished one resumes from its checkpoint. Two
    processes on one run: the second is refused with a one-line error.
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
    d = root / spec.dir
    if not _finished(d, spec.config):
        train(spec.config, d, resume=True, device=device, threads=threads, progress=progress)
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
    """Run the unfinished specs on ``executor``, then check that every one finished (never tabulate a partial plan)."""
    todo = [s for s in specs if not _finished(root / s.dir, s.config)]
    local_serial = executor == "local" and (jobs == 1 or len(todo) <= 1)
    fn = functools.partial(run_one, root=str(root), device=device, threads=threads, progress=progress and local_serial)
    map_jobs(fn, todo, executor=executor, jobs=jobs, options=options, folder=root / "submitit")
    _check_finished(specs, root)


def _check_finished(specs: Sequence[RunSpec], root: Path) -> None:
    left = [s.index for s in specs if not _finished(root / s.dir, s.config)]
    if left:
        shown = ", ".join(map(str, left[:8])) + (f" and {len(left) - 8} more" if len(left) > 8 else "")
        raise ValueError(
            f"{len(left)} of {len(specs)} runs under {root} are not finished (plan index {shown}); nothing was tabulated; "
            f"fix: run them (`sink-interp reproduce --out {root} --run-one INDEX`), or the same reproduce command again"
        )


def _finished(d: Path, cfg: TrainConfig) -> bool:
    m = read_metrics(d)
    return bool(m) and m[-1]["step"] >= cfg.steps and (d / "model").is_dir()


def _is_reproduce_root(root: Path) -> bool:
    """A folder :func:`reproduce` wrote: its marker, or (older versions) only runs/, curves/ and the table, every run one of ours."""
    if (root / MARKER).is_file():
        return True
    names = {e.name for e in root.iterdir()} - {LOCK}
    if not names <= {"runs", "curves", "reproduce.json", "reproduce.md"} or not (root / "runs").is_dir():
        return False
    return all(e.is_dir() and run_config(e) is not None for e in (root / "runs").iterdir())


# --------------------------------------------------------------------------- extra measurements


def _probe(cfg: TrainConfig, n: int | None = None, **over: Any) -> torch.Tensor:
    task = make_task(cfg)
    return make_sampler(cfg, task, seed=cfg.seed + 20_011, split="val", intra_doc=False, **over).sample(n or cfg.probe_n).tokens


def bos_dependence(run: Run) -> dict[str, Any]:
    """Loss and Sink_1 of a model on its validation data with and without the first token (BOS).

    Without BOS the sequences are the same minus their first token, so the
    losses compare the same predictions (positions 2..T of the original).
    """
    from ..training.evaluate import masked_ce, probe_stats
    from .model import load_trained

    lab = load_trained(run.model_dir)
    cfg = run.cfg
    task = make_task(cfg)
    batches = make_sampler(cfg, task, seed=cfg.seed + 10_007, split="val").fixed_batches(cfg.eval_batches, cfg.batch_size)
    out: dict[str, Any] = {}
    for tag, cut in (("with", 0), ("without", 1)):
        tot = n = 0.0
        with torch.no_grad():
            for b in batches:
                toks = b.tokens[:, cut:]
                ce, _ = masked_ce(lab.bridge(toks, return_type="logits"), toks, b.loss_mask[:, cut:])
                # score the same targets both ways: tokens 3..T of the full sequence (1-indexed)
                if cut == 0:
                    ce = ce[:, 1:]
                tot += float(ce.sum())
                n += ce.numel()
        stats = probe_stats(lab.bridge, _probe(cfg)[:, cut:], score=cfg.metric_score, eps=cfg.eps)
        out[f"val_loss_{tag}_first"] = tot / n
        out[f"sink_rate_1_{tag}_first"] = stats["sink_rate_1"]
        out[f"mean_alpha_1_{tag}_first"] = stats["mean_alpha_1"]
    return out


def window_stats(run: Run) -> dict[str, Any]:
    """For a sliding-window model: the sink metric restricted to queries that can see position 1,
    and the attention to the window's own first key (the 'relative first token')."""
    from .._internal import hooknames
    from ..capture import Reduce, run_reducers
    from .model import load_trained

    lab = load_trained(run.model_dir)
    cfg = run.cfg
    w = cfg.window or cfg.seq_len
    tokens = _probe(cfg)
    L = cfg.n_layers
    vis: list[torch.Tensor] = []
    rel: list[torch.Tensor] = []

    def fn(name: str, p: torch.Tensor, start: int) -> None:
        p = p.detach().float()  # [b, H, T, T]
        T = p.shape[-1]
        k = min(w, T)
        vis.append(p[:, :, :k, 0].mean(-1))  # queries 1..w see key 1
        t = torch.arange(k - 1, T)
        rel.append(p[:, :, t, t - k + 1].mean(-1))  # attention to the oldest visible key

    red = Reduce([hooknames.pattern(layer) for layer in range(L)], fn)
    with torch.no_grad():
        run_reducers(lab.bridge, tokens, [red], progress=False)
    a_vis = torch.stack(vis)  # [L * batches, b, H] (order irrelevant for the rate)
    a_rel = torch.stack(rel)
    return {
        "window": w,
        "sink_rate_1_visible_queries": float(100 * (a_vis > cfg.eps).float().mean()),
        "mean_alpha_1_visible_queries": float(a_vis.mean()),
        "sink_rate_relative_first": float(100 * (a_rel > cfg.eps).float().mean()),
        "mean_alpha_relative_first": float(a_rel.mean()),
        "alpha_1_bound": min(1.0, w / cfg.seq_len),
    }


# --------------------------------------------------------------------------- findings


@dataclass(frozen=True)
class Verdict:
    ours: str
    agree: bool | None
    numbers: dict[str, Any]
    note: str = ""


@dataclass(frozen=True)
class Finding:
    """One of the paper's findings: the runs it needs and how to judge them."""

    name: str
    claim: str
    paper: str
    configs: Callable[[str], dict[str, TrainConfig]]
    judge: Callable[..., Verdict]
    source: str = "Gu et al. 2025"
    extra: Callable[[dict[str, Run]], dict[str, Any]] | None = None  # measurements beyond metrics.jsonl

    def verdict(self, runs: dict[str, Run]) -> Verdict:
        if self.extra is None:
            return self.judge(runs)
        return self.judge(runs, self.extra(runs))


def _base(scale: str) -> TrainConfig:
    return preset("bb-softmax") if scale == "cpu" else preset("gpu-text-softmax")


def _nobos(scale: str) -> TrainConfig:
    b = _base(scale)
    return b.replace(name=b.name + "-nobos", bb_bos_num=0) if scale == "cpu" else b.replace(name=b.name + "-nobos", bos="none")


def _v(cfg: TrainConfig, suffix: str, **kw: Any) -> TrainConfig:
    return cfg.replace(name=f"{cfg.name}-{suffix}", **kw)


def _s(m: dict[str, Any], key: str = "sink_rate_1") -> float:
    return float(m.get(key, float("nan")))


def _j_emergence(r: dict[str, Run]) -> Verdict:
    ms = r["base"].metrics
    first, last = ms[0], ms[-1]
    curve = [(m["step"], round(m["sink_rate_1"], 1)) for m in ms]
    agree = last["sink_rate_1"] >= 30.0 and last["sink_rate_1"] > first["sink_rate_1"] + 20.0
    return Verdict(
        ours=f"Sink_1 {first['sink_rate_1']:.1f}% (step 0) -> {last['sink_rate_1']:.1f}% (step {last['step']}); "
        f"mean alpha_1 {first['mean_alpha_1']:.3f} -> {last['mean_alpha_1']:.3f}; value-norm ratio of the top sink head {last['value_norm_ratio_top']:.2f}",
        agree=agree,
        numbers={"curve": curve, "final": last},
    )


def _j_lr(r: dict[str, Run]) -> Verdict:
    b, s = r["base"].final, r["small_lr"].final
    agree = s["sink_rate_1"] < b["sink_rate_1"] - 5.0 or (
        s["sink_rate_1"] <= b["sink_rate_1"] and s["mean_alpha_1"] < b["mean_alpha_1"]
    )
    return Verdict(
        ours=f"lr {r['base'].cfg.lr:g}: Sink_1 {b['sink_rate_1']:.1f}% (loss {b['val_loss']:.3f}); "
        f"lr {r['small_lr'].cfg.lr:g}: {s['sink_rate_1']:.1f}% (loss {s['val_loss']:.3f})",
        agree=agree,
        numbers={"base": b, "small_lr": s},
    )


def _j_wd(r: dict[str, Run]) -> Verdict:
    rows = sorted(((run.cfg.weight_decay, run.final) for run in r.values()), key=lambda x: x[0])
    sinks = [m["sink_rate_1"] for _, m in rows]
    wds = [w for w, _ in rows]
    peak = int(np.argmax(sinks))
    rises = sinks[peak] > sinks[0] + 2.0
    falls = sinks[-1] < sinks[peak] - 10.0
    return Verdict(
        ours="; ".join(f"wd {w:g}: {m['sink_rate_1']:.1f}% (loss {m['val_loss']:.3f})" for w, m in rows),
        agree=bool(rises and falls) if (rises or falls) else False,
        numbers={"weight_decay": wds, "sink_rate_1": sinks, "val_loss": [m["val_loss"] for _, m in rows]},
        note=(
            "rises then falls" if rises and falls else "falls at large wd only" if falls else "rises only" if rises else "flat"
        ),
    )


def _j_fixed(r: dict[str, Run]) -> Verdict:
    nb, fx = r["no_bos"].final, r["fixed"].final
    p = r["fixed"].cfg.fixed_token_pos or 1
    rates_fx, rates_nb = fx["sink_rates"], nb["sink_rates"]
    agree = rates_fx[p - 1] >= 30.0 and rates_fx[p - 1] > max(rates_fx[k] for k in range(len(rates_fx)) if k != p - 1)
    return Verdict(
        ours=f"no BOS, no fixed token: Sink_1..4 = {rates_nb[:4]}; fixed token at {p}: Sink_1..4 = {rates_fx[:4]}",
        agree=agree,
        numbers={"no_bos": rates_nb, "fixed": rates_fx, "p": p},
    )


def _j_prefix(r: dict[str, Run]) -> Verdict:
    p = r["prefix"].cfg.prefix
    nb, px, b, pb = (r[k].final["sink_rates"] for k in ("no_bos", "prefix", "base", "prefix_bos"))
    moved = [max(x[1:p]) for x in (px, pb)]  # a sink on prefix positions 2..p: moved off position 1
    inside = [max(x[:p]) for x in (px, pb)]
    outside = [max(x[p:]) for x in (px, pb)]
    agree = any(m >= 10.0 and i > o for m, i, o in zip(moved, inside, outside))
    return Verdict(
        ours=f"Sink_k for k=1..{p + 2}: causal, no BOS {nb[: p + 2]} vs prefix p={p} {px[: p + 2]}; "
        f"causal with BOS {b[: p + 2]} vs prefix p={p} with BOS {pb[: p + 2]}",
        agree=agree,
        numbers={"p": p, "no_bos": nb, "prefix": px, "base": b, "prefix_bos": pb},
    )


def _j_window(r: dict[str, Run], extra: dict[str, Any]) -> Verdict:
    b, w = r["base"].final, r["window"].final
    ws = extra["window"]
    agree = w["sink_rate_1"] < b["sink_rate_1"] - 10.0 and ws["sink_rate_relative_first"] < 10.0
    return Verdict(
        ours=f"full attention: Sink_1 {b['sink_rate_1']:.1f}%; window w={ws['window']}: Sink_1 {w['sink_rate_1']:.1f}% "
        f"(alpha_1 <= w/T = {ws['alpha_1_bound']:.2f} by construction); among queries that see position 1: "
        f"{ws['sink_rate_1_visible_queries']:.1f}%; on the window's first key: {ws['sink_rate_relative_first']:.1f}%",
        agree=agree,
        numbers={"base": b["sink_rate_1"], "window": w["sink_rate_1"], **ws},
    )


def _j_kbias(r: dict[str, Run]) -> Verdict:
    b, k = r["base"].final, r["kbias"].final
    agree = k["sink_rate_1"] < min(5.0, b["sink_rate_1"]) and k["sink_rate_star"] >= 30.0
    return Verdict(
        ours=f"softmax: Sink_1 {b['sink_rate_1']:.1f}%; K bias (v*=0): Sink_1 {k['sink_rate_1']:.1f}%, Sink_* {k['sink_rate_star']:.1f}% "
        f"(mean mass on k* {k['sink_mass']:.2f}); loss {b['val_loss']:.3f} vs {k['val_loss']:.3f}",
        agree=agree,
        numbers={"base": b, "kbias": k},
    )


def _massive(m: dict[str, Any]) -> str:
    return f"max|h| sink/rest {m['max_abs_sink']:.1f}/{m['max_abs_rest']:.1f}, ||h_sink||/mean {m['resid_norm_ratio']:.2f}"


def raw_stats(run: Run) -> dict[str, Any]:
    """Sink statistics of a run's model read from the raw pattern (no proxy normalisation)."""
    from .evaluate import probe_stats
    from .model import load_trained

    lab = load_trained(run.model_dir)
    st = probe_stats(lab.bridge, _probe(run.cfg), score="softmax", eps=run.cfg.eps)
    return {"sink_rate_1_raw": st["sink_rate_1"], "mean_alpha_1_raw": st["mean_alpha_1"], "attn_mass": st["attn_mass"]}


def _j_sigmoid(r: dict[str, Run], extra: dict[str, Any]) -> Verdict:
    n, y = r["sigmoid_nonorm"].final, r["sigmoid_norm"].final
    raw = extra["nonorm_raw"]
    agree = n["sink_rate_1"] < 5.0 and y["sink_rate_1"] > n["sink_rate_1"] + 10.0
    return Verdict(
        ours=f"sigmoid without normaliser: Sink_1 {n['sink_rate_1']:.1f}% by the paper's proxy A/sum A, but the raw weights "
        f"give Sink_1 {raw['sink_rate_1_raw']:.1f}% (mean raw alpha_1 {raw['mean_alpha_1_raw']:.3f}, mean row sum {raw['attn_mass']:.2f}), "
        f"v-ratio {n['value_norm_ratio_top']:.2f}, {_massive(n)}, loss {n['val_loss']:.3f}; "
        f"with normaliser: {y['sink_rate_1']:.1f}%, v-ratio {y['value_norm_ratio_top']:.2f}, {_massive(y)}, loss {y['val_loss']:.3f}",
        agree=agree,
        numbers={"nonorm": n, "norm": y, "nonorm_raw": raw},
    )


def _j_softpick(r: dict[str, Run]) -> Verdict:
    b, s = r["base"].final, r["softpick"].final
    agree = s["sink_rate_1"] < 5.0
    return Verdict(
        ours=f"softmax: Sink_1 {b['sink_rate_1']:.1f}%, {_massive(b)}; softpick: {s['sink_rate_1']:.1f}%, {_massive(s)}; "
        f"loss {b['val_loss']:.3f} vs {s['val_loss']:.3f}",
        agree=agree,
        numbers={"base": b, "softpick": s},
    )


def _j_bos(r: dict[str, Run], extra: dict[str, Any]) -> Verdict:
    fb, nb = extra["fixed_bos"], extra["no_bos"]
    dl_fixed = fb["val_loss_without_first"] - fb["val_loss_with_first"]
    dl_free = nb["val_loss_without_first"] - nb["val_loss_with_first"]
    agree = dl_fixed > max(0.1, 3 * abs(dl_free)) and fb["sink_rate_1_without_first"] < fb["sink_rate_1_with_first"] - 10.0
    return Verdict(
        ours=f"trained with a fixed BOS: loss {fb['val_loss_with_first']:.3f} with BOS -> {fb['val_loss_without_first']:.3f} without, "
        f"Sink_1 {fb['sink_rate_1_with_first']:.1f}% -> {fb['sink_rate_1_without_first']:.1f}%; trained without BOS, dropping the first token: "
        f"loss {nb['val_loss_with_first']:.3f} -> {nb['val_loss_without_first']:.3f}, Sink_1 {nb['sink_rate_1_with_first']:.1f}% -> {nb['sink_rate_1_without_first']:.1f}%",
        agree=agree,
        numbers={"fixed_bos": fb, "no_bos": nb},
    )


def _j_relu_sgd(r: dict[str, Run]) -> Verdict:
    b, re, sg = r["base"].final, r["relu"].final, r["sgd"].final
    agree = re["sink_rate_1"] < b["sink_rate_1"] - 10.0 and sg["sink_rate_1"] < b["sink_rate_1"] - 10.0
    return Verdict(
        ours=f"softmax+AdamW: Sink_1 {b['sink_rate_1']:.1f}%, v-ratio {b['value_norm_ratio_top']:.2f}, {_massive(b)}; "
        f"ReLU attention: {re['sink_rate_1']:.1f}%, v-ratio {re['value_norm_ratio_top']:.2f}, loss {re['val_loss']:.3f}; "
        f"SGD: {sg['sink_rate_1']:.1f}%, v-ratio {sg['value_norm_ratio_top']:.2f}, loss {sg['val_loss']:.3f} (softmax loss {b['val_loss']:.3f})",
        agree=agree,
        numbers={"base": b, "relu": re, "sgd": sg},
    )


def _cfgs_emergence(s: str) -> dict[str, TrainConfig]:
    return {"base": _base(s)}


def _cfgs_lr(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    return {"base": b, "small_lr": _v(b, "lr8x-smaller", lr=b.lr / 8)}


def _cfgs_wd(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    out = {
        f"wd{w:g}": (b if w == b.weight_decay else _v(b, f"wd{w:g}", weight_decay=w))
        for w in (0.0, b.weight_decay, 0.02, 0.1, 0.5, 2.0, 5.0)
    }
    return out


def _cfgs_fixed(s: str) -> dict[str, TrainConfig]:
    nb = _nobos(s)
    return {"no_bos": nb, "fixed": _v(nb, "fixed3", fixed_token_pos=3)}


def _cfgs_prefix(s: str) -> dict[str, TrainConfig]:
    nb, b = _nobos(s), _base(s)
    return {"no_bos": nb, "prefix": _v(nb, "prefix4", prefix=4), "base": b, "prefix_bos": _v(b, "prefix4", prefix=4)}


def _cfgs_window(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    return {"base": b, "window": _v(b, "window8" if s == "cpu" else "window32", window=8 if s == "cpu" else 32)}


def _cfgs_kbias(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    return {"base": b, "kbias": _v(b, "kbias", k_bias=True, v_bias="zero")}


def _cfgs_sigmoid(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    return {
        "sigmoid_nonorm": _v(b, "sigmoid-nonorm", kernel="sigmoid", attn_norm="none"),
        "sigmoid_norm": _v(b, "sigmoid-norm", kernel="sigmoid", attn_norm="sum"),
    }


def _cfgs_softpick(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    return {"base": b, "softpick": _v(b, "softpick", kernel="softpick")}


def _cfgs_bos(s: str) -> dict[str, TrainConfig]:
    return {"fixed_bos": _base(s) if s == "cpu" else _v(_base(s), "fixedbos", bos="fixed"), "no_bos": _nobos(s)}


def _cfgs_relu_sgd(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    return {
        "base": b,
        "relu": _v(b, "relu", kernel="relu", attn_norm="none"),
        "sgd": _v(b, "sgd", optimizer="sgd", lr=0.1 if s == "cpu" else 0.03),
    }


FINDINGS: dict[str, Finding] = {
    f.name: f
    for f in [
        Finding(
            "emergence",
            "attention sink emerges with training steps",
            "Sink_1 grows with steps (lr 8e-4: 23.4% at 10k, 32.2% at 20k steps)",
            _cfgs_emergence,
            _j_emergence,
        ),
        Finding(
            "lr",
            "a smaller learning rate weakens the sink",
            "20k steps: lr 8e-4 32.2%, 4e-4 18.2%, 2e-4 11.2%, 1e-4 2.9%",
            _cfgs_lr,
            _j_lr,
        ),
        Finding(
            "weight_decay",
            "weight decay: more sink up to a point, then none",
            "wd 0: 15.2%, 0.1: 18.2%, 0.5: 41.1%, 1: 37.7%, 2: 6.1%, 5: 0.01%",
            _cfgs_wd,
            _j_wd,
        ),
        Finding(
            "fixed_token",
            "a fixed token at position p becomes the sink",
            "fixed at 1/2/3: Sink_1 74.1% / Sink_2 69.0% / Sink_3 69.6%, other positions ~0%",
            _cfgs_fixed,
            _j_fixed,
        ),
        Finding(
            "prefix",
            "prefix LM moves the sink into the prefix",
            "the sink shifts from position 1 to positions within the prefix",
            _cfgs_prefix,
            _j_prefix,
        ),
        Finding(
            "window",
            "a small sliding window prevents the sink",
            "small windows mitigate the sink; it sits on the absolute, not the relative, first token",
            _cfgs_window,
            _j_window,
            extra=lambda r: {"window": window_stats(r["window"])},
        ),
        Finding(
            "kbias",
            "a learnable K bias with v*=0 takes the sink's role",
            "Sink_* 73.34%, Sink_1 0.00% (softmax: Sink_1 18.18%)",
            _cfgs_kbias,
            _j_kbias,
        ),
        Finding(
            "sigmoid",
            "sigmoid without normaliser: no sink, no massive activation; with normaliser they return",
            "no sink and no massive activations up to 1B without normaliser; sink back with it",
            _cfgs_sigmoid,
            _j_sigmoid,
            extra=lambda r: {"nonorm_raw": raw_stats(r["sigmoid_nonorm"])},
        ),
        Finding(
            "softpick",
            "softpick: no sink",
            "softpick: sink rate 0%, no massive activations (Zuhri et al. 2025)",
            _cfgs_softpick,
            _j_softpick,
            source="Zuhri et al. 2025",
        ),
        Finding(
            "bos_packing",
            "a fixed BOS makes the model depend on it",
            "causal + fixed BOS: 90.84% / loss 2.69 with BOS, 0.05% / 7.56 without; causal, no BOS: 65.10% / 2.69 vs 65.15% / 2.70",
            _cfgs_bos,
            _j_bos,
            source="Barbero et al. 2025 (slides)",
            extra=lambda r: {"fixed_bos": bos_dependence(r["fixed_bos"]), "no_bos": bos_dependence(r["no_bos"])},
        ),
        Finding(
            "relu_sgd",
            "ReLU attention or SGD mitigates the sink",
            "BB task: ReLU attention or SGD removes sinks, value drains and residual peaks",
            _cfgs_relu_sgd,
            _j_relu_sgd,
            source="Guo et al. 2024",
        ),
    ]
}

# --------------------------------------------------------------------------- more measurements (re-tests)


def head_stats(run: Run, ablate: bool = True) -> dict[str, Any]:
    """Per layer and head: the absolute attention mass on each of the first keys, the row sum, the proxy alpha_1,
    the value drain, the head-output norm, and (``ablate``) whether the head is dormant.

    Lists are indexed ``[layer][head]``. ``mass_first_keys[l][h][k]`` is the raw mean weight on key ``k + 1``
    (over the queries that see it); ``alpha_1_raw``/``alpha_1_proxy`` the Gu et al. score of the first data
    token from the raw weights / from ``|A| / sum |A|``; ``row_sum`` the mean row sum (1 for softmax,
    ``1 - `` the K-bias column's share with a K bias); ``value_ratio`` ``||v_1|| / mean ||v_j||`` of the
    head's KV head; ``z_ratio`` the head's mean output norm ``||z_t||`` over the mean value norm;
    ``dloss`` / ``dloss_bigram`` the validation-loss change when the head's output is zeroed (all targets /
    BB's non-copy targets); a head is ``dormant`` when zeroing it changes the non-copy loss by less than 1 %.
    """
    from .._internal import hooknames
    from ..capture import Reduce, attach_hooks, run_reducers
    from .evaluate import val_losses
    from .model import load_trained

    lab = load_trained(run.model_dir)
    cfg = run.cfg
    k0 = cfg.first_token_pos - 1
    tokens = _probe(cfg)
    L, H, G = cfg.n_layers, cfg.n_heads, cfg.n_kv_heads or cfg.n_heads
    nk = 8
    acc: dict[str, Any] = {
        "mass": torch.zeros(L, H, nk),
        "row": torch.zeros(L, H),
        "a_raw": torch.zeros(L, H),
        "a_proxy": torch.zeros(L, H),
        "v": torch.zeros(L, G),
        "vnorm": torch.zeros(L),
        "z": torch.zeros(L, H),
    }
    n = tokens.shape[0]

    def fn(name: str, x: torch.Tensor, start: int) -> None:
        layer = hooknames.layer_of(name)
        x = x.detach().float()
        if name.endswith("hook_pattern"):  # [b, H, T, T]
            T = x.shape[-1]
            for k in range(min(nk, T)):
                acc["mass"][layer, :, k] += x[:, :, k:, k].mean(-1).sum(0) / n
            acc["row"][layer] += x[:, :, k0:].sum(-1).mean(-1).sum(0) / n
            acc["a_raw"][layer] += x[:, :, k0:, k0].mean(-1).sum(0) / n
            pr = x.abs() / (x.abs().sum(-1, keepdim=True) + 1e-8)
            acc["a_proxy"][layer] += pr[:, :, k0:, k0].mean(-1).sum(0) / n
        elif name.endswith("hook_v"):  # [b, T, G, d]
            nv = x.norm(dim=-1)
            others = torch.ones(nv.shape[1], dtype=torch.bool)
            others[k0] = False
            acc["v"][layer] += (nv[:, k0] / nv[:, others].mean(1).clamp(min=1e-12)).sum(0) / n
            acc["vnorm"][layer] += nv[:, others].mean() * x.shape[0] / n
        else:  # hook_z [b, T, H, d]
            acc["z"][layer] += x[:, k0:].norm(dim=-1).mean(1).sum(0) / n

    names = [f(layer) for layer in range(L) for f in (hooknames.pattern, hooknames.v, hooknames.z)]
    with torch.no_grad():
        run_reducers(lab.bridge, tokens, [Reduce(names, fn)], progress=False)
    out: dict[str, Any] = {
        "mass_first_keys": [[[round(float(v), 4) for v in acc["mass"][l, h]] for h in range(H)] for l in range(L)],
        "row_sum": [[round(float(v), 4) for v in acc["row"][l]] for l in range(L)],
        "alpha_1_raw": [[round(float(v), 4) for v in acc["a_raw"][l]] for l in range(L)],
        "alpha_1_proxy": [[round(float(v), 4) for v in acc["a_proxy"][l]] for l in range(L)],
        "value_ratio": [[round(float(acc["v"][l, h // max(1, H // G)]), 4) for h in range(H)] for l in range(L)],
        "z_ratio": [[round(float(acc["z"][l, h] / acc["vnorm"][l].clamp(min=1e-12)), 4) for h in range(H)] for l in range(L)],
    }
    if ablate:
        task = make_task(cfg)
        batches = make_sampler(cfg, task, seed=cfg.seed + 10_007, split="val").fixed_batches(cfg.eval_batches, cfg.batch_size)
        ref = val_losses(lab, batches, task)
        key = "val_loss_bigram" if "val_loss_bigram" in ref else "val_loss"
        d_all, d_big = [], []
        for layer in range(L):
            row_all, row_big = [], []
            for h in range(H):

                def zero(x: torch.Tensor, hook: Any = None, h: int = h) -> torch.Tensor:
                    x = x.clone()
                    x[:, :, h] = 0
                    return x

                with attach_hooks(lab.bridge, [(hooknames.z(layer), zero)]):
                    ab = val_losses(lab, batches, task)
                row_all.append(round(ab["val_loss"] - ref["val_loss"], 5))
                row_big.append(round(ab[key] - ref[key], 5))
            d_all.append(row_all)
            d_big.append(row_big)
        out["dloss"] = d_all
        out["dloss_bigram"] = d_big
        out["dormant"] = [[abs(d) < 0.01 * ref[key] for d in row] for row in d_big]
        out["val_loss"] = round(ref["val_loss"], 5)
    return out


def _sink_heads(hs: dict[str, Any], eps: float, drain: float = 0.5) -> list[tuple[int, int]]:
    """Heads that park absolute attention mass (> eps) on the first token *and* whose value there is drained (< drain)."""
    return [
        (l, h)
        for l, row in enumerate(hs["alpha_1_raw"])
        for h, a in enumerate(row)
        if a > eps and hs["value_ratio"][l][h] < drain
    ]


def _parked_heads(hs: dict[str, Any], eps: float) -> list[tuple[int, int]]:
    return [(l, h) for l, row in enumerate(hs["alpha_1_raw"]) for h, a in enumerate(row) if a > eps]


def _classify_heads(hs: dict[str, Any], eps: float) -> dict[str, Any]:
    """``head_stats`` with its ``sink_heads`` (mass > eps on a drained value) and ``parked_heads`` (mass > eps) added."""
    return {**hs, "sink_heads": _sink_heads(hs, eps), "parked_heads": _parked_heads(hs, eps)}


# --------------------------------------------------------------------------- more findings: helpers and judges


def _fmt(m: dict[str, Any], *keys: str) -> str:
    parts = [f"Sink_1 {m['sink_rate_1']:.1f}%"]
    for k in keys:
        if k == "star":
            parts.append(f"Sink_* {m.get('sink_rate_star', 0.0):.1f}%")
        elif k == "v":
            parts.append(f"v-ratio {m['value_norm_ratio_top']:.2f}")
        elif k == "massive":
            parts.append(_massive(m))
    parts.append(f"loss {m['val_loss']:.3f}")
    return ", ".join(parts)


def _emerges_judge(keys: Sequence[str], describe: Callable[[str, Run], str], threshold: float = 10.0) -> Callable[..., Verdict]:
    """'The design does not affect the emergence': every variant (and the base) has Sink_1 >= threshold."""

    def judge(r: dict[str, Run]) -> Verdict:
        ms = {k: r[k].final for k in keys}
        low = [k for k in keys if ms[k]["sink_rate_1"] < threshold]
        ours = "; ".join(f"{describe(k, r[k])}: {_fmt(ms[k], 'v')}" for k in keys)
        if low:
            ours += f"; no sink (Sink_1 < {threshold:g}%) with: {', '.join(low)}"
        return Verdict(ours=ours, agree=not low, numbers={k: ms[k] for k in keys} | {"threshold": threshold, "no_sink": low})

    return judge


def _j_fixed_positions(r: dict[str, Run]) -> Verdict:
    nb = r["no_bos"].final["sink_rates"]
    per, ok = {}, []
    for key in ("fixed1", "fixed2"):
        run = r[key]
        p = run.cfg.fixed_token_pos or 1
        rates = run.final["sink_rates"]
        per[key] = {"p": p, "sink_rates": rates}
        ok.append(rates[p - 1] >= 30.0 and rates[p - 1] > max(x for k, x in enumerate(rates) if k != p - 1))
    return Verdict(
        ours=f"no BOS, no fixed token: Sink_1..4 = {nb[:4]}; "
        + "; ".join(f"fixed token at {v['p']}: Sink_1..4 = {v['sink_rates'][:4]}" for v in per.values()),
        agree=all(ok),
        numbers={"no_bos": nb, **per},
    )


def _j_kv_bias(r: dict[str, Run]) -> Verdict:
    b, kv = r["base"].final, r["kv"].final
    agree = kv["sink_rate_1"] < min(5.0, b["sink_rate_1"]) and kv["sink_rate_star"] >= 30.0
    return Verdict(
        ours=f"softmax: {_fmt(b)}; learnable K and V bias: {_fmt(kv, 'star')} (mean mass on k* {kv['sink_mass']:.2f})",
        agree=agree,
        numbers={"base": b, "kv": kv},
    )


def _j_v_only(r: dict[str, Run]) -> Verdict:
    b, v = r["base"].final, r["v_only"].final
    agree = abs(v["sink_rate_1"] - b["sink_rate_1"]) <= max(10.0, 0.35 * b["sink_rate_1"]) and v["sink_rate_1"] >= 10.0
    return Verdict(
        ours=f"softmax: {_fmt(b, 'v')}; V bias only (y = Attn + v*): {_fmt(v, 'v')}",
        agree=agree,
        numbers={"base": b, "v_only": v},
    )


def _j_headwise(r: dict[str, Run]) -> Verdict:
    """Head-wise biases behave as shared ones: the K bias takes the sink's role (Sink_1 falls, Sink_* rises) or not, alike."""
    rows = {k: r[k].final for k in ("k_shared", "k_head", "kv_shared", "kv_head")}
    same = all(
        abs(rows[a]["sink_rate_1"] - rows[b]["sink_rate_1"]) <= 15.0
        and abs(rows[a]["sink_rate_star"] - rows[b]["sink_rate_star"]) <= 15.0
        for a, b in (("k_shared", "k_head"), ("kv_shared", "kv_head"))
    )
    takes = all(rows[k]["sink_rate_1"] < 5.0 and rows[k]["sink_rate_star"] >= 30.0 for k in ("k_head", "kv_head"))
    return Verdict(
        ours="; ".join(f"{k.replace('_', ' ')}: {_fmt(m, 'star')}" for k, m in rows.items()),
        agree=same and takes,
        numbers=rows | {"same_as_shared": same, "head_bias_takes_sink": takes},
        note="head-wise like shared" if same else "head-wise differs from shared",
    )


def _j_kbias_fixed_v(r: dict[str, Run]) -> Verdict:
    zero = r["v0"].final
    out: dict[str, Any] = {"v0": zero}
    parts = [f"v*=0: {_fmt(zero, 'star')}"]
    ok = True
    for fam in ("e1", "ones"):
        stars, sinks = [zero["sink_rate_star"]], [zero["sink_rate_1"]]
        for s in (1, 5, 20):
            m = r[f"{fam}_x{s}"].final
            out[f"{fam}_x{s}"] = m
            stars.append(m["sink_rate_star"])
            sinks.append(m["sink_rate_1"])
            parts.append(f"{'v_prime' if fam == 'e1' else 'v_dprime'} x{s}: {_fmt(m, 'star')}")
        # the paper: Sink_* falls as the fixed value grows (73 -> ~70 -> 44/28 -> ~1/0) and Sink_1 comes back
        falls = stars[-1] < stars[1] - 10.0 and all(b <= a + 5.0 for a, b in zip(stars[1:], stars[2:]))
        ok = ok and falls and sinks[-1] >= sinks[1]
        out[f"{fam}_sink_star"] = stars
        out[f"{fam}_sink_1"] = sinks
    return Verdict(ours="; ".join(parts), agree=ok, numbers=out)


def _j_sink_token(r: dict[str, Run]) -> Verdict:
    b, s = r["base"].final, r["sink_token"].final
    on_token = s["sink_rates"][0]
    agree = on_token >= 30.0 and s["sink_rate_1"] < 5.0
    return Verdict(
        ours=f"softmax: {_fmt(b)}; learnable sink token at position 1: Sink on it {on_token:.1f}%, on the first data token "
        f"(position 2) {s['sink_rate_1']:.1f}%, {_massive(s)}, loss {s['val_loss']:.3f}",
        agree=agree,
        numbers={"base": b, "sink_token": s, "sink_on_token": on_token},
    )


def _j_mitigate(keys: Sequence[str], what: str) -> Callable[..., Verdict]:
    """'May mitigate the sink, but not prevent its emergence': every variant keeps a sink, at least one weaker than softmax."""

    def judge(r: dict[str, Run]) -> Verdict:
        b = r["base"].final
        ms = {k: r[k].final for k in keys}
        kept = all(m["sink_rate_1"] >= 5.0 for m in ms.values())
        weaker = any(m["sink_rate_1"] < b["sink_rate_1"] for m in ms.values())
        return Verdict(
            ours=f"softmax: {_fmt(b)}; " + "; ".join(f"{what} {_knob_value(r[k].cfg, what)}: {_fmt(m)}" for k, m in ms.items()),
            agree=kept and weaker,
            numbers={"base": b, **ms, "sink_kept": kept, "weaker_than_softmax": weaker},
        )

    return judge


def _knob_value(cfg: TrainConfig, what: str) -> str:
    return f"{cfg.softmax_alpha:g}" if what == "alpha" else f"{cfg.softmax_p:g}"


def _j_no_norm(nonorm: str, norm: str, name: str, need_return: bool = True) -> Callable[..., Verdict]:
    """Without the normaliser no sink; with it the sink returns (need_return) or stays absent (the MLP kernel)."""

    def judge(r: dict[str, Run]) -> Verdict:
        n, y = r[nonorm].final, r[norm].final
        if need_return:
            agree = n["sink_rate_1"] < 5.0 and y["sink_rate_1"] > n["sink_rate_1"] + 10.0
        else:
            agree = n["sink_rate_1"] < 5.0 and y["sink_rate_1"] < 5.0
        return Verdict(
            ours=f"{name} without normaliser: {_fmt(n, 'v', 'massive')}; with normaliser: {_fmt(y, 'v', 'massive')}",
            agree=agree,
            numbers={"nonorm": n, "norm": y},
        )

    return judge


def _j_data_amount(r: dict[str, Run]) -> Verdict:
    keys = sorted((k for k in r if k.startswith("data")), key=lambda k: r[k].cfg.data_tokens or float("inf"))
    ms = [(r[k].cfg.data_tokens, r[k].final) for k in keys]
    sinks = [m["sink_rate_1"] for _, m in ms]
    agree = sinks[-1] >= 10.0 and sinks[0] < sinks[-1] - 10.0
    return Verdict(
        ours="; ".join(
            f"{'unlimited' if d is None else f'{d:,} unique tokens'}: Sink_1 {m['sink_rate_1']:.1f}% "
            f"(train {m.get('train_loss', float('nan')):.3f}, val {m['val_loss']:.3f})"
            for d, m in ms
        ),
        agree=agree,
        numbers={"data_tokens": [d for d, _ in ms], "sink_rate_1": sinks, "val_loss": [m["val_loss"] for _, m in ms]},
    )


def _j_batch(r: dict[str, Run]) -> Verdict:
    keys = sorted(r, key=lambda k: r[k].cfg.batch_size)
    ms = [(r[k].cfg.batch_size, r[k].final) for k in keys]
    low = [bs for bs, m in ms if m["sink_rate_1"] < 10.0]
    return Verdict(
        ours="; ".join(f"batch {bs}: {_fmt(m)}" for bs, m in ms),
        agree=not low,
        numbers={"batch_size": [bs for bs, _ in ms], "sink_rate_1": [m["sink_rate_1"] for _, m in ms]},
        note="" if not low else f"no sink at batch {low}",
    )


def _j_random_first(r: dict[str, Run]) -> Verdict:
    """Random tokens at the first positions: the first position stays the sink (its hidden state involves no mixing)."""
    b = r["base"].final
    per = {k: r[k].final for k in r if k.startswith("random")}
    ok = all(m["sink_rate_1"] >= 10.0 and m["top_sink_k"] == 1 for m in per.values())
    return Verdict(
        ours=f"fixed BOS: {_fmt(b)}; "
        + "; ".join(
            f"random tokens at 1..{r[k].cfg.random_token_count}: Sink_1..4 {m['sink_rates'][:4]}, loss {m['val_loss']:.3f}"
            for k, m in per.items()
        ),
        agree=ok,
        numbers={"base": b, **per},
    )


def _j_random_data(r: dict[str, Run]) -> Verdict:
    b, x = r["base"].final, r["random_all"].final
    agree = x["sink_rate_1"] < 5.0
    return Verdict(
        ours=f"BB data: {_fmt(b)}; every token uniformly random: Sink_1..4 {x['sink_rates'][:4]}, loss {x['val_loss']:.3f} "
        f"(log V = {np.log(max(2, r['random_all'].cfg.bb_vocab)):.3f} for BB's ordinary tokens)",
        agree=agree,
        numbers={"base": b, "random_all": x},
    )


def _j_kbias_da(r: dict[str, Run]) -> Verdict:
    b = r["base"].final
    keys = sorted((k for k in r if k.startswith("da")), key=lambda k: r[k].cfg.k_bias_dims or r[k].cfg.d_head)
    ms = [(r[k].cfg.k_bias_dims or r[k].cfg.d_head, r[k].final) for k in keys]
    ok = all(m["sink_rate_1"] <= 0.35 * b["sink_rate_1"] and m["sink_rate_star"] >= 20.0 for _, m in ms)
    return Verdict(
        ours=f"softmax: Sink_1 {b['sink_rate_1']:.1f}%; " + "; ".join(f"d_a {d}: {_fmt(m, 'star')}" for d, m in ms),
        agree=ok,
        numbers={
            "base": b,
            "d_a": [d for d, _ in ms],
            "sink_rate_star": [m["sink_rate_star"] for _, m in ms],
            "sink_rate_1": [m["sink_rate_1"] for _, m in ms],
        },
    )


def _j_intra_doc(r: dict[str, Run], extra: dict[str, Any]) -> Verdict:
    m = {k: r[k].final for k in r}
    dep = extra
    ref = max(m[k]["sink_rate_1"] for k in m)
    ours = "; ".join(f"{k.replace('_', ' ')}: {_fmt(v)}" for k, v in m.items())
    ours += "; " + "; ".join(
        f"{k.replace('_', ' ')} without its first token: loss {d['val_loss_with_first']:.3f} -> {d['val_loss_without_first']:.3f}, "
        f"Sink_1 {d['sink_rate_1_with_first']:.1f}% -> {d['sink_rate_1_without_first']:.1f}%"
        for k, d in dep.items()
    )
    if ref < 5.0:
        return Verdict(
            ours="not comparable: natural text at CPU scale forms no sink in any packing (max Sink_1 "
            f"{ref:.1f}%, DESIGN section 3) on the shipped corpus, so the BOS/packing rows cannot be read "
            "(on the big corpus a sink needs ~10M tokens, about an hour per run: the text-emergence row); " + ours,
            agree=None,
            numbers={**m, "bos_dependence": dep},
        )
    fx = dep["intra_fixed"]
    fixed_dep = fx["val_loss_without_first"] - fx["val_loss_with_first"] > 0.1 and fx["sink_rate_1_without_first"] < 5.0
    intra_sink = m["intra"]["sink_rate_1"] >= 5.0
    return Verdict(ours=ours, agree=fixed_dep and intra_sink, numbers={**m, "bos_dependence": dep})


# --------------------------------------------------------------------------- re-tests of the disagreements


def _j_wd_schedule(r: dict[str, Run]) -> Verdict:
    v = _j_wd(r)
    rows = sorted(((run.cfg, run.final) for run in r.values()), key=lambda x: x[0].weight_decay)
    per_step = [c.lr * c.weight_decay for c, _ in rows]
    v.numbers["lr_x_wd_per_step"] = per_step
    v.numbers["paper_wd"] = [round(c.weight_decay / _WD_SCALE, 6) for c, _ in rows]
    return Verdict(
        ours="lr x wd per step as the paper's (cosine schedule, wd = paper wd x 4e-4 / lr): "
        + "; ".join(
            f"paper wd {c.weight_decay / _WD_SCALE:g} (ours {c.weight_decay:.3g}): {m['sink_rate_1']:.1f}%" for c, m in rows
        ),
        agree=v.agree,
        numbers=v.numbers,
        note=v.note,
    )


def _j_lr_budget(r: dict[str, Run]) -> Verdict:
    keys = sorted(r, key=lambda k: -r[k].cfg.lr)
    ms = [(r[k].cfg.lr, r[k].cfg.steps, r[k].final) for k in keys]
    sinks = [m["sink_rate_1"] for *_, m in ms]
    # the paper (lr x steps constant): 23.44 -> 18.18 -> 16.81 -> 6.29: a weaker sink at smaller lr, the last clearly
    mono = all(b <= a + 5.0 for a, b in zip(sinks, sinks[1:]))
    agree = mono and sinks[-1] < sinks[0] - 10.0
    return Verdict(
        ours="lr x steps constant: "
        + "; ".join(f"lr {lr:g} x {st} steps: Sink_1 {m['sink_rate_1']:.1f}% (loss {m['val_loss']:.3f})" for lr, st, m in ms),
        agree=agree,
        numbers={
            "lr": [lr for lr, *_ in ms],
            "steps": [st for _, st, _ in ms],
            "sink_rate_1": sinks,
            "val_loss": [m["val_loss"] for *_, m in ms],
        },
    )


def _j_kbias_rope(r: dict[str, Run], extra: dict[str, Any]) -> Verdict:
    parts, arms = [], {}
    for arm in ("rope", "nope", "deep"):
        b, k = r[f"{arm}_base"].final, r[f"{arm}_kbias"].final
        hs = extra[arm]
        per_layer = [
            {"layer": l, "alpha_1": hs["alpha_1_raw"][l], "on_k_star": [round(1 - x, 4) for x in hs["row_sum"][l]]}
            for l in range(len(hs["row_sum"]))
        ]
        ok = k["sink_rate_1"] < min(5.0, b["sink_rate_1"]) and k["sink_rate_star"] >= 30.0
        arms[arm] = {"base": b, "kbias": k, "per_layer": per_layer, "reproduces": ok}
        lay = ", ".join(f"L{p['layer']}: alpha_1 {max(p['alpha_1']):.2f} / on k* {max(p['on_k_star']):.2f}" for p in per_layer)
        parts.append(
            f"{arm}: softmax Sink_1 {b['sink_rate_1']:.1f}% -> K bias Sink_1 {k['sink_rate_1']:.1f}%, Sink_* {k['sink_rate_star']:.1f}% ({lay})"
        )
    for a in arms.values():  # which layers hand their sink to k* (> 0.3 of a head's attention) and which keep BOS
        a["layers_on_k_star"] = [p["layer"] for p in a["per_layer"] if max(p["on_k_star"]) > 0.3]
        a["layers_on_bos"] = [p["layer"] for p in a["per_layer"] if max(p["alpha_1"]) > 0.3]
    agree = arms["rope"]["reproduces"]
    reason = ""
    if not agree:
        desc = {"rope": "at 2 layers", "nope": "without RoPE", "deep": "with 4 layers"}
        reason = (
            " — the official placement (k* appended after RoPE, unrotated; ours is the same) does not reproduce: "
            + "; ".join(
                f"{desc[k]} {'it does' if a['reproduces'] else 'it does not'} (k* takes layers {a['layers_on_k_star']}, "
                f"BOS keeps layers {a['layers_on_bos']})"
                for k, a in arms.items()
            )
        )
    return Verdict(ours="; ".join(parts) + reason, agree=agree, numbers=arms)


def _j_prefix_positional(r: dict[str, Run]) -> Verdict:
    arms, parts, movable = {}, [], []
    for arm in ("learned", "random_first"):
        c, px = r[f"{arm}_causal"].final["sink_rates"], r[f"{arm}_prefix"].final["sink_rates"]
        p = r[f"{arm}_prefix"].cfg.prefix
        has = c[0] >= 10.0
        moved = max(px[1:p]) >= 10.0 and max(px[1:p]) > px[0] and max(px[:p]) > max(px[p:])
        arms[arm] = {"causal": c, "prefix": px, "p": p, "positional_sink": has, "moved_into_prefix": moved}
        parts.append(f"{arm.replace('_', ' ')}: causal Sink_1..{p + 2} {c[: p + 2]} vs prefix p={p} {px[: p + 2]}")
        if has:
            movable.append(moved)
    if not movable:
        return Verdict(
            ours="not comparable: no positional sink to move at this scale (causal Sink_1 < 10% without a fixed first token, "
            "with learned positions and with a random first token); " + "; ".join(parts),
            agree=None,
            numbers=arms,
        )
    return Verdict(ours="; ".join(parts), agree=any(movable), numbers=arms)


def _j_sigmoid_mass(r: dict[str, Run], extra: dict[str, Any]) -> Verdict:
    eps = r["base"].cfg.eps
    out, parts = {}, []
    for arm in ("base", "sigmoid_norm", "sigmoid_nonorm"):
        hs = extra[arm]
        out[arm] = _classify_heads(hs, eps)
        sinks = out[arm]["sink_heads"]
        heads = "; ".join(
            f"L{l}H{h}: mass on key 1 {hs['alpha_1_raw'][l][h]:.2f} (proxy {hs['alpha_1_proxy'][l][h]:.2f}), row sum {hs['row_sum'][l][h]:.2f}, "
            f"v-ratio {hs['value_ratio'][l][h]:.2f}, |z|/|v| {hs['z_ratio'][l][h]:.2f}, "
            f"{'dormant' if hs.get('dormant', [[False]])[l][h] else 'active'} on non-copy tokens "
            f"(zeroed: non-copy loss {hs.get('dloss_bigram', [[0]])[l][h]:+.3f}, all {hs.get('dloss', [[0]])[l][h]:+.3f})"
            for l in range(len(hs["alpha_1_raw"]))
            for h in range(len(hs["alpha_1_raw"][l]))
        )
        parts.append(f"{arm.replace('_', ' ')}: sink heads (mass > {eps:g} on a drained value) {sinks}; {heads}")
    # the re-tested half: no sink head without the normaliser, while softmax (or the normalised kernel) shows that
    # the measure finds one where there is one
    agree = not out["sigmoid_nonorm"]["sink_heads"] and bool(out["sigmoid_norm"]["sink_heads"] or out["base"]["sink_heads"])
    notes = []
    if out["sigmoid_nonorm"]["parked_heads"] and not out["sigmoid_nonorm"]["sink_heads"]:
        notes.append("sigmoid without normaliser parks mass on key 1 without a value drain (a bias, not a sink)")
    if not out["sigmoid_norm"]["sink_heads"]:
        notes.append(
            "the other half of the claim (with the normaliser the sink returns) is not seen at this scale: "
            "sigmoid with normaliser has no sink head either"
            + (", while softmax has one (the positive control)" if out["base"]["sink_heads"] else "")
        )
    return Verdict(ours="; ".join(parts), agree=agree, numbers=out, note="; ".join(notes))


# --------------------------------------------------------------------------- configs of the new rows


def _cfgs_batch(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    sizes = (8, 16, 64) if s == "cpu" else (32, 128, 256)
    return {"base": b} | {f"bs{n}": _v(b, f"bs{n}", batch_size=n) for n in sizes}


def _cfgs_data_amount(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    amounts = (16_384, 131_072, 1_048_576) if s == "cpu" else (50_000_000, 200_000_000, 1_000_000_000)
    return {"data_all": b} | {f"data{n}": _v(b, f"data{n}", data_tokens=n) for n in amounts}


def _cfgs_random_first(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    return {
        "base": b,
        "random1": _v(b, "random1", random_token_pos=1),
        "random4": _v(b, "random1-4", random_token_pos=1, random_token_count=4),
    }


def _cfgs_random_data(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    return {"base": b, "random_all": _v(b, "random-all", random_token_pos=1, random_token_count=b.seq_len)}


def _cfgs_fixed_positions(s: str) -> dict[str, TrainConfig]:
    nb = _nobos(s)
    return {"no_bos": nb, "fixed1": _v(nb, "fixed1", fixed_token_pos=1), "fixed2": _v(nb, "fixed2", fixed_token_pos=2)}


def _kb(s: str) -> TrainConfig:
    return _cfgs_kbias(s)["kbias"]


def _cfgs_kv(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    return {"base": b, "kv": _v(b, "kvbias", k_bias=True, v_bias="learn")}


def _cfgs_v_only(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    return {"base": b, "v_only": _v(b, "vbias", v_bias="learn")}


def _cfgs_headwise(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    hb = b if s == "gpu" else b.replace(n_heads=2)  # head-wise needs more than one head (BB preset: one per layer)
    tag = "" if s == "gpu" else "h2-"
    return {
        "k_shared": _v(hb, f"{tag}kbias", k_bias=True, v_bias="zero"),
        "k_head": _v(hb, f"{tag}kbias-head", k_bias=True, v_bias="zero", bias_per_head=True),
        "kv_shared": _v(hb, f"{tag}kvbias", k_bias=True, v_bias="learn"),
        "kv_head": _v(hb, f"{tag}kvbias-head", k_bias=True, v_bias="learn", bias_per_head=True),
    }


def _cfgs_kbias_fixed_v(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    out = {"v0": _kb(s)}
    for fam in ("e1", "ones"):
        for x in (1, 5, 20):
            out[f"{fam}_x{x}"] = _v(b, f"kbias-v{fam}x{x}", k_bias=True, v_bias=fam, v_bias_scale=float(x))
    return out


def _cfgs_sink_token(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    return {"base": b, "sink_token": _v(b, "sinktoken", sink_token=True)}


def _cfgs_alpha(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    return {"base": b} | {f"alpha{a}": _v(b, f"alpha{a}", softmax_alpha=float(a)) for a in (2, 4)}


def _cfgs_pnorm(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    return {"base": b} | {f"p{p}": _v(b, f"pnorm{p}", softmax_p=float(p)) for p in (2, 4)}


def _cfgs_elu(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    return {
        "elu_nonorm": _v(b, "elu-nonorm", kernel="elu", attn_norm="none"),
        "elu_norm": _v(b, "elu-norm", kernel="elu", attn_norm="sum"),
    }


def _cfgs_mlp(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    return {
        "mlp_nonorm": _v(b, "mlp-nonorm", kernel="mlp", attn_norm="none"),
        "mlp_norm": _v(b, "mlp-norm", kernel="mlp", attn_norm="max1"),
    }


_POS = ("nope", "alibi", "learned", "sinusoidal", "relative")


def _cfgs_pos(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    return {"rope": b} | {p: _v(b, p, pos=p) for p in _POS}


def _cfgs_t5(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    return {"rope": b, "t5": _v(b, "t5", pos="t5")}


def _cfgs_norm(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    return {"pre": b, "post": _v(b, "postnorm", norm="post")}


_FFN = ("geglu", "reglu", "gelu", "relu", "swish")


def _cfgs_ffn(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    return {"swiglu": b} | {f: _v(b, f"ffn-{f}", ffn=f) for f in _FFN}


def _cfgs_kbias_da(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    dims = (1, 4, 16, 64) if s == "cpu" else (1, 4, 16, 64)
    dims = tuple(d for d in dims if d < b.d_head)
    return {"base": b, "da_full": _kb(s)} | {
        f"da{d}": _v(b, f"kbias-da{d}", k_bias=True, v_bias="zero", k_bias_dims=d) for d in dims
    }


def _text(s: str) -> TrainConfig:
    return preset("text-softmax") if s == "cpu" else _base(s)


def _cfgs_intra_doc(s: str) -> dict[str, TrainConfig]:
    t = _text(s)
    return {
        "causal": t,
        "causal_fixed": _v(t, "fixedbos", bos="fixed"),
        "intra": _v(t, "intradoc", intra_doc=True),
        "intra_bos": _v(t, "intradoc-docbos", intra_doc=True, bos="doc"),
        "intra_fixed": _v(t, "intradoc-fixedbos", intra_doc=True, bos="fixed"),
    }


#: paper lr 4e-4 (peak of its cosine) over our BB lr: wd x this keeps lr x wd per step as the paper's
_WD_SCALE = 4e-4 / 3e-3


def _cfgs_wd_schedule(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    if s == "gpu":
        return {f"wd{w:g}": _v(b, f"wd{w:g}", weight_decay=w) for w in (0.0, 0.1, 0.5, 1.0, 2.0, 5.0)}
    c = b.replace(schedule="cosine", min_lr=b.lr * 1e-5 / 4e-4)
    return {f"wd{w:g}": _v(c, f"cos-wdp{w:g}", weight_decay=round(w * _WD_SCALE, 8)) for w in (0.0, 0.1, 0.5, 1.0, 2.0, 5.0)}


def _cfgs_lr_budget(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    if s == "gpu":
        lr0, st0 = 8e-4, 10_000
        return {
            f"lr{i}": _v(
                b,
                f"lr{lr0 / 2**i:g}-s{st0 * 2**i}",
                lr=lr0 / 2**i,
                steps=st0 * 2**i,
                eval_every=1000 * 2**i,
                ckpt_every=1000 * 2**i,
            )
            for i in range(4)
        }
    out = {"lr0": b}
    for i in (1, 2, 3):
        f = 2**i
        out[f"lr{i}"] = _v(
            b, f"lr-div{f}-x{f}steps", lr=b.lr / f, steps=b.steps * f, eval_every=b.eval_every * f, ckpt_every=b.ckpt_every * f
        )
    return out


def _cfgs_kbias_rope(s: str) -> dict[str, TrainConfig]:
    b = _base(s)
    nope = _v(b, "nope", pos="nope")
    deep = _v(b, "l4", n_layers=4) if s == "cpu" else b
    return {
        "rope_base": b,
        "rope_kbias": _kb(s),
        "nope_base": nope,
        "nope_kbias": _v(nope, "kbias", k_bias=True, v_bias="zero"),
        "deep_base": deep,
        "deep_kbias": _v(deep, "kbias", k_bias=True, v_bias="zero"),
    }


def _cfgs_prefix_positional(s: str) -> dict[str, TrainConfig]:
    nb = _nobos(s)
    learned = _v(nb, "learned", pos="learned")
    rnd = _v(_base(s), "random1", random_token_pos=1)
    p = 4 if s == "cpu" else 10
    return {
        "learned_causal": learned,
        "learned_prefix": _v(learned, f"prefix{p}", prefix=p),
        "random_first_causal": rnd,
        "random_first_prefix": _v(rnd, f"prefix{p}", prefix=p),
    }


def _cfgs_sigmoid_mass(s: str) -> dict[str, TrainConfig]:
    return {"base": _base(s)} | _cfgs_sigmoid(s)


#: The natural-text testbed at CPU scale: ``text-fixed-bos`` on the big offline corpus (``scripts/build_corpus.py``).
#: The pairs train 20k steps (the pilot of docs/training.md); the long run 40k steps for the final Sink_1.
TEXT_STEPS, TEXT_LONG_STEPS = 20_000, 40_000


def _cfgs_text_emergence(s: str) -> dict[str, TrainConfig]:
    if s == "gpu":
        b = _v(_base(s), "fixedbos", bos="fixed")
        long = b
    else:
        b = preset("text-fixed-bos", text_corpus="big", steps=TEXT_STEPS, eval_every=500)
        long = b.replace(steps=TEXT_LONG_STEPS)
    return {
        "softmax": b,
        "softmax_long": long,
        "sigmoid_nonorm": _v(b, "sigmoid-nonorm", kernel="sigmoid", attn_norm="none"),
        "no_bos": b.replace(name=b.name.replace("-fixed-bos", "").replace("-fixedbos", "") + "-nobos", bos="none"),
    }


def massive_stats(run: Run) -> dict[str, Any]:
    """Massive activations of a run's model on its validation probe (:func:`sink_interp.massive_activations`), per block.

    ``max`` the largest ``|x|`` of the block's input residual, ``ratio`` that value over the
    median ``|x|`` of its hidden state, ``pos``/``dim`` where it sits (0 = the first token),
    ``h_norm_ratio_first`` the first token's residual norm over the others'.
    """
    from ..massive import massive_activations
    from .model import load_trained

    lab = load_trained(run.model_dir)
    rep = massive_activations(lab.bridge, _probe(run.cfg), measure_sinks=False, bos=run.cfg.bos == "fixed", progress=False)
    arg = rep.layer_argmax
    return {
        "max": [round(float(x), 4) for x in rep.layer_max],
        "ratio": [round(float(x), 2) for x in rep.layer_ratio],
        "pos": [int(x) for x in arg[:, 1]],
        "dim": [int(x) for x in arg[:, 2]],
        "h_norm_ratio_first": [round(float(x), 3) for x in rep.norm_ratio("h", 0)],
        "sun_massive": [bool(x) for x in rep.is_massive()],  # |x| > 100 and >= 1000 medians (Sun et al. 2024)
    }


def _massive_desc(m: dict[str, Any]) -> str:
    top = max(range(len(m["max"])), key=lambda l: m["ratio"][l])
    return (
        f"largest |x| / median {m['ratio'][top]:.0f} (|x| {m['max'][top]:.1f}) at block {top}, position {m['pos'][top]}, dim {m['dim'][top]}; "
        f"first-token residual norm / others' {max(m['h_norm_ratio_first']):.2f} at most; "
        f"Sun et al.'s massive activations (|x| > 100, >= 1000 medians): {'in blocks ' + str([l for l, x in enumerate(m['sun_massive']) if x]) if any(m['sun_massive']) else 'none'}"
    )


def _j_text_emergence(r: dict[str, Run], extra: dict[str, Any]) -> Verdict:
    s, g, nb = r["softmax"].final, r["sigmoid_nonorm"].final, r["no_bos"].final
    long = r["softmax_long"]
    last, raw = long.final, extra["sigmoid_raw"]
    curve = [(m["step"], round(m["sink_rate_1"], 1)) for m in long.metrics]
    onset = next((m["step"] for m in long.metrics if m["sink_rate_1"] >= 1.0), None)
    emerges = last["sink_rate_1"] >= 20.0 and long.metrics[0]["sink_rate_1"] < 5.0
    checks = {
        "emerges": emerges,  # the goal: Sink_1 >= 20% at the end of the long run, from ~0 at step 0
        "sigmoid_no_sink": g["sink_rate_1"] < 5.0 and raw["sink_rate_1_raw"] < 5.0,
        "fixed_bos_above_no_bos": s["sink_rate_1"] > nb["sink_rate_1"] + 5.0,
        "no_bos_sink": nb["sink_rate_1"] >= 5.0,  # the paper's causal no-BOS model keeps 65.10%
    }
    ours = (
        f"fixed BOS, softmax, {long.cfg.steps} steps: Sink_1 {long.metrics[0]['sink_rate_1']:.1f}% (step 0) -> "
        f"{last['sink_rate_1']:.1f}% (first >= 1% at step {onset}; eps 0.2: {last.get('sink_rate_1_by_eps', {}).get('0.2', float('nan')):.1f}%), "
        f"mean alpha_1 {last['mean_alpha_1']:.3f}, {_massive(last)}, loss {last['val_loss']:.3f}; "
        f"at {r['softmax'].cfg.steps} steps: softmax {s['sink_rate_1']:.1f}% ({_massive(s)}, loss {s['val_loss']:.3f}), "
        f"sigmoid without normaliser {g['sink_rate_1']:.1f}% by the proxy, {raw['sink_rate_1_raw']:.1f}% raw "
        f"(mean row sum {raw['attn_mass']:.2f}; {_massive(g)}, loss {g['val_loss']:.3f}), "
        f"no BOS {nb['sink_rate_1']:.1f}% ({_massive(nb)}, loss {nb['val_loss']:.3f})"
    )
    ours += f"; massive activations, softmax 40k: {_massive_desc(extra['massive_softmax'])}; sigmoid without normaliser: {_massive_desc(extra['massive_sigmoid'])}"
    heads = {}
    for arm in ("softmax", "sigmoid_nonorm"):  # sink heads as sigmoid_mass defines them: raw mass > eps on a drained value
        hs = extra[f"heads_{arm}"]
        eps = r[arm].cfg.eps
        heads[arm] = _classify_heads(hs, eps)
        parked = heads[arm]["parked_heads"]
        ours += (
            f"; {arm.replace('_', ' ')} at 20k, heads with raw mass > {eps:g} on BOS: "
            + (
                ", ".join(
                    f"L{l}H{h} ({hs['alpha_1_raw'][l][h]:.2f}, row sum {hs['row_sum'][l][h]:.2f}, v-ratio {hs['value_ratio'][l][h]:.2f})"
                    for l, h in parked
                )
                or "none"
            )
            + f", of which drained (v-ratio < 0.5): {heads[arm]['sink_heads']}"
        )
    if not checks["no_bos_sink"]:
        ours += "; without BOS no first-token sink forms at this scale (the paper's no-BOS model keeps 65.10%)"
    agree = checks["emerges"] and checks["sigmoid_no_sink"] and checks["fixed_bos_above_no_bos"]
    return Verdict(
        ours=ours,
        agree=agree,
        numbers={
            "final": {**last, "sink_rate": last["sink_rate_1"]},
            "curve": curve,
            "onset_step": onset,
            "checks": checks,
            "softmax": s,
            "sigmoid_nonorm": g,
            "sigmoid_nonorm_raw": raw,
            "no_bos": nb,
            "massive_softmax": extra["massive_softmax"],
            "massive_sigmoid": extra["massive_sigmoid"],
            "heads": heads,
        },
    )


def _pos_desc(k: str, run: Run) -> str:
    return k


NEW_FINDINGS: list[Finding] = [
    Finding(
        "batch_size",
        "batch size does not decide whether the sink emerges",
        "not in the seeds: the official configs train batch 128 / 256 / 1024 beside the base 512 (configs/batch); "
        "direction taken: the sink emerges at every batch size",
        _cfgs_batch,
        _j_batch,
    ),
    Finding(
        "data_amount",
        "the sink emerges only after enough unique training data",
        "Sink_1 grows with the unique training data (50M .. 5B tokens); 'not really related to overfitting'",
        _cfgs_data_amount,
        _j_data_amount,
    ),
    Finding(
        "random_first",
        "random tokens at the first positions: the first position is still the sink",
        "official random_data.py start 0, end 1 (no number in the seeds); slides: the first token is unique "
        "(its hidden state involves no mixing), 'the first token can vary' and still becomes the sink",
        _cfgs_random_first,
        _j_random_first,
    ),
    Finding(
        "random_data",
        "fully random data: no sink",
        "abstract: the sink emerges after effective optimisation on sufficient data; uniformly random tokens leave "
        "nothing to optimise (no number in the seeds)",
        _cfgs_random_data,
        _j_random_data,
    ),
    Finding(
        "fixed_token_positions",
        "a fixed token at position 1 or 2 becomes the sink",
        "fixed at 1: Sink_1 74.11%, Sink_2..4 ~0; fixed at 2: Sink_2 69.03%, others ~0",
        _cfgs_fixed_positions,
        _j_fixed_positions,
    ),
    Finding(
        "kv_bias",
        "learnable K and V biases take the sink's role",
        "K and V bias: Sink_* 72.76%, Sink_1 0.04%, loss 3.72 (softmax: Sink_1 18.18%, 3.73)",
        _cfgs_kv,
        _j_kv_bias,
    ),
    Finding(
        "v_bias_only",
        "a V bias alone (control) leaves the sink on the first token",
        "V bias only (y = Attn + v*): Sink_1 17.53%, loss 3.73 (softmax 18.18%)",
        _cfgs_v_only,
        _j_v_only,
    ),
    Finding(
        "bias_headwise",
        "head-wise K / KV biases behave as shared ones",
        "official configs k_head_bias / kv_head_bias (no number in the seeds): the bias takes the sink's role as the shared one does",
        _cfgs_headwise,
        _j_headwise,
    ),
    Finding(
        "kbias_fixed_v",
        "K bias with a fixed V bias: the larger the fixed value, the less the bias is used",
        "Sink_*: v*=0 73.34, v' 70.03, 5v' 44.43, 20v' 1.51, v'' 69.74, 5v'' 27.99, 20v'' 0.00 "
        "(v' = e1, v'' = 1/sqrt(d_h)); Sink_1 comes back (20v' 3.71, v'' 2.15, 5v'' 5.93, 20v'' 11.21); loss 3.71-3.73",
        _cfgs_kbias_fixed_v,
        _j_kbias_fixed_v,
    ),
    Finding(
        "sink_token",
        "a learnable sink token takes the sink",
        "learnable sink token ([q*; Q][k*; K]^T): Sink_* 74.12%, Sink_1 0.00%, loss 3.72; it encourages massive activations",
        _cfgs_sink_token,
        _j_sink_token,
    ),
    Finding(
        "softmax_alpha",
        "scaling the normaliser (Z -> Z / alpha) mitigates but does not prevent the sink",
        "Z/alpha: 'may mitigate attention sink, but not prevent the emergence'",
        _cfgs_alpha,
        _j_mitigate(("alpha2", "alpha4"), "alpha"),
    ),
    Finding(
        "softmax_pnorm",
        "p-norm softmax mitigates but does not prevent the sink",
        "p-norm (rows' p-th powers sum to 1): 'may mitigate attention sink, but not prevent the emergence'",
        _cfgs_pnorm,
        _j_mitigate(("p2", "p4"), "p"),
    ),
    Finding(
        "elu",
        "elu+1 attention: no sink without normaliser, the sink returns with it",
        "'No normalization -> no attention sink, no massive activations; added back normalization -> attention sink, massive activations'",
        _cfgs_elu,
        _j_no_norm("elu_nonorm", "elu_norm", "elu+1"),
    ),
    Finding(
        "mlp_kernel",
        "a learned MLP kernel (linear attention) has no sink, with or without Z = max(|sum|, 1)",
        "MLP kernel: 'no attention sink, no massive activations', also with the normaliser max(|sum|, 1)",
        _cfgs_mlp,
        _j_no_norm("mlp_nonorm", "mlp_norm", "MLP kernel", need_return=False),
    ),
    Finding(
        "pos_types",
        "positional encoding does not decide whether the sink emerges",
        "NoPE, absolute, learnable, relative, ALiBi and rotary PEs all develop the sink (the slides: 'do not affect the emergence')",
        _cfgs_pos,
        _emerges_judge(("rope",) + _POS, _pos_desc),
    ),
    Finding(
        "t5_relative",
        "T5-style learned relative bias also develops the sink",
        "relative PEs 'do not affect the emergence of attention sink' (the official relative run adds the bucket index; T5's learned bias is ours)",
        _cfgs_t5,
        _emerges_judge(("rope", "t5"), _pos_desc),
    ),
    Finding(
        "post_norm",
        "pre- or post-norm blocks both develop the sink",
        "pre-norm and post-norm 'do not affect the emergence'; in post-norm models the massive activations sit before the norms",
        _cfgs_norm,
        _emerges_judge(("pre", "post"), _pos_desc),
    ),
    Finding(
        "ffn_types",
        "the FFN type does not decide whether the sink emerges",
        "FFNs with different activations (ReLU, GeLU, Swish, ReGLU, GeGLU, SwiGLU) 'do not affect the emergence'",
        _cfgs_ffn,
        _emerges_judge(("swiglu",) + _FFN, _pos_desc),
    ),
    Finding(
        "kbias_da",
        "a K bias with few learnable dims (d_a) still takes the sink",
        "d_a 1/2/4/8/16/32/64: Sink_* 32.18/30.88/30.94/31.39/23.30/51.23/69.19%, Sink_1 4.74/4.96/4.39/4.54/2.19/1.94/0.04% (softmax 18.18%)",
        _cfgs_kbias_da,
        _j_kbias_da,
    ),
    Finding(
        "intra_doc",
        "intra-document masking with and without BOS (the rest of the BOS/packing table)",
        "intra-doc, no BOS: 28.23% / 2.67; intra-doc + BOS: 83.33% / 2.67 with BOS, 50.24% / 2.68 without; "
        "intra-doc + fixed BOS: 90.56% / 2.67 with, 0.00% / 7.78 without",
        _cfgs_intra_doc,
        _j_intra_doc,
        source="Barbero et al. 2025 (slides)",
        extra=lambda r: {k: bos_dependence(r[k]) for k in ("causal_fixed", "intra_bos", "intra_fixed")},
    ),
    # ------------------------------------------------------------------ re-tests under the paper's protocol
    Finding(
        "weight_decay_schedule",
        "weight decay re-tested with the paper's schedule and lr x wd per step",
        "wd 0: 15.2%, 0.1: 18.2%, 0.5: 41.1%, 1: 37.7%, 2: 6.1%, 5: 0.01% (lr 4e-4 cosine; lr x wd at the peak 2e-4 per step)",
        _cfgs_wd_schedule,
        _j_wd_schedule,
    ),
    Finding(
        "lr_constant_budget",
        "learning rate re-tested with lr x steps constant",
        "lr x steps constant: 8e-4 x 10k 23.44%, 4e-4 x 20k 18.18%, 2e-4 x 40k 16.81%, 1e-4 x 80k 6.29%",
        _cfgs_lr_budget,
        _j_lr_budget,
    ),
    Finding(
        "kbias_official_rope",
        "K bias re-tested as the official code places it relative to RoPE",
        "Sink_* 73.34%, Sink_1 0.00% (official model_kv_bias.py: k* appended after RoPE, unrotated)",
        _cfgs_kbias_rope,
        _j_kbias_rope,
        extra=lambda r: {a: head_stats(r[f"{a}_kbias"], ablate=False) for a in ("rope", "nope", "deep")},
    ),
    Finding(
        "prefix_positional",
        "prefix LM re-tested where the sink is positional, not a fixed token",
        "the sink shifts from position 1 to positions within the prefix",
        _cfgs_prefix_positional,
        _j_prefix_positional,
    ),
    Finding(
        "sigmoid_mass",
        "sigmoid without normaliser re-measured: absolute mass per key, head-output norms, dormancy, value drain",
        "no sink and no massive activations without normaliser (up to 1B); with it the sink returns",
        _cfgs_sigmoid_mass,
        _j_sigmoid_mass,
        extra=lambda r: {k: head_stats(r[k]) for k in ("base", "sigmoid_norm", "sigmoid_nonorm")},
    ),
    Finding(
        "text-emergence",
        "on natural text a first-token sink emerges with softmax, not with sigmoid without normaliser",
        "causal + fixed BOS 90.84%, causal without BOS 65.10% (Barbero et al. 2025 slides); "
        "sigmoid without normaliser: no sink up to 1B (Gu et al. 2025); our goal at CPU scale: Sink_1 >= 20%",
        _cfgs_text_emergence,
        _j_text_emergence,
        source="Gu et al. 2025; Barbero et al. 2025 (slides)",
        extra=lambda r: {
            "sigmoid_raw": raw_stats(r["sigmoid_nonorm"]),
            "massive_softmax": massive_stats(r["softmax_long"]),
            "massive_sigmoid": massive_stats(r["sigmoid_nonorm"]),
            "heads_softmax": head_stats(r["softmax"], ablate=False),
            "heads_sigmoid_nonorm": head_stats(r["sigmoid_nonorm"], ablate=False),
        },
    ),
]

FINDINGS.update({f.name: f for f in NEW_FINDINGS})

# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class ReproRow:
    finding: str
    claim: str
    paper: str
    ours: str
    agree: bool | None
    source: str
    runs: dict[str, str]
    numbers: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    command: str = ""  # re-makes this row; OUT is the folder holding reproduce.json (a new one trains the runs again)


@dataclass(frozen=True, eq=False)
class ReproTable:
    """The reproduction table: one row per finding (paper vs ours, agree?)."""

    rows: tuple[ReproRow, ...]
    scale: str
    out: str
    versions: dict[str, str]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "finding": r.finding,
                    "paper": r.paper,
                    "ours": r.ours,
                    "agree": r.agree,
                    "source": r.source,
                    "command": r.command,
                }
                for r in self.rows
            ]
        )

    def summary(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "out": self.out,
            "agree": sum(1 for r in self.rows if r.agree),
            "disagree": sum(1 for r in self.rows if r.agree is False),
            "n": len(self.rows),
            "versions": self.versions,
        }

    def to_json(self, path: str | None = None) -> str:
        text = dumps({**self.summary(), "rows": [r.__dict__ for r in self.rows]})
        if path is not None:
            write_atomic(path, text)
        return text

    def to_markdown(self) -> str:
        def cell(s: str) -> str:  # a table cell: no column breaks, and brackets never read as link references
            return code(s).replace("[", "\\[").replace("]", "\\]")

        def code(s: str) -> str:  # inside a code span only the column break needs escaping
            return str(s).replace("|", "\\|").replace("\n", " ")

        lines = ["| finding | paper | ours | agree? | command |", "|---|---|---|---|---|"]
        for r in self.rows:
            mark = "yes" if r.agree else ("no" if r.agree is False else "n/a")
            lines.append(
                f"| {cell(r.finding + ': ' + r.claim)} | {cell(r.paper)} ({cell(r.source)}) | {cell(r.ours)} | {mark} | `{code(r.command)}` |"
            )
        return "\n".join(lines) + "\n"

    def _repr_html_(self) -> str:
        e = html.escape
        rows = "".join(
            f"<tr><td><b>{e(r.finding)}</b>: {e(r.claim)}</td><td>{e(r.paper)}</td><td>{e(r.ours)}</td>"
            f"<td>{'yes' if r.agree else 'no' if r.agree is False else 'n/a'}</td></tr>"
            for r in self.rows
        )
        return f"<table><tr><th>finding</th><th>paper</th><th>ours</th><th>agree?</th></tr>{rows}</table>"


@dataclass(frozen=True)
class FindingCurves:
    """The training curves of one finding's runs: ``{run label: metrics rows}``, drawn by the view registered for this class."""

    title: str
    metrics: dict[str, list[dict[str, Any]]]


def _curves(path: Path, runs: dict[str, Run], title: str) -> str | None:
    """Sink_1 / val_loss curves of a finding's runs as a standalone HTML file; None when no view is registered."""
    curves = FindingCurves(title, {label: list(run.metrics) for label, run in runs.items()})
    if display.view_fn(curves) is None:
        return None
    display.view_of(curves).save(path)
    return str(path)


def reproduce(
    finding: str | Sequence[str] = "all",
    *,
    scale: str = "cpu",
    out: str | os.PathLike[str] = "reproduce",
    steps: int | None = None,
    overrides: dict[str, Any] | None = None,
    device: str = "cpu",
    threads: int | None = 1,
    jobs: int = 1,
    progress: bool = True,
    executor: Any = "local",
    executor_options: dict[str, Any] | None = None,
) -> ReproTable:
    """Run the paired experiments of ``finding`` (a name, a list, or ``"all"``) and write the table.

    The same as :func:`plan` (with ``out``), :func:`run_one` for every run,
    then :func:`tabulate`. ``steps`` overrides every run's step count and
    ``overrides`` any other :class:`TrainConfig` field of every run (for smoke
    tests: the numbers then mean little). Finished runs under ``out/runs`` are
    reused and unfinished ones resumed. ``executor`` runs the list (see
    :func:`sink_interp._internal.executors.map_jobs`): ``"local"`` (default;
    ``jobs`` runs in parallel processes with ``threads`` threads each),
    ``"submitit"`` (a SLURM array; ``executor_options`` such as
    ``{"slurm_partition": "gpu", "timeout_min": 120}``), ``"ray"``, or any
    object with ``map(fn, items)``. ``out`` must be new, empty or an earlier
    reproduce output (one-line ``FileExistsError`` otherwise, before anything
    is written); a second process on the same ``out`` is refused while the
    first one runs.
    """
    names = _names(finding, scale)
    check_executor(executor, jobs)
    root = Path(out).expanduser()
    cfgs = _configs(names, scale, steps, overrides)
    p = Plan(
        tuple(names),
        scale,
        tuple(_specs({f"{n}/{k}": c for n in names for k, c in cfgs[n].items()}, root)),
        steps,
        _over(overrides),
    )
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


def tabulate(root: str | os.PathLike[str]) -> ReproTable:
    """The findings table of the plan in ``root`` from its finished runs; writes ``reproduce.json`` and ``reproduce.md``.

    Refuses (one line, nothing written) while any run of the plan is unfinished.
    """
    root = Path(root).expanduser()
    _ours(root)
    p = Plan.read(root)
    with dir_lock(root, "reproduce output"):
        return _tabulate(p, root)


def _tabulate(p: Plan, root: Path) -> ReproTable:
    _check_finished(p.runs, root)
    rows = []
    for n in p.findings:
        f = FINDINGS[n]
        runs = {k: Run(k, s.config, str(root / s.dir), tuple(read_metrics(root / s.dir))) for k, s in p.uses(n).items()}
        v = f.verdict(runs)
        curves = _curves(root / "curves" / f"{n}.html", runs, f"{n}: {f.claim}")
        rows.append(
            ReproRow(
                finding=n,
                claim=f.claim,
                paper=f.paper,
                ours=v.ours,
                agree=v.agree,
                source=f.source,
                runs={k: p.uses(n)[k].dir for k in runs} | ({"curves": _rel(Path(curves), root)} if curves else {}),
                numbers=v.numbers,
                note=v.note,
                command=p.command(n),
            )
        )
    table = ReproTable(rows=tuple(rows), scale=p.scale, out=str(root), versions=versions())
    table.to_json(str(root / "reproduce.json"))
    write_atomic(root / "reproduce.md", table.to_markdown())
    return table


__all__ = [
    "FINDINGS",
    "Finding",
    "Plan",
    "ReproRow",
    "ReproTable",
    "RunSpec",
    "bos_dependence",
    "plan",
    "reproduce",
    "run_one",
    "tabulate",
    "window_stats",
]
