"""Capture engine: attach TransformerLens hooks, stream tensors into reducers.

The engine is the one place where sink_interp touches hook points:

* :func:`attach_hooks` adds hook functions inside a context manager and, on
  exit (also after an exception), removes exactly the handles it added, so the
  model carries the same hooks as before.
* A :class:`Reducer` declares the hook names it needs and folds each hooked
  tensor into a small running result (a column sum of the attention pattern,
  a running maximum...). Nothing keeps all layers' T x T maps unless a reducer
  such as :class:`Keep` is asked to.
* :func:`run_reducers` batches the inputs (with a progress bar), runs the
  forward pass once per batch for all reducers together, and stops the forward
  pass right after the last hook any reducer needs (no unembedding is computed
  when nobody reads the logits).

Examples:
    >>> import torch
    >>> from sink_interp import tiny_model
    >>> from sink_interp.capture import Keep, run_reducers
    >>> model = tiny_model()
    >>> keep = Keep(["blocks.0.hook_resid_pre"])
    >>> _ = run_reducers(model, torch.randint(4, 128, (3, 8)), [keep], progress=False)
    >>> keep.result()["blocks.0.hook_resid_pre"].shape
    torch.Size([3, 8, 64])
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor

from ._internal import distributed as dist
from ._internal import hooknames
from ._internal import placement as _placement
from ._internal.errors import NonFiniteError, bridge_failure, check_positive_int, check_tokens
from ._internal.probe import ProbeSet

HookFn = Callable[..., Any]


# --------------------------------------------------------------------------- hooks


def hook_point(model: Any, name: str, points: dict[str, Any] | None = None) -> Any:
    """The ``HookPoint`` called ``name`` on a TransformerBridge, or a clear error.

    ``points`` is ``model.hook_dict`` when the caller already has it (building it costs ms).
    """
    points = model.hook_dict if points is None else points
    hp = points.get(name)
    if hp is None:
        stem = name.rsplit(".", 1)[-1]
        similar = sorted(n for n in points if n.endswith(stem))[:6]
        raise KeyError(
            f"the model has no hook point {name!r}"
            + (f"; hook points with the same ending: {similar}" if similar else "")
            + ". Fix: check the layer index (model.cfg.n_layers) and the architecture's hook names."
        )
    return hp


def user_hooks(model: Any, names: Iterable[str] | None = None) -> list[str]:
    """Hook points (of ``names``, default all) carrying hooks someone added: the bridge's own permanent hooks
    (some adapters install them at load time) do not count."""
    points = model.hook_dict
    out = []
    for name in points if names is None else names:
        hp = points.get(name)
        if hp is None:
            continue
        handles = list(getattr(hp, "fwd_hooks", None) or []) + list(getattr(hp, "bwd_hooks", None) or [])
        if any(not getattr(h, "is_permanent", False) for h in handles):
            out.append(name)
    return out


def hook_snapshot(model: Any) -> dict[str, tuple[int, ...]]:
    """Identity of every hook on the model (TransformerLens hook points and raw torch hooks).

    Two snapshots are equal exactly when the model carries the same hooks.
    Tests compare snapshots taken before and after a call.

    Examples:
        >>> import torch
        >>> from sink_interp import tiny_model, measure_sinks
        >>> model = tiny_model()
        >>> _ = model(torch.randint(4, 128, (1, 4)))  # the bridge adds its own hooks lazily, once
        >>> before = hook_snapshot(model)
        >>> _ = measure_sinks(model, torch.randint(4, 128, (2, 8)), progress=False)
        >>> hook_snapshot(model) == before
        True
    """
    snap: dict[str, tuple[int, ...]] = {}
    for name, module in model.named_modules():
        ids: list[int] = []
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            ids.extend(getattr(module, attr, {}).keys())
        for attr in ("fwd_hooks", "bwd_hooks"):
            ids.extend(id(h) for h in getattr(module, attr, []) or [])
        if ids:
            snap[name] = tuple(ids)
    return snap


class AttachedHooks:
    """Hooks added by :func:`add_hooks`: :meth:`remove` takes exactly these off again (idempotent).

    Hooks that were on the model before, or were added later by someone else, stay, in their order.
    """

    def __init__(self) -> None:
        self._added: list[tuple[Any, Any, str]] = []

    def __len__(self) -> int:
        return len(self._added)

    def remove(self) -> None:
        while self._added:
            hp, handle, direction = self._added.pop()
            handle.hook.remove()
            visible = hp.fwd_hooks if direction == "fwd" else hp.bwd_hooks
            for i, h in enumerate(visible):
                if h is handle:
                    del visible[i]
                    break


def add_hooks(
    model: Any,
    fwd_hooks: Iterable[tuple[str, HookFn]] = (),
    bwd_hooks: Iterable[tuple[str, HookFn]] = (),
    *,
    prepend: bool = False,
    permanent: bool = False,
) -> AttachedHooks:
    """Add ``(hook_name, fn)`` pairs to ``model``'s hook points and return them as one :class:`AttachedHooks`.

    The engine under :func:`attach_hooks` (a ``with`` block) and the training knobs (``permanent=True``:
    TransformerLens' ``reset_hooks`` leaves them on). If adding one fails, the ones already added are removed.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> model = tiny_model()
        >>> hooks = add_hooks(model, [("blocks.0.hook_resid_pre", lambda x, hook: x * 0)], permanent=True)
        >>> model.reset_hooks()  # TransformerLens' reset leaves permanent hooks on
        >>> with torch.no_grad():
        ...     out = model(torch.randint(4, 128, (1, 5)))
        >>> float(out.abs().max())  # the residual stream was zeroed
        0.0
        >>> hooks.remove(); len(hooks)
        0
    """
    added = AttachedHooks()
    points = model.hook_dict
    try:
        for direction, pairs in (("fwd", fwd_hooks), ("bwd", bwd_hooks)):
            for name, fn in pairs:
                hp = hook_point(model, name, points)
                added._added.append((hp, _add_hook(hp, fn, direction, prepend, permanent), direction))
    except BaseException:
        added.remove()
        raise
    return added


@contextlib.contextmanager
def attach_hooks(
    model: Any,
    fwd_hooks: Iterable[tuple[str, HookFn]] = (),
    bwd_hooks: Iterable[tuple[str, HookFn]] = (),
    prepend: bool = False,
) -> Iterator[None]:
    """Attach ``(hook_name, fn)`` pairs for the duration of a ``with`` block.

    ``fn(tensor, hook=hook_point)`` may return a replacement tensor. On exit,
    also after an exception, exactly the handles added here are removed; hooks
    that were on the model before stay, in the same order.

    Examples:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> model = tiny_model()
        >>> seen = []
        >>> with attach_hooks(model, [("blocks.0.hook_resid_pre", lambda x, hook: seen.append(x.shape))]):
        ...     _ = model(torch.randint(4, 128, (1, 5)))
        >>> seen
        [torch.Size([1, 5, 64])]
    """
    added = add_hooks(model, fwd_hooks, bwd_hooks, prepend=prepend)
    try:
        yield
    finally:
        added.remove()


def _add_hook(hp: Any, fn: HookFn, direction: str, prepend: bool, permanent: bool = False) -> Any:
    """Add ``fn`` to the hook point and return its ``LensHandle``, found in the hook point's own list.

    The handle is the one entry of ``fwd_hooks``/``bwd_hooks`` that was not there before (the documented
    lists); ``add_hook``'s return value (TransformerLens 4) is only a fallback.
    """
    visible = hp.fwd_hooks if direction == "fwd" else hp.bwd_hooks
    before = {id(h) for h in visible}
    returned = hp.add_hook(fn, dir=direction, prepend=prepend, is_permanent=permanent)
    new = [h for h in visible if id(h) not in before]
    if len(new) == 1:
        return new[0]
    if returned is not None and hasattr(returned, "hook"):
        return returned
    raise RuntimeError(
        f"could not find the hook just added to {hp.name}; TransformerLens's HookPoint changed"
    )  # pragma: no cover


# --------------------------------------------------------------------------- reducers


class Reducer:
    """Folds hooked tensors into a small result, one batch at a time.

    Subclasses set :meth:`hook_names` and implement :meth:`update`. The engine
    calls :meth:`begin` once, then :meth:`begin_batch` before each batch's
    forward pass, :meth:`update` each time one of the hooks fires, and
    :meth:`result` at the end.

    Examples:
        the largest residual value entering each block:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> from sink_interp.capture import run_reducers
        >>> class MaxResid(Reducer):
        ...     def hook_names(self, model):
        ...         return [f"blocks.{l}.hook_resid_pre" for l in range(model.cfg.n_layers)]
        ...     def begin(self, model, n, length):
        ...         self.top = {}
        ...     def update(self, name, x):
        ...         self.top[name] = max(self.top.get(name, 0.0), x.abs().max().item())
        ...     def result(self):
        ...         return self.top
        >>> r = MaxResid()
        >>> _ = run_reducers(tiny_model(), torch.randint(4, 128, (4, 8)), [r], progress=False)
        >>> sorted(r.result())
        ['blocks.0.hook_resid_pre', 'blocks.1.hook_resid_pre']
    """

    #: True when the reducer needs the model's final output (logits / loss).
    needs_logits: bool = False

    #: Inside ``sink_interp.distributed()`` the engine shards the batches over the ranks when every reducer
    #: says how its state merges: ``rows`` (attributes ``[n_samples, ...]`` filled at ``batch_start``) are
    #: gathered, ``sums`` (numbers, tensors, dicts of them) are folded one batch partial at a time in batch
    #: order (also in one process, so one process and ``W`` ranks add the same floats in the same order),
    #: and :meth:`merge` combines whatever else :meth:`local_state` returns. Others run every batch on every rank.
    shardable: bool = False
    rows: tuple[str, ...] = ()
    sums: tuple[str, ...] = ()

    def hook_names(self, model: Any) -> list[str]:
        raise NotImplementedError

    def begin(self, model: Any, n_samples: int, length: int) -> None:
        """Called once before the first batch."""

    def begin_batch(self, tokens: Tensor, start: int) -> None:
        """Called before each batch; ``start`` is the index of its first sample."""
        self.batch_start = start
        self.batch_tokens = tokens

    def update(self, name: str, tensor: Tensor) -> None:
        raise NotImplementedError

    def update_logits(self, logits: Tensor) -> None:
        """Receives the logits of each batch when :attr:`needs_logits` is True."""

    def end_batch(self) -> None:
        """Called after each batch's forward pass (and its logits)."""

    def local_state(self) -> Any:
        """State other than ``rows`` and ``sums`` that :meth:`merge` combines over ranks (default none)."""
        return None

    def merge(self, states: list[Any]) -> None:
        """Install the merge of every rank's :meth:`local_state`, given in rank (= sample) order."""

    def result(self) -> Any:
        raise NotImplementedError


class Keep(Reducer):
    """Keep the hooked tensors named in ``names`` (on the CPU, concatenated over batches).

    ``select`` maps a tensor to the part to keep (e.g. ``lambda x: x[:, 0]``
    for the first position only); default keeps everything.

    Examples:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> from sink_interp.capture import run_reducers
        >>> keep = Keep(["blocks.1.attn.hook_v"], select=lambda v: v[:, 0])  # value vectors at position 0
        >>> _ = run_reducers(tiny_model(), torch.randint(4, 128, (3, 8)), [keep], progress=False)
        >>> keep.result()["blocks.1.attn.hook_v"].shape  # [sample, kv_head, d_head]
        torch.Size([3, 2, 16])
    """

    def __init__(
        self, names: Sequence[str], select: Callable[[Tensor], Tensor] | None = None, dtype: torch.dtype | None = torch.float32
    ):
        self.names = list(names)
        self.select = select
        self.dtype = dtype
        self._parts: dict[str, list[Tensor]] = {n: [] for n in self.names}

    def hook_names(self, model: Any) -> list[str]:
        return self.names

    def update(self, name: str, tensor: Tensor) -> None:
        x = tensor.detach()
        if self.select is not None:
            x = self.select(x)
        if self.dtype is not None and x.is_floating_point():
            x = x.to(self.dtype)
        self._parts[name].append(x.cpu())

    shardable = True

    def local_state(self) -> dict[str, list[Tensor]]:
        return self._parts

    def merge(self, states: list[Any]) -> None:
        self._parts = {n: [t for st in states for t in st[n]] for n in self.names}

    def result(self) -> dict[str, Tensor]:
        return {n: torch.cat(p, dim=0) for n, p in self._parts.items() if p}


class Reduce(Reducer):
    """Apply ``fn(name, tensor, start)`` to every hooked tensor; ``fn`` keeps its own state.

    Examples:
        mean residual norm at position 0 entering block 1:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> from sink_interp.capture import run_reducers
        >>> norms = []
        >>> r = Reduce(["blocks.1.hook_resid_pre"], lambda name, x, start: norms.append(x[:, 0].norm(dim=-1)),
        ...            result=lambda: torch.cat(norms).mean().item())
        >>> _ = run_reducers(tiny_model(), torch.randint(4, 128, (4, 8)), [r], batch_size=2, progress=False)
        >>> r.result() > 0
        True
    """

    def __init__(self, names: Sequence[str], fn: Callable[[str, Tensor, int], None], result: Callable[[], Any] = lambda: None):
        self.names = list(names)
        self.fn = fn
        self._result = result

    def hook_names(self, model: Any) -> list[str]:
        return self.names

    def update(self, name: str, tensor: Tensor) -> None:
        self.fn(name, tensor, self.batch_start)

    def result(self) -> Any:
        return self._result()


# --------------------------------------------------------------------------- engine


class _StopForward(Exception):
    """Raised from the last needed hook to skip the rest of the forward pass."""


def model_device(model: Any) -> torch.device:
    """The device inputs and accumulators go to (``cfg.device`` under a device map; see :mod:`sink_interp._internal.placement`)."""
    return _placement.model_device(model)


def auto_batch_size(model: Any, length: int, budget_bytes: float = 512e6) -> int:
    """A batch size whose per-layer attention maps (scores + pattern, float32) fit ``budget_bytes``."""
    per_sample = 4 * 4 * model.cfg.n_heads * length * length + 64 * model.cfg.d_model * length
    return int(max(1, min(64, budget_bytes // max(per_sample, 1))))


@dataclass
class RunStats:
    """What :func:`run_reducers` did: batches, samples and whether it stopped early."""

    n_samples: int
    length: int
    batch_size: int
    n_batches: int
    stopped_after: str | None


def run_reducers(
    model: Any,
    tokens: Tensor | ProbeSet,
    reducers: Sequence[Reducer],
    batch_size: int | None = None,
    progress: bool = True,
    desc: str = "forward",
    stop_early: bool = True,
    grad: bool = False,
) -> RunStats:
    """Run ``tokens`` through ``model`` once per batch, feeding every reducer.

    Args:
        model: a TransformerBridge.
        tokens: ``[batch, pos]`` token ids (a tensor or a :class:`~sink_interp.ProbeSet`).
        reducers: reducers to feed; their results are read with ``r.result()``.
        batch_size: samples per forward pass (default: :func:`auto_batch_size`).
        progress: show a tqdm progress bar over batches.
        stop_early: stop each forward pass after the last hook any reducer
            needs, when none needs the logits.
        grad: run with autograd enabled (default: ``torch.no_grad``).

    Examples:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> from sink_interp.capture import Keep
        >>> keep = Keep(["blocks.0.attn.hook_pattern"])
        >>> stats = run_reducers(tiny_model(), torch.randint(4, 128, (5, 6)), [keep], batch_size=2, progress=False)
        >>> stats.n_batches, keep.result()["blocks.0.attn.hook_pattern"].shape
        (3, torch.Size([5, 4, 6, 6]))
    """
    tokens = check_tokens(tokens, d_vocab=int(model.cfg.d_vocab), min_length=1)
    n, length = tokens.shape
    if batch_size is None:
        bs = dist.decide(lambda: auto_batch_size(model, length))  # rank 0 decides for all
    else:
        bs = check_positive_int(batch_size, "batch_size")
    device = model_device(model)

    needs_logits = any(r.needs_logits for r in reducers)
    wanted: dict[str, list[Reducer]] = {}
    for r in reducers:
        r.begin(model, n, length)
        for name in r.hook_names(model):
            wanted.setdefault(name, []).append(r)

    # the last hook to fire: the highest layer's names; we stop once all of them fired
    last_names: set[str] = set()
    if stop_early and not needs_logits and wanted:
        layers = [hooknames.layer_of(nm) for nm in wanted]
        if all(layer is not None for layer in layers):
            top = max(layers)  # type: ignore[type-var]
            last_names = {nm for nm, layer in zip(wanted, layers) if layer == top}

    fired: set[str] = set()
    flags: list[tuple[str, Tensor]] = []  # (hook, "holds a NaN/Inf") per batch: one sync per batch, not per hook

    def make_hook(name: str, targets: list[Reducer]) -> HookFn:
        def hook(tensor: Tensor, hook: Any) -> None:
            if tensor.is_floating_point():
                flags.append((name, _non_finite(name, tensor).any()))
            for r in targets:
                r.update(name, tensor)
            if last_names and name in last_names:
                fired.add(name)
                if fired >= last_names:
                    raise _StopForward
            return None

        return hook

    n_batches = (n + bs - 1) // bs
    sharded = dist.active() is not None and not grad and all(r.shardable for r in reducers)
    inputs = {"tokens": tokens, "batch_size": bs, "model": model, "reducers": reducers}
    batches = dist.shard(n_batches, inputs) if sharded else range(n_batches)
    folding = [r for r in reducers if r.sums]
    totals = {id(r): {a: getattr(r, a) for a in r.sums} for r in folding}  # sums before the first batch
    mine: dict[int, list[Any]] = {id(r): [] for r in folding}  # partials kept until the merge (ranks > 0 only)
    keep_partials = sharded and dist.rank() > 0
    from tqdm.auto import tqdm

    start, stop = min(batches.start * bs, n), min(batches.stop * bs, n)  # this rank's samples
    bar = tqdm(total=stop - start, desc=desc, unit="sample", disable=not (progress and dist.is_main()), leave=False)
    grad_ctx = contextlib.nullcontext() if grad else torch.no_grad()
    failed: BaseException | None = None
    try:
        with attach_hooks(model, [(name, make_hook(name, rs)) for name, rs in wanted.items()]), grad_ctx:
            for b in batches:
                batch = tokens[b * bs : (b + 1) * bs].to(device)
                for r in folding:  # each batch's sums start from zero: a partial
                    for a, v in totals[id(r)].items():
                        setattr(r, a, dist.zero_like(v))
                for r in reducers:
                    r.begin_batch(batch, b * bs)
                fired.clear()
                flags.clear()
                try:
                    out = model(batch, return_type="logits" if needs_logits else None)
                except _StopForward:
                    out = None
                except (AttributeError, TypeError, KeyError) as e:  # the bridge's own failure: one line naming the architecture
                    err = bridge_failure(model, e)
                    if err is e:
                        raise
                    raise err from None
                if needs_logits and out is not None and out.is_floating_point():
                    flags.append(("logits", _non_finite("logits", out).any()))
                if flags and bool(torch.stack([f for _, f in flags]).any()):
                    first = next(nm for nm, f in flags if bool(f))
                    raise NonFiniteError(explain_non_finite(model, batch, seen_at=first))
                if needs_logits:
                    for r in reducers:
                        if r.needs_logits:
                            r.update_logits(out)
                for r in reducers:
                    r.end_batch()
                for r in folding:
                    part = {a: getattr(r, a) for a in r.sums}
                    if keep_partials:  # rank r > 0 folds after rank r - 1's total has come
                        mine[id(r)].append(part)
                    else:
                        totals[id(r)] = {a: dist.add(totals[id(r)][a], part[a]) for a in r.sums}
                bar.update(batch.shape[0])
    except Exception as e:  # noqa: BLE001 - re-raised below, on every rank when sharded
        failed = e
    finally:
        bar.close()
        for r in folding:
            for a, v in totals[id(r)].items():
                setattr(r, a, v)
    if sharded:  # every rank learns of a failure (no rank waits forever in the merge), then merges
        dist.raise_any(failed)
        for r in reducers:
            dist.gather_rows({a: getattr(r, a) for a in r.rows}, start, stop)
            if r.sums:
                merged = dist.fold_chain(totals[id(r)], mine[id(r)])
                for a in r.sums:
                    setattr(r, a, merged[a])
            r.merge(dist.gather(r.local_state()))
    elif failed is not None:
        raise failed
    return RunStats(n, length, bs, n_batches, ",".join(sorted(last_names)) or None)


# --------------------------------------------------------------------------- finite or fail


def _non_finite(name: str, x: Tensor) -> Tensor:
    """Where ``x`` holds values no result may be built from: NaN or Inf (masked scores may be ``-inf``)."""
    if name.endswith("hook_attn_scores"):
        return torch.isnan(x) | torch.isposinf(x)
    return ~torch.isfinite(x)


def explain_non_finite(model: Any, tokens: Tensor, seen_at: str = "") -> str:
    """Why a NaN/Inf appeared on ``tokens``: the first hook point holding one, and the likely cause.

    Looks at the weights first (a NaN or Inf in a parameter: a damaged checkpoint), then runs
    ``tokens`` once with a check before and after every hook point's own hooks, so a hook that
    returned a NaN is told apart from a computation that overflowed. Used by every analysis
    (:func:`run_reducers` raises :class:`NonFiniteError` with this text); no result is made from
    non-finite data.

    Examples:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> m = tiny_model()
        >>> with torch.no_grad():
        ...     m.blocks[1].attn.q.weight[0, 0] = float("nan")
        >>> "layers.1.self_attn.q_proj" in explain_non_finite(m, torch.randint(4, 128, (1, 6)))
        True
    """
    where = f" (first seen in {seen_at})" if seen_at else ""
    for pname, param in model.named_parameters():
        if param.is_floating_point() and not bool(torch.isfinite(param).all()):
            bad = int((~torch.isfinite(param)).sum())
            pname = pname.replace("._original_component", "")
            return (
                f"NaN/Inf in the model's weights: {bad} value(s) of parameter {pname}{where}. The checkpoint is damaged; "
                "fix: reload it from a good copy (for the offline SmolLM2, rebuild the cache with "
                "sink_interp.models.smollm2_checkpoint(refresh=True), or delete the folder under $SINK_INTERP_CACHE "
                "/ ~/.cache/sink_interp and run again)"
            )
    points = model.hook_dict
    first: list[tuple[str, bool]] = []  # (hook point, its own hooks produced it)
    state: dict[str, bool] = {}

    def before(name: str) -> HookFn:
        def fn(x: Tensor, hook: Any) -> None:
            if not first and isinstance(x, Tensor) and x.is_floating_point():
                state[name] = bool(_non_finite(name, x).any())
            return None

        return fn

    def after(name: str) -> HookFn:
        def fn(x: Tensor, hook: Any) -> None:
            if not first and isinstance(x, Tensor) and x.is_floating_point() and bool(_non_finite(name, x).any()):
                first.append((name, not state.get(name, True)))
            return None

        return fn

    by_point: dict[int, str] = {}
    for (
        n,
        hp,
    ) in points.items():  # one name per hook point: the TransformerLens alias (hook_resid_pre, hook_q...) when there is one
        by_point[id(hp)] = n
    names = list(by_point.values())
    own = set(user_hooks(model, names))
    with attach_hooks(model, [(n, before(n)) for n in names], prepend=True), attach_hooks(model, [(n, after(n)) for n in names]):
        with torch.no_grad():
            try:
                model(tokens.to(model_device(model)), return_type=None)
            except Exception as e:  # noqa: BLE001 - a diagnosis must not hide the original finding
                if not first:
                    return f"a NaN/Inf appeared{where}; re-running to find its origin failed: {type(e).__name__}: {e}"
    if not first:
        return (
            f"a NaN/Inf appeared{where} but not when the input was run again on its own; "
            "a hook or an intervention that depends on the batch may have produced it"
        )
    name, by_hook = first[0]
    if by_hook and name in own:
        return (
            f"a hook on {name} returned NaN/Inf (its input was finite){where}; "
            "fix: check the hook functions added to the model (sink_interp.capture.hook_snapshot lists them)"
        )
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    if dtype in (torch.float16, torch.bfloat16):
        cause = f"the computation overflowed in {str(dtype).replace('torch.', '')}; fix: load the model with dtype='float32'"
    else:
        cause = (
            "the computation overflowed or divided by zero there (the weights are finite); "
            "check the inputs and any hooks or interventions on earlier layers"
        )
    return f"first NaN/Inf at {name}{where}: {cause}"
