"""A probe set: token ids and the facts of how they were made, as one value.

:class:`ProbeSet` sits this low so that every layer can accept one: :func:`as_tokens` unwraps
it into the plain tensor an analysis runs on (``check_tokens`` does this for every analysis
that validates its input) and :func:`probe_of` gives it back to whoever records provenance.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False, repr=False)
class ProbeSet:
    """``[n, T]`` token ids together with what made them (source, BOS policy, seed, ...).

    :func:`sink_interp.probe_tokens` and :func:`sink_interp.long_tokens` return one. Every
    analysis that takes ``tokens`` takes a ``ProbeSet`` or a plain tensor; with a ``ProbeSet``
    its report records ``info`` (the data label, the BOS policy and the probe's facts in
    ``report.provenance``), with a plain tensor the data is labelled ``"tokens"`` and BOS is
    read from the first column.

    ``info`` is the dict of facts (``"source"``, ``"bos"``, ``"n"``, ``"length"``, ``"seed"``
    and, depending on the source, ``"skipped"``, ``"lines_read"``, ``"concat"``,
    ``"separator"``, ``"passages_per_row"`` or ``"documents"``); it is stored in reports as is.

    Indexing gives the plain tensor: ``probe[:, 1:]`` is ``probe.tokens[:, 1:]``, a ``Tensor``
    that no longer says where it came from (an analysis run on it records ``data="tokens"``).
    To keep the facts, take rows with :meth:`rows` (a ``ProbeSet`` with ``info["n"]`` updated)
    or move the set with :meth:`to`. Run a model on ``probe.tokens``.

    Examples:
        >>> import torch
        >>> info = {"bos": False, "n": 3, "length": 4, "seed": 0, "source": "random"}
        >>> probe = ProbeSet(torch.arange(12).reshape(3, 4), info)
        >>> probe
        ProbeSet(source='random', n=3, length=4, bos=False, seed=0)
        >>> probe.shape, len(probe), probe.source, probe.bos
        (torch.Size([3, 4]), 3, 'random', False)
        >>> type(probe[:, 1:]).__name__  # a slice is just tokens
        'Tensor'
        >>> evaluation = probe.rows(slice(1, None))
        >>> evaluation.n, evaluation.source, evaluation.tokens.tolist()
        (2, 'random', [[4, 5, 6, 7], [8, 9, 10, 11]])
    """

    tokens: Tensor
    info: dict[str, Any]

    def __post_init__(self) -> None:
        if not isinstance(self.tokens, Tensor):
            raise TypeError(f"ProbeSet.tokens must be a torch.Tensor of token ids, got {type(self.tokens).__name__}")
        if self.tokens.ndim != 2:
            raise ValueError(f"ProbeSet.tokens must be 2-D [n, T], got shape {tuple(self.tokens.shape)}")
        if not isinstance(self.info, dict):
            raise TypeError(f"ProbeSet.info must be a dict, got {type(self.info).__name__}")

    # ------------------------------------------------------------------ the facts
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
        return int(self.info.get("n", self.tokens.shape[0]))

    @property
    def length(self) -> int:
        """Tokens per row, BOS included (``info["length"]``)."""
        return int(self.info.get("length", self.tokens.shape[1]))

    @property
    def seed(self) -> int | None:
        """The seed of ``"random"`` and ``"repeat"`` sources (``None`` when not recorded)."""
        v = self.info.get("seed")
        return None if v is None else int(v)

    # ------------------------------------------------------------------ tensor conveniences
    @property
    def shape(self) -> torch.Size:
        """``tokens.shape``: ``[n, T]``."""
        return self.tokens.shape

    @property
    def device(self) -> torch.device:
        """``tokens.device``."""
        return self.tokens.device

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self.tokens)

    def __getitem__(self, idx: Any) -> Tensor:
        """``tokens[idx]``: a plain ``Tensor`` (the facts stay behind; use :meth:`rows` to keep them)."""
        return self.tokens[idx]

    def to(self, device: Any) -> ProbeSet:
        """The same probe set with its tokens on ``device``."""
        return ProbeSet(self.tokens.to(device), dict(self.info))

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
        return ProbeSet(toks, {**self.info, "n": int(toks.shape[0])})

    def __repr__(self) -> str:
        n, t = self.tokens.shape
        parts = [f"source={self.source!r}", f"n={n}", f"length={t}", f"bos={self.bos}"]
        if "seed" in self.info:
            parts.append(f"seed={self.info['seed']!r}")
        if self.tokens.device.type != "cpu":
            parts.append(f"device='{self.tokens.device}'")
        return f"ProbeSet({', '.join(parts)})"


def as_tokens(x: Any) -> Any:
    """The token tensor of a :class:`ProbeSet`; anything else is returned unchanged (validated by the caller)."""
    return x.tokens if isinstance(x, ProbeSet) else x


def probe_of(x: Any) -> ProbeSet | None:
    """``x`` when it is a :class:`ProbeSet`, else ``None`` (a plain tensor carries no facts)."""
    return x if isinstance(x, ProbeSet) else None
