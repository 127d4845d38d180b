"""``train(cfg, out_dir)``: a resumable training run with periodic sink measurements.

A run directory holds:

* ``config.json`` -- the :class:`TrainConfig`, the task description, versions
  (written first: it marks the folder as a run of ours);
* ``metrics.jsonl`` -- one line per evaluation (``step``, ``val_loss``,
  ``sink_rate_1`` = Sink_1 in percent at ``eps``, ``sink_rate_1_by_eps`` (the sweep at
  0.1/0.2), ``mean_alpha_1``, ``sink_rates`` for k = 1..16, sink mass, value-norm ratio, residual peak,
  ``train_loss``, ``lr``). Deterministic: a killed and resumed run writes the
  same bytes as an uninterrupted one (same torch version and thread count, CPU).
  Files written with the old key names (``sink_rate``, ``mean_alpha1``, ...) are read
  with the new ones (:data:`sink_interp._internal.vocab.RENAMED`);
* ``timing.jsonl`` -- wall-clock time and tokens/s (not deterministic, kept apart);
* ``checkpoint.pt`` -- model, optimiser, data-sampler and loss-accumulator state,
  written atomically (temporary file + ``os.replace``) every ``ckpt_every`` steps.
  Tensors, numbers and JSON strings only: it is read with
  ``torch.load(..., weights_only=True)``, so a planted code payload is refused, never run;
* ``model/`` -- the final model (:func:`sink_interp.training.save_trained`), loadable
  with :func:`sink_interp.load_model`;
* ``summary.json`` -- the final metrics;
* ``.sink_interp.lock`` -- held (``flock``) while a process writes the run.

A run directory is owned: :func:`train` writes only into a new or empty
folder, or into a run of the same config, which it resumes. A folder with
other files, a run of another config, or a run another process is writing is
refused with a one-line error before anything is written, and nothing a run
did not create is ever deleted.
"""

from __future__ import annotations

import contextlib
import errno
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

from .._internal import files, vocab
from .._internal.provenance import Provenance, dumps, versions, write_atomic
from .._internal.report import Report
from ..tasks import BigramBackcopy, Sampler, TextCorpus
from .config import TrainConfig, preset, with_later_defaults  # noqa: F401  (preset: used by the docstring example)
from .evaluate import masked_ce, probe_stats, round_metric, val_losses
from .model import LabModel, build_model, remove_save, replace_problem, save_trained

CKPT = "checkpoint.pt"
METRICS = "metrics.jsonl"
TIMING = "timing.jsonl"
CONFIG = "config.json"
SUMMARY = "summary.json"
MODEL = "model"
LOCK = ".sink_interp.lock"
CKPT_FORMAT = 2  # format 1 (older versions) held arbitrary objects and needed an unsafe load: refused
RUN_FORMAT = 1  # config.json's "sink_interp_run"
#: Fields that may differ between a run and the config resuming it (they change no number).
RESUME_FREE = ("ckpt_every",)


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
        random_token_pos=cfg.random_token_pos,
        random_token_count=cfg.random_token_count,
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
    """Where the paper expects the sink, as its 1-indexed ``k``: the fixed token's, else the first token (the sink token if any)."""
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


# --------------------------------------------------------------------------- owning a run directory


class RunDirError(FileExistsError):
    """The folder is not ours to write: other files in it, or another process writing the run."""


def run_config(out: Path) -> dict[str, Any] | None:
    """The run's ``config.json`` when ``out`` is a run directory of ours, else None."""
    try:
        d = json.loads((out / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(d, dict) and isinstance(d.get("train_config"), dict) and isinstance(d.get("fingerprint"), str):
        return d
    return None


def _shown(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def claim_dir(out: Path, is_ours: Any, what: str) -> bool:
    """Refuse ``out`` unless it is absent, empty, or ``is_ours(out)``; True when it is ours and not empty."""
    if out.is_symlink() and not out.exists():
        raise RunDirError(f"{out} is a dangling link; fix: choose an empty or new folder for the {what}")
    if not out.exists():
        return False
    if not out.is_dir():
        raise RunDirError(f"{out} is a file, not a folder; fix: choose an empty or new folder for the {what}")
    entries = sorted(e.name for e in out.iterdir() if e.name != LOCK)
    if not entries:
        return False
    if not is_ours(out):
        raise RunDirError(
            f"{out} is not empty ({_shown(entries)}) and is not a sink_interp {what}; nothing was written; "
            f"fix: choose an empty or new folder"
        )
    return True


@contextlib.contextmanager
def dir_lock(d: Path, what: str = "run") -> Iterator[None]:
    """Hold ``d/.sink_interp.lock`` (``flock``, non-blocking) or refuse with a one-line error.

    The kernel drops the lock when the holder exits, however it dies, so a
    lock file left by a killed process blocks nothing.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    fd = os.open(d / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise RunDirError(
                f"{d} is being written by another process{who}; fix: wait for it to finish or choose another folder for the {what}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _diff(ran: dict[str, Any], now: dict[str, Any]) -> list[str]:
    missing = object()
    return [k for k in sorted(set(ran) | set(now)) if k not in RESUME_FREE and ran.get(k, missing) != now.get(k, missing)]


def _eval_steps(cfg: TrainConfig, upto: int) -> list[int]:
    return [s for s in range(upto + 1) if s == 0 or s % cfg.eval_every == 0 or s == cfg.steps]


def extension_problem(old: TrainConfig, new: TrainConfig, done: int) -> str | None:
    """Why continuing ``done`` steps of ``old`` as a run of ``new`` (other ``steps``) would differ from a fresh run of ``new``.

    None when it is exact: ``new.steps`` is not behind the run, every learning
    rate used so far is the one ``new`` would use (a schedule that does not
    depend on the total, such as ``constant`` after warm-up, or a cosine run
    still in its warm-up), and the evaluations so far (which reset the
    training-loss accumulator) are the ones ``new`` would make.
    """
    if new.steps < done:
        return f"the run is already at step {done}, past steps={new.steps}"
    for s in range(done):
        a, b = lr_at(old, s), lr_at(new, s)
        if a != b:
            return (
                f"the {old.schedule} learning-rate schedule depends on steps (step {s} trained with lr {a:.6g}, "
                f"a run of steps={new.steps} uses {b:.6g}); only a schedule that does not depend on the total "
                f"(schedule='constant') extends exactly"
            )
    ev_old, ev_new = _eval_steps(old, done), _eval_steps(new, done)
    if ev_old != ev_new:
        odd = sorted(set(ev_old) ^ set(ev_new))
        return (
            f"the evaluations differ at step {odd[0]} (a run's last step is always evaluated; eval_every={new.eval_every}), "
            "and each evaluation resets the training-loss average"
        )
    return None


def _check_resume(ran: dict[str, Any], cfg: TrainConfig, done: int, *, extend: bool, out: Path) -> None:
    """Refuse to continue the run ``ran`` (at step ``done``) as ``cfg`` unless it is the same run (or an exact extension)."""
    ran = with_later_defaults(ran)  # a run stored before a knob existed had it at its default
    diff = _diff(ran, cfg.to_dict())
    if not diff:
        return
    desc = ", ".join(f"{k} {ran.get(k)!r} -> {getattr(cfg, k, None)!r}" for k in diff[:5]) + (
        f" and {len(diff) - 5} more" if len(diff) > 5 else ""
    )
    if diff != ["steps"]:
        hint = "; extend changes only steps" if extend and "steps" in diff else ""
        raise ValueError(
            f"{out} holds a run of a different config ({desc}){hint}; "
            "fix: choose another out_dir, or resume=False (--fresh) to discard that run"
        )
    if not extend:
        raise ValueError(
            f"{out} holds a run of a different config ({desc}); to continue it to steps={cfg.steps} pass extend=True (--extend), "
            "or choose another out_dir, or resume=False (--fresh) to discard that run"
        )
    problem = extension_problem(TrainConfig.from_dict(ran), cfg, done)
    if problem:
        raise ValueError(
            f"cannot extend the run in {out} from steps={ran.get('steps')} to steps={cfg.steps} exactly: {problem}; "
            "fix: train the longer run in another out_dir, or resume=False (--fresh) there"
        )


def _clear_run(out: Path) -> None:
    """Remove what a run writes (never anything else) from a run directory of ours."""
    for name in (CKPT, METRICS, TIMING, SUMMARY):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    remove_save(out / MODEL)  # the files its save recorded, unchanged; a user's file keeps the folder (train refuses it)


def _refuse(path: Path, why: str) -> ValueError:
    return ValueError(
        f"{path} {why}; nothing in it was run; fix: resume=False (--fresh) to start afresh, or choose another out_dir"
    )


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A run's ``checkpoint.pt``, read with ``weights_only=True`` and checked (one-line ValueError otherwise).

    Returns the stored dict with ``config`` and ``sampler`` parsed from their
    JSON strings. A file that needs code to load (a planted payload) or a
    format-1 checkpoint of an older version is refused without running anything.
    """
    path = Path(path)
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the safe loader refuses anything but tensors and plain containers
        raise _refuse(path, f"is not a checkpoint that loads with weights_only=True ({type(e).__name__})") from None
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
        fmt = ck.get("format") if isinstance(ck, dict) else None
        raise _refuse(
            path, f"is not a format-{CKPT_FORMAT} sink_interp checkpoint (format {fmt!r}; format 1 came from an older version)"
        )
    kinds = {
        "step": int,
        "config_json": str,
        "model": dict,
        "optimizer": dict,
        "sampler_json": str,
        "torch_rng": torch.Tensor,
        "loss_acc": list,
    }
    bad = [k for k, t in kinds.items() if not isinstance(ck.get(k), t)]
    if bad:
        raise _refuse(path, f"is damaged (missing or wrong {', '.join(bad)})")
    try:
        ck["config"] = json.loads(ck["config_json"])
        ck["sampler"] = json.loads(ck["sampler_json"])
    except ValueError:
        raise _refuse(path, "is damaged (its config or sampler state is not JSON)") from None
    if not isinstance(ck["config"], dict) or not isinstance(ck["sampler"], dict):
        raise _refuse(path, "is damaged (its config or sampler state is not a JSON object)")
    return ck


# --------------------------------------------------------------------------- result


@dataclass(frozen=True, eq=False)
class TrainResult(Report):
    """What a run produced: its metrics curve, final numbers and where the model is.

    Example:
        >>> import tempfile
        >>> from sink_interp.training import preset, train
        >>> cfg = preset("bb-softmax", steps=2, eval_every=2, d_model=32, d_mlp=64, probe_n=4, eval_batches=1, batch_size=4)
        >>> res = train(cfg, tempfile.mkdtemp(), progress=False)
        >>> [m["step"] for m in res.metrics], "sink_rate_1" in res.final
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

    @property
    def provenance(self) -> Provenance:
        """What produced the run: its config (the model it built), task, device, dtype and versions."""
        return Provenance(
            model=str(self.config.get("name")),
            model_info={"n_params": self.n_params, "device": self.device, "dtype": self.dtype, "config": self.config},
            data=str(self.config.get("task")),
            bos=self.summary()["bos"] if self.config.get("task") == "text" else None,
            probe=self.task,
            versions=self.versions,
        )

    @classmethod
    def _from_summary(cls, d: dict[str, Any]) -> TrainResult | None:
        """A ``to_json`` file written before reports carried their fields (summary plus ``metrics``)."""
        if not all(k in d for k in ("out_dir", "config", "task", "metrics", "n_params", "model_dir")):
            return None
        return cls(
            out_dir=d["out_dir"],
            config=d["config"],
            task=d["task"],
            metrics=tuple(vocab.upgrade("metrics", m) for m in d["metrics"]),
            model_dir=d["model_dir"],
            n_params=int(d["n_params"]),
            device=d.get("device", "cpu"),
            dtype=d.get("dtype", "float32"),
            resumed_from=d.get("resumed_from"),
            versions=d.get("versions", {}),
        )

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> TrainResult:
        """Metrics records written with the old key names are read with the new ones."""
        return cls(**{**fields, "metrics": tuple(vocab.upgrade("metrics", m) for m in fields["metrics"])})

    def __repr__(self) -> str:
        f = self.final
        return (
            f"TrainResult({self.config.get('name')!r}, steps={f.get('step')}, val_loss={f.get('val_loss', float('nan')):.4f}, "
            f"Sink_1={f.get('sink_rate_1', float('nan')):.1f}%, out_dir={self.out_dir!r})"
        )


def read_metrics(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The lines of a run's ``metrics.jsonl`` (old key names read as the new ones).

    A cut-off last line (a run stopped while appending it) is dropped with a warning; resuming rewrites the file
    without it.
    """
    p = Path(out_dir) / METRICS
    if not p.is_file():
        return []
    fix = "remove the damaged lines, or train afresh in that folder (resume=False, --fresh)"
    return files.read_metrics_lines(p, fix=fix)


# --------------------------------------------------------------------------- the loop


def _accumulate(lab: Any, optimizer: Any, tokens: torch.Tensor, batch: Any, micro: int, dev: Any) -> torch.Tensor:
    """One step's gradient over ``micro``-sample slices: each slice's summed loss over the whole batch's target count,
    so the gradient is the full batch's (up to float rounding); returns the batch loss."""
    loss_mask = batch.loss_mask.to(dev)
    n = loss_mask[:, :-1].sum().clamp(min=1)  # the targets masked_ce scores, over the whole batch
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=tokens.device)
    for i in range(0, tokens.shape[0], micro):
        rows = slice(i, i + micro)
        docs = None if batch.doc_ids is None else batch.doc_ids[rows].to(dev)
        with lab.runtime.documents(docs):
            logits = lab.bridge(tokens[rows], return_type="logits")
        ce, mask = masked_ce(logits, tokens[rows], loss_mask[rows])
        part = (ce * mask).sum() / n
        part.backward()
        total += part.detach()
    return total


def train(
    cfg: TrainConfig,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = True,
    extend: bool = False,
    device: str | torch.device | None = "cpu",
    threads: int | None = None,
    progress: bool = True,
    stop_at: int | None = None,
) -> TrainResult:
    """Train the model of ``cfg``, evaluating every ``cfg.eval_every`` steps; resumable.

    ``out_dir`` must be new, empty, or a run directory of ours; anything else
    (a folder with other files) raises :class:`RunDirError` before anything is
    written. A second process on the same ``out_dir`` is refused the same way
    while the first one runs.

    Args:
        cfg: the run's knobs (:func:`sink_interp.training.preset` gives named ones).
        out_dir: run directory (see the module docstring for its files).
        resume: continue from ``out_dir/checkpoint.pt`` when the run there has
            the same config (``ckpt_every`` aside); another config raises a
            ``ValueError`` naming the fields that differ. False starts afresh in
            a run directory of ours, removing only the files a run writes.
        extend: let the resumed run have another ``steps`` (to continue a
            finished run, say). Accepted only where the result equals a fresh run
            of ``cfg`` bit for bit: a learning-rate schedule that does not depend
            on the total (``schedule="constant"``, or a cosine run still in its
            warm-up) and the same evaluation steps so far; otherwise a
            ``ValueError`` says why.
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
    out = Path(out_dir).expanduser()
    for name in ("text_corpus", "bb_source"):  # a data file is an input: never inside the folder the run writes
        data = getattr(cfg, name)
        if data not in ("natural", "random", "big") and out.resolve() in Path(data).expanduser().resolve().parents:
            raise ValueError(
                f"{name} {data!r} lies inside the run folder {str(out)!r}, which the run writes; "
                "fix: keep the data outside the run folder"
            )
    claim_dir(out, run_config, "run")  # refuse before writing anything, the lock file included
    out.mkdir(parents=True, exist_ok=True)
    with dir_lock(out, "run"), _threads(threads):
        ours = claim_dir(out, run_config, "run")  # again, now that no other writer can change it
        problem = replace_problem(out / MODEL)
        if problem:
            raise RunDirError(f"{out / MODEL} {problem}; nothing was written; fix: move it away or choose another folder")
        ck = None
        if ours and resume:
            info = run_config(out) or {}
            if (out / CKPT).is_file():
                ck = load_checkpoint(out / CKPT)
                _check_resume(ck["config"], cfg, int(ck["step"]), extend=extend, out=out)
            else:  # killed before its first checkpoint: it starts over
                _check_resume(info.get("train_config", {}), cfg, 0, extend=extend, out=out)
        if ours and ck is None:
            _clear_run(out)
        return _train(cfg, out, ck, device=device, progress=progress, stop_at=stop_at)


def _train(
    cfg: TrainConfig, out: Path, ck: dict[str, Any] | None, *, device: Any, progress: bool, stop_at: int | None
) -> TrainResult:
    task = make_task(cfg)
    lab = build_model(cfg, task.d_vocab, task.tokenizer(), device=device)
    dev = next(lab.bridge.parameters()).device
    sampler = make_sampler(cfg, task, seed=cfg.seed + 1, split="train")
    val_batches = make_sampler(cfg, task, seed=cfg.seed + 10_007, split="val").fixed_batches(cfg.eval_batches, cfg.batch_size)
    # the sink probe is the data without random tokens (official eval_sink_pretrain.py probes natural text)
    probe = make_sampler(cfg, task, seed=cfg.seed + 20_011, split="val", intra_doc=False, random_token_pos=None)
    probe = probe.sample(cfg.probe_n).tokens
    optimizer = make_optimizer(cfg, lab)

    ckpt_path = out / CKPT
    metrics_path = out / METRICS
    step = 0
    loss_acc = [0.0, 0]
    resumed_from = None
    if ck is not None:
        try:
            lab.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["optimizer"])
            sampler.load_state_dict(ck["sampler"])
            torch.set_rng_state(ck["torch_rng"])
            step = int(ck["step"])
            loss_acc = [float(ck["loss_acc"][0]), int(ck["loss_acc"][1])]
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
            first = (str(e).strip().splitlines() or [""])[0][:160]
            raise _refuse(ckpt_path, f"does not fit this model ({type(e).__name__}: {first})") from None
        resumed_from = step
        kept = [m for m in read_metrics(out) if m["step"] <= step]
        lost = sorted(set(_eval_steps(cfg, step)) - {m.get("step") for m in kept})
        if lost:  # a stopped append loses only a line past the checkpoint (evaluated again); these are older
            import warnings

            warnings.warn(
                f"{metrics_path} lacks the evaluations at steps {lost[:5]}, which the checkpoint (step {step}) is past; "
                "the run resumes without them; fix: resume=False (--fresh) for a complete record",
                stacklevel=3,
            )
        write_atomic(metrics_path, "".join(json.dumps(m) + "\n" for m in kept))
    write_atomic(
        out / CONFIG,
        dumps(
            {
                "sink_interp_run": RUN_FORMAT,
                "train_config": cfg.to_dict(),
                "task": task.describe(),
                "n_params": lab.n_params(),
                "versions": versions(),
                "fingerprint": cfg.fingerprint(),
            }
        ),
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
                first_k=cfg.first_token_pos,
                sink_k=sink_position(cfg),
            )
        )
        lab.bridge.train()
        return round_metric(m)

    def append(m: dict[str, Any], path: Path) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(m) + "\n")

    def save_checkpoint(step: int) -> None:
        _atomic_torch_save(  # tensors, numbers and JSON strings only: load_checkpoint reads it with weights_only=True
            {
                "format": CKPT_FORMAT,
                "fingerprint": cfg.fingerprint(),
                "config_json": cfg.to_json(),
                "step": step,
                "model": lab.state_dict(),
                "optimizer": optimizer.state_dict(),
                "sampler_json": json.dumps(sampler.state_dict()),  # numpy's PCG64 state: 128-bit ints, exact in JSON
                "torch_rng": torch.get_rng_state(),
                "loss_acc": [float(loss_acc[0]), int(loss_acc[1])],
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
            if cfg.micro_batch is None or cfg.micro_batch >= cfg.batch_size:
                with lab.runtime.documents(None if batch.doc_ids is None else batch.doc_ids.to(dev)):
                    logits = lab.bridge(tokens, return_type="logits")
                ce, mask = masked_ce(logits, tokens, batch.loss_mask.to(dev))
                loss = (ce * mask).sum() / mask.sum().clamp(min=1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            else:
                loss = _accumulate(lab, optimizer, tokens, batch, cfg.micro_batch, dev)
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for _, p in lab.named_parameters()], cfg.grad_clip)
            optimizer.step()
            step += 1
            loss_acc[0] += float(loss.detach())
            loss_acc[1] += 1
            bar.update(1)
            if not math.isfinite(loss_acc[0]):
                raise FloatingPointError(
                    f"loss is {loss.item()} at step {step}; fix: lower lr (now {cfg.lr}) or check the kernel"
                )
            if step % cfg.eval_every == 0 or step == cfg.steps:
                m = evaluate(step)
                append(m, metrics_path)
                loss_acc = [0.0, 0]
                now = time.time()
                append(
                    {
                        "step": step,
                        "wall_s": round(now - t0, 3),
                        "tokens_per_s": round((step - step_last) * cfg.batch_size * cfg.seq_len / max(now - t_last, 1e-9), 1),
                    },
                    out / TIMING,
                )
                t_last, step_last = now, step
                bar.set_postfix(loss=f"{m['val_loss']:.3f}", sink=f"{m['sink_rate_1']:.1f}%")
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                save_checkpoint(step)
            if stop_at is not None and step >= stop_at:
                raise _Killed(step)
    except _Killed:
        bar.close()
        return _result(cfg, out, task, lab, resumed_from, model_dir="")
    bar.close()
    model_dir = out / MODEL
    save_trained(lab, model_dir, extra={"task": task.describe()})
    res = _result(cfg, out, task, lab, resumed_from, model_dir=str(model_dir))
    write_atomic(out / SUMMARY, dumps(res.summary()))
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
