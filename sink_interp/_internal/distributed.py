"""Data parallelism over samples: which batches this rank runs, and how results come back together.

Sharding is opt-in. Inside ``with distributed():`` (``sink_interp.distributed``) the analyses split
their batches over the ranks of a ``torch.distributed`` process group and merge the results so that
every rank holds the report one process would give, bit for bit:

* whole batches per rank, contiguous blocks: rank ``r`` of ``W`` runs batches
  ``[r * B // W, (r + 1) * B // W)`` of the ``B`` batches one process would run (shards may be
  uneven or empty); batch size and engine choices are made on rank 0 and broadcast (:func:`decide`);
* per-sample arrays are gathered and concatenated in sample order;
* sums are folded batch by batch, each batch's contribution a partial computed from zero, in the
  global batch order, in one process and on ``W`` ranks alike (:func:`fold`);
* only rank 0 shows progress bars and writes files (:func:`is_main`).

A process group that exists without ``with distributed():`` (a user's own DDP) is never used.
Under ``torchrun`` the context initialises the group from the environment (``gloo`` on CPU,
``nccl`` on CUDA) and destroys it on exit; with no group and no ``torchrun`` it is one process.

Example:
    >>> with distributed() as ctx:   # no torchrun here: one process, nothing sharded
    ...     ctx.world_size, list(shard(5))
    (1, [0, 1, 2, 3, 4])
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch

BACKENDS = ("gloo", "nccl", "mpi", "ucc")


@dataclass(frozen=True)
class Context:
    """The process group the analyses shard over: ``rank``, ``world_size``, ``backend``."""

    rank: int
    world_size: int
    backend: str
    owned: bool  # initialised by :func:`distributed` (destroyed on exit)

    def info(self) -> dict[str, Any]:
        """What a report records: ``{"world_size": W, "backend": ...}``."""
        return {"world_size": self.world_size, "backend": self.backend}


_CTX: list[Context] = []  # the active context (a stack: nested ``with distributed()`` reuse the outer one)
_LOCAL = [0]  # > 0 inside :func:`local`: this rank runs everything itself


def current() -> Context | None:
    """The active context, also where sharding is suspended by :func:`local` (None outside ``distributed()``)."""
    return _CTX[-1] if _CTX else None


def active() -> Context | None:
    """The context to shard over now: None outside ``distributed()``, in one process, or inside :func:`local`."""
    ctx = current()
    if ctx is None or ctx.world_size < 2 or _LOCAL[0]:
        return None
    return ctx


def rank() -> int:
    ctx = current()
    return ctx.rank if ctx is not None else 0


def is_main() -> bool:
    """True on rank 0 (and outside ``distributed()``): the rank that prints, shows progress and writes files."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    """True when the environment is a ``torchrun`` launch with more than one process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    except ValueError:
        return False


@contextlib.contextmanager
def distributed(backend: str | None = None) -> Iterator[Context]:
    """Shard the analyses run inside the block over the ranks of a ``torch.distributed`` group.

    Uses the default process group when one exists, else initialises one from ``torchrun``'s
    environment (``backend`` default: ``"nccl"`` with CUDA, else ``"gloo"``) and destroys it on exit;
    with neither, runs as one process. Every rank must make the same calls in the same order.

    Example:
        >>> import torch, sink_interp as si
        >>> with si.distributed():  # under torchrun --nproc_per_node=2: each rank runs half the batches
        ...     rep = si.measure_sinks(si.tiny_model(), torch.randint(4, 128, (4, 8)), progress=False)
        >>> rep.alpha.shape
        (4, 2, 4, 8)
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None (nccl on CUDA, else gloo), got {backend!r}")
    if _CTX:
        yield _CTX[-1]
        return
    import torch.distributed as td

    owned = False
    if td.is_available() and td.is_initialized():
        ctx = Context(td.get_rank(), td.get_world_size(), str(td.get_backend()), False)
    elif launched_by_torchrun():
        if not td.is_available():  # pragma: no cover
            raise RuntimeError("torch.distributed is not available in this torch build; fix: run as one process")
        cuda = torch.cuda.is_available()
        be = backend or ("nccl" if cuda else "gloo")
        if be == "nccl":  # pragma: no cover - needs GPUs
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        td.init_process_group(backend=be)
        owned = True
        ctx = Context(td.get_rank(), td.get_world_size(), be, True)
    else:
        ctx = Context(0, 1, "none", False)
    _CTX.append(ctx)
    try:
        yield ctx
    finally:
        _CTX.pop()
        if owned:
            td.destroy_process_group()


@contextlib.contextmanager
def local() -> Iterator[None]:
    """Suspend sharding: inside, this rank runs every batch of what it calls (e.g. one batch already sharded)."""
    _LOCAL[0] += 1
    try:
        yield
    finally:
        _LOCAL[0] -= 1


# --------------------------------------------------------------------------- sharding and merging


def shard(n_batches: int) -> range:
    """The batch indices this rank runs: a contiguous block (all of them outside ``distributed()``)."""
    ctx = active()
    if ctx is None:
        return range(n_batches)
    r, w = ctx.rank, ctx.world_size
    return range(r * n_batches // w, (r + 1) * n_batches // w)


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank (``[obj]`` when not sharded)."""
    ctx = active()
    if ctx is None:
        return [obj]
    import torch.distributed as td

    out: list[Any] = [None] * ctx.world_size
    td.all_gather_object(out, obj)
    return out


def decide(fn: Callable[[], Any]) -> Any:
    """``fn()`` computed on rank 0 and broadcast, so that every rank takes the same decision (batch size, engine)."""
    ctx = active()
    if ctx is None:
        return fn()
    import torch.distributed as td

    box: list[Any] = [None]
    if ctx.rank == 0:
        try:
            box[0] = ("ok", fn())
        except Exception as e:  # noqa: BLE001 - the other ranks raise the same error
            box[0] = ("error", e)
    td.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


def raise_any(failed: BaseException | None) -> None:
    """Raise the first rank's error on every rank (so that no rank waits forever in a merge); nothing when all ran."""
    if active() is None:
        if failed is not None:
            raise failed
        return
    errors = [e for e in gather(failed) if e is not None]
    if errors:
        raise errors[0]


def gather_rows(tensors: dict[str, torch.Tensor], start: int, stop: int) -> None:
    """Fill rows outside ``[start, stop)`` of each full-size per-sample tensor with the other ranks' rows, in place."""
    if active() is None:
        return
    parts = gather((start, stop, {k: v[start:stop].clone() for k, v in tensors.items()}))
    for s, e, rows in parts:
        for k, v in rows.items():
            tensors[k][s:e] = v


# --------------------------------------------------------------------------- sums, folded in batch order


def zero_like(x: Any) -> Any:
    """An additive zero of the same structure (numbers, tensors, dicts and lists of them)."""
    if isinstance(x, torch.Tensor):
        return torch.zeros_like(x)
    if isinstance(x, dict):
        return {k: zero_like(v) for k, v in x.items()}
    if isinstance(x, list):
        return [zero_like(v) for v in x]
    if isinstance(x, bool):
        raise TypeError("a bool is not a sum")
    if isinstance(x, int):
        return 0
    if isinstance(x, float):
        return 0.0
    raise TypeError(f"cannot fold a {type(x).__name__}")


def add(a: Any, b: Any) -> Any:
    """``a + b`` of two structures made by :func:`zero_like` (new objects; ``a`` is not modified)."""
    if isinstance(a, dict):
        return {k: add(a[k], b[k]) for k in a}
    if isinstance(a, list):
        return [add(x, y) for x, y in zip(a, b)]
    return a + b


def fold(total: Any, partials: Sequence[Any]) -> Any:
    """``(((total + p0) + p1) + ...)``: the one order in which sums are folded, whatever the number of ranks."""
    for p in partials:
        total = add(total, p)
    return total


def fold_chain(total: Any, partials: Sequence[Any]) -> Any:
    """The left fold of every rank's partials in rank (= batch) order, on every rank.

    Rank 0 passes ``total`` with its own partials already folded in (and ``partials`` empty, so it
    keeps none); rank ``r > 0`` receives rank ``r - 1``'s running total, folds its own ``partials``
    into it and sends it on; the last rank broadcasts the result. Each rank holds only its own partials.
    """
    ctx = active()
    if ctx is None:
        return fold(total, partials)
    import torch.distributed as td

    if ctx.rank > 0:
        box: list[Any] = [None]
        td.recv_object_list(box, src=ctx.rank - 1)
        total = box[0]
    total = fold(total, partials)
    if ctx.rank < ctx.world_size - 1:
        td.send_object_list([total], dst=ctx.rank + 1)
    out = [total]
    td.broadcast_object_list(out, src=ctx.world_size - 1)
    return out[0]
