"""The result of patching every head: :class:`PatchReport` (exact values, attribution estimates, baselines)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from jaxtyping import Float

from .._internal.provenance import Provenance
from .._internal.report import (
    FieldError,
    ModelRun,
    Patched,
    Provenanced,
    Report,
    check_indices,
    from_extra,
    provenance_extra,
    summary_head,
)
from .sites import GAP_TOL

# --------------------------------------------------------------------------- the report


@dataclass(frozen=True, eq=False, repr=False)
class PatchReport(Patched, Provenanced, ModelRun, Report):
    """Patching every chosen head: a layer × head table of metric values, with the baselines.

    ``values[l, h]``: the metric with head ``h`` of layer ``l`` patched exactly, and nothing else: NaN for
    heads not patched exactly, so all NaN for the estimate-only methods (``"attribution"``, ``"atp*"``, ``"ig"``)
    and NaN outside the verified heads for ``"fast"``/``"verified"``. ``kv_values[l, g]``: ``k``/``v`` sites
    patched exactly per KV head (empty for other sites).

    ``estimate[l, h]``: the attribution estimate of the same metric (``estimator`` says which: AtP with the
    AtP* QK fix, AtP* with GradDrop, or integrated gradients), for every method but ``"exact"`` (empty
    ``(0, 0)`` there); ``kv_estimate`` is its per-KV-head table. ``estimate_linear``: the plain AtP estimate
    through the softmax, for ``q``/``k`` sites (the AtP* one is in ``estimate``). Files written when
    ``method="attribution"`` kept its estimates in ``values`` load with them moved to ``estimate``.

    ``clean`` / ``corrupted``: the metric on the unpatched inputs; ``base`` is the run that is patched.
    ``recipe`` / ``move_to``: the sink recipe of :func:`~sink_interp.patching.patch_sink` that made the inputs
    (files that kept them in ``extra`` load into these fields).

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
    #: the sink recipe of :func:`~sink_interp.patching.patch_sink`: ``"bos"``, ``"first-token"`` or ``"shuffle"``
    #: ("" for inputs given to :func:`~sink_interp.patching.patch_heads` directly)
    recipe: str = ""
    #: ``recipe="first-token"``: the position the first token was moved to (0 otherwise)
    move_to: int = 0
    #: exact patching ran from the patched layer on (blocks below it skipped: their outputs are the base run's);
    #: None when nothing was patched exactly
    started_at_layer: bool | None = None
    #: forward passes that exact patching ran (0 when nothing was patched exactly)
    forwards: int = 0

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
        # files written before the recipe and the exact run's facts had their own fields: they sat in extra
        moved = {"recipe": str, "move_to": int, "started_at_layer": bool, "forwards": int}
        return cls(**from_extra(fields, keep=True, **{name: (name, kind) for name, kind in moved.items()}))

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
        if self.recipe:
            out["recipe"] = self.recipe
        if self.move_to:
            out["move_to"] = self.move_to
        run = {"started_at_layer": self.started_at_layer, "forwards": self.forwards or None}
        extra = {**provenance_extra(self.provenance), **self.extra, **{k: v for k, v in run.items() if v is not None}}
        if extra:
            out["extra"] = extra
        return out

    def __repr__(self) -> str:
        return (
            f"PatchReport(model={self.model!r}, what={self.what!r}, direction={self.direction!r}, method={self.method!r}, "
            f"metric={self.metric!r}, clean={self.clean:.4f}, corrupted={self.corrupted:.4f}, "
            f"{len(self.layers)} layers x {len(self.heads)} heads)"
        )
