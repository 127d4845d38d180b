"""``train(cfg, out_dir)``: a resumable training run with periodic sink measurements.

A run directory holds:

* ``config.json`` -- the :class:`TrainConfig`, the task description, versions;
* ``metrics.jsonl`` -- one line per evaluation (``step``, ``val_loss``,
  ``sink_rate`` = Sink_1 in percent at ``eps``, the sweep at 0.1/0.2, ``mean_alpha1``,
  ``sink_rates`` for k = 1..16, sink mass, value-norm ratio, residual peak,
  ``train_loss``, ``lr``). Deterministic: a killed and resumed run writes the
  same bytes as an uninterrupted one (same torch version and thread count, CPU);
* ``timing.jsonl`` -- wall-clock time and tokens/s (not deterministic, kept apart);
* ``checkpoint.pt`` -- model, optimiser, data-sampler and loss-accumulator state,
  written atomically (temporary file + ``os.replace``) every ``ckpt_every`` steps;
* ``model/`` -- the final model (:func:`sink_interp.training.save_trained`), loadable
  with :func:`sink_interp.load_model`;
* ``summary.json`` -- the final metrics.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import torch

from .._internal.provenance import dumps, versions, write_atomic
from ..tasks import BigramBackcopy, Sampler, TextCorpus
from .config import TrainConfig, preset  # noqa: F401  (preset: used by the docstring example)
from .evaluate import _round, masked_ce, probe_stats, val_losses
from .model import LabModel, build_model, save_trained

CKPT = "checkpoint.pt"
METRICS = "metrics.jsonl"
TIMING = "timing.jsonl"
CKPT_FORMAT = 1


# --------------------------------------------------------------------------- pieces


def make_task(cfg: TrainConfig) -> BigramBackcopy | TextCorpus:
    """The data source of ``cfg`` (BB task or natural-text corpus)."""
    if cfg.task == "bb":
        return BigramBackcopy(
            n_vocab=cfg.bb_vocab,
            source=cfg.bb_source,
            n_triggers=cfg.bb_triggers,
            bos_num=cfg.bb_bos_num,
            seq_len=cfg.seq_len,
            delimiter_p=cfg.bb_delimiter_p,
            seed=cfg.seed,
        )
    return TextCorpus(corpus=cfg.text_corpus, vocab_size=cfg.text_vocab, seq_len=cfg.seq_len)


def make_sampler(cfg: TrainConfig, task: Any, seed: int, split: str = "train", **over: Any) -> Sampler:
    """A sampler producing sequences in the training format of ``cfg``."""
    kw: dict[str, Any] = dict(
        split=split if cfg.task == "text" else "train",
        bos=cfg.bos if cfg.task == "text" else "none",
        intra_doc=cfg.intra_doc,
        fixed_token_pos=cfg.fixed_token_pos,
        fixed_token_id=cfg.fixed_token_id,
        data_tokens=cfg.data_tokens if split == "train" else None,
        prefix=cfg.prefix,
        sink_token=cfg.sink_token,
    )
    kw.update(over)
    return Sampler(task, seed=seed, **kw)


def make_optimizer(cfg: TrainConfig, lab: LabModel) -> torch.optim.Optimizer:
    """AdamW (betas, eps, decoupled weight decay) or SGD with momentum, over the clean-named parameters.

    ``wd_on="all"`` decays every parameter (the official runs, norm gains
    included); ``"no-norms"`` exempts the RMSNorm gains.
    """
    named = lab.named_parameters()
    if cfg.wd_on == "all":
        groups = [{"params": [p for _, p in named], "weight_decay": cfg.weight_decay}]
    else:
        decay = [p for n, p in named if "norm" not in n]
        keep = [p for n, p in named if "norm" in n]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": keep, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of (0-indexed) ``step``: linear warmup, then cosine to ``min_lr`` (official ``get_lr``) or constant."""
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * step / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, cfg.steps - cfg.warmup)
    ratio = min(1.0, max(0.0, (step - cfg.warmup) / span))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


def sink_position(cfg: TrainConfig) -> int:
    """Where the paper expects the sink: the fixed token's position, else the first token (the sink token if any)."""
    return cfg.fixed_token_pos or 1


def _atomic_torch_save(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


class _Killed(Exception):
    """Raised by ``stop_at`` to simulate a killed run (tests)."""


# --------------------------------------------------------------------------- result


@dataclass(frozen=True, eq=False)
class TrainResult:
    """What a run produced: its metrics curve, final numbers and where the model is.

    Example:
        >>> import tempfile
        >>> from sink_interp.training import preset, train
        >>> cfg = preset("bb-softmax", steps=2, eval_every=2, d_model=32, d_mlp=64, probe_n=4, eval_batches=1, batch_size=4)
        >>> res = train(cfg, tempfile.mkdtemp(), progress=False)
        >>> [m["step"] for m in res.metrics], "sink_rate" in res.final
        ([0, 2], True)
    """

    out_dir: str
    config: dict[str, Any]
    task: dict[str, Any]
    metrics: tuple[dict[str, Any], ...]
    model_dir: str
    n_params: int
    device: str
    dtype: str
    resumed_from: int | None
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def final(self) -> dict[str, Any]:
        return dict(self.metrics[-1]) if self.metrics else {}

    def to_frame(self) -> pd.DataFrame:
        """One row per evaluation (list-valued columns such as ``sink_rates`` kept as lists)."""
        return pd.DataFrame(list(self.metrics))

    def summary(self) -> dict[str, Any]:
        return {
            "out_dir": self.out_dir,
            "model_dir": self.model_dir,
            "name": self.config.get("name"),
            "task": self.task,
            "n_params": self.n_params,
            "device": self.device,
            "dtype": self.dtype,
            "eps": self.config.get("eps"),
            "bos": self.config.get("bos") if self.config.get("task") == "text" else f"{self.config.get('bb_bos_num')} BOS",
            "resumed_from": self.resumed_from,
            "final": self.final,
            "config": self.config,
            "versions": self.versions,
        }

    def to_json(self, path: str | None = None) -> str:
        text = dumps({**self.summary(), "metrics": list(self.metrics)})
        if path is not None:
            write_atomic(path, text)
        return text

    def __repr__(self) -> str:
        f = self.final
        return (
            f"TrainResult({self.config.get('name')!r}, steps={f.get('step')}, val_loss={f.get('val_loss', float('nan')):.4f}, "
            f"Sink_1={f.get('sink_rate', float('nan')):.1f}%, out_dir={self.out_dir!r})"
        )

    def _repr_html_(self) -> str:
        try:
            from ..views import view_for  # training curves (issue 5's views)

            return view_for(self)._repr_html_()
        except Exception:  # views not installed or unable to draw: a plain table
            pass
        e = html.escape
        cols = ["step", "val_loss", "sink_rate", "mean_alpha1", "value_norm_ratio", "resid_norm_ratio"]
        rows = "".join(
            "<tr>" + "".join(f"<td>{m.get(c, ''):.4g}</td>" if isinstance(m.get(c), float) else f"<td>{m.get(c, '')}</td>" for c in cols) + "</tr>"
            for m in self.metrics
        )
        head = "".join(f"<th>{c}</th>" for c in cols)
        return (
            f"<div><b>TrainResult</b> {e(str(self.config.get('name')))} &mdash; {e(self.out_dir)} "
            f"({self.n_params:,} parameters, {e(self.device)}, eps={self.config.get('eps')})"
            f"<table><tr>{head}</tr>{rows}</table></div>"
        )


def read_metrics(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The lines of a run's ``metrics.jsonl``."""
    p = Path(out_dir) / METRICS
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- the loop


def train(
    cfg: TrainConfig,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = True,
    device: str | torch.device | None = "cpu",
    threads: int | None = None,
    progress: bool = True,
    stop_at: int | None = None,
) -> TrainResult:
    """Train the model of ``cfg``, evaluating every ``cfg.eval_every`` steps; resumable.

    Args:
        cfg: the run's knobs (:func:`sink_interp.training.preset` gives named ones).
        out_dir: run directory (see the module docstring for its files).
        resume: continue from ``out_dir/checkpoint.pt`` when it exists and its
            config matches (``steps`` may grow); False starts afresh.
        device: ``"cpu"`` (default; bit-identical resume), ``"cuda"``, or None for CUDA when available.
        threads: torch CPU threads for the run (restored afterwards); None leaves them.
        progress: tqdm progress bar.
        stop_at: stop right after step ``stop_at`` as if killed (after that
            step's evaluation and checkpoint, if due); used by tests.

    Example:
        >>> import tempfile
        >>> cfg = preset("bb-softmax", steps=4, eval_every=2, d_model=32, d_mlp=64, batch_size=4, probe_n=4, eval_batches=1)
        >>> res = train(cfg, tempfile.mkdtemp(), progress=False)
        >>> len(res.metrics), res.final.get("step")  # evaluations at steps 0, 2 and 4
        (3, 4)
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig (see sink_interp.training.preset), got {type(cfg).__name__}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _threads(threads):
        return _train(cfg, out, resume=resume, device=device, progress=progress, stop_at=stop_at)


def _train(cfg: TrainConfig, out: Path, *, resume: bool, device: Any, progress: bool, stop_at: int | None) -> TrainResult:
    task = make_task(cfg)
    lab = build_model(cfg, task.d_vocab, task.tokenizer(), device=device)
    dev = next(lab.bridge.parameters()).device
    sampler = make_sampler(cfg, task, seed=cfg.seed + 1, split="train")
    val_batches = make_sampler(cfg, task, seed=cfg.seed + 10_007, split="val").fixed_batches(cfg.eval_batches, cfg.batch_size)
    probe = make_sampler(cfg, task, seed=cfg.seed + 20_011, split="val", intra_doc=False).sample(cfg.probe_n).tokens
    optimizer = make_optimizer(cfg, lab)

    ckpt_path = out / CKPT
    metrics_path = out / METRICS
    step = 0
    loss_acc = [0.0, 0]
    resumed_from = None
    if resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ck.get("fingerprint") != cfg.fingerprint():
            raise ValueError(
                f"{ckpt_path} was written by a different config (fingerprint {ck.get('fingerprint')} != {cfg.fingerprint()}); "
                "fix: use another out_dir or resume=False to start afresh"
            )
        lab.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        sampler.load_state_dict(ck["sampler"])
        torch.set_rng_state(ck["torch_rng"])
        step = int(ck["step"])
        loss_acc = list(ck["loss_acc"])
        resumed_from = step
        kept = [m for m in read_metrics(out) if m["step"] <= step]
        write_atomic(metrics_path, "".join(json.dumps(m) + "\n" for m in kept))
    else:
        for name in (METRICS, TIMING, CKPT):
            with contextlib.suppress(FileNotFoundError):
                (out / name).unlink()
    write_atomic(
        out / "config.json",
        dumps({"train_config": cfg.to_dict(), "task": task.describe(), "n_params": lab.n_params(), "versions": versions(), "fingerprint": cfg.fingerprint()}),
    )

    def evaluate(step: int) -> dict[str, Any]:
        lab.bridge.eval()
        m: dict[str, Any] = {"step": step, "tokens": step * cfg.batch_size * cfg.seq_len, "lr": lr_at(cfg, max(step - 1, 0))}
        m.update(val_losses(lab, val_batches, task))
        if loss_acc[1]:
            m["train_loss"] = loss_acc[0] / loss_acc[1]
        m.update(
            probe_stats(
                lab.bridge,
                probe,
                score=cfg.metric_score,
                eps=cfg.eps,
                first_pos=cfg.first_token_pos,
                sink_pos=sink_position(cfg),
            )
        )
        lab.bridge.train()
        return _round(m)

    def append(m: dict[str, Any], path: Path) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(m) + "\n")

    def save_checkpoint(step: int) -> None:
        _atomic_torch_save(
            {
                "format": CKPT_FORMAT,
                "fingerprint": cfg.fingerprint(),
                "config": cfg.to_dict(),
                "step": step,
                "model": lab.state_dict(),
                "optimizer": optimizer.state_dict(),
                "sampler": sampler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "loss_acc": list(loss_acc),
            },
            ckpt_path,
        )

    if step == 0:
        append(evaluate(0), metrics_path)
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=step, desc=cfg.name, unit="step", disable=not progress, leave=False)
    t0 = time.time()
    t_last, step_last = t0, step
    lab.bridge.train()
    try:
        while step < cfg.steps:
            lr = lr_at(cfg, step)
            for g in optimizer.param_groups:
                g["lr"] = lr
            batch = sampler.sample(cfg.batch_size)
            tokens = batch.tokens.to(dev)
            with lab.runtime.documents(None if batch.doc_ids is None else batch.doc_ids.to(dev)):
                logits = lab.bridge(tokens, return_type="logits")
            ce, mask = masked_ce(logits, tokens, batch.loss_mask.to(dev))
            loss = (ce * mask).sum() / mask.sum().clamp(min=1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for _, p in lab.named_parameters()], cfg.grad_clip)
            optimizer.step()
            step += 1
            loss_acc[0] += float(loss.detach())
            loss_acc[1] += 1
            bar.update(1)
            if not math.isfinite(loss_acc[0]):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}; fix: lower lr (now {cfg.lr}) or check the kernel")
            if step % cfg.eval_every == 0 or step == cfg.steps:
                m = evaluate(step)
                append(m, metrics_path)
                loss_acc = [0.0, 0]
                now = time.time()
                append({"step": step, "wall_s": round(now - t0, 3), "tokens_per_s": round((step - step_last) * cfg.batch_size * cfg.seq_len / max(now - t_last, 1e-9), 1)}, out / TIMING)
                t_last, step_last = now, step
                bar.set_postfix(loss=f"{m['val_loss']:.3f}", sink=f"{m['sink_rate']:.1f}%")
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                save_checkpoint(step)
            if stop_at is not None and step >= stop_at:
                raise _Killed(step)
    except _Killed:
        bar.close()
        return _result(cfg, out, task, lab, resumed_from, model_dir="")
    bar.close()
    model_dir = out / "model"
    save_trained(lab, model_dir, extra={"task": task.describe()})
    res = _result(cfg, out, task, lab, resumed_from, model_dir=str(model_dir))
    write_atomic(out / "summary.json", dumps(res.summary()))
    return res


def _result(cfg: TrainConfig, out: Path, task: Any, lab: LabModel, resumed_from: int | None, model_dir: str) -> TrainResult:
    p = next(lab.bridge.parameters())
    return TrainResult(
        out_dir=str(out),
        config=cfg.to_dict(),
        task=task.describe(),
        metrics=tuple(read_metrics(out)),
        model_dir=model_dir,
        n_params=lab.n_params(),
        device=str(p.device),
        dtype=str(p.dtype).replace("torch.", ""),
        resumed_from=resumed_from,
        versions=versions(),
    )
