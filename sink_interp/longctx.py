"""Sinks at long context: sink scores by query-position bucket and by key position.

At T = 8192 two questions matter that a 64-token probe cannot ask: does the
first token stay a sink for queries thousands of tokens later, and do other
positions become sinks (secondary sinks)? :func:`long_context_sinks` answers
both from one blockwise pass (:mod:`sink_interp.lse`, no T x T map):

* by **query bucket**: the queries are cut into buckets ``[e_i, e_{i+1})``; the
  column sums of each bucket are kept apart (the blocks are cut at the bucket
  edges, so this costs nothing), and the bucket's score of key ``k`` is the mean
  attention its queries that can see ``k`` pay to it,

      alpha_k^(i) = sum_{t in bucket i, t >= k} A[t, k] / #{t in bucket i : t >= k}

  (with one bucket this is the Gu et al. ``alpha_k``). ``Sink_k`` per bucket is
  the share of (sample, layer, head) with ``alpha_k^(i) > eps``.
* by **key position**: the whole-sequence ``alpha_k`` of every key, as a
  :class:`sink_interp.SinkReport` (``report.sink_report``), with ``sink_positions`` and
  ``secondary_sinks``.

Examples:
    >>> import torch
    >>> from sink_interp import tiny_model
    >>> rep = long_context_sinks(tiny_model(), torch.randint(4, 128, (2, 64)), buckets=4, progress=False)
    >>> rep.bucket_rates(k=1).shape, rep.edges
    ((4,), (0, 16, 32, 48, 64))
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
from jaxtyping import Float
from torch import Tensor

from ._internal.errors import check_eps
from ._internal.probe import ProbeSet
from ._internal.report import FieldError, Report, check_range, delegated
from .architecture import check_model_tokens
from .lse import bucket_edges, lse_column_sums, normalize_edges
from .masks import as_mask
from .metrics import ALPHA_MAX, SinkReport
from .provenance import provenance


@dataclass(frozen=True, eq=False, repr=False)
class LongContextReport(Report):
    """Sink scores per query bucket (``bucket_alpha [n, layers, heads, buckets, T]``) and over the whole input (``sink_report``).

    Positions ``k`` are 1-indexed; ``bucket_alpha`` is NaN where no query of the bucket can see ``k``.

    Examples:
        >>> import torch
        >>> from sink_interp import tiny_model, long_context_sinks
        >>> rep = long_context_sinks(tiny_model(), torch.randint(4, 128, (1, 32)), query_edges=[0, 8, 32], progress=False)
        >>> rep.bucket_alpha.shape  # [n, layers, heads, buckets, T]
        (1, 2, 4, 2, 32)
        >>> rep.bucket_frame(ks=(1,))[["query_start", "query_stop", "k"]].values.tolist()
        [[0, 8, 1], [8, 32, 1]]
    """

    sink_report: SinkReport
    bucket_alpha: Float[np.ndarray, "n layer head bucket pos"]
    edges: tuple[int, ...]
    token_ids: np.ndarray | None = None

    _nan_fields = ("bucket_alpha",)  # NaN where no query of the bucket sees k; never Inf

    def _check(self) -> None:
        a, whole = self.bucket_alpha, self.sink_report.alpha
        if a.shape[:3] != whole.shape[:3] or a.shape[-1] != whole.shape[-1]:
            raise FieldError(
                "bucket_alpha", f"has shape {list(a.shape)}, which does not fit sink_report.alpha {list(whole.shape)}"
            )
        e = list(self.edges)
        if len(e) != a.shape[3] + 1 or e[0] != 0 or e[-1] != whole.shape[-1] or any(x >= y for x, y in zip(e, e[1:])):
            raise FieldError(
                "edges", f"is {e}; it must rise from 0 to the length {whole.shape[-1]} in {a.shape[3]} buckets (bucket_alpha)"
            )
        if np.isinf(a).any():
            raise FieldError("bucket_alpha", "holds Inf; a report holds finite numbers (NaN only where no query sees k)")
        if float(np.max(self.sink_report.row_sum, initial=0.0)) <= ALPHA_MAX:
            check_range("bucket_alpha", a, 0.0, ALPHA_MAX)

    # ------------------------------------------------------------- basics
    #: that of the whole-input :class:`~sink_interp.SinkReport` it holds, like ``eps`` and ``length``
    provenance = delegated("sink_report", "provenance", "That of the whole-input SinkReport it holds.")
    eps = delegated("sink_report", "eps")
    length = delegated("sink_report", "length")

    @property
    def n_buckets(self) -> int:
        return len(self.edges) - 1

    def _e(self, eps: float | None) -> float:
        return self.eps if eps is None else check_eps(eps)

    def _k(self, k: int) -> int:
        return self.sink_report._k(k)

    # ------------------------------------------------------------- by query bucket
    def bucket_rates(self, k: int = 1, eps: float | None = None) -> np.ndarray:
        """``Sink_k`` in percent per query bucket (NaN for buckets that end before ``k``)."""
        a = self.bucket_alpha[..., self._k(k) - 1]  # [n, L, H, B]
        rates = 100.0 * (a > self._e(eps)).mean(axis=(0, 1, 2))
        rates[np.isnan(a).all(axis=(0, 1, 2))] = np.nan
        return rates

    def bucket_mean_alpha(self, k: int = 1) -> np.ndarray:
        """Mean ``alpha_k`` per query bucket over samples, layers and heads."""
        a = self.bucket_alpha[..., self._k(k) - 1]  # [n, L, H, B]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # buckets that end before k: NaN
            return np.nanmean(a, axis=(0, 1, 2))

    def bucket_layer_rates(self, k: int = 1, eps: float | None = None) -> np.ndarray:
        """``[buckets, layers]``: ``Sink_k`` per query bucket and layer."""
        a = self.bucket_alpha[..., self._k(k) - 1]  # [n, L, H, B]
        return 100.0 * (a > self._e(eps)).mean(axis=(0, 2)).T

    def bucket_frame(self, ks: Sequence[int] = (1,), eps: float | None = None) -> pd.DataFrame:
        """One row per (query bucket, key ``k``): ``sink_rate`` (``Sink_k``), ``mean_alpha``; ``attrs["eps"]``.

        The bucket's queries are positions ``query_start <= t < query_stop`` (0-indexed, like :attr:`edges`);
        ``k`` is the paper's 1-indexed key position.
        """
        rows = []
        for k in ks:
            rates, mean = self.bucket_rates(k, eps), self.bucket_mean_alpha(k)
            for i, (a, b) in enumerate(zip(self.edges, self.edges[1:])):
                rows.append(
                    {
                        "bucket": i,
                        "query_start": int(a),
                        "query_stop": int(b),
                        "k": int(k),
                        "sink_rate": float(rates[i]),
                        "mean_alpha": float(mean[i]),
                    }
                )
        df = pd.DataFrame(rows)
        df.attrs["eps"] = self._e(eps)
        return df

    # ------------------------------------------------------------- by key position
    def key_table(self, eps: float | None = None, top: int = 10, min_queries: int = 64) -> pd.DataFrame:
        """The ``top`` key positions by whole-sequence ``Sink_k`` (ties: mean ``alpha_k``), with the token id
        where there is one sample. ``sink_rate`` is ``Sink_k`` at ``attrs["eps"]``; ``reliable``: ``alpha_k`` averages at
        least ``min_queries`` queries."""
        rates = self.sink_report.rates(eps)
        mean = self.sink_report.alpha.mean(axis=(0, 1, 2))
        order = np.lexsort((-mean, -rates))[:top]
        rows = []
        for j in order:
            row = {
                "k": int(j) + 1,
                "sink_rate": float(rates[j]),
                "mean_alpha": float(mean[j]),
                "n_queries": self.length - int(j),
                "reliable": bool(self.length - int(j) >= min_queries),
            }
            if self.token_ids is not None and self.token_ids.shape[0] == 1:
                row["token_id"] = int(self.token_ids[0, j])
            rows.append(row)
        df = pd.DataFrame(rows)
        df.attrs["eps"] = self._e(eps)
        return df

    def secondary_sinks(self, eps: float | None = None, min_rate: float = 1.0, min_queries: int = 64) -> list[int]:
        """Key positions other than the first with ``Sink_k >= min_rate`` percent, scored by enough queries."""
        return self.sink_report.secondary_sinks(eps, min_rate=min_rate, min_queries=min_queries)

    # ------------------------------------------------------------- export
    def to_frame(self, eps: float | None = None) -> pd.DataFrame:
        """Per query bucket: ``Sink_1`` and, for each secondary sink, its ``Sink_k``."""
        ks = [1, *self.secondary_sinks(eps)[:5]]
        return self.bucket_frame(ks, eps)

    def summary(self) -> dict[str, Any]:
        base = self.sink_report.summary()
        for key in ("sink_rates", "top_heads", "sink_positions"):
            base.pop(key, None)
        return {
            **base,
            "edges": list(self.edges),
            "bucket_sink_rate_1": [float(x) for x in self.bucket_rates(1)],
            "bucket_mean_alpha_1": [float(x) for x in self.bucket_mean_alpha(1)],
            "secondary_sinks": self.secondary_sinks(),
            "top_keys": self.key_table().to_dict(orient="records"),
        }

    def __repr__(self) -> str:
        r = self.bucket_rates(1)
        return (
            f"LongContextReport(model={self.sink_report.model!r}, n={self.sink_report.n}, length={self.length}, "
            f"buckets={self.n_buckets}, Sink_1 first/last bucket={r[0]:.1f}%/{r[-1]:.1f}%)"
        )


def long_context_sinks(
    model: Any,
    tokens: Tensor | ProbeSet,
    eps: float = 0.3,
    *,
    buckets: int = 8,
    query_edges: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    mask: Any = None,
    batch_size: int | None = None,
    progress: bool = True,
    method: str = "lse",
) -> LongContextReport:
    """Sink scores by query bucket and by key position, blockwise (works at T = 8192 on a CPU).

    Args:
        model: a TransformerBridge.
        tokens: ``[n, T]`` ids (a tensor or a :class:`~sink_interp.ProbeSet`), e.g.
            ``probe_tokens(model, "natural-concat", n=1, length=8192)``.
        eps: sink threshold.
        buckets: number of equal query buckets (ignored when ``query_edges`` is given).
        query_edges: explicit bucket edges ``[0, ..., T]``.
        layers: layers to measure (default: all).
        mask: an ``AttentionMask`` the model attends with (default: causal).
        batch_size: samples per forward pass.
        progress: show a progress bar.
        method: the engine of the blockwise ``lse`` measurement: ``"lse"`` (default) fused attention when
            possible, else the bridge's hooks; ``"lse-fused"`` requires fused attention; ``"lse-hooks"`` the hooks.

    Returns:
        A :class:`LongContextReport` (the method is always ``"lse"``).

    Examples:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> rep = long_context_sinks(tiny_model(), torch.randint(4, 128, (2, 64)), buckets=4, progress=False)
        >>> rep.bucket_rates(k=1).shape, rep.sink_report.method
        ((4,), 'lse')
    """
    eps = check_eps(eps)
    checked = check_model_tokens(model, tokens, min_length=2)
    T = checked.shape[1]
    edges = normalize_edges(query_edges, T) if query_edges is not None else bucket_edges(T, buckets)
    mask = as_mask(mask)
    sums = lse_column_sums(
        model, checked, layers=layers, mask=mask, query_edges=edges, batch_size=batch_size, progress=progress, method=method
    )
    report = SinkReport(
        alpha=sums.alpha().numpy(),
        row_sum=sums.row_sum.numpy(),
        eps=eps,
        score="softmax",
        proxy_layers={},
        layers=tuple(sums.layers),
        provenance=provenance(model, tokens, mask=mask),
        method="lse",
        engine=sums.info,
    )
    return LongContextReport(
        sink_report=report,
        bucket_alpha=sums.bucket_alpha().numpy(),
        edges=tuple(edges),
        token_ids=checked.cpu().numpy(),
    )
