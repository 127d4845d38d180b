"""One rule per concept, in the lowest layer: the sink score of a pattern, which keys are sinks, soft-capping.

The analyses (:mod:`sink_interp.metrics`, :mod:`sink_interp.architecture`, the interventions, the blockwise
engine) and the views (which import no analysis) both call these, so a number means the same on a page and
in a report.

* :func:`sink_alpha`: ``alpha_k = 1 / (T - k + 1) * sum_{t >= k} A[t, k]`` (Gu et al.), in float32.
* :func:`sink_rates`, :func:`reliable_keys`, :func:`sink_positions`: ``Sink_k^eps`` in percent over every
  leading index, whether ``alpha_k`` averages enough queries, and the key positions that are sinks.
* :func:`softcap`: ``cap * tanh(x / cap)`` (Gemma-2's logit soft-capping).

Example:
    >>> import torch
    >>> uniform = torch.tril(torch.ones(4, 4)) / torch.arange(1, 5)[:, None]
    >>> sink_alpha(uniform)
    tensor([0.5208, 0.3611, 0.2917, 0.2500])
    >>> sink_positions(sink_alpha(uniform[None]).numpy(), eps=0.3, min_queries=2)
    [0, 1]
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

#: how the sink metric reads a pattern: as is ("softmax") or through a row-normalised proxy
SCORES = ("auto", "softmax", "proxy", "abs-proxy")
PROXY_EPS = 1e-8
#: keys whose alpha averages fewer queries than this are not called sinks by default (alpha_T is one weight)
MIN_QUERIES = 8


def sink_alpha(pattern: Float[Tensor, "... q k"], score: str = "softmax") -> Float[Tensor, "... k"]:
    """``alpha_k`` for every key position of a causal attention pattern, in float32.

    ``score``: ``"softmax"`` uses the pattern as is; ``"proxy"`` divides each
    row by its sum (+1e-8); ``"abs-proxy"`` uses ``|A| / (sum |A| + 1e-8)``.

    Examples:
        >>> import torch
        >>> uniform = torch.tril(torch.ones(4, 4)) / torch.arange(1, 5)[:, None]
        >>> sink_alpha(uniform)  # key 1 gets 1, 1/2, 1/3, 1/4 -> mean 0.5208; key 2: (1/2+1/3+1/4)/3
        tensor([0.5208, 0.3611, 0.2917, 0.2500])
    """
    p = torch.as_tensor(pattern).float()
    if score == "proxy":
        p = p / (p.sum(-1, keepdim=True) + PROXY_EPS)
    elif score == "abs-proxy":
        p = p.abs()
        p = p / (p.sum(-1, keepdim=True) + PROXY_EPS)
    elif score != "softmax":
        raise ValueError(f"score must be one of {SCORES[1:]}, got {score!r}")
    T = p.shape[-1]
    n_queries = torch.arange(T, 0, -1, device=p.device, dtype=torch.float32)  # T - k + 1 for k = 1..T
    return p.sum(-2) / n_queries


def sink_rates(alpha: Float[np.ndarray, "... k"], eps: float) -> Float[np.ndarray, " k"]:
    """``Sink_k^eps`` in percent for every key: the share of all leading indices (sample, layer, head) with ``alpha_k > eps``.

    Example:
        >>> sink_rates(np.array([[0.9, 0.1], [0.2, 0.1]]), 0.3).tolist()
        [50.0, 0.0]
    """
    a = np.asarray(alpha)
    return 100.0 * (a > eps).reshape(-1, a.shape[-1]).mean(axis=0)


def reliable_keys(length: int, min_queries: int = MIN_QUERIES) -> np.ndarray:
    """Boolean ``[length]``: key ``k`` (0-indexed) is averaged over ``length - k`` queries, at least ``min_queries``
    (or all of them, for an input shorter than ``min_queries``: the first key of a short input is reliable).

    Example:
        >>> reliable_keys(10, 8).tolist()
        [True, True, True, False, False, False, False, False, False, False]
    """
    n_queries = length - np.arange(length)
    return n_queries >= min(int(min_queries), int(length))


def sink_positions(
    alpha: Float[np.ndarray, "... k"], eps: float, min_rate: float = 1.0, min_queries: int = MIN_QUERIES
) -> list[int]:
    """0-indexed key positions that are sinks: ``Sink_k^eps >= min_rate`` percent, and ``alpha_k`` reliable.

    The rule of :meth:`sink_interp.SinkReport.sink_positions` (its ``reliable`` rows) and of the views' marks.

    Example:
        >>> a = np.zeros((2, 20)); a[1, 0] = 0.9; a[0, 19] = 1.0   # the last key: one query only
        >>> sink_positions(a, 0.3)
        [0]
    """
    rates = sink_rates(alpha, eps)
    ok = reliable_keys(rates.shape[0], min_queries)
    return [k for k in range(rates.shape[0]) if rates[k] >= min_rate and ok[k]]


def softcap(x: Tensor, cap: float | None) -> Tensor:
    """``cap * tanh(x / cap)`` (logit soft-capping, Gemma-2); ``x`` unchanged when ``cap`` is None. Not in place.

    Example:
        >>> softcap(torch.tensor([0.0, 100.0]), 5.0)
        tensor([0., 5.])
    """
    if cap is None:
        return x
    return torch.tanh(x / cap) * cap
