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
* only rank 0 shows progress bars and writes files (:func:`is_main`);
* before the work, the ranks compare a digest of their inputs (tokens, settings, a sample of the model's
  weights; :func:`shard`'s ``inputs``): ranks given different data are refused in one line naming them,
  instead of merged (:class:`RanksDisagree`);
* a rank that stops (an error of its own) leaves the others in a collective that fails: they stop with one
  line that says so (:class:`PeerStopped`), and the failing rank's own line says why.

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
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch

BACKENDS = ("gloo", "nccl", "mpi", "ucc")


class RanksDisagree(ValueError):
    """Ranks inside ``distributed()`` were given different inputs (tokens, settings or model): refused, never merged."""


class PeerStopped(RuntimeError):
    """Another rank stopped while this one waited for it in a collective; that rank's own message says why."""


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


def shard(n_batches: int, inputs: dict[str, Any] | None = None) -> range:
    """The batch indices this rank runs: a contiguous block (all of them outside ``distributed()``).

    ``inputs`` (what the work reads: ``{"tokens": ..., "batch_size": ..., "model": ...}``) are compared
    across the ranks first (:func:`agree`): the work is split only when every rank was given the same.
    """
    ctx = active()
    if ctx is None:
        return range(n_batches)
    agree({**(inputs or {}), "batches": n_batches})
    r, w = ctx.rank, ctx.world_size
    return range(r * n_batches // w, (r + 1) * n_batches // w)


def digest(obj: Any) -> str:
    """A SHA-256 of what ``obj`` holds: tensors by dtype, shape and bytes; a model by its config and a sample of
    every parameter (its first and last 64 values: different checkpoints or random inits differ there);
    containers, dataclasses and plain values by their contents; other objects by their type and simple fields."""
    import dataclasses
    import hashlib

    h = hashlib.sha256()

    def feed(x: Any, depth: int = 0) -> None:
        if depth > 20:
            h.update(b"<deep>")
            return
        if isinstance(x, torch.Tensor):
            t = x.detach()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():
                h.update(t.reshape(-1).contiguous().cpu().numpy().tobytes())
        elif isinstance(x, torch.nn.Module):
            h.update(f"M{type(x).__name__}".encode())
            feed(getattr(getattr(x, "cfg", None), "to_dict", lambda: {})(), depth + 1)
            for name, p in x.named_parameters():
                h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
                if p.device.type != "meta":  # offloaded weights: their shapes only
                    flat = p.detach().reshape(-1)
                    feed(torch.cat([flat[:64], flat[-64:]]) if flat.numel() > 128 else flat, depth + 1)
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=repr):
                h.update(repr(k).encode())
                feed(x[k], depth + 1)
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(f"[{len(x)}".encode())
            for v in x:
                feed(v, depth + 1)
        elif x is None or isinstance(x, (str, int, float, bool, bytes)):
            h.update(repr(x).encode())
        elif dataclasses.is_dataclass(x) and not isinstance(x, type):
            h.update(type(x).__name__.encode())
            feed({f.name: getattr(x, f.name) for f in dataclasses.fields(x)}, depth + 1)
        elif hasattr(x, "to_record"):
            h.update(type(x).__name__.encode())
            feed(x.to_record(), depth + 1)
        else:  # an object: its type and its plain fields (numbers, text and containers of them; not its address)
            h.update(type(x).__qualname__.encode())
            feed({k: v for k, v in vars(x).items() if _plain(v)} if hasattr(x, "__dict__") else {}, depth + 1)

    feed(obj)
    return h.hexdigest()


def _plain(v: Any, depth: int = 0) -> bool:
    if v is None or isinstance(v, (str, int, float, bool)):
        return True
    if depth < 4 and isinstance(v, (list, tuple)):
        return all(_plain(x, depth + 1) for x in v)
    if depth < 4 and isinstance(v, dict):
        return all(_plain(k, depth + 1) and _plain(x, depth + 1) for k, x in v.items())
    return False


def agree(inputs: dict[str, Any]) -> None:
    """Refuse, on every rank, work whose ``inputs`` differ between ranks (one :class:`RanksDisagree` line naming them).

    Ranks that run different data and merge their results make a report of neither (and record rank 0's
    probe for all of it); nothing is computed until every rank holds the same digests as rank 0.
    """
    ctx = active()
    if ctx is None:
        return
    mine = {k: digest(v) for k, v in inputs.items()}
    everyone = gather(mine)
    ref = everyone[0]
    odd = [(r, sorted(k for k in set(ref) | set(d) if ref.get(k) != d.get(k))) for r, d in enumerate(everyone) if d != ref]
    if odd:
        which = "; ".join(f"rank {r}'s {', '.join(keys)}" for r, keys in odd[:3]) + (
            f" and {len(odd) - 3} more ranks" if len(odd) > 3 else ""
        )
        raise RanksDisagree(
            f"the ranks were given different inputs: {which} differ from rank 0's; nothing was computed (sharding would "
            "merge results of different data); fix: give every rank the same data and settings (the same --data, --n, "
            "--seed and model; tokens from a fixed seed)"
        )


def _collective(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """Run one ``torch.distributed`` collective; a rank that left (it stopped on an error) becomes one line here."""
    try:
        return fn(*args, **kw)
    except Exception as e:  # noqa: BLE001 - gloo/NCCL report a peer that exited as RuntimeError/DistBackendError
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        first = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0][:100]  # gloo: "[.../pair.cc:553] Connection closed by peer"
        raise PeerStopped(
            f"rank {rank()}: another rank stopped while this one waited for it ({first}); its own message says why; "
            "nothing was written"
        ) from e


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank (``[obj]`` when not sharded)."""
    ctx = active()
    if ctx is None:
        return [obj]
    import torch.distributed as td

    out: list[Any] = [None] * ctx.world_size
    _collective(td.all_gather_object, out, obj)
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
    _collective(td.broadcast_object_list, box, src=0)
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
        _collective(td.recv_object_list, box, src=ctx.rank - 1)
        total = box[0]
    total = fold(total, partials)
    if ctx.rank < ctx.world_size - 1:
        _collective(td.send_object_list, [total], dst=ctx.rank + 1)
    out = [total]
    _collective(td.broadcast_object_list, out, src=ctx.world_size - 1)
    return out[0]
