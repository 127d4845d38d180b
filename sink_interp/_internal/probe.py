"""A probe set: token ids and the facts of how they were made, as one value.

:class:`ProbeSet` sits this low so that every layer can accept one: :func:`as_tokens` unwraps
it into the plain tensor an analysis runs on (``check_tokens`` does this for every analysis
that validates its input) and :func:`probe_of` gives it back to whoever records provenance.
"""

from __future__ import annotations

import copy
import operator
from typing import Any

import torch
from torch import Tensor

_DisableSubclass = torch._C.DisableTorchFunctionSubclass

#: the methods whose result is a :class:`ProbeSet` again (with a copy of ``info``): they move or copy
#: the ids and change neither their values nor their shape (``to`` only while the dtype stays)
_KEEP_FACTS = frozenset(
    {
        Tensor.to,
        Tensor.cpu,
        Tensor.cuda,
        Tensor.clone,
        Tensor.detach,
        Tensor.contiguous,
        torch.clone,
        torch.detach,
    }
)

#: what cannot be assigned on a probe set: it is read-only (make a new one, ``ProbeSet(tokens, info)``)
_READ_ONLY = frozenset({"tokens", "info", "_info", "source", "bos", "n", "length", "seed"})


class ProbeSet(Tensor):
    """``[n, T]`` token ids together with what made them (source, BOS policy, seed, ...).

    :func:`sink_interp.probe_tokens` and :func:`sink_interp.long_tokens` return one. A
    ``ProbeSet`` *is* the token tensor (a ``torch.Tensor`` subclass): run a model on it directly
    (``model(probe)``, ``model.run_with_cache(probe)``, ``model.run_with_hooks(probe, ...)``; the
    results are bit for bit those of the plain ids), and use it wherever a tensor of ids goes.
    Every analysis that takes ``tokens`` takes a ``ProbeSet`` or a plain tensor; with a
    ``ProbeSet`` its report records ``info`` (the data label, the BOS policy and the probe's facts
    in ``report.provenance``), with a plain tensor the data is labelled ``"tokens"`` and BOS is
    read from the first column. To label ids of your own, make them a probe set:
    ``ProbeSet.of(tokens, source="my-data", bos=True)`` (:meth:`of`).

    ``info`` is the dict of facts (``"source"``, ``"bos"``, ``"n"``, ``"length"``, ``"seed"``
    and, depending on the source, ``"skipped"``, ``"lines_read"``, ``"concat"``,
    ``"separator"``, ``"passages_per_row"`` or ``"documents"``); it is stored in reports as is.

    What a torch operation returns is a plain ``Tensor`` that no longer says where it came from
    (an analysis run on it records ``data="tokens"``): indexing (``probe[:, 1:]``), ``torch.cat``,
    arithmetic, comparisons, a model's outputs and cache. Only the pure moves and copies keep the
    facts (a ``ProbeSet`` with a copy of ``info``): ``.to(device)``, ``.cpu()``, ``.cuda()``,
    ``.clone()``, ``.detach()``, ``.contiguous()`` (and ``torch.clone``, ``torch.detach``). A
    ``.to`` that changes the dtype gives a plain tensor, as do ``.long()``, ``.int()``, ...: the
    facts describe the ids as :func:`~sink_interp.probe_tokens` made them, and a cast is a
    computation (floats round large ids). To keep the facts for a subset of rows take them with
    :meth:`rows` (a ``ProbeSet`` with ``info["n"]`` updated). ``probe.tokens`` is the plain tensor
    (a view of the same ids), the form every analysis unwraps to before it computes.

    A probe set is read-only: assigning (or deleting) ``probe.tokens``, ``probe.info`` or a fact
    raises ``AttributeError``; build a new one instead, ``ProbeSet(tokens, info)`` (``tokens`` may
    be a probe set; the ids are shared, not copied). Its ids are a tensor's storage like any other:
    an in-place op (``probe.add_(1)``, ``probe[0, 0] = 5``) changes them and leaves the facts stale,
    so clone first. It pickles, deep-copies and goes through ``torch.save`` and
    ``torch.load(..., weights_only=False)`` with its facts.

    Examples:
        >>> import torch
        >>> info = {"bos": False, "n": 3, "length": 4, "seed": 0, "source": "random"}
        >>> probe = ProbeSet(torch.arange(12).reshape(3, 4), info)
        >>> probe
        ProbeSet(source='random', n=3, length=4, bos=False, seed=0)
        >>> isinstance(probe, torch.Tensor), probe.shape, len(probe), probe.source, probe.bos
        (True, torch.Size([3, 4]), 3, 'random', False)
        >>> type(probe[:, 1:]).__name__  # a slice is just tokens
        'Tensor'
        >>> probe.to("cpu")  # a move keeps the facts
        ProbeSet(source='random', n=3, length=4, bos=False, seed=0)
        >>> evaluation = probe.rows(slice(1, None))
        >>> evaluation.n, evaluation.source, evaluation.tolist()
        (2, 'random', [[4, 5, 6, 7], [8, 9, 10, 11]])

        Ids of your own, labelled (every report on them records ``data="my-data"`` and ``bos=True``):

        >>> mine = ProbeSet.of(torch.tensor([[1, 5, 6], [1, 7, 8]]), source="my-data", bos=True)
        >>> mine
        ProbeSet(source='my-data', n=2, length=3, bos=True)
        >>> mine.info
        {'source': 'my-data', 'bos': True, 'n': 2, 'length': 3}
    """

    def __new__(cls, tokens: Tensor, info: dict[str, Any]) -> ProbeSet:
        if not isinstance(tokens, Tensor):
            raise TypeError(f"ProbeSet.tokens must be a torch.Tensor of token ids, got {type(tokens).__name__}")
        if tokens.ndim != 2:
            raise ValueError(f"ProbeSet.tokens must be 2-D [n, T], got shape {tuple(tokens.shape)}")
        if not isinstance(info, dict):
            raise TypeError(f"ProbeSet.info must be a dict, got {type(info).__name__}")
        return cls._wrap(tokens, info)

    @classmethod
    def of(cls, tokens: Any, *, source: str = "tokens", bos: bool | None = None, **facts: Any) -> ProbeSet:
        """``tokens`` (``[n, T]`` ids: a tensor or nested lists) as a probe set labelled ``source``.

        ``info`` holds ``source``, ``bos`` (whether every row starts with BOS; left out when ``None``, and
        an analysis then reads it from the first column), ``n`` and ``length`` from the shape, then
        ``facts`` (``seed=...``, anything JSON can hold). The ids are shared, not copied.
        """
        probe = cls(torch.as_tensor(tokens), {"source": str(source)})  # checks: a 2-D tensor
        if bos is not None:
            probe.info["bos"] = bool(bos)
        probe.info.update(n=int(probe.shape[0]), length=int(probe.shape[1]), **facts)
        return probe

    @classmethod
    def _wrap(cls, tokens: Tensor, info: dict[str, Any]) -> ProbeSet:
        """``tokens`` (checked by the caller) as a probe set with ``info``: no copy of the ids."""
        self = Tensor._make_subclass(cls, tokens)  # a new tensor over the same storage (detached)
        self.__dict__["_info"] = info
        return self

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        # Runs on every torch call on a probe set: one call with the subclass switched off (so the
        # result is a plain Tensor), then the few moves and copies get their facts back.
        with _DisableSubclass():
            out = func(*args, **(kwargs or {}))
            if func in _KEEP_FACTS:
                src = args[0]
                if isinstance(src, ProbeSet) and isinstance(out, Tensor) and out.dtype == src.dtype:
                    return cls._wrap(out, dict(src.info))
            if isinstance(out, ProbeSet):  # an op that returned its input (in place, or a no-op such as .long())
                return out.as_subclass(Tensor)
            if type(out) in (tuple, list) and any(isinstance(o, ProbeSet) for o in out):
                return type(out)(o.as_subclass(Tensor) if isinstance(o, ProbeSet) else o for o in out)
            return out

    # ------------------------------------------------------------------ read-only, copies, pickling
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _READ_ONLY:
            raise AttributeError(f"a ProbeSet is read-only: cannot set {name!r}; build a new one, ProbeSet(tokens, info)")
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if name in _READ_ONLY:
            raise AttributeError(f"a ProbeSet is read-only: cannot delete {name!r}")
        super().__delattr__(name)

    def __reduce_ex__(self, proto: Any) -> Any:
        # the plain ids (pickled, or stored by torch.save, the usual way) and the facts
        return (_rebuild, (self.tokens, self.info))

    def __deepcopy__(self, memo: dict[int, Any]) -> ProbeSet:
        if id(self) in memo:
            return memo[id(self)]
        new = ProbeSet._wrap(copy.deepcopy(self.tokens, memo), copy.deepcopy(self.info, memo))
        memo[id(self)] = new
        return new

    # ------------------------------------------------------------------ the facts
    @property
    def tokens(self) -> Tensor:
        """The ids as a plain ``torch.Tensor`` (a view of the same storage, no facts)."""
        return self.as_subclass(Tensor)

    @property
    def info(self) -> dict[str, Any]:
        """The facts of how the ids were made (the dict every report records)."""
        return self.__dict__.get("_info", {})

    @property
    def source(self) -> str | None:
        """Where the tokens came from: ``"random"``, ``"repeat"``, ``"natural"``, a file path, ..."""
        v = self.info.get("source")
        return None if v is None else str(v)

    @property
    def bos(self) -> bool | None:
        """Whether every row starts with the BOS id (``None`` when not recorded)."""
        v = self.info.get("bos")
        return None if v is None else bool(v)

    @property
    def n(self) -> int:
        """Number of rows (``info["n"]``)."""
        return int(self.info.get("n", self.shape[0]))

    @property
    def length(self) -> int:
        """Tokens per row, BOS included (``info["length"]``)."""
        return int(self.info.get("length", self.shape[1]))

    @property
    def seed(self) -> int | None:
        """The seed of ``"random"`` and ``"repeat"`` sources (``None`` when not recorded)."""
        v = self.info.get("seed")
        return None if v is None else int(v)

    def rows(self, index: Any) -> ProbeSet:
        """The rows ``index`` (an int, a slice, a list, or an index or bool tensor) as a ``ProbeSet``.

        ``info`` is kept with ``"n"`` set to the number of rows taken; entries that list one item
        per row of the whole set (``"passages_per_row"``, ``"documents"``) are kept as they are.
        """
        is_bool = isinstance(index, bool) or (isinstance(index, Tensor) and index.dtype == torch.bool)
        if not is_bool:
            try:  # one row (a Python, NumPy or 0-d tensor int) stays a row: [1, T]
                index = [operator.index(index)]
            except TypeError:
                pass
        toks = self.tokens[index]
        if toks.ndim != 2:
            raise ValueError(
                f"rows takes row indices (an int, a slice, a list or a tensor of row ids), got {index!r}; "
                "fix: for columns index the tensor, probe[:, a:b] (a plain Tensor)"
            )
        return ProbeSet._wrap(toks, {**self.info, "n": int(toks.shape[0])})

    def __repr__(self, *, tensor_contents: Any = None) -> str:
        t = self.tokens
        n, length = t.shape
        parts = [f"source={self.source!r}", f"n={n}", f"length={length}", f"bos={self.bos}"]
        if "seed" in self.info:
            parts.append(f"seed={self.info['seed']!r}")
        if t.device.type != "cpu":
            parts.append(f"device='{t.device}'")
        return f"ProbeSet({', '.join(parts)})"


def _rebuild(tokens: Tensor, info: dict[str, Any]) -> ProbeSet:
    """Unpickle a :class:`ProbeSet` (``__reduce_ex__``)."""
    return ProbeSet._wrap(tokens, info)


def as_tokens(x: Any) -> Any:
    """The plain token tensor of a :class:`ProbeSet` (type exactly ``torch.Tensor``); anything else unchanged (validated by the caller)."""
    return x.as_subclass(Tensor) if isinstance(x, ProbeSet) else x


def probe_of(x: Any) -> ProbeSet | None:
    """``x`` when it is a :class:`ProbeSet`, else ``None`` (a plain tensor carries no facts)."""
    return x if isinstance(x, ProbeSet) else None
