"""The Gu et al. attention-sink metric.

For head ``h`` of layer ``l`` with attention ``A[t, j]`` over ``T`` tokens,
the sink score of key position ``k`` (1-indexed, as in the paper) is

    alpha_k = 1 / (T - k + 1) * sum_{t >= k} A[t, k]

(the mean attention that the queries able to see ``k`` pay to it; the
official ``eval_sink_open_source.py`` computes the same thing). A head is a
sink head on ``k`` when ``alpha_k > eps`` (strictly), and

    Sink_k^eps = 100 * mean over (sample, layer, head) of [alpha_k > eps].

Patterns whose rows do not sum to 1 (sigmoid or elu+1 kernels, a sink
logit grafted by an intervention) are scored through the proxy
``A / (sum_j A + 1e-8)`` (or ``|A| / (sum_j |A| + 1e-8)`` for kernels with
negative weights). A model's own learned sink logits (gpt-oss) are scored as
they are, like Hugging Face's attention weights. Either way the mass a row
does not give to any token, ``1 - sum_j A[t, j]``, is reported as the sink
mass.

Keys near the end are averaged over very few queries (``alpha_T`` is a single
attention weight), so ``Sink_T`` is noisy: it is reported, but
:meth:`SinkReport.sink_positions` marks such positions unreliable.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from ._internal import distributed as dist
from ._internal import hooknames
from ._internal.errors import check_eps
from ._internal.probe import ProbeSet
from ._internal.provenance import LseEngine, Provenance
from ._internal.report import (
    FieldError,
    ModelRun,
    Provenanced,
    Report,
    check_indices,
    check_range,
    from_extra,
    summary_head,
    summary_tail,
)
from ._internal.scores import MIN_QUERIES, SCORES, reliable_keys, sink_alpha, sink_rates
from .architecture import check_head_counts, check_model_tokens, describe_attention
from .capture import Reducer, run_reducers
from .provenance import provenance

# score="auto" resolves to this for models that know how their attention must be read
# (set by sink_interp.training for trained kernels: a K-bias model is scored on its raw pattern)
_MODEL_SCORE: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def register_score(model: Any, score: str) -> None:
    """Make ``score`` what ``measure_sinks(model, ..., score="auto")`` uses for ``model``."""
    if score not in SCORES[1:]:
        raise ValueError(f"score must be one of {SCORES[1:]}, got {score!r}")
    _MODEL_SCORE[model] = score


def _row_tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype in (torch.float32, torch.float64) else 2e-2


#: the largest alpha a report scored as softmax or proxy can hold: rows sum to 1 within the half-precision tolerance
ALPHA_MAX = 1.0 + 2 * 2e-2


class SinkScoreReducer(Reducer):
    """Streams ``alpha`` [sample, layer, head, key] and mean row sums from ``hook_pattern``."""

    shardable = True
    rows = ("alpha", "row_sum")

    def __init__(self, layers: Sequence[int] | None = None, score: str = "auto"):
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        self.layers = None if layers is None else list(layers)
        self.score = score
        self.proxy_layers: dict[int, str] = {}

    def hook_names(self, model: Any) -> list[str]:
        return [hooknames.pattern(layer) for layer in self.layers]

    def begin(self, model: Any, n_samples: int, length: int) -> None:
        L = int(model.cfg.n_layers)
        if self.layers is None:
            self.layers = list(range(L))
        bad = [layer for layer in self.layers if not 0 <= layer < L]
        if bad:
            raise ValueError(f"layers {bad} out of range; the model has layers 0..{L - 1}")
        self._index = {layer: i for i, layer in enumerate(self.layers)}
        # learned sink logits (gpt-oss) take mass out of every row: those rows are softmax as they are
        spec = describe_attention(model)
        H = check_head_counts(spec, self.layers, "sink scores")
        self._native_sinks = {layer for layer in self.layers if spec.layer(layer).has_sink_logits}
        self.alpha = torch.zeros(n_samples, len(self.layers), H, length, dtype=torch.float32)
        self.row_sum = torch.zeros(n_samples, len(self.layers), H, dtype=torch.float32)

    def update(self, name: str, tensor: Tensor) -> None:
        layer = hooknames.layer_of(name)
        p = tensor.detach()
        score = self.score
        rows = p.float().sum(-1)  # [b, H, q]
        if score == "auto":
            if layer in self._native_sinks:
                score = "softmax"
            elif (rows - 1).abs().max().item() <= _row_tolerance(p.dtype):
                score = "softmax"
            else:
                score = "abs-proxy" if (p < 0).any().item() else "proxy"
        if score != "softmax":
            self.proxy_layers[layer] = score
        a = sink_alpha(p, score)
        s = self.batch_start
        i = self._index[layer]
        self.alpha[s : s + a.shape[0], i] = a.cpu()
        self.row_sum[s : s + a.shape[0], i] = rows.mean(-1).cpu()

    def local_state(self) -> dict[int, str]:
        return self.proxy_layers

    def merge(self, states: list[Any]) -> None:
        merged: dict[int, str] = {}
        for st in states:  # rank order is batch order: the last batch's decision wins, as in one process
            merged.update(st)
        self.proxy_layers = merged

    def result(self) -> tuple[Tensor, Tensor]:
        return self.alpha, self.row_sum


def _check_scores(rep: Any, alpha: np.ndarray, row_sum: np.ndarray, names: tuple[str, str]) -> None:
    """The scores of a loaded report against their row sums: ``sum_k alpha_k (T - k + 1) = sum_t rowsum_t``.

    ``alpha`` ``[..., layer, head, T]`` and ``row_sum`` ``[..., layer, head]`` (or their means over samples).
    A layer scored on the pattern as it is holds that identity with its mean row sum (measured: within 3e-6
    relative, float32 to bfloat16, pattern and lse); a proxy-scored layer's rows sum to 1 (0 for an all-zero
    row), so there it lies in [0, 1]. Where every row sums to at most 1 (softmax, learned sink logits, the
    proxies), ``alpha`` lies in [0, 1] too. A file whose scores were edited (scaled, shifted, transposed along
    positions) breaks these.
    """
    T = alpha.shape[-1]
    weight = np.arange(T, 0, -1, dtype=np.float64) / T
    total = (alpha.astype(np.float64) * weight).sum(-1)
    proxy = np.array([layer in rep.proxy_layers for layer in rep.layers])[:, None]
    rows = row_sum.astype(np.float64)
    err = np.where(proxy, np.maximum(total - 1.0, -total), np.abs(total - rows) / np.maximum(1.0, np.abs(rows)))
    if err.size and float(err.max()) > 1e-3:
        raise FieldError(
            names[0],
            f"does not add up to its row sums ({names[1]}): sum_k alpha_k (T - k + 1) / T is off by {float(err.max()):.3g} "
            "(at most 1e-3 in a report as written)",
        )
    if float(np.max(rows, initial=0.0)) <= ALPHA_MAX:
        check_range(names[0], alpha, 0.0, ALPHA_MAX)


def _check_layers(rep: Any, n_layers: int, field_name: str) -> None:
    """The measured ``layers`` of a loaded report: distinct indices, one per entry of ``field_name``'s layer axis."""
    check_indices("layers", rep.layers)
    if len(rep.layers) != n_layers:
        raise FieldError("layers", f"names {len(rep.layers)} layers, but {field_name} holds {n_layers}")
    extra = sorted(set(rep.proxy_layers) - set(rep.layers))
    if extra:
        raise FieldError("proxy_layers", f"names layers {extra}, which were not measured (layers {list(rep.layers)})")


@dataclass(frozen=True, kw_only=True)
class HowMeasured:
    """How a sink report's scores were read (mixed into :class:`SinkReport` and :class:`SinkSummary`): the threshold
    ``eps``, the provenance, the ``score`` rule (and the layers read through a proxy), the ``layers``, the ``method``
    (``"pattern"`` or ``"lse"``), the LSE ``engine`` that ran (``"lse"`` only), why ``method="auto"`` fell back to the
    pattern (``why_not_lse``)."""

    eps: float
    provenance: Provenance
    score: str
    proxy_layers: dict[int, str]
    layers: tuple[int, ...]
    method: str = "pattern"
    engine: LseEngine | None = None
    why_not_lse: str | None = None
    #: the field shaped ``[..., layer, head, key]`` that gives the sequence length and the number of heads
    _by_key: ClassVar[str] = "alpha"

    @property
    def length(self) -> int:
        return int(getattr(self, self._by_key).shape[-1])

    @property
    def n_heads(self) -> int:
        return int(getattr(self, self._by_key).shape[2])

    @classmethod
    def _upgrade(cls, fields: dict[str, Any]) -> dict[str, Any]:
        """Files written when these facts sat in ``extra`` (``lse``, ``why_not_lse``; the distributed run moved into
        the provenance, see :func:`~sink_interp._internal.report.old_provenance`)."""
        return from_extra(fields, engine=("lse", LseEngine.from_info), why_not_lse=("why_not_lse", str))

    def _summary_tail(self) -> dict[str, Any]:
        return summary_tail(self, why_not_lse=self.why_not_lse, lse=self.engine.info() if self.engine else None)


@dataclass(frozen=True, eq=False, repr=False)
class SinkReport(Provenanced, ModelRun, HowMeasured, Report):
    """Sink scores of every (sample, layer, head, key position), with what produced them.

    ``alpha`` has shape ``[n, layers, heads, length]``; positions ``k`` in the
    methods are 1-indexed like the paper (``k=1`` is the first token).

    Examples:
        >>> import torch
        >>> from sink_interp import tiny_model, measure_sinks
        >>> report = measure_sinks(tiny_model(), torch.randint(4, 128, (4, 16)), progress=False)
        >>> report.alpha.shape
        (4, 2, 4, 16)
        >>> 0.0 <= report.rate(k=1) <= 100.0
        True
    """

    alpha: Float[np.ndarray, "n layer head pos"]
    row_sum: Float[np.ndarray, "n layer head"]

    # ---------------------------------------------------------------- shape facts
    @property
    def n(self) -> int:
        return int(self.alpha.shape[0])

    def n_queries(self, k: int) -> int:
        """How many queries ``alpha_k`` averages over (``T - k + 1``)."""
        return self.length - self._k(k) + 1

    def _k(self, k: int) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.length:
            raise ValueError(f"k must be a key position in 1..{self.length} (1 = first token), got {k!r}")
        return int(k)

    def _eps(self, eps: float | None) -> float:
        return self.eps if eps is None else check_eps(eps)

    def _layer_index(self, layer: int) -> int:
        if layer not in self.layers:
            raise ValueError(f"layer {layer} was not measured; measured layers: {list(self.layers)}")
        return self.layers.index(layer)

    def _check(self) -> None:
        _check_layers(self, self.alpha.shape[1], "alpha")
        if self.alpha.shape[0] < 1 or self.alpha.shape[-1] < 1:
            raise FieldError("alpha", f"has shape {list(self.alpha.shape)}: no sample or no key position")
        _check_scores(self, self.alpha, self.row_sum, ("alpha", "row_sum"))

    # ---------------------------------------------------------------- rates
    def is_sink(self, eps: float | None = None) -> np.ndarray:
        """Boolean ``[n, layers, heads, length]``: ``alpha > eps`` (strict)."""
        return self.alpha > self._eps(eps)

    def rates(self, eps: float | None = None) -> np.ndarray:
        """``Sink_k^eps`` in percent for every ``k = 1..length`` (array index ``k - 1``)."""
        return sink_rates(self.alpha, self._eps(eps))

    def rate(self, k: int = 1, eps: float | None = None) -> float:
        """``Sink_k^eps`` in percent: the share of (sample, layer, head) with ``alpha_k > eps``."""
        k = self._k(k)
        return float(100.0 * (self.alpha[..., k - 1] > self._eps(eps)).mean())

    def layer_rates(self, k: int = 1, eps: float | None = None) -> np.ndarray:
        """``Sink_k^eps`` in percent for each measured layer (over samples and heads)."""
        k = self._k(k)
        return 100.0 * (self.alpha[..., k - 1] > self._eps(eps)).mean(axis=(0, 2))

    def head_rates(self, k: int = 1, eps: float | None = None) -> np.ndarray:
        """``[layers, heads]``: percent of samples in which the head is a sink head on ``k``."""
        k = self._k(k)
        return 100.0 * (self.alpha[..., k - 1] > self._eps(eps)).mean(axis=0)

    def mean_alpha(self, k: int = 1) -> np.ndarray:
        """``[layers, heads]`` mean ``alpha_k`` over samples."""
        return self.alpha[..., self._k(k) - 1].mean(axis=0)

    def sink_mass(self) -> np.ndarray:
        """``[layers, heads]`` mean of ``1 - sum_j A[t, j]``: attention given to no token (0 for softmax)."""
        return 1.0 - self.row_sum.mean(axis=0)

    def sweep(self, eps_values: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5), k: int = 1) -> pd.DataFrame:
        """``sink_rate_{k}`` (``Sink_k``) and ``mean_alpha_{k}`` for several thresholds (an ``eps`` column), from the stored scores."""
        k = self._k(k)
        rows = [
            {
                "eps": float(check_eps(e)),
                f"sink_rate_{k}": self.rate(k, e),
                f"mean_alpha_{k}": float(self.alpha[..., k - 1].mean()),
            }
            for e in eps_values
        ]
        return pd.DataFrame(rows)

    # ---------------------------------------------------------------- tables
    def head_table(self, k: int = 1, eps: float | None = None) -> pd.DataFrame:
        """One row per (layer, head): mean ``alpha_k``, sink rate over samples, sink mass; strongest first."""
        k = self._k(k)
        mean = self.mean_alpha(k)
        rate = self.head_rates(k, eps)
        mass = self.sink_mass()
        n_kv = int(self.model_info.get("n_kv_heads") or self.n_heads)
        group = max(1, self.n_heads // n_kv)
        rows = []
        for li, layer in enumerate(self.layers):
            for h in range(self.n_heads):
                rows.append(
                    {
                        "layer": layer,
                        "head": h,
                        "kv_head": h // group,
                        f"mean_alpha_{k}": float(mean[li, h]),
                        f"sink_rate_{k}": float(rate[li, h]),
                        "sink_mass": float(mass[li, h]),
                    }
                )
        df = pd.DataFrame(rows)
        return df.sort_values(f"mean_alpha_{k}", ascending=False, kind="stable").reset_index(drop=True)

    def sink_positions(self, eps: float | None = None, min_rate: float = 1.0, min_queries: int = MIN_QUERIES) -> pd.DataFrame:
        """Key positions ``k`` whose ``Sink_k`` (column ``sink_rate``, at ``attrs["eps"]``) is at least ``min_rate`` percent.

        ``reliable`` is False where ``alpha_k`` averages fewer than
        ``min_queries`` queries (all of them, for inputs shorter than that): the last keys are
        scored by a handful of attention weights, so a high rate there is not evidence of a sink.
        The rule of :func:`sink_interp._internal.scores.sink_positions`, which the views use too.
        """
        rates = self.rates(eps)
        mean = self.alpha.mean(axis=(0, 1, 2))
        reliable = reliable_keys(self.length, min_queries)
        rows = [
            {
                "k": k + 1,
                "sink_rate": float(rates[k]),
                "mean_alpha": float(mean[k]),
                "n_queries": self.length - k,
                "reliable": bool(reliable[k]),
            }
            for k in range(self.length)
            if rates[k] >= min_rate
        ]
        df = pd.DataFrame(rows, columns=["k", "sink_rate", "mean_alpha", "n_queries", "reliable"])
        df.attrs["eps"] = self._eps(eps)
        return df

    def secondary_sinks(self, eps: float | None = None, min_rate: float = 1.0, min_queries: int = MIN_QUERIES) -> list[int]:
        """Reliable sink positions other than the first token."""
        df = self.sink_positions(eps, min_rate, min_queries)
        return [int(k) for k, ok in zip(df["k"], df["reliable"]) if k > 1 and ok]

    def to_frame(self, eps: float | None = None) -> pd.DataFrame:
        """Long table, one row per (layer, head, k): mean ``alpha_k`` and sink rate (percent of samples)."""
        L, H, T = len(self.layers), self.n_heads, self.length
        mean = self.alpha.mean(axis=0)
        rate = 100.0 * self.is_sink(eps).mean(axis=0)
        return pd.DataFrame(
            {
                "layer": np.repeat(np.asarray(self.layers), H * T),
                "head": np.tile(np.repeat(np.arange(H), T), L),
                "k": np.tile(np.arange(1, T + 1), L * H),
                "mean_alpha": mean.reshape(-1),
                "sink_rate": rate.reshape(-1),
            }
        )

    # ---------------------------------------------------------------- export
    def summary(self) -> dict[str, Any]:
        """Provenance and headline numbers (what :meth:`to_json` writes, minus the full scores)."""
        top = self.head_table().head(10)
        return {
            **summary_head(self, "eps", "length", "n", "dtype", "device", "method", "score"),
            "proxy_layers": {str(k): v for k, v in sorted(self.proxy_layers.items())},
            "layers": list(self.layers),
            "sink_rate_1": self.rate(1),
            "sink_rates": [float(x) for x in self.rates()],
            "layer_rates": [float(x) for x in self.layer_rates(1)],
            "mean_alpha_1": float(self.alpha[..., 0].mean()),
            "top_heads": top.to_dict(orient="records"),
            "sink_positions": self.sink_positions().to_dict(orient="records"),
            **self._summary_tail(),
        }

    @classmethod
    def _from_summary(cls, d: dict[str, Any]) -> SinkReport | None:
        """A JSON written before reports carried their fields: rebuilt when it holds ``alpha`` (``include_alpha=True``)."""
        need = ("alpha", "row_sum", "eps", "model", "data", "score", "layers", "model_info", "versions")
        if not all(k in d for k in need) or not isinstance(d.get("alpha"), list):
            return None
        extra = d.get("extra") or {}
        return cls(
            alpha=np.asarray(d["alpha"], dtype=np.float32),
            row_sum=np.asarray(d["row_sum"], dtype=np.float32),
            eps=float(d["eps"]),
            provenance=Provenance(
                model=d["model"],
                model_info=d["model_info"],
                data=d["data"],
                bos=d.get("bos"),
                probe=extra.get("probe"),
                mask=extra.get("mask"),
                versions=d["versions"],
                distributed=extra.get("distributed"),
            ),
            score=d["score"],
            proxy_layers={int(k): v for k, v in (d.get("proxy_layers") or {}).items()},
            layers=tuple(int(x) for x in d["layers"]),
            method=d.get("method", "pattern"),
            **HowMeasured._upgrade({"extra": extra}),
        )

    def __repr__(self) -> str:
        return (
            f"SinkReport(model={self.model!r}, data={self.data!r}, bos={self.bos}, eps={self.eps}, "
            f"n={self.n}, length={self.length}, Sink_1={self.rate(1):.2f}%)"
        )


def measure_sinks(
    model: Any,
    tokens: Tensor | ProbeSet,
    eps: float = 0.3,
    *,
    layers: Sequence[int] | None = None,
    score: str = "auto",
    batch_size: int | None = None,
    progress: bool = True,
    method: str = "auto",
    mask: Any = None,
) -> SinkReport:
    """Measure the sink score of every head, layer and key position.

    Args:
        model: a TransformerBridge (see :func:`sink_interp.load_model`).
        tokens: ``[n, length]`` token ids, e.g. the :class:`~sink_interp.ProbeSet` of
            :func:`sink_interp.probe_tokens` (its source and facts are recorded) or a plain tensor.
            The model sees exactly these tokens: no BOS is added.
        eps: sink threshold in (0, 1); change it later with ``report.rate(k, eps=...)``.
        layers: layers to measure (default: all).
        score: ``"auto"`` (softmax rows as they are; the proxy for rows that do not
            sum to 1), ``"softmax"``, ``"proxy"`` or ``"abs-proxy"``.
        batch_size: samples per forward pass (default: chosen from the length).
        progress: show a progress bar.
        method: ``"pattern"``: reduce ``hook_pattern`` of every layer as it is computed;
            ``"lse"``: column sums from q, k and the row log-sum-exp, blockwise, never a
            T x T map (:mod:`sink_interp.lse`; softmax attention only), with fused attention when
            nothing hooks the model (:mod:`sink_interp.fused`), else through the bridge's hooks;
            ``"lse-fused"``: ``"lse"`` that requires fused attention; ``"lse-hooks"``: ``"lse"``
            through the bridge's hooks; ``"auto"`` (default): ``"lse"`` for long inputs or when the
            maps would not fit in memory, else ``"pattern"`` (see :func:`sink_interp.lse.choose_method`).
            The report records ``"pattern"`` or ``"lse"``, and the engine in ``report.engine``.
        mask: an :class:`sink_interp.AttentionMask` (sliding window, prefix LM, sink tokens)
            the model attends with during the measurement; default causal.

    Returns:
        :class:`SinkReport`: every sample's scores. For counts only (memory independent of ``n``) see
        :func:`sink_summary`.

    Examples:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> report = measure_sinks(tiny_model(), torch.randint(4, 128, (4, 16)), eps=0.3, progress=False)
        >>> report.layer_rates().shape
        (2,)
    """
    eps = check_eps(eps)
    tokens_checked = check_model_tokens(model, tokens, min_length=2)
    from . import lse as _lse

    score = _model_score(model, score)
    requested = method
    chosen = method
    method = dist.decide(lambda: _lse.choose_method(model, tokens_checked, chosen, score=score, batch_size=batch_size))
    mask = _lse.as_mask(mask)
    prov = provenance(model, tokens, mask=mask)
    why_not_lse, engine = None, None
    if method == "lse":
        try:
            sums = _lse.lse_column_sums(
                model,
                tokens_checked,
                layers=layers,
                mask=mask,
                batch_size=batch_size,
                progress=progress,
                method=requested if requested in _lse.LSE_METHODS else "lse",
            )
        except _lse.SelfCheckFailed as e:
            if requested != "auto":
                raise
            method, why_not_lse = "pattern", str(e)
    if method == "lse":
        alpha, row_sum, layer_list, proxy_layers, used = sums.alpha(), sums.row_sum, sums.layers, {}, []
        score = "softmax"
        engine = sums.info
    else:
        reducer = SinkScoreReducer(layers=layers, score=score)
        from .interventions import masked

        with masked(model, mask):
            run_reducers(model, tokens_checked, [reducer], batch_size=batch_size, progress=progress, desc="sink scores")
        alpha, row_sum = reducer.result()
        layer_list, proxy_layers = reducer.layers, dict(reducer.proxy_layers)
        used = sorted(set(reducer.proxy_layers.values()))
    return SinkReport(
        alpha=alpha.numpy(),
        row_sum=row_sum.numpy(),
        eps=eps,
        score=score if score != "auto" else ("softmax" if not used else "auto:" + "+".join(used)),
        proxy_layers=proxy_layers,
        layers=tuple(layer_list),
        provenance=prov,
        method=method,
        engine=engine,
        why_not_lse=why_not_lse,
    )


def _model_score(model: Any, score: str) -> str:
    """``score``, or for ``"auto"`` how ``model``'s patterns are read when it registered that (training: a K bias, ...)."""
    if score != "auto":
        return score
    try:
        return _MODEL_SCORE.get(model, "auto")
    except TypeError:  # not weak-referenceable: nothing registered
        return score


# --------------------------------------------------------------------------- sink_summary

#: the thresholds :func:`sink_summary` counts ``alpha > eps`` for
EPS_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
#: fixed-point unit of the summed scores: ``round(alpha * FIXED)`` as int64 (exact sums in any order; n < 2**30)
FIXED = 2**32
#: samples measured at once by :func:`sink_summary` (whole batches; their scores are dropped after counting)
SUMMARY_CHUNK = 32


def _fixed(x: Tensor) -> Tensor:
    return torch.round(x.double() * FIXED).to(torch.int64)


@dataclass(frozen=True, eq=False, repr=False)
class SinkSummary(Provenanced, ModelRun, HowMeasured, Report):
    """What :func:`sink_summary` keeps: counts over a fixed eps grid and fixed-point sums.

    ``counts[g, layer, head, k - 1]`` is the number of samples with ``alpha_k > eps_grid[g]``;
    ``alpha_sum`` and ``row_sum_sum`` are sums over samples in units of ``1 / FIXED``. Integers add
    exactly in any order, so the report is the same for any number of ranks, and its rates equal
    those of the full :class:`SinkReport` bit for bit. ``eps`` must lie on ``eps_grid``.

    Examples:
        >>> import torch
        >>> from sink_interp import tiny_model, measure_sinks, sink_summary
        >>> m, toks = tiny_model(), torch.randint(4, 128, (4, 16))
        >>> s = sink_summary(m, toks, progress=False)
        >>> s.rate(1, eps=0.2) == measure_sinks(m, toks, progress=False).rate(1, eps=0.2)
        True
    """

    counts: Int[np.ndarray, "grid layer head pos"]  # int64
    alpha_sum: Int[np.ndarray, "layer head pos"]  # int64, units of 1 / FIXED
    row_sum_sum: Int[np.ndarray, "layer head"]  # int64, units of 1 / FIXED
    n: int
    eps_grid: tuple[float, ...]
    _by_key: ClassVar[str] = "counts"

    def _g(self, eps: float | None) -> int:
        e = self.eps if eps is None else check_eps(eps)
        for i, g in enumerate(self.eps_grid):
            if abs(g - e) < 1e-12:
                return i
        raise ValueError(f"eps must be one of the summary's grid {list(self.eps_grid)}, got {eps!r}; fix: pick one of them")

    _k = SinkReport._k
    _layer_index = SinkReport._layer_index

    def _check(self) -> None:
        _check_layers(self, self.counts.shape[1], "counts")
        if self.n < 1:
            raise FieldError("n", f"is {self.n}; a summary counts at least one sample")
        if len(self.eps_grid) != self.counts.shape[0]:
            raise FieldError("eps_grid", f"has {len(self.eps_grid)} thresholds, but counts holds {self.counts.shape[0]}")
        for e in self.eps_grid:
            if not 0.0 < e < 1.0:
                raise FieldError("eps_grid", f"holds {e!r}; thresholds lie strictly between 0 and 1")
        try:
            self._g(None)
        except ValueError:
            raise FieldError("eps", f"is {self.eps!r}, which is not on eps_grid {list(self.eps_grid)}") from None
        check_range("counts", self.counts, 0, self.n)
        _check_scores(self, self.alpha_sum / (FIXED * self.n), 1.0 - self.sink_mass(), ("alpha_sum", "row_sum_sum"))

    def rates(self, eps: float | None = None) -> np.ndarray:
        """``Sink_k^eps`` in percent for every ``k = 1..length``."""
        c = self.counts[self._g(eps)]
        return 100.0 * (c.sum(axis=(0, 1)) / (self.n * c.shape[0] * c.shape[1]))

    def rate(self, k: int = 1, eps: float | None = None) -> float:
        """``Sink_k^eps`` in percent (``eps`` on :attr:`eps_grid`)."""
        c = self.counts[self._g(eps)][..., self._k(k) - 1]
        return float(100.0 * (c.sum() / (self.n * c.size)))

    def layer_rates(self, k: int = 1, eps: float | None = None) -> np.ndarray:
        """``Sink_k^eps`` in percent for each measured layer."""
        c = self.counts[self._g(eps)][..., self._k(k) - 1]
        return 100.0 * (c.sum(axis=1) / (self.n * c.shape[1]))

    def head_rates(self, k: int = 1, eps: float | None = None) -> np.ndarray:
        """``[layers, heads]``: percent of samples in which the head is a sink head on ``k``."""
        return 100.0 * (self.counts[self._g(eps)][..., self._k(k) - 1] / self.n)

    def mean_alpha(self, k: int = 1) -> np.ndarray:
        """``[layers, heads]`` mean ``alpha_k`` over samples (from the fixed-point sums)."""
        return self.alpha_sum[..., self._k(k) - 1] / (FIXED * self.n)

    def sink_mass(self) -> np.ndarray:
        """``[layers, heads]`` mean of ``1 - sum_j A[t, j]``."""
        return 1.0 - self.row_sum_sum / (FIXED * self.n)

    head_table = SinkReport.head_table

    def to_frame(self, eps: float | None = None) -> pd.DataFrame:
        """Long table, one row per (layer, head, k): mean ``alpha_k`` and sink rate (percent of samples)."""
        L, H, T = len(self.layers), self.n_heads, self.length
        return pd.DataFrame(
            {
                "layer": np.repeat(np.asarray(self.layers), H * T),
                "head": np.tile(np.repeat(np.arange(H), T), L),
                "k": np.tile(np.arange(1, T + 1), L * H),
                "mean_alpha": (self.alpha_sum / (FIXED * self.n)).reshape(-1),
                "sink_rate": (100.0 * self.counts[self._g(eps)] / self.n).reshape(-1),
            }
        )

    def summary(self) -> dict[str, Any]:
        return {
            **summary_head(self, "eps", "length", "n"),
            "keep": "summary",
            "eps_grid": list(self.eps_grid),
            "dtype": self.dtype,
            "device": self.device,
            "method": self.method,
            "score": self.score,
            "layers": list(self.layers),
            "sink_rate_1": self.rate(1),
            "sink_rates": [float(x) for x in self.rates()],
            "layer_rates": [float(x) for x in self.layer_rates(1)],
            "mean_alpha_1": float(self.mean_alpha(1).mean()),
            **self._summary_tail(),
        }

    def __repr__(self) -> str:
        return (
            f"SinkSummary(model={self.model!r}, data={self.data!r}, n={self.n}, length={self.length}, Sink_1={self.rate(1):.2f}%)"
        )


def sink_summary(
    model: Any,
    tokens: Tensor | ProbeSet,
    eps: float = 0.3,
    *,
    method: str = "auto",
    mask: Any = None,
    layers: Sequence[int] | None = None,
    score: str = "auto",
    batch_size: int | None = None,
    progress: bool = True,
) -> SinkSummary:
    """The sink scores of :func:`measure_sinks`, kept as counts: memory independent of ``n``.

    Whole batches are measured a chunk at a time; their scores are counted and summed, then dropped.
    The arguments are those of :func:`measure_sinks`; ``eps`` must lie on :data:`EPS_GRID`
    (0.05, 0.10, ..., 0.95).

    Returns:
        :class:`SinkSummary`: integer counts of ``alpha > eps`` for every eps of :data:`EPS_GRID` and
        fixed-point sums of alpha; its rates equal those of :func:`measure_sinks`'s report bit for bit,
        for any number of ranks (inside :func:`sink_interp.distributed` the ranks share the chunks).

    Examples:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> s = sink_summary(tiny_model(), torch.randint(4, 128, (4, 16)), eps=0.3, progress=False)
        >>> s.counts.shape  # [eps grid, layer, head, key position]
        (19, 2, 4, 16)
    """
    eps = check_eps(eps)
    checked = check_model_tokens(model, tokens, min_length=2)
    from . import lse as _lse
    from .capture import auto_batch_size

    if not any(abs(g - eps) < 1e-12 for g in EPS_GRID):
        raise ValueError(f"eps must be one of sink_summary's grid {list(EPS_GRID)}, got {eps!r}; fix: pick one of them")
    kw = dict(layers=layers, score=_model_score(model, score), method=method, mask=mask)
    chosen = dist.decide(lambda: _lse.choose_method(model, checked, method, score=kw["score"], batch_size=batch_size))
    kw["method"] = method if chosen == "lse" and method in _lse.LSE_METHODS else chosen  # "auto" decided once, for every chunk
    n, T = checked.shape
    bs = batch_size or dist.decide(lambda: auto_batch_size(model, T))
    chunk = bs * max(1, SUMMARY_CHUNK // bs)
    grid = torch.tensor(EPS_GRID, dtype=torch.float32)
    mine = dist.shard((n + chunk - 1) // chunk, {"tokens": checked, "batch_size": bs, "model": model, "eps": eps, "settings": kw})
    parts: list[tuple[int, Any]] = []
    failed: BaseException | None = None
    try:
        with dist.local():
            for c in mine:
                rep = measure_sinks(
                    model, checked[c * chunk : (c + 1) * chunk], eps, batch_size=bs, progress=progress and dist.is_main(), **kw
                )
                a = torch.from_numpy(rep.alpha)  # [b, L, H, T]
                counts = torch.stack([(a > g).sum(0) for g in grid])  # [grid, L, H, T], one threshold at a time
                parts.append(
                    (
                        c,
                        counts,
                        _fixed(a).sum(0),
                        _fixed(torch.from_numpy(rep.row_sum)).sum(0),
                        rep.proxy_layers,
                        rep.score,
                        rep.method,
                        rep.layers,
                        rep.engine,
                        rep.why_not_lse,
                    )
                )
    except Exception as e:  # noqa: BLE001 - re-raised on every rank
        failed = e
    dist.raise_any(failed)
    allp = sorted((p for rank_parts in dist.gather(parts) for p in rank_parts), key=lambda p: p[0])
    counts = sum(p[1] for p in allp)
    alpha_sum = sum(p[2] for p in allp)
    row_sum_sum = sum(p[3] for p in allp)
    proxy: dict[int, str] = {}
    for p in allp:
        proxy.update(p[4])
    scores = sorted({p[5] for p in allp})
    first = allp[0]
    prov = provenance(model, tokens, mask=_lse.as_mask(mask))
    return SinkSummary(
        counts=counts.numpy(),
        alpha_sum=alpha_sum.numpy(),
        row_sum_sum=row_sum_sum.numpy(),
        n=int(n),
        eps_grid=EPS_GRID,
        eps=eps,
        score=scores[0] if len(scores) == 1 else "+".join(scores),
        proxy_layers=proxy,
        layers=tuple(first[7]),
        provenance=prov,
        method=first[6],
        engine=first[8],
        why_not_lse=first[9],
    )
