"""Attention masks beyond plain causal: sliding window, prefix LM, StreamingLLM sinks.

An :class:`AttentionMask` says which keys ``j`` a query ``t`` sees (0-indexed
positions):

    causal:   j <= t
    prefix p: also j < p when t < p       (the first p tokens see each other)
    window w: only t - j < w              (the last w keys, the query included)
    n_sinks s: keys j < s stay visible through the window (StreamingLLM)

    limit L: only t - j < L, sinks included (the model's own sliding window)

so ``visible(t, j) = (j <= t or (j < p and t < p)) and (w is None or t - j < w or j < s) and (L is None or t - j < L)``.

The mask describes the model's attention: every sink-score method applies it
(``measure_sinks(..., mask=...)``): the pattern path and the hooks engine
through the intervention pipeline (:func:`sink_interp.interventions.masked`),
the fused engine in its kernel call, and the blockwise ``lse`` maths when it
forms the scores.
The sink score keeps the official normaliser ``T - k + 1`` whatever the mask,
so scores stay comparable with the unmasked model.

Examples:
    >>> m = AttentionMask(window=2, n_sinks=1)
    >>> m.dense(4).int()
    tensor([[1, 0, 0, 0],
            [1, 1, 0, 0],
            [1, 1, 1, 0],
            [1, 0, 1, 1]], dtype=torch.int32)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor


def _check_int(value: Any, name: str, minimum: int, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = f"an int >= {minimum}" + (" or None" if allow_none else "")
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class AttentionMask:
    """Which keys each query sees: causal, plus an optional window, prefix and sink tokens.

    Args:
        window: each query sees the last ``window`` keys (itself included); ``None``: no window.
        prefix: the first ``prefix`` tokens attend to each other both ways (prefix LM); 0 or 1: none.
        n_sinks: with a window, the first ``n_sinks`` keys stay visible to every later query (StreamingLLM).
        limit: a window no key escapes, sinks included: the model's own sliding window, which
            :meth:`sink_interp.architecture.LayerAttention.mask` adds per layer (``None``: none).

    Examples:
        >>> import torch
        >>> from sink_interp import tiny_model, measure_sinks
        >>> mask = AttentionMask(window=4, n_sinks=1)
        >>> mask.visible(torch.tensor([9]), torch.arange(10)).int()
        tensor([[1, 0, 0, 0, 0, 0, 1, 1, 1, 1]], dtype=torch.int32)
        >>> report = measure_sinks(tiny_model(), torch.randint(4, 128, (2, 16)), mask=mask, progress=False)
        >>> report.provenance.mask
        {'window': 4, 'prefix': 0, 'n_sinks': 1}
    """

    window: int | None = None
    prefix: int = 0
    n_sinks: int = 0
    limit: int | None = None

    def __post_init__(self) -> None:
        _check_int(self.window, "window", 1, allow_none=True)
        _check_int(self.limit, "limit", 1, allow_none=True)
        _check_int(self.prefix, "prefix", 0)
        _check_int(self.n_sinks, "n_sinks", 0)
        if self.n_sinks and self.window is None:
            raise ValueError("n_sinks only matter with a window (without one every earlier key is visible); fix: pass window=")

    @property
    def is_causal(self) -> bool:
        """True when the mask is plain causal attention."""
        return self.window is None and self.prefix <= 1 and self.limit is None

    def within(self, limit: int | None) -> AttentionMask:
        """This mask inside a hard window of ``limit`` keys (the tighter one when it already has a limit)."""
        if limit is None:
            return self
        new = int(limit) if self.limit is None else min(int(limit), self.limit)
        return AttentionMask(window=self.window, prefix=self.prefix, n_sinks=self.n_sinks, limit=new)

    def visible(self, t: Tensor, j: Tensor) -> Bool[Tensor, "q k"]:
        """``[len(t), len(j)]`` booleans: query position ``t[i]`` sees key position ``j[m]``."""
        tt = t.reshape(-1, 1)
        jj = j.reshape(1, -1)
        ok = jj <= tt
        if self.prefix > 1:
            ok = ok | ((jj < self.prefix) & (tt < self.prefix))
        if self.window is not None:
            near = (tt - jj) < self.window
            if self.n_sinks:
                near = near | (jj < self.n_sinks)
            ok = ok & near
        if self.limit is not None:
            ok = ok & ((tt - jj) < self.limit)
        return ok

    def dense(self, length: int, device: torch.device | str | None = None) -> Bool[Tensor, "q k"]:
        """The full ``[length, length]`` boolean mask (tests, kernels that take a mask)."""
        pos = torch.arange(length, device=device)
        return self.visible(pos, pos)

    def key_span(self, start: int, stop: int, length: int) -> slice | Tensor:
        """Keys that queries ``start..stop-1`` may see: a slice, or an index tensor when sink keys
        sit before a window (only those positions are scored, never the whole prefix)."""
        hi = stop
        if self.prefix > start:
            hi = max(stop, min(self.prefix, length))
        floor = 0 if self.limit is None else max(0, start - self.limit + 1)  # no key below this is visible
        lo = 0 if self.window is None else max(0, start - self.window + 1)
        if lo > floor and self.n_sinks and floor < min(self.n_sinks, lo):
            return torch.cat([torch.arange(floor, min(self.n_sinks, lo)), torch.arange(lo, hi)])
        return slice(max(lo, floor), hi)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["limit"] is None:
            del d["limit"]
        return d

    def describe(self) -> str:
        parts = ["causal"]
        if self.prefix > 1:
            parts.append(f"prefix {self.prefix}")
        if self.window is not None:
            parts.append(f"window {self.window}")
        if self.n_sinks:
            parts.append(f"{self.n_sinks} sink tokens")
        if self.limit is not None:
            parts.append(f"model window {self.limit}")
        return " + ".join(parts)


CAUSAL = AttentionMask()


def documents_mask(doc_ids: Tensor) -> Bool[Tensor, "b 1 q k"]:
    """``[b, 1, T, T]``: query ``t`` sees key ``j`` of the same document (``doc_ids`` ``[b, T]``; id ``-1``: seen by all).

    Intra-document masking for packed sequences; join it with an :class:`AttentionMask` by ``&``.

    Example:
        >>> documents_mask(torch.tensor([[0, 0, 1]]))[0, 0].int()
        tensor([[1, 1, 0],
                [1, 1, 0],
                [0, 0, 1]], dtype=torch.int32)
    """
    d = doc_ids
    return ((d[:, :, None] == d[:, None, :]) | (d[:, None, :] < 0))[:, None]


def as_mask(mask: AttentionMask | dict[str, Any] | None) -> AttentionMask:
    """``None`` -> causal; a dict -> ``AttentionMask(**dict)`` (the old key ``sinks`` read as ``n_sinks``); a clear error otherwise."""
    if mask is None:
        return CAUSAL
    if isinstance(mask, AttentionMask):
        return mask
    if isinstance(mask, dict):
        try:
            return AttentionMask(**{("n_sinks" if k == "sinks" else k): v for k, v in mask.items()})
        except TypeError as e:
            raise ValueError(f"mask: {e}; fix: use the keys window, prefix, n_sinks") from None
    raise ValueError(f"mask must be an AttentionMask, a dict or None, got {type(mask).__name__}")
