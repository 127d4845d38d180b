"""Activation and attribution patching of attention heads, built for sinks.

:func:`patch_heads` replaces one head's activation at a time with its value from another
input and reports a metric of the logits for every (layer, head):

* ``direction="noise"`` (default) runs the **clean** input and writes in the **corrupted**
  run's activation: the metric moves from its clean value towards the corrupted one when
  the head matters. ``direction="denoise"`` runs the corrupted input and writes in the
  clean activation (how much of the clean behaviour one head restores).
* ``what`` is the activation replaced: the head's output ``z``, its query ``q``, key ``k``
  or value ``v``, its ``pattern`` (query rows ``positions``), or the sink sites
  ``k-sink`` / ``v-sink`` (key / value at key position 0, or ``positions``) and
  ``pattern-sink`` (the pattern's column at key position 0, or ``positions``; rows are
  not renormalised).
* ``method="exact"`` runs the patched model. It is cheaper than one forward per head:
  the base run's residual entering layer ``l`` is the same for every head of ``l``, so each
  patched forward starts at layer ``l`` (the blocks below are skipped, after a once-per-model
  check that this reproduces the model's own logits), and several heads' conditions share
  one forward (the base input repeated, replica ``i`` patched at head ``h_i``).
* ``method="attribution"`` estimates every head at once from one forward of each input
  and one backward (attribution patching, AtP: ``(a_other - a_base) . dmetric/da`` at the
  base run, summed over positions and head dims). For ``q``, ``k`` and ``k-sink`` the
  softmax is not linearised: the patterns are recomputed with the patched queries/keys
  (the QK fix of AtP*, Kramár et al. 2024) and the estimate goes through the pattern
  change; the plain linear estimate is kept in ``estimate_linear``. Sink heads are where
  this matters: their pattern is saturated, so a gradient through the softmax sees almost
  nothing of a large change.
* ``method="ig"`` and ``"atp*"``: integrated gradients and AtP with GradDrop (:mod:`sink_interp.attribution`).
  Estimates live in ``estimate`` (``values`` holds exact numbers only).
* ``method="fast"`` / ``"verified"``: estimate every head, then patch exactly the best-screened ones: a fixed budget
  (10 % of the heads), or until no head left could beat the 5th largest exact effect; ``verified`` names them.
* ``method="both"``: exact values, the attribution estimate beside them, and their
  agreement (:meth:`PatchReport.agreement`).

Grouped-query models: ``z``, ``q`` and ``pattern`` are patched per query head; keys and
values are shared by the query heads of a KV group, so ``k``/``v`` sites are patched both
per KV head (``kv_values``, every query head of the group sees the patched key/value) and
per query head (``values``, only that query head sees it).

Normalised effect: ``(patched - base) / (other - base)``, with ``base`` the metric of the run
that is patched (clean for noising) and ``other`` that of the input the activation comes from:
1 means the head alone carries the whole difference, 0 nothing. It is refused (NaN and one warning)
when the clean-corrupted gap is smaller than ``GAP_TOL`` or has the sign the metric says is wrong
(:meth:`PatchReport.gap_problem`): dividing by a tiny or inverted gap flips signs and makes ratios above 1.

Example:
    >>> import torch
    >>> from sink_interp import tiny_model, patch_heads
    >>> model = tiny_model()
    >>> clean = torch.randint(4, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    >>> corrupted = torch.randint(4, 128, (2, 8), generator=torch.Generator().manual_seed(1))
    >>> rep = patch_heads(model, clean, corrupted, "logprob", progress=False)
    >>> rep.values.shape, list(rep.to_frame().columns[:3])
    ((2, 4), ['layer', 'head', 'kv_head'])
"""

from __future__ import annotations

import contextlib
import math
import time
import types
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from ._internal import display, hooknames
from ._internal import distributed as dist
from ._internal.errors import NonFiniteError, check_positive_int
from ._internal.probe import ProbeSet, as_tokens
from ._internal.provenance import Provenance
from ._internal.report import FieldError, ModelRun, Patched, Provenanced, Report, check_indices, summary_head
from .architecture import (
    LayerAttention,
    UnsupportedAttention,
    check_head_counts,
    check_model_tokens,
    describe_attention,
    verify_attention,
)
from .attribution import ESTIMATORS, AttributionSettings, estimate, estimate_graddrop, forward_capture, metric_value
from .capture import attach_hooks, model_device
from .models import special_token_ids
from .provenance import provenance

#: the activations :func:`patch_heads` can replace
SITES = ("z", "q", "k", "v", "pattern", "k-sink", "v-sink", "pattern-sink")
#: named metrics (see :func:`named_metric`)
METRICS = ("logit_diff", "logprob", "kl")
DIRECTIONS = ("noise", "denoise")
METHODS = ("exact", "attribution", "atp*", "ig", "fast", "verified", "both")
#: normalised effects are refused when ``|clean - corrupted|`` is below this (metric units; see PatchReport.gap_problem)
GAP_TOL = 1e-2
#: the sign of ``clean - corrupted`` each named metric should have: higher on the clean input's behaviour (+1) or lower (-1)
METRIC_EXPECT = {"logit_diff": 1, "logprob": 1, "kl": -1}
#: ways :func:`corrupt_tokens` makes the corrupted input of a sink experiment
CORRUPTIONS = ("bos", "first-token", "shuffle")

Metric = Callable[[Tensor], Tensor]


# --------------------------------------------------------------------------- sites


@dataclass(frozen=True)
class _Site:
    what: str
    base: str  # z, q, k, v, pattern
    kv: bool  # the hooked tensor has KV heads (k, v)
    sink: bool  # default positions (0,)

    def hook(self, layer: int) -> str:
        return {"z": hooknames.z, "q": hooknames.q, "k": hooknames.k, "v": hooknames.v, "pattern": hooknames.pattern}[self.base](
            layer
        )

    def index(self, rows: slice, head: int, pos: Any) -> tuple[Any, ...]:
        """Index of head ``head`` at positions ``pos`` (a LongTensor or ``slice(None)``) in the hooked tensor's ``rows``."""
        if self.base == "pattern":
            return (rows, head, slice(None), pos) if self.sink else (rows, head, pos)
        return (rows, pos, head)

    @property
    def qk(self) -> bool:
        """Queries or keys: the attribution goes through a recomputed pattern (AtP*)."""
        return self.base in ("q", "k")


def _site(what: str) -> _Site:
    if what not in SITES:
        raise ValueError(f"what must be one of {SITES}, got {what!r}")
    base = what.split("-")[0]
    return _Site(what, base, base in ("k", "v"), what.endswith("-sink"))


# --------------------------------------------------------------------------- metrics


def named_metric(name: str, clean: Tensor, corrupted: Tensor, clean_logits: Tensor, start: int = 0) -> Metric:
    """The metric called ``name`` as a function of the logits ``[n, T, V]`` (one scalar):

    * ``"logit_diff"``: at the last position that has a next token (``T - 2``), the logit of the
      clean input's last token minus that of the corrupted input's last token, mean over samples
      (needs last tokens that differ);
    * ``"logprob"``: mean log-probability of the clean input's next tokens (all positions);
    * ``"kl"``: mean ``KL(p_clean || p)`` of the next-token distributions, ``p_clean`` from the
      clean run (0 on the clean run).

    ``start``: ``"logprob"`` and ``"kl"`` read the predictions made at positions ``start..T-2`` only (a recipe
    that changes the first tokens leaves out the predictions made from them).

    Example:
        >>> import torch
        >>> clean, corrupted = torch.tensor([[1, 2, 3]]), torch.tensor([[1, 2, 4]])
        >>> logits = torch.zeros(1, 3, 8); logits[0, 1, 3] = 2.0
        >>> float(named_metric("logit_diff", clean, corrupted, logits)(logits))
        2.0
    """
    if name == "logit_diff":
        a, b = clean[:, -1], corrupted[:, -1]
        if bool((a == b).all()):
            raise ValueError(
                "metric='logit_diff' compares the clean and corrupted inputs' last tokens, which are equal here; "
                "fix: metric='logprob' or 'kl', or pass a function of the logits"
            )
        rows = torch.arange(len(a))

        def logit_diff(logits: Tensor) -> Tensor:
            last = logits[:, -2].float()
            return (last[rows, a.to(last.device)] - last[rows, b.to(last.device)]).mean()

        return logit_diff
    if name == "logprob":
        tgt = clean[:, start + 1 :]

        def logprob(logits: Tensor) -> Tensor:
            lp = torch.log_softmax(logits[:, start:-1].float(), -1)
            return lp.gather(-1, tgt.to(lp.device)[..., None]).mean()

        return logprob
    if name == "kl":
        ref = torch.log_softmax(clean_logits[:, start:-1].detach().float(), -1)

        def kl(logits: Tensor) -> Tensor:
            lp = torch.log_softmax(logits[:, start:-1].float(), -1)
            r = ref.to(lp.device)
            return (r.exp() * (r - lp)).sum(-1).mean()

        return kl
    raise ValueError(f"metric must be a function of the logits or one of {METRICS}, got {name!r}")


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True, eq=False, repr=False)
class PatchReport(Patched, Provenanced, ModelRun, Report):
    """Patching every chosen head: a layer × head table of metric values, with the baselines.

    ``values[l, h]``: the metric with head ``h`` of layer ``l`` patched (NaN for heads not run);
    for ``method="attribution"`` the estimate of it. ``kv_values[l, g]``: ``k``/``v`` sites patched
    per KV head (empty otherwise). ``estimate`` / ``kv_estimate``: the attribution estimate beside exact
    values (``method="both"``); ``estimate_linear``: the plain AtP estimate through the softmax, for
    ``q``/``k`` sites (the AtP* one is in ``estimate``, or in ``values`` for ``method="attribution"``).
    ``clean`` / ``corrupted``: the metric on the unpatched inputs; ``base`` is the run that is patched.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, patch_heads
        >>> clean = torch.randint(4, 128, (2, 8), generator=torch.Generator().manual_seed(0))
        >>> rep = patch_heads(tiny_model(), clean, clean.flip(0), "kl", direction="denoise", method="both", progress=False)
        >>> rep.clean, rep.base == rep.corrupted, rep.estimate.shape, bool(rep.to_frame()["metric"].notna().all())
        (0.0, True, (2, 4), True)
    """

    values: Float[np.ndarray, "layer head"]
    kv_values: np.ndarray
    estimate: np.ndarray
    estimate_linear: np.ndarray
    kv_estimate: np.ndarray
    clean: float
    corrupted: float
    what: str
    direction: str
    method: str
    metric: str
    positions: tuple[int, ...] | None
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    n_heads: int
    n_kv_heads: int
    seconds: dict[str, float]
    provenance: Provenance
    n: int
    length: int
    extra: dict[str, Any] = field(default_factory=dict)
    #: the sign ``clean - corrupted`` should have for the metric (+1 logprob/logit_diff, -1 kl, 0 unknown: not checked)
    expect: int = 0
    #: the estimator behind ``estimate`` ("" when none): "attribution" (AtP), "atp*" or "ig"
    estimator: str = ""
    #: integrated-gradient steps of ``estimate`` (``estimator="ig"``; 0 otherwise)
    steps: int = 0
    #: ``method="verified"``: the (layer, head) patched exactly, in the order they were verified
    verified: tuple[tuple[int, int], ...] = ()
    #: ``method="verified"``: the screen that ordered the heads (see :func:`sink_interp.attribution.estimate`)
    screen: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    _nan_fields = ("values", "kv_values", "estimate", "estimate_linear", "kv_estimate", "screen")  # NaN: heads not patched

    def _check(self) -> None:
        L, H = self.values.shape
        check_indices("layers", self.layers, L)
        check_indices("heads", self.heads, H)
        if self.n_heads != H:
            raise FieldError("n_heads", f"is {self.n_heads}, but values has {H} heads")
        if self.n < 1 or self.length < 2:
            raise FieldError(
                "length" if self.n >= 1 else "n", f"is {self.length if self.n >= 1 else self.n}; too small for a patch"
            )
        if self.positions is not None:
            check_indices("positions", self.positions, self.length)
        for name in self._nan_fields:
            if np.isinf(getattr(self, name)).any():
                raise FieldError(name, "holds Inf; a report holds finite numbers (NaN only for heads not patched)")
        ix = np.ix_(list(self.layers), list(self.heads))
        exact = self.method in ("exact", "both")
        for name, table in (("values", self.values), ("estimate", self.estimate)):
            wanted = exact if name == "values" else self.method not in ("exact",)
            if not wanted or not (self.layers and self.heads):
                continue
            run = table[ix] if table.size else np.full(1, np.nan)
            if not np.isfinite(run).all():
                raise FieldError(
                    name, f"holds NaN for {int((~np.isfinite(run)).sum())} patched heads; a patched head has a finite value"
                )
        for l_, h in self.verified:
            if not (0 <= l_ < L and 0 <= h < H and np.isfinite(self.values[l_, h])):
                raise FieldError("verified", f"names L{l_}H{h}, which has no exact value")

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> Any:
        # files written before estimates had their own field: method="attribution" kept them in values
        if fields.get("method") == "attribution" and not np.asarray(fields.get("estimate", np.zeros(0))).size:
            vals = np.asarray(fields["values"])
            fields = {**fields, "estimate": vals, "values": np.full_like(vals, np.nan), "estimator": "attribution"}
            kv = np.asarray(fields.get("kv_values", np.zeros((0, 0))))
            if kv.size:
                fields.update(kv_estimate=kv, kv_values=np.full_like(kv, np.nan))
        return cls(**fields)

    # ------------------------------------------------------------ baselines
    @property
    def effect(self) -> np.ndarray:
        """``values - base``: the change one head's patch makes."""
        return self.values - self.base

    def gap_problem(self, tol: float = GAP_TOL) -> str | None:
        """Why normalising by ``other - base`` would mislead, or None: the clean-corrupted gap is under ``tol`` (metric
        units) or has the wrong sign for the metric (``expect``: logprob and logit_diff should be higher on the clean
        input, kl lower; a metric function may say so with an ``expect`` attribute of +1 or -1)."""
        gap = self.clean - self.corrupted
        if not abs(gap) >= tol:
            return f"the clean-corrupted gap of {self.metric} is {gap:+.4g}, below the tolerance {tol:g}"
        if self.expect and np.sign(gap) != np.sign(self.expect):
            want = "above" if self.expect > 0 else "below"
            return (
                f"the clean-corrupted gap of {self.metric} is {gap:+.4g}, but {self.metric} should be {want} on the clean input"
            )
        return None

    def normalised(self, values: np.ndarray | None = None, *, tol: float = GAP_TOL) -> np.ndarray:
        """``(values - base) / (other - base)`` (default: :attr:`values`).

        All NaN, with one warning, when :meth:`gap_problem` finds the gap under ``tol`` or of the wrong sign: read
        :attr:`effect` (metric units) instead."""
        v = self.values if values is None else values
        why = self.gap_problem(tol)
        if why is not None:
            warnings.warn(f"normalised effects refused: {why}; read report.effect (metric units) instead", stacklevel=2)
            return np.full_like(np.asarray(v, dtype=float), np.nan)
        return (v - self.base) / (self.other - self.base)

    @property
    def group(self) -> int:
        return self.n_heads // max(self.n_kv_heads, 1)

    # ------------------------------------------------------------ agreement
    def agreement(self, other: PatchReport | None = None, *, important: float = 0.1) -> dict[str, Any]:
        """How well an attribution estimate ranks and sizes the exact effects.

        Uses this report's ``estimate`` (``method="both"``), or ``other``'s values when one report is
        exact and the other an attribution run on the same inputs. Returns ``spearman`` (rank correlation
        of the effects over the heads run), ``pearson``, and ``missed``: heads whose exact ``|effect|`` is at
        least ``important`` × the largest one but whose estimate has the other sign or under half the size,
        as ``(layer, head, exact effect, estimated effect)``.

        Example:
            >>> import torch
            >>> from sink_interp import tiny_model, patch_heads
            >>> clean = torch.randint(4, 128, (2, 8), generator=torch.Generator().manual_seed(0))
            >>> rep = patch_heads(tiny_model(), clean, clean.flip(0), "logprob", method="both", progress=False)
            >>> sorted(rep.agreement())
            ['missed', 'n_heads', 'pearson', 'spearman']
        """
        if other is not None:
            exact, est = (self, other) if self.method in ("exact", "both") else (other, self)
            a, b = exact.values, est.estimate if est.estimate.size else est.values
            base = exact.base
        elif self.estimate.size:
            a, b, base = self.values, self.estimate, self.base
        else:
            raise ValueError(
                "this report holds no attribution estimate; fix: run patch_heads(..., method='both') or pass the other report"
            )
        if a.shape != b.shape:
            raise ValueError(f"the reports' tables differ in shape ({a.shape} vs {b.shape}); fix: patch the same model")
        ea, eb = a - base, b - base
        ok = np.isfinite(ea) & np.isfinite(eb)
        x, y = pd.Series(ea[ok]), pd.Series(eb[ok])
        spearman = float(x.rank().corr(y.rank())) if ok.sum() > 1 else float("nan")
        pearson = float(x.corr(y)) if ok.sum() > 1 else float("nan")
        top = float(np.nanmax(np.abs(ea))) if ok.any() else 0.0
        missed = []
        for l_, h in zip(*np.nonzero(ok)):
            e, s = float(ea[l_, h]), float(eb[l_, h])
            if top > 0 and abs(e) >= important * top and (np.sign(s) != np.sign(e) or abs(s) < 0.5 * abs(e)):
                missed.append((int(l_), int(h), e, s))
        missed.sort(key=lambda r: -abs(r[2]))
        return {"spearman": spearman, "pearson": pearson, "n_heads": int(ok.sum()), "missed": missed}

    # ------------------------------------------------------------ tables
    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, head) run: ``layer``, ``head``, ``kv_head``, ``metric``, ``effect``, ``normalised``,
        and where present ``kv_metric`` (the KV head patched), ``estimate``, ``estimate_linear``."""
        norm = self.normalised()  # one warning when refused
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est_norm = self.normalised(self.estimate) if self.estimate.size else None
        cancels = self._cancelling_groups()
        rows = []
        for l_ in self.layers:
            for h in self.heads:
                g = h // self.group
                r: dict[str, Any] = {
                    "layer": l_,
                    "head": h,
                    "kv_head": g,
                    "metric": float(self.values[l_, h]),
                    "effect": float(self.values[l_, h] - self.base),
                    "normalised": float(norm[l_, h]),
                }
                if self.kv_values.size:
                    r["kv_metric"] = float(self.kv_values[l_, g])
                    if self.group > 1:
                        r["kv_cancels"] = (l_, g) in cancels
                if self.estimate.size:
                    r["estimate"] = float(self.estimate[l_, h])
                    r["estimate_normalised"] = float(est_norm[l_, h])  # type: ignore[index]
                if self.estimate_linear.size:
                    r["estimate_linear"] = float(self.estimate_linear[l_, h])
                rows.append(r)
        return pd.DataFrame(rows)

    def kv_groups(self, *, important: float = 0.1) -> pd.DataFrame:
        """Per KV group of a grouped-query model (``k``/``v`` sites): the query heads' effects beside the whole KV head's.

        Patching a key or value for one query head at a time can give large effects that cancel when the group's
        heads see the patch together (e.g. +0.14, +0.06 and -0.20, while the KV head gives -0.005): ``values`` alone
        would overstate them. ``cancels`` is True where the largest query-head ``|effect|`` is at least ``important`` ×
        the largest of the report, the heads' effects have both signs, and the KV head's ``|effect|`` is under half
        the largest query head's. Columns: ``layer``, ``kv_head``, ``heads``, ``head_effects``, ``sum_head_effects``,
        ``kv_effect``, ``cancels``. Empty for other sites and for models with one query head per KV head.
        """
        cols = ["layer", "kv_head", "heads", "head_effects", "sum_head_effects", "kv_effect", "cancels"]
        if not self.kv_values.size or self.group <= 1:
            return pd.DataFrame(columns=cols)
        eff = self.values - self.base
        top = float(np.nanmax(np.abs(eff))) if np.isfinite(eff).any() else 0.0
        rows = []
        for l_ in self.layers:
            for g in sorted({h // self.group for h in self.heads}):
                hs = [h for h in self.heads if h // self.group == g]
                e = [float(eff[l_, h]) for h in hs]
                kv = float(self.kv_values[l_, g] - self.base)
                big = max((abs(x) for x in e), default=0.0)
                cancels = bool(
                    top > 0 and big >= important * top and min(e) < 0 < max(e) and (not np.isfinite(kv) or abs(kv) < 0.5 * big)
                )
                rows.append([l_, g, tuple(hs), tuple(e), float(sum(e)), kv, cancels])
        return pd.DataFrame(rows, columns=cols)

    def _cancelling_groups(self) -> set[tuple[int, int]]:
        df = self.kv_groups()
        return {(int(r.layer), int(r.kv_head)) for r in df.itertuples() if r.cancels}

    def _top_records(self, k: int = 5) -> list[dict[str, Any]]:
        cols = ["layer", "head", "metric", "effect"] + (["normalised"] if self.gap_problem() is None else [])
        df = self.top(k)
        cols += ["estimate"] if "estimate" in df.columns else []
        return [
            {c: (None if isinstance(v, float) and not math.isfinite(v) else v) for c, v in r.items()}
            for r in df[cols].to_dict("records")
        ]

    def top(self, k: int = 5) -> pd.DataFrame:
        """The ``k`` heads with the largest ``|effect|``."""
        df = self.to_frame()
        size = df["effect"].abs()
        if "estimate" in df.columns:  # heads not patched exactly are ranked by their estimate
            size = size.fillna((df["estimate"] - self.base).abs())
        return df.reindex(size.sort_values(ascending=False).index).head(k).reset_index(drop=True)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            **summary_head(self),
            "n": self.n,
            "length": self.length,
            "what": self.what,
            "direction": self.direction,
            "method": self.method,
            "metric": self.metric,
            "positions": None if self.positions is None else list(self.positions),
            "clean": self.clean,
            "corrupted": self.corrupted,
            "top_heads": self._top_records(),
            "seconds": self.seconds,
            "dtype": self.dtype,
            "device": self.device,
            "model_info": self.model_info,
            "versions": self.versions,
        }
        if self.estimator:
            out["estimator"] = self.estimator + (f" ({self.steps} steps)" if self.steps else "")
        if self.estimate.size and np.isfinite(self.values).any():
            out["agreement"] = self.agreement()
        if self.method == "verified":
            out["verified"] = [list(v) for v in self.verified]
        why = self.gap_problem()
        if why is not None:
            out["normalised_refused"] = why
        cancel = sorted(self._cancelling_groups())
        if cancel:
            out["kv_groups_cancelling"] = [list(c) for c in cancel]
        if self.extra:
            out["extra"] = self.extra
        return out

    def __repr__(self) -> str:
        return (
            f"PatchReport(model={self.model!r}, what={self.what!r}, direction={self.direction!r}, method={self.method!r}, "
            f"metric={self.metric!r}, clean={self.clean:.4f}, corrupted={self.corrupted:.4f}, "
            f"{len(self.layers)} layers x {len(self.heads)} heads)"
        )

    def _repr_html_(self) -> str:
        """The heat map and the top heads of :func:`sink_interp.views.view_for` (views/adapters.py)."""
        return display.html_of(self)


# --------------------------------------------------------------------------- running the model


def _identity_block(self: Any, *args: Any, **kwargs: Any) -> Any:
    return args[0] if args else kwargs["hidden_states"]


@contextlib.contextmanager
def _skip_blocks_below(model: Any, layer: int) -> Iterator[None]:
    """Blocks ``0..layer-1`` return their input untouched (the forward starts at ``layer`` from a given residual)."""
    done: list[tuple[Any, Any]] = []
    missing = object()
    try:
        for b in list(model.blocks)[:layer]:
            done.append((b, b.__dict__.get("forward", missing)))  # an instance-level forward (accelerate's hooks) is kept
            object.__setattr__(b, "forward", types.MethodType(_identity_block, b))
        yield
    finally:
        for b, before in done:
            if before is missing:
                b.__dict__.pop("forward", None)
            else:
                object.__setattr__(b, "forward", before)


_CAN_START: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _run_from(model: Any, layer: int, resid: Tensor, tokens: Tensor, skip: bool) -> Tensor:
    """Logits of the forward that enters block ``layer`` with ``resid`` (blocks below skipped), or of ``tokens``."""
    if not skip or layer == 0:
        return model(tokens, return_type="logits")
    with _skip_blocks_below(model, layer):
        return model(resid, start_at_layer=layer, return_type="logits")


def can_start_at_layer(model: Any, tokens: Tensor, logits: Tensor, cache: dict[str, Tensor] | None = None) -> bool:
    """Whether a forward that enters the last block with the residual the run of ``tokens`` had there (every
    block below skipped) gives that run's ``logits``; checked once per model (``cache`` may hold that residual).

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> m, t = tiny_model(), torch.randint(4, 128, (1, 6))
        >>> with torch.no_grad():
        ...     can_start_at_layer(m, t, m(t))
        True
    """
    try:
        cached = _CAN_START.get(model)
    except TypeError:  # pragma: no cover
        cached = None
    if cached is not None:
        return cached
    L = int(model.cfg.n_layers)
    name = hooknames.resid_pre(L - 1)
    try:
        resid = (cache or {}).get(name)
        if resid is None:
            _, got = forward_capture(model, tokens, [name])
            resid = got[name]
        with torch.no_grad():
            out = _run_from(model, L - 1, resid, tokens, skip=True)
        ok = out.shape == logits.shape and bool(torch.allclose(out, logits, rtol=1e-5, atol=1e-5))
    except Exception:  # any family whose blocks cannot be skipped this way: run the whole model
        ok = False
    with contextlib.suppress(TypeError):
        _CAN_START[model] = ok
    return ok


# --------------------------------------------------------------------------- conditions


@dataclass(frozen=True)
class _Cond:
    layer: int
    kind: str  # "head" (site tensor, query head or KV head), "qk" (key of one query head), "qv" (value of one query head)
    index: int  # the head (query head, or KV head for kv sites with kind "head")
    table: str  # "values" or "kv_values"


def _conditions(site: _Site, layers: Sequence[int], heads: Sequence[int], spec: Any, H: int, G: int) -> list[_Cond]:
    out: list[_Cond] = []
    for l_ in layers:
        if not site.kv:
            out += [_Cond(l_, "head", h, "values") for h in heads]
            continue
        la = spec.layer(l_)
        groups = sorted({la.kv_head(h) for h in heads})
        out += [_Cond(l_, "head", g, "kv_values") for g in groups]
        if G < H:  # per query head: only that head sees the patched key/value
            out += [_Cond(l_, "qk" if site.base == "k" else "qv", h, "values") for h in heads]
    return out


def _edit_hooks(
    la: LayerAttention,
    site: _Site,
    chunk: Sequence[_Cond],
    src: dict[str, Tensor],
    n: int,
    pos: Any,
    T: int,
) -> list[tuple[str, Any]]:
    """Hooks that patch replica ``i`` (rows ``i*n:(i+1)*n``) of a stacked forward by condition ``chunk[i]``."""
    l_ = la.layer
    hooks: list[tuple[str, Any]] = []
    plain = [(i, c) for i, c in enumerate(chunk) if c.kind == "head"]
    if plain:
        name = site.hook(l_)
        s = src[name]

        def edit(x: Tensor, hook: Any) -> Tensor:
            x = x.clone()
            for i, c in plain:
                rows = slice(i * n, (i + 1) * n)
                x[site.index(rows, c.index, pos)] = s[site.index(slice(None), c.index, pos)].to(x.dtype)
            return x

        hooks.append((name, edit))
    live: dict[str, Tensor] = {}

    def grab(name: str) -> Any:
        def keep(x: Tensor, hook: Any) -> None:
            live[name] = x

        return keep

    qk = [(i, c) for i, c in enumerate(chunk) if c.kind == "qk"]
    if qk:
        k_src = src[la.k_hook]
        vis = la.mask().dense(T, device=k_src.device)

        def scores(x: Tensor, hook: Any) -> Tensor:
            x = x.clone()
            for i, c in qk:
                rows, g = slice(i * n, (i + 1) * n), la.kv_head(c.index)
                k_mix = live[la.k_hook][rows].clone()
                k_mix[:, pos] = k_src[:, pos].to(k_mix.dtype)
                qf = la.final(live[la.q_hook][rows])[:, :, c.index : c.index + 1]  # [n, T, 1, d]
                kf = la.final(k_mix)[:, :, g : g + 1]
                new = la.logits(qf.transpose(1, 2), kf.transpose(1, 2), check=False)[:, 0]  # [n, T, T]
                x[rows, c.index] = torch.where(vis, new.to(x.dtype), x[rows, c.index])
            return x

        hooks = [(la.q_hook, grab(la.q_hook)), (la.k_hook, grab(la.k_hook))] + hooks + [(hooknames.attn_scores(l_), scores)]
    qv = [(i, c) for i, c in enumerate(chunk) if c.kind == "qv"]
    if qv:
        v_src = src[hooknames.v(l_)]

        def z_edit(x: Tensor, hook: Any) -> Tensor:
            x = x.clone()
            A, v = live[hooknames.pattern(l_)], live[hooknames.v(l_)]
            for i, c in qv:
                rows, g = slice(i * n, (i + 1) * n), la.kv_head(c.index)
                dv = torch.zeros_like(v[rows][:, :, g])
                dv[:, pos] = (v_src[:, pos, g] - v[rows][:, pos, g]).to(dv.dtype)
                x[rows, :, c.index] += torch.einsum("bqk,bkd->bqd", A[rows, c.index].to(dv.dtype), dv).to(x.dtype)
            return x

        hooks = (
            [(hooknames.v(l_), grab(hooknames.v(l_))), (hooknames.pattern(l_), grab(hooknames.pattern(l_)))]
            + hooks
            + [(hooknames.z(l_), z_edit)]
        )
    return hooks


# --------------------------------------------------------------------------- the analysis


def _whole_numbers(values: Any, name: str) -> list[int]:
    """``values`` (one index or a sequence) as ints; floats, bools and text are refused, never truncated."""
    items = [values] if isinstance(values, (int, np.integer)) or not isinstance(values, Iterable) else list(values)
    if isinstance(values, (str, bytes)) or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in items):
        raise ValueError(f"{name} must hold whole numbers (indices), got {values!r}; fix: e.g. {name}=[0, 1]")
    return [int(v) for v in items]


def _check_list(values: Sequence[int] | None, n: int, name: str) -> list[int]:
    if values is None:
        return list(range(n))
    out = _whole_numbers(values, name)
    bad = [v for v in out if not 0 <= v < n]
    if bad or not out:
        raise ValueError(f"{name} must be a non-empty list of indices in [0, {n}); got {out!r}")
    return sorted(set(out))


def _positions(positions: Sequence[int] | int | None, site: _Site, T: int) -> tuple[int, ...] | None:
    if positions is None:
        return (0,) if site.sink else None
    ps = _whole_numbers(positions, "positions")
    if not ps:
        raise ValueError("positions is empty; fix: pass None (all positions) or a list of token positions")
    out = sorted({p + T if p < 0 else p for p in ps})
    if not all(0 <= p < T for p in out):
        raise ValueError(f"positions must lie in [0, {T}) (negative counts from the end); got {list(ps)!r}")
    return tuple(out)


def _default_chunk(model: Any, n: int, T: int, n_conds: int) -> int:
    """Conditions per forward: about 64 rows and 512 MB of logits, at most every condition of a layer."""
    per = 4 * int(model.cfg.d_vocab) * T * n
    return int(max(1, min(n_conds, 64 // max(n, 1), 512e6 // max(per, 1))))


def _verify(
    site: _Site,
    spec: Any,
    layers: Sequence[int],
    heads: Sequence[int],
    screens: np.ndarray,
    values: np.ndarray,
    base_value: float,
    settings: AttributionSettings,
    run_exact: Callable[[list[_Cond], str], None],
    stop: bool,
) -> list[tuple[int, int]]:
    """Patch heads exactly, the best-screened first, ``settings.batch`` per round; the heads verified, in order.

    The order interleaves the screens' rankings (a head comes as early as its best rank in any screen: a head one
    screen misses, another may catch). ``stop`` (``"verified"``): until no head left has a screen value above the
    ``settings.top``-th largest exact ``|effect|`` so far (or ``max_verified``); else (``"fast"``) the first
    ``settings.budget`` of the heads."""
    H, G = spec.n_heads, spec.n_kv_heads
    heads_all = [(l_, h) for l_ in layers for h in heads]
    ranks = []
    for sc in screens:
        vals = np.array([float(sc[lh]) for lh in heads_all])
        vals = np.where(np.isfinite(vals), vals, -np.inf)
        r = np.empty(len(vals), int)
        r[np.argsort(-vals, kind="stable")] = np.arange(len(vals))
        ranks.append(r)
    best = np.min(ranks, axis=0)
    bound = np.fmax.reduce(screens)
    order = [heads_all[i] for i in sorted(range(len(heads_all)), key=lambda i: (best[i], -float(bound[heads_all[i]])))]
    if stop:
        cap = len(order) if settings.max_verified is None else min(settings.max_verified, len(order))
    else:
        cap = max(settings.top, math.ceil(settings.budget * len(order)))
        cap = min(cap, len(order))
    done: list[tuple[int, int]] = []

    def cond(l_: int, h: int) -> _Cond:
        if not site.kv:
            return _Cond(l_, "head", h, "values")
        if G == H:
            return _Cond(l_, "head", h, "kv_values")
        return _Cond(l_, "qk" if site.base == "k" else "qv", h, "values")

    while len(done) < cap:
        size = int(settings.batch) if stop else cap  # type: ignore[arg-type]
        batch = order[len(done) : min(len(done) + size, cap)]
        run_exact([cond(l_, h) for l_, h in batch], f"verify {len(done)}")
        done += batch
        if len(done) >= cap or not stop:
            break
        found = sorted((abs(float(values[lh] - base_value)) for lh in done), reverse=True)
        left = max(float(bound[lh]) for lh in order[len(done) :])
        if len(found) >= settings.top and left < found[settings.top - 1]:
            break
    return done


def patch_heads(
    model: Any,
    clean: Tensor,
    corrupted: Tensor,
    metric: Metric | str,
    *,
    what: str = "z",
    direction: str = "noise",
    method: str = "exact",
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    positions: Sequence[int] | int | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    metric_from: int = 0,
    bos: bool | None = None,
    data: str | None = None,
    extra: dict[str, Any] | None = None,
    attribution: AttributionSettings | None = None,
) -> PatchReport:
    """Patch each head's ``what`` from one input into the other and report ``metric`` of the logits.

    Args:
        model: a TransformerBridge.
        clean: ``[n, T]`` token ids (row ``i`` pairs with row ``i`` of ``corrupted``).
        corrupted: ``[n, T]`` token ids of the same shape.
        metric: ``metric(logits [n, T, V]) -> scalar tensor`` (reduce over the batch inside it), or
            ``"logit_diff"``, ``"logprob"``, ``"kl"`` (see :func:`named_metric`).
        what: ``"z"`` (default), ``"q"``, ``"k"``, ``"v"``, ``"pattern"`` (query rows ``positions``),
            ``"k-sink"``, ``"v-sink"``, ``"pattern-sink"`` (key position 0 or ``positions``).
        direction: ``"noise"`` (default): run **clean**, write in the **corrupted** activation;
            ``"denoise"``: run corrupted, write in the clean activation.
        method: ``"exact"`` (patched forwards); estimates in ``estimate``, never in ``values``:
            ``"attribution"`` (AtP with the AtP* QK fix, one forward per input and one backward), ``"atp*"``
            (GradDrop too), ``"ig"`` (integrated gradients); estimates checked by exact patching: ``"fast"``
            (the best-screened ``budget`` of the heads patched exactly: the fast default of docs/patching.md),
            ``"verified"`` (until no head left can beat the ``top``-th exact effect); ``"both"`` (exact and an estimate).
        attribution: :class:`~sink_interp.attribution.AttributionSettings` (steps, estimator, top, budget).
        layers: layers to patch (default all).
        heads: query heads to patch (default all).
        positions: token positions where the activation is replaced (default all; the key column for the
            sink sites, default ``(0,)``).
        batch_size: conditions (patched heads) stacked in one forward, each a copy of all ``n`` inputs
            (default: about 64 rows, 512 MB of logits, at most one layer's conditions).
        progress: a progress bar over the patched forwards.
        metric_from: the named metrics ``"logprob"`` and ``"kl"`` read the predictions made at positions
            ``metric_from..T-2`` (default all); recorded in the metric's name.
        bos: whether the inputs start with BOS, recorded in the report (default: read from the tokens).
        data: label of the inputs recorded in the report (default: the probe source).
        extra: more facts to record in the report (a recipe's settings).

    Returns:
        :class:`PatchReport`. The model carries exactly the hooks it had before, also after an exception.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, patch_heads
        >>> model = tiny_model()
        >>> clean = torch.randint(4, 128, (2, 8), generator=torch.Generator().manual_seed(0))
        >>> rep = patch_heads(model, clean, clean.flip(0), "kl", what="v-sink", layers=[1], progress=False)
        >>> rep.values.shape, rep.kv_values.shape, rep.clean
        ((2, 4), (2, 2), 0.0)
    """
    site = _site(what)
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'noise' (run clean, patch in corrupted) or 'denoise'; got {direction!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if attribution is not None and not isinstance(attribution, AttributionSettings):
        raise ValueError(
            f"attribution must be an AttributionSettings, got {type(attribution).__name__}; fix: "
            "attribution=AttributionSettings(steps=8)"
        )
    settings = attribution or AttributionSettings()
    clean_t = check_model_tokens(model, clean, min_length=2, name="clean")
    corr_t = check_model_tokens(model, corrupted, min_length=2, name="corrupted")
    if clean_t.shape != corr_t.shape:
        raise ValueError(
            f"corrupted has shape {tuple(corr_t.shape)}, clean {tuple(clean_t.shape)}; fix: pair every clean row "
            "with a corrupted row of the same length (sink_interp.patching.corrupt_tokens makes such pairs)"
        )
    if not (callable(metric) or isinstance(metric, str)):
        raise ValueError(f"metric must be a function of the logits or one of {METRICS}, got {type(metric).__name__}")
    if isinstance(metric, str) and metric not in METRICS:
        raise ValueError(f"metric must be a function of the logits or one of {METRICS}, got {metric!r}")
    spec = describe_attention(model)
    L, H, G = spec.n_layers, spec.n_heads, spec.n_kv_heads
    layers_ = _check_list(layers, L, "layers")
    heads_ = _check_list(heads, H, "heads")
    n, T = clean_t.shape
    pos_t = _positions(positions, site, T)
    H = check_head_counts(spec, layers_, f"patch_heads(what={what!r})")
    if site.base != "pattern":  # per-head q, k, v, z: the hooks must give them [b, T, heads, d] (not MLA's, not missing)
        bad_rows = [spec.layer(l_) for l_ in layers_ if not spec.layer(l_).qkv_readable or site.hook(l_) not in model.hook_dict]
        if bad_rows:
            la = bad_rows[0]
            raise UnsupportedAttention(
                f"patch_heads(what={what!r}): layer {la.layer} of this {spec.family} model uses "
                f"{', '.join(la.unsupported) or 'no hook ' + site.hook(la.layer)}, whose hooks do not give each head's "
                f"{site.base} as attention uses it; "
                + (
                    "fix: what='pattern'"
                    if la.scores_hookable
                    else "no head can be patched on this model (attention runs inside HF)"
                )
            )
    if site.base == "pattern" or (site.kv and site.base == "k" and G < H) or (site.qk and method != "exact"):
        bad = [l_ for l_ in layers_ if not spec.layer(l_).scores_hookable]
        if bad:
            raise ValueError(
                f"what={what!r}{' with attribution' if method != 'exact' else ''} edits or reads the attention pattern, "
                f"which layers {bad} of this {spec.family} model compute inside Hugging Face; fix: what='z', 'v' or "
                "'k' with method='exact'"
            )
    if (site.kv and site.base == "k" and G < H) or (site.qk and method != "exact"):
        verify_attention(model, layers_, f"patching {what!r}")
    chunk_arg = None if batch_size is None else check_positive_int(batch_size, "batch_size")
    if isinstance(metric_from, bool) or not isinstance(metric_from, (int, np.integer)) or not 0 <= metric_from <= T - 2:
        raise ValueError(
            f"metric_from must be a whole number in [0, {T - 2}] (a prediction with a next token), got {metric_from!r}"
        )
    metric_from = int(metric_from)
    dev = model_device(model)
    clean_t, corr_t = clean_t.to(dev), corr_t.to(dev)
    base_t, src_t = (clean_t, corr_t) if direction == "noise" else (corr_t, clean_t)
    pos: Any = slice(None) if pos_t is None else torch.tensor(pos_t, device=dev)

    # the two unpatched runs: baselines, the source's activations, the base's residual at each layer
    names_src = [site.hook(l_) for l_ in layers_]
    if site.kv and site.base == "k" and G < H:
        names_src += [spec.layer(l_).k_hook for l_ in layers_]
    if site.qk and method != "exact":
        names_src += [getattr(spec.layer(l_), f"{site.base}_hook") for l_ in layers_]
    if method == "ig" or (method in ("both", "fast", "verified") and settings.estimator == "ig"):
        names_src.append(hooknames.EMBED)
    t0 = time.perf_counter()
    src_logits, src = forward_capture(model, src_t, names_src)
    base_logits, base_cache = forward_capture(model, base_t, [hooknames.resid_pre(l_) for l_ in layers_])
    clean_logits = base_logits if direction == "noise" else src_logits
    expect = METRIC_EXPECT[metric] if isinstance(metric, str) else int(np.sign(getattr(metric, "expect", 0) or 0))
    if isinstance(metric, str):
        metric_name = metric if not metric_from else f"{metric}[{metric_from}:]"
        fn = named_metric(metric, clean_t, corr_t, clean_logits, start=metric_from)
    else:
        metric_name, fn = getattr(metric, "__name__", "metric"), metric
    base_name, src_name = (
        ("the clean input", "the corrupted input") if direction == "noise" else ("the corrupted input", "the clean input")
    )
    with torch.no_grad():
        base_value = metric_value(fn(base_logits), f"{base_name} (unpatched)")
        src_value = metric_value(fn(src_logits), f"{src_name} (unpatched)")
    clean_value, corr_value = (base_value, src_value) if direction == "noise" else (src_value, base_value)
    seconds = {"baselines": time.perf_counter() - t0}

    values = np.full((L, H), np.nan)
    kv_values = np.full((L, G), np.nan) if site.kv else np.zeros((0, 0))
    estimate_ = np.zeros((0, 0))
    estimate_linear = np.zeros((0, 0))
    kv_estimate = np.zeros((0, 0))
    verified: list[tuple[int, int]] = []
    screen = np.zeros((0, 0))
    meta: dict[str, Any] = {}

    kind = method if method in ESTIMATORS else (settings.estimator if method in ("both", "fast", "verified") else None)
    if kind is not None:
        if metric_name.startswith("kl") and direction == "noise" and kind != "ig":
            warnings.warn(
                "metric='kl' with direction='noise': the KL to the clean run is at its minimum (0) on the clean run, so its "
                "gradient there is 0 and the attribution estimate is ~0 for every head; use metric='logprob', "
                "direction='denoise' or method='ig' for attribution",
                stacklevel=2,
            )
        t0 = time.perf_counter()

        def attribution() -> Any:
            with dist.local():  # forwards and backwards on one rank: rank 0 computes, the others receive
                if kind == "atp*":
                    return estimate_graddrop(model, spec, site, layers_, heads_, base_t, src, fn, pos, T)
                return estimate(
                    model, spec, site, layers_, heads_, base_t, src, fn, pos, T, n, estimator=kind, steps=settings.steps
                )

        est, est_lin, kv_est, screen = dist.decide(attribution)
        seconds[kind] = time.perf_counter() - t0
        for name, arr in (("estimate", est), ("linear estimate", est_lin), ("KV estimate", kv_est)):
            ran = np.zeros(0) if arr is None else arr[np.ix_(layers_, heads_ if arr.shape[1] == H else range(arr.shape[1]))]
            if not np.isfinite(ran).all():
                raise NonFiniteError(
                    f"the attribution {name} is NaN/Inf for {int((~np.isfinite(ran)).sum())} patched heads (the metric's gradient "
                    "or the activations hold NaN/Inf): a report holds finite numbers only; fix: check the metric and the model, "
                    "or method='exact'"
                )
        estimate_ = est + base_value
        if est_lin is not None:
            estimate_linear = est_lin + base_value
        kv_estimate = kv_est + base_value if kv_est is not None else np.zeros((0, 0))

    if method in ("exact", "both", "fast", "verified"):
        t0 = time.perf_counter()
        skip = can_start_at_layer(model, base_t, base_logits, base_cache)
        meta["started_at_layer"] = skip
        from tqdm.auto import tqdm

        def run_exact(conds: list[_Cond], tag: str) -> None:
            by_layer: dict[int, list[_Cond]] = {}
            for c in conds:
                by_layer.setdefault(c.layer, []).append(c)
            plan = []
            for cs in by_layer.values():
                k = chunk_arg or _default_chunk(model, n, T, len(cs))
                plan += [cs[i : i + k] for i in range(0, len(cs), k)]
            # inside sink_interp.distributed() each rank runs a contiguous block of the patched forwards: the metric
            # reads all n samples' logits at once, so the conditions are split, not the samples
            inputs = {
                "clean": clean_t,
                "corrupted": corr_t,
                "model": model,
                "settings": [what, direction, method, metric_name, layers_, heads_, pos_t, [len(c) for c in plan], tag],
            }
            mine = dist.shard(len(plan), inputs)
            got: list[tuple[str, int, int, float]] = []
            bar = tqdm(
                total=len(mine), desc=f"patch {what}", unit="forward", disable=not (progress and dist.is_main()), leave=False
            )
            failed: BaseException | None = None
            try:
                for chunk in (plan[i] for i in mine):
                    l_ = chunk[0].layer
                    la = spec.layer(l_)
                    k = len(chunk)
                    hooks = _edit_hooks(la, site, chunk, src, n, pos, T)
                    with attach_hooks(model, hooks), torch.no_grad():
                        resid = base_cache[hooknames.resid_pre(l_)]
                        logits = _run_from(model, l_, resid.repeat(k, 1, 1), base_t.repeat(k, 1), skip)
                    with torch.no_grad():
                        for i, c in enumerate(chunk):
                            part = "KV head" if c.table == "kv_values" else "head"
                            where = f"{base_name} with layer {c.layer} {part} {c.index}'s {what} patched"
                            got.append((c.table, c.layer, c.index, metric_value(fn(logits[i * n : (i + 1) * n]), where)))
                    del logits
                    bar.update(1)
            except Exception as e:  # noqa: BLE001 - re-raised on every rank
                failed = e
            finally:
                bar.close()
            dist.raise_any(failed)
            for table, layer_, index, v in (g for rank_got in dist.gather(got) for g in rank_got):
                (values if table == "values" else kv_values)[layer_, index] = v
            if site.kv and G == H:  # one KV head per query head: the two tables are the same patches
                ran = [(c.layer, c.index) for c in conds]
                for l_, h in ran:
                    values[l_, h] = kv_values[l_, h]
            meta["forwards"] = meta.get("forwards", 0) + len(plan)

        if method in ("exact", "both"):
            run_exact(_conditions(site, layers_, heads_, spec, H, G), "all")
        else:
            verified = _verify(site, spec, layers_, heads_, screen, values, base_value, settings, run_exact, method == "verified")
            screen = np.fmax.reduce(screen)
        seconds["exact"] = time.perf_counter() - t0

    prov = provenance(model, clean_t.cpu(), bos=bos, data=data)
    return PatchReport(
        values=values,
        kv_values=kv_values,
        estimate=estimate_,
        estimate_linear=estimate_linear,
        kv_estimate=kv_estimate,
        clean=clean_value,
        corrupted=corr_value,
        what=what,
        direction=direction,
        method=method,
        metric=metric_name,
        positions=pos_t,
        layers=tuple(layers_),
        heads=tuple(heads_),
        n_heads=H,
        n_kv_heads=G,
        seconds=seconds,
        n=n,
        length=T,
        provenance=prov,
        extra={**prov.extra(), **meta, **(extra or {})},
        expect=expect,
        estimator=kind or "",
        steps=settings.steps if kind == "ig" else 0,
        verified=tuple(verified),
        screen=screen if method in ("fast", "verified") else np.zeros((0, 0)),
    )


# --------------------------------------------------------------------------- sink recipes


def corrupt_tokens(model: Any, tokens: Tensor, how: str, *, move_to: int = 1) -> Tensor:
    """The corrupted partner of ``tokens`` for a sink experiment (same shape):

    * ``"bos"``: the first token (BOS) replaced by the row's second token: the same text without BOS;
    * ``"first-token"``: the first token moved to position ``move_to`` (tokens ``1..move_to`` shift left):
      the sink's token no longer comes first;
    * ``"shuffle"``: each row replaced by the next row (row ``i`` gets row ``i + 1``, the last the first):
      another sample, for patching a sink's key or value from it.

    Example:
        >>> import torch
        >>> t = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 10]])
        >>> corrupt_tokens(None, t, "first-token", move_to=2)[0].tolist(), corrupt_tokens(None, t, "bos")[0].tolist()
        ([5, 6, 1, 7], [5, 5, 6, 7])
    """
    said_bos = tokens.bos if isinstance(tokens, ProbeSet) else None  # what the probe says it made
    t = torch.as_tensor(as_tokens(tokens)).long()
    if how not in CORRUPTIONS:
        raise ValueError(f"corrupt must be one of {CORRUPTIONS}, got {how!r}")
    out = t.clone()
    if how == "bos":
        fix = "fix: probe_tokens(model, ..., bos=True) (CLI: --bos)"
        bos_id = special_token_ids(model).get("bos") if model is not None else None  # the tokenizer's, else the config's
        if said_bos is False:
            raise ValueError(f"corrupt='bos' removes the BOS token, but these tokens were made without BOS (bos=False); {fix}")
        if bos_id is not None and not bool((t[:, 0] == bos_id).all()):
            raise ValueError(f"corrupt='bos' needs tokens that start with BOS (id {bos_id}); {fix}")
        if bos_id is None and model is not None and said_bos is not True:
            raise ValueError(
                "corrupt='bos' removes the BOS token, but this model names no BOS id (no tokenizer, no bos_token_id in its "
                "config), so nothing shows that these tokens start with one; fix: pass a ProbeSet made with bos=True, or "
                "corrupt='first-token' (move the first token)"
            )
        out[:, 0] = t[:, 1]
    elif how == "first-token":
        if not 1 <= move_to < t.shape[1]:
            raise ValueError(f"move_to must lie in [1, {t.shape[1]}), got {move_to}")
        out[:, :move_to] = t[:, 1 : move_to + 1]
        out[:, move_to] = t[:, 0]
    else:
        if t.shape[0] < 2:
            raise ValueError("corrupt='shuffle' needs at least 2 samples (row i is patched from row i + 1); fix: n >= 2")
        out = t.roll(-1, dims=0)
    return out


#: the direction each recipe patches in: from the input with the sink into the one without (denoise), or from another sample
RECIPE_DIRECTION = {"bos": "denoise", "first-token": "denoise", "shuffle": "noise"}


def patch_sink(
    model: Any,
    tokens: Tensor,
    corrupt: str = "bos",
    *,
    what: str = "z",
    method: str = "exact",
    metric: Metric | str = "logprob",
    move_to: int = 1,
    **kw: Any,
) -> PatchReport:
    """One sink experiment in one call: :func:`corrupt_tokens` makes the partner input, :func:`patch_heads` patches.

    * ``corrupt="bos"``: patch from the input with BOS into the same text without it (``direction="denoise"``:
      the run without BOS gets each head's activation from the run with BOS);
    * ``"first-token"``: patch from the input whose first token is the sink into one where it was moved to
      ``move_to`` (denoise);
    * ``"shuffle"``: patch each sample's ``what`` (e.g. ``"k-sink"``, ``"v-sink"``) from another sample (noise).

    ``tokens`` are the clean input; ``metric`` defaults to the log-prob of its next tokens, read after the
    positions the recipe changes (``metric_from``: 1 for ``"bos"``, ``move_to + 1`` for ``"first-token"``, 0 for
    ``"shuffle"``: predicting the next token from a replaced token says little about the heads); ``kw`` go to
    :func:`patch_heads` (``direction`` and ``metric_from`` override the recipe's).

    Example:
        >>> from sink_interp import tiny_model, probe_tokens
        >>> m = tiny_model()
        >>> rep = patch_sink(m, probe_tokens(m, "random", n=2, length=8, bos=True), "shuffle", what="v-sink", progress=False)
        >>> rep.direction, rep.positions, rep.extra["recipe"]
        ('noise', (0,), 'shuffle')
    """
    check_model_tokens(model, tokens, min_length=2)
    corrupted = corrupt_tokens(model, tokens, corrupt, move_to=move_to)
    kw.setdefault("direction", RECIPE_DIRECTION[corrupt])
    kw.setdefault("metric_from", {"bos": 1, "first-token": move_to + 1, "shuffle": 0}[corrupt])
    extra = {"recipe": corrupt, **({"move_to": move_to} if corrupt == "first-token" else {}), **kw.pop("extra", {})}
    return patch_heads(model, tokens, corrupted, metric, what=what, method=method, extra=extra, **kw)


__all__ = ["CORRUPTIONS", "METRICS", "SITES", "PatchReport", "corrupt_tokens", "named_metric", "patch_heads", "patch_sink"]
