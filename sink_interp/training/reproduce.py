"""Reproduce the paper's findings with paired training runs and tabulate them.

``reproduce("all", scale="cpu", out="repro/")`` trains the runs each finding
needs (shared runs are trained once: run directories are named by the config
fingerprint and resume), evaluates them, and writes ``reproduce.json`` and
``reproduce.md`` (finding, the paper's number or direction, ours, agree?) plus
training curves (``curves/<finding>.html``, drawn by :mod:`sink_interp.views`).

At ``scale="cpu"`` every finding runs on the Bigram-Backcopy task (see
:mod:`sink_interp.tasks`): natural text at CPU scale shows no sink (DESIGN
section 3), while BB develops one in minutes. ``scale="gpu"`` uses the
paper's 60M-model recipe on natural text (``gpu-text-softmax``; give it a
large corpus with ``text_corpus``); it is a recipe, not run in CI.

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
                "runs": [s.to_dict() for s in self.runs],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        d = json.loads(text)
        return cls(tuple(d["findings"]), str(d["scale"]), tuple(RunSpec.from_dict(r) for r in d["runs"]))

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
            cfgs = {k: c.replace(**overrides) for k, c in cfgs.items()}
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
    p = Plan(tuple(names), scale, tuple(_specs({f"{n}/{k}": c for n in names for k, c in cfgs[n].items()}, root)))
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


@dataclass(frozen=True, eq=False)
class ReproTable:
    """The reproduction table: one row per finding (paper vs ours, agree?)."""

    rows: tuple[ReproRow, ...]
    scale: str
    out: str
    versions: dict[str, str]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [{"finding": r.finding, "paper": r.paper, "ours": r.ours, "agree": r.agree, "source": r.source} for r in self.rows]
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
        def cell(s: str) -> str:
            return str(s).replace("|", "\\|").replace("\n", " ")

        lines = ["| finding | paper | ours | agree? |", "|---|---|---|---|"]
        for r in self.rows:
            mark = "yes" if r.agree else ("no" if r.agree is False else "n/a")
            lines.append(f"| {cell(r.finding + ': ' + r.claim)} | {cell(r.paper)} ({cell(r.source)}) | {cell(r.ours)} | {mark} |")
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
    p = Plan(tuple(names), scale, tuple(_specs({f"{n}/{k}": c for n in names for k, c in cfgs[n].items()}, root)))
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
