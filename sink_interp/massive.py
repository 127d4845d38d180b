"""Massive activations, per-token norms and the extreme-token triple.

Sun et al. (2024) call a residual-stream value *massive* when ``|x| > 100``
and ``|x| >= 1000 x`` the median ``|x|`` of the same hidden state. Here the
hidden state of a sample at block ``l`` is its whole ``hook_resid_pre``
tensor ``[positions, d_model]``, so the median is taken per sample and layer
over all positions and dims (numpy's median: the mean of the two middle
values). Both thresholds are arguments.

:func:`massive_activations` streams every block's ``hook_resid_pre`` once
(with the capture engine) and keeps, per sample and layer, only the top-k
entries, the median, the flagged entries and per-token L2 norms of the
residual ``h``, of the keys after RoPE and of the values (per KV head). From
these, :class:`MassiveReport` gives

* the largest ``|x|`` of each block with its sample, position and dim;
* the top-k distinct (position, dim) coordinates per layer and the dims that
  recur across samples;
* the Sun et al. flags;
* ``value_norm_ratio``: mean ``||v||`` at position 0 over mean ``||v||`` at
  positions >= 1 (over samples and KV heads), per layer;
* the extreme-token triple of Guo et al. (2024): the attention sink, the value
  drain (smallest ``||v||``) and the residual peak (largest ``||h||``).

Example:
    >>> import torch
    >>> from sink_interp import tiny_model, massive_activations
    >>> rep = massive_activations(tiny_model(), torch.randint(4, 128, (3, 10)), progress=False)
    >>> rep.layer_max.shape, rep.value_norm_ratio().shape
    ((2,), (2,))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from ._internal import hooknames
from ._internal.errors import check_positive_int
from ._internal.probe import ProbeSet
from ._internal.provenance import Provenance
from ._internal.report import (
    FieldError,
    ModelRun,
    Provenanced,
    Report,
    check_range,
    from_extra,
    summary_head,
    summary_tail,
)
from .architecture import check_model_tokens, describe_attention
from .capture import Reducer, run_reducers
from .metrics import SinkReport, SinkScoreReducer
from .provenance import provenance

DEFAULT_ABS_THRESHOLD = 100.0
DEFAULT_RATIO_THRESHOLD = 1000.0


def exact_median(a: Tensor) -> Tensor:
    """Median over the last dim as numpy computes it (mean of the two middle values for even sizes)."""
    s, _ = a.sort(dim=-1)
    n = s.shape[-1]
    return 0.5 * (s[..., (n - 1) // 2] + s[..., n // 2])


def _check_threshold(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a non-negative number, got {value!r}") from None
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r} (Sun et al. use abs 100, ratio 1000)")
    return v


class MassiveReducer(Reducer):
    """Streams ``hook_resid_pre`` of every block (top-k, median, flags, norms) and k/v norms."""

    shardable = True
    rows = ("h_norm", "k_norm", "v_norm", "median", "top_abs", "top_val", "top_pos", "top_dim")

    def __init__(self, abs_threshold: float, ratio_threshold: float, top_k: int, max_flags: int = 100_000):
        self.abs_threshold = abs_threshold
        self.ratio_threshold = ratio_threshold
        self.top_k = top_k
        self.max_flags = max_flags

    def hook_names(self, model: Any) -> list[str]:
        L = int(model.cfg.n_layers)
        spec = describe_attention(model)
        names = [hooknames.resid_pre(l) for l in range(L)]
        # keys and values where the bridge has the hooks (JetMoE's has none: their norms stay NaN, and are said so)
        names += [spec.layer(l).k_hook for l in range(L) if spec.layer(l).k_hook in model.hook_dict]
        names += [hooknames.v(l) for l in range(L) if hooknames.v(l) in model.hook_dict]
        return names

    def begin(self, model: Any, n_samples: int, length: int) -> None:
        spec = describe_attention(model)
        L, D, G = spec.n_layers, int(model.cfg.d_model), spec.n_kv_heads
        k = min(self.top_k, length * D)
        self.k = k
        self.D = D
        # keys as attention sees them (after QK-norm and RoPE; the description rotates where no hook does)
        self.key_names = {spec.layer(l).k_hook: l for l in range(L)}
        self._desc = spec.layers
        self.v_names = {hooknames.v(l): l for l in range(L)}
        self.h_norm = torch.zeros(n_samples, L, length)
        self.k_norm = torch.zeros(n_samples, L, G, length)
        self.v_norm = torch.zeros(n_samples, L, G, length)
        for l in range(L):
            if spec.layer(l).k_hook not in model.hook_dict:
                self.k_norm[:, l] = float("nan")
            if hooknames.v(l) not in model.hook_dict:
                self.v_norm[:, l] = float("nan")
        self.median = torch.zeros(n_samples, L)
        self.top_abs = torch.zeros(n_samples, L, k)
        self.top_val = torch.zeros(n_samples, L, k)
        self.top_pos = torch.zeros(n_samples, L, k, dtype=torch.long)
        self.top_dim = torch.zeros(n_samples, L, k, dtype=torch.long)
        self.flags: list[Tensor] = []  # rows (layer, sample, pos, dim, value, ratio)
        self.n_flags = 0
        self.truncated = False
        self.seen: set[str] = set()
        self.keys_unreadable: set[int] = set()

    def update(self, name: str, tensor: Tensor) -> None:
        self.seen.add(name)
        layer = hooknames.layer_of(name)
        s = self.batch_start
        x = tensor.detach().float()
        b = x.shape[0]
        if name in self.key_names:
            la = self._desc[layer]
            try:
                k = la.final(x) if la.qkv_readable else None
            except (RuntimeError, ValueError, IndexError):
                k = None
            if k is None or k.dim() != 4 or tuple(k.shape[1:3]) != (self.k_norm.shape[-1], self.k_norm.shape[2]):
                # keys this description cannot read as [b, T, G, d] (MLA's latent attention): NaN, and said so
                self.k_norm[s : s + b, layer] = float("nan")
                self.keys_unreadable.add(layer)
                return
            self.k_norm[s : s + b, layer] = k.norm(dim=-1).transpose(1, 2).cpu()
            return
        if name in self.v_names:
            v = x if x.dim() == 4 and x.shape[1] == self.v_norm.shape[-1] else None
            if v is None or v.shape[2] != self.v_norm.shape[2]:
                self.v_norm[s : s + b, layer] = float("nan")  # values in another layout (MLA)
                return
            self.v_norm[s : s + b, layer] = v.norm(dim=-1).transpose(1, 2).cpu()
            return
        # hook_resid_pre [b, T, D]
        self.h_norm[s : s + b, layer] = x.norm(dim=-1).cpu()
        a = x.abs().flatten(1)  # [b, T*D]
        med = exact_median(a)
        self.median[s : s + b, layer] = med.cpu()
        vals, idx = a.topk(self.k, dim=1)
        flat_x = x.flatten(1)
        self.top_abs[s : s + b, layer] = vals.cpu()
        self.top_val[s : s + b, layer] = flat_x.gather(1, idx).cpu()
        self.top_pos[s : s + b, layer] = (idx // self.D).cpu()
        self.top_dim[s : s + b, layer] = (idx % self.D).cpu()
        if self.truncated:
            return
        mask = (a > self.abs_threshold) & (a >= self.ratio_threshold * med[:, None])
        nz = mask.nonzero()
        if nz.numel():
            bi, fi = nz[:, 0], nz[:, 1]
            vals_f = flat_x[bi, fi].float().cpu()
            ratio_f = (a[bi, fi] / med[bi].clamp_min(1e-30)).float().cpu()
            bi, fi = bi.cpu(), fi.cpu()
            # float64 on the CPU (some accelerators have no float64)
            rows = torch.stack(
                [
                    torch.full(bi.shape, float(layer), dtype=torch.float64),
                    (bi + s).double(),
                    (fi // self.D).double(),
                    (fi % self.D).double(),
                    vals_f.double(),
                    ratio_f.double(),
                ],
                dim=1,
            )
            room = self.max_flags - self.n_flags
            if rows.shape[0] > room:
                rows = rows[:room]
                self.truncated = True
            self.flags.append(rows)
            self.n_flags += rows.shape[0]

    def local_state(self) -> tuple[list[Tensor], int, bool, set[str]]:
        return self.flags, self.n_flags, self.truncated, self.seen

    def merge(self, states: list[Any]) -> None:
        # each rank kept the first max_flags of its own rows; the first max_flags of all rows, in sample order, are among them
        rows = [t for st in states for t in st[0]]
        total = sum(st[1] for st in states)
        flags = torch.cat(rows) if rows else torch.zeros(0, 6, dtype=torch.float64)
        self.truncated = any(st[2] for st in states) or total > self.max_flags
        flags = flags[: self.max_flags]
        self.flags = [flags] if flags.shape[0] else []
        self.n_flags = int(flags.shape[0])
        self.seen = set().union(*(st[3] for st in states))

    def result(self) -> dict[str, Any]:
        flags = torch.cat(self.flags) if self.flags else torch.zeros(0, 6, dtype=torch.float64)
        return {
            "h_norm": self.h_norm.numpy(),
            "k_norm": self.k_norm.numpy(),
            "v_norm": self.v_norm.numpy(),
            "median": self.median.numpy(),
            "top_abs": self.top_abs.numpy(),
            "top_val": self.top_val.numpy(),
            "top_pos": self.top_pos.numpy(),
            "top_dim": self.top_dim.numpy(),
            "flags": flags.numpy(),
            "flags_truncated": self.truncated,
        }


@dataclass(frozen=True, eq=False, repr=False)
class MassiveReport(Provenanced, ModelRun, Report):
    """Massive activations of every block, per-token norms and the extreme-token triple.

    Arrays are indexed ``[sample, layer, ...]``; ``top_*`` hold each sample's
    ``top_k`` largest ``|x|`` entries of ``hook_resid_pre`` (value, position,
    dim); ``flags`` holds every Sun et al. entry as rows
    ``(layer, sample, pos, dim, value, ratio)``.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, massive_activations
        >>> rep = massive_activations(tiny_model(), torch.randint(4, 128, (3, 10)), progress=False)
        >>> sorted(rep.massive_list()[0])
        ['dim', 'layer', 'max', 'pos']
    """

    top_abs: Float[np.ndarray, "n layer k"]
    top_val: Float[np.ndarray, "n layer k"]
    top_pos: Int[np.ndarray, "n layer k"]
    top_dim: Int[np.ndarray, "n layer k"]
    median: Float[np.ndarray, "n layer"]
    h_norm: Float[np.ndarray, "n layer pos"]
    k_norm: Float[np.ndarray, "n layer kv_head pos"]
    v_norm: Float[np.ndarray, "n layer kv_head pos"]
    flags: Float[np.ndarray, "m 6"]
    flags_truncated: bool
    abs_threshold: float
    ratio_threshold: float
    provenance: Provenance
    key_after_rope: bool
    sink_report: SinkReport | None = None
    keys_unreadable: tuple[int, ...] = ()  # layers whose keys or values the description cannot read

    _nan_fields = ("k_norm", "v_norm")  # NaN: the layers of keys_unreadable

    @classmethod
    def _upgrade(cls, fields: dict[str, Any]) -> dict[str, Any]:
        """Files written when ``keys_unreadable`` sat in ``extra``."""
        return from_extra(fields, keys_unreadable=("keys_unreadable", tuple))

    def _check(self) -> None:
        for name in ("top_abs", "median", "h_norm", "k_norm", "v_norm"):
            check_range(name, getattr(self, name), 0.0, None)
        if not np.array_equal(np.abs(self.top_val), self.top_abs):
            raise FieldError("top_val", "does not match top_abs (top_abs holds |top_val|)")
        check_range("top_pos", self.top_pos, 0, self.h_norm.shape[-1] - 1)
        check_range("top_dim", self.top_dim, 0, None)
        for name in ("abs_threshold", "ratio_threshold"):
            if not getattr(self, name) > 0:
                raise FieldError(name, f"is {getattr(self, name)!r}; a threshold is > 0")
        if self.sink_report is not None and self.sink_report.alpha.shape[:2] != self.top_abs.shape[:2]:
            raise FieldError(
                "sink_report",
                f"has {list(self.sink_report.alpha.shape[:2])} samples x layers, the report {list(self.top_abs.shape[:2])}",
            )

    # ------------------------------------------------------------ shape facts
    @property
    def n(self) -> int:
        return int(self.top_abs.shape[0])

    @property
    def n_layers(self) -> int:
        return int(self.top_abs.shape[1])

    @property
    def length(self) -> int:
        return int(self.h_norm.shape[-1])

    def _layer(self, layer: int) -> int:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < self.n_layers:
            raise ValueError(f"layer must be in 0..{self.n_layers - 1}, got {layer!r}")
        return int(layer)

    # ------------------------------------------------------------ per-layer maxima
    @property
    def layer_max(self) -> Float[np.ndarray, " layer"]:
        """Largest ``|x|`` of each block's ``hook_resid_pre`` over samples, positions and dims."""
        return self.top_abs[:, :, 0].max(axis=0)

    @property
    def layer_argmax(self) -> Int[np.ndarray, "layer 3"]:
        """``(sample, pos, dim)`` of :attr:`layer_max` (first sample on ties)."""
        s = self.top_abs[:, :, 0].argmax(axis=0)
        L = np.arange(self.n_layers)
        return np.stack([s, self.top_pos[s, L, 0], self.top_dim[s, L, 0]], axis=1)

    @property
    def layer_value(self) -> Float[np.ndarray, " layer"]:
        """Signed value at :attr:`layer_argmax`."""
        s = self.top_abs[:, :, 0].argmax(axis=0)
        return self.top_val[s, np.arange(self.n_layers), 0]

    @property
    def layer_median(self) -> Float[np.ndarray, " layer"]:
        """Median ``|x|`` of the hidden state (sample) holding each layer's maximum."""
        s = self.top_abs[:, :, 0].argmax(axis=0)
        return self.median[s, np.arange(self.n_layers)]

    @property
    def layer_ratio(self) -> Float[np.ndarray, " layer"]:
        """:attr:`layer_max` over :attr:`layer_median`: how many medians the largest value is."""
        return self.layer_max / np.maximum(self.layer_median, 1e-30)

    def is_massive(self) -> np.ndarray:
        """Boolean per layer: does the layer's maximum pass both Sun et al. thresholds?"""
        return (self.layer_max > self.abs_threshold) & (self.layer_ratio >= self.ratio_threshold)

    def massive_list(self) -> list[dict[str, Any]]:
        """One ``{layer, max, pos, dim}`` per block: the largest ``|x|`` of its ``hook_resid_pre``."""
        arg = self.layer_argmax
        return [
            {"layer": l, "max": float(self.layer_max[l]), "pos": int(arg[l, 1]), "dim": int(arg[l, 2])}
            for l in range(self.n_layers)
        ]

    def global_max(self) -> dict[str, Any]:
        """The largest massive activation over all layers: ``{layer, sample, pos, dim, value, max}``."""
        l = int(self.layer_max.argmax())
        s, p, d = (int(v) for v in self.layer_argmax[l])
        return {"layer": l, "sample": s, "pos": p, "dim": d, "value": float(self.layer_value[l]), "max": float(self.layer_max[l])}

    # ------------------------------------------------------------ top-k and recurring dims
    def top_coordinates(self, layer: int, k: int | None = None) -> pd.DataFrame:
        """The ``k`` largest distinct (pos, dim) coordinates of a layer by max ``|x|`` over samples.

        Exact: a coordinate in this top-k must be in the top-k of the sample where it peaks.
        """
        l = self._layer(layer)
        k = self.top_abs.shape[2] if k is None else min(int(k), self.top_abs.shape[2])
        df = pd.DataFrame(
            {
                "pos": self.top_pos[:, l].reshape(-1),
                "dim": self.top_dim[:, l].reshape(-1),
                "abs": self.top_abs[:, l].reshape(-1),
                "value": self.top_val[:, l].reshape(-1),
                "sample": np.repeat(np.arange(self.n), self.top_abs.shape[2]),
            }
        )
        df = df.sort_values("abs", ascending=False, kind="stable").drop_duplicates(["pos", "dim"])
        counts = self.dim_recurrence(l)
        df["samples_with_dim"] = df["dim"].map(counts).fillna(0).astype(int)
        return (
            df.head(k)
            .reset_index(drop=True)
            .assign(layer=l)[["layer", "pos", "dim", "abs", "value", "sample", "samples_with_dim"]]
        )

    def dim_recurrence(self, layer: int) -> dict[int, int]:
        """dim -> number of samples in whose top-k entries of this layer the dim appears."""
        l = self._layer(layer)
        out: dict[int, int] = {}
        for s in range(self.n):
            for d in {int(x) for x in self.top_dim[s, l]}:
                out[d] = out.get(d, 0) + 1
        return out

    def recurring_dims(self, layer: int | None = None, min_share: float = 0.5, massive_only: bool = True) -> list[int]:
        """Dims that recur across samples.

        With ``massive_only`` (default), a dim recurs when a flagged (Sun et al.)
        entry sits in it in at least ``min_share`` of the samples; otherwise when it
        is among the top-k entries of at least ``min_share`` of the samples.
        ``layer=None`` pools all layers (a sample counts once per dim).
        """
        if not 0 < float(min_share) <= 1:
            raise ValueError(f"min_share must be in (0, 1], got {min_share!r}")
        layers = range(self.n_layers) if layer is None else [self._layer(layer)]
        need = float(min_share) * self.n
        if massive_only:
            f = self.flags
            sel = np.isin(f[:, 0].astype(int), list(layers))
            pairs = {(int(d), int(s)) for d, s in zip(f[sel, 3], f[sel, 1])}
        else:
            pairs = {(int(self.top_dim[s, l, j]), s) for l in layers for s in range(self.n) for j in range(self.top_dim.shape[2])}
        counts: dict[int, int] = {}
        for d, _ in pairs:
            counts[d] = counts.get(d, 0) + 1
        return sorted((d for d, c in counts.items() if c >= need), key=lambda d: (-counts[d], d))

    def flags_frame(self) -> pd.DataFrame:
        """Every entry flagged by the Sun et al. criterion: layer, sample, pos, dim, value, ratio to the median."""
        f = self.flags
        return pd.DataFrame(
            {
                "layer": f[:, 0].astype(int),
                "sample": f[:, 1].astype(int),
                "pos": f[:, 2].astype(int),
                "dim": f[:, 3].astype(int),
                "value": f[:, 4],
                "ratio": f[:, 5],
            }
        )

    def massive_dims(self, layer: int, pos: int, min_share: float = 0.5) -> list[int]:
        """Dims flagged at ``pos`` of ``layer`` in at least ``min_share`` of the samples, most frequent first."""
        l = self._layer(layer)
        f = self.flags
        sel = (f[:, 0].astype(int) == l) & (f[:, 2].astype(int) == int(pos))
        counts: dict[int, int] = {}
        for d in np.unique(f[sel][:, [3, 1]], axis=0)[:, 0] if sel.any() else []:
            counts[int(d)] = counts.get(int(d), 0) + 1
        need = float(min_share) * self.n
        return sorted((d for d, c in counts.items() if c >= need), key=lambda d: (-counts[d], d))

    # ------------------------------------------------------------ norms
    def norm_ratio(self, kind: str = "v", pos: int = 0) -> Float[np.ndarray, " layer"]:
        """Per layer: mean ``||kind||`` at ``pos`` over mean ``||kind||`` at the other positions.

        ``kind`` is ``"h"`` (residual), ``"k"`` (keys as attention sees them) or ``"v"``;
        means run over samples (and KV heads).
        """
        arr = {"h": self.h_norm, "k": self.k_norm, "v": self.v_norm}.get(kind)
        if arr is None:
            raise ValueError(f"kind must be 'h', 'k' or 'v', got {kind!r}")
        if not 0 <= int(pos) < self.length:
            raise ValueError(f"pos must be in 0..{self.length - 1}, got {pos!r}")
        other = np.delete(arr, int(pos), axis=-1)
        axes = tuple(i for i in range(arr.ndim - 1) if i != 1)
        return arr[..., int(pos)].mean(axis=axes) / np.maximum(other.mean(axis=axes + (arr.ndim - 1,)), 1e-30)

    def value_norm_ratio(self) -> Float[np.ndarray, " layer"]:
        """Per layer: mean ``||v||`` at position 0 (over samples, KV heads) / mean ``||v||`` at positions >= 1."""
        return self.norm_ratio("v", 0)

    # ------------------------------------------------------------ extreme-token triple
    def extreme_tokens(self, min_queries: int = 8) -> pd.DataFrame:
        """Per layer, the attention sink, value drain and residual peak (Guo et al. 2024).

        * ``sink_pos``: key position with the largest mean ``alpha`` (over samples and heads),
          among positions seen by at least ``min_queries`` queries; ``sink_alpha`` its value;
        * ``drain_pos``: position with the smallest mean ``||v||``; ``drain_ratio`` = its
          ``||v||`` over the mean of the other positions (<< 1 is a value drain);
        * ``peak_pos``: position with the largest mean ``||h||``; ``peak_ratio`` = its
          ``||h||`` over the mean of the other positions (>> 1 is a residual peak).
        """
        v = self.v_norm.mean(axis=(0, 2))  # [L, T]
        h = self.h_norm.mean(axis=0)  # [L, T]
        T = self.length
        rows = []
        for l in range(self.n_layers):
            dp, pp = int(v[l].argmin()), int(h[l].argmax())
            row = {
                "layer": l,
                "drain_pos": dp,
                "drain_ratio": float(v[l, dp] / max(np.delete(v[l], dp).mean(), 1e-30)) if T > 1 else np.nan,
                "peak_pos": pp,
                "peak_ratio": float(h[l, pp] / max(np.delete(h[l], pp).mean(), 1e-30)) if T > 1 else np.nan,
            }
            if self.sink_report is not None:
                li = self.sink_report.layers.index(l) if l in self.sink_report.layers else None
                if li is not None:
                    a = self.sink_report.alpha[:, li].mean(axis=(0, 1))  # [T]
                    usable = max(1, T - int(min_queries) + 1)
                    sp = int(a[:usable].argmax())
                    row.update(sink_pos=sp, sink_alpha=float(a[sp]))
            rows.append(row)
        cols = (["layer", "sink_pos", "sink_alpha"] if self.sink_report is not None else ["layer"]) + [
            "drain_pos",
            "drain_ratio",
            "peak_pos",
            "peak_ratio",
        ]
        return pd.DataFrame(rows).reindex(columns=cols)

    def extreme_triple(self, min_queries: int = 8) -> dict[str, Any]:
        """Headline triple: the most frequent sink / drain / peak position over layers >= 1, with layer counts."""
        df = self.extreme_tokens(min_queries)
        df = df[df.layer >= 1] if len(df) > 1 else df
        out: dict[str, Any] = {}
        for role in ("sink", "drain", "peak"):
            col = f"{role}_pos"
            if col not in df or df[col].isna().all():
                continue
            counts = df[col].value_counts()
            out[role] = {"pos": int(counts.index[0]), "layers": int(counts.iloc[0]), "of": len(df)}
        out["coincide"] = len({v["pos"] for k, v in out.items() if isinstance(v, dict)}) == 1
        return out

    # ------------------------------------------------------------ export
    def to_frame(self) -> pd.DataFrame:
        """One row per layer: max ``|x|`` with sample/pos/dim, signed value, median, ratio, massive flag,
        number of flagged entries, and the position-0 norm ratios of h, k and v."""
        arg = self.layer_argmax
        nflag = (
            np.bincount(self.flags[:, 0].astype(int), minlength=self.n_layers)
            if len(self.flags)
            else np.zeros(self.n_layers, int)
        )
        return pd.DataFrame(
            {
                "layer": np.arange(self.n_layers),
                "max": self.layer_max,
                "value": self.layer_value,
                "sample": arg[:, 0],
                "pos": arg[:, 1],
                "dim": arg[:, 2],
                "median": self.layer_median,
                "ratio": self.layer_ratio,
                "massive": self.is_massive(),
                "n_flagged": nflag[: self.n_layers],
                "h_norm_ratio_0": self.norm_ratio("h", 0),
                "k_norm_ratio_0": self.norm_ratio("k", 0),
                "value_norm_ratio": self.value_norm_ratio(),
            }
        )

    def summary(self) -> dict[str, Any]:
        """Provenance and headline numbers (what :meth:`to_json` writes)."""
        massive_layers = [int(l) for l in np.nonzero(self.is_massive())[0]]
        return {
            **summary_head(self, "n", "length", "dtype", "device", "abs_threshold", "ratio_threshold"),
            "top_k": int(self.top_abs.shape[2]),
            "key_after_rope": self.key_after_rope,
            "massive": self.massive_list(),
            "massive_layers": massive_layers,
            "global_max": self.global_max(),
            "recurring_dims": self.recurring_dims(),
            "value_norm_ratio": [float(x) for x in self.value_norm_ratio()],
            "h_norm_ratio_0": [float(x) for x in self.norm_ratio("h", 0)],
            "k_norm_ratio_0": [float(x) for x in self.norm_ratio("k", 0)],
            "n_flagged": len(self.flags),
            "flags_truncated": self.flags_truncated,
            "layers": self.to_frame().to_dict(orient="records"),
            "extreme_tokens": self.extreme_tokens().to_dict(orient="records"),
            "extreme_triple": self.extreme_triple(),
            **summary_tail(self, keys_unreadable=list(self.keys_unreadable) or None),
        }

    def __repr__(self) -> str:
        g = self.global_max()
        return (
            f"MassiveReport(model={self.model!r}, data={self.data!r}, n={self.n}, length={self.length}, "
            f"max |x|={g['max']:.1f} at layer {g['layer']} pos {g['pos']} dim {g['dim']}, "
            f"massive layers={int(self.is_massive().sum())}/{self.n_layers})"
        )


def massive_activations(
    model: Any,
    tokens: Tensor | ProbeSet,
    *,
    abs_threshold: float = DEFAULT_ABS_THRESHOLD,
    ratio_threshold: float = DEFAULT_RATIO_THRESHOLD,
    top_k: int = 5,
    measure_sinks: bool = True,
    batch_size: int | None = None,
    progress: bool = True,
    max_flags: int = 100_000,
) -> MassiveReport:
    """Massive activations in every block's residual stream, per-token norms and the extreme-token triple.

    Args:
        model: a TransformerBridge.
        tokens: ``[n, length]`` token ids (a tensor or a :class:`~sink_interp.ProbeSet`, whose facts the report records); no BOS is added.
        abs_threshold: Sun et al.'s absolute threshold on ``|x|`` (strict, default 100).
        ratio_threshold: Sun et al.'s ratio to the hidden state's median ``|x|`` (default 1000).
        top_k: entries kept per sample and layer.
        measure_sinks: also measure sink scores (for the attention-sink part of the triple);
            ``report.sink_report`` is then a :class:`~sink_interp.SinkReport` at eps 0.3.
        batch_size: samples per forward pass (default: chosen from the length).
        progress: show a progress bar.
        max_flags: cap on the number of flagged entries kept.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> rep = massive_activations(tiny_model(), torch.randint(4, 128, (3, 10)), progress=False)
        >>> rep.to_frame().columns[:4].tolist()
        ['layer', 'max', 'value', 'sample']
    """
    abs_threshold = _check_threshold(abs_threshold, "abs_threshold")
    ratio_threshold = _check_threshold(ratio_threshold, "ratio_threshold")
    top_k = check_positive_int(top_k, "top_k")
    max_flags = check_positive_int(max_flags, "max_flags", minimum=0) if max_flags else 0
    tokens_checked = check_model_tokens(model, tokens, min_length=2 if measure_sinks else 1)
    prov = provenance(model, tokens)
    red = MassiveReducer(abs_threshold, ratio_threshold, top_k, max_flags)
    reducers: list[Reducer] = [red]
    sred = SinkScoreReducer() if measure_sinks else None
    if sred is not None:
        reducers.append(sred)
    run_reducers(model, tokens_checked, reducers, batch_size=batch_size, progress=progress, desc="massive activations")
    missing = [nm for nm in red.hook_names(model) if nm not in red.seen]
    if missing:
        raise RuntimeError(f"hooks {missing[:4]} never fired during the forward pass; this architecture is not supported yet")
    res = red.result()
    spec = describe_attention(model)
    unreadable = sorted(
        set(red.keys_unreadable)
        | {
            l
            for l in range(spec.n_layers)
            if not np.isfinite(res["k_norm"][:, l]).all() or not np.isfinite(res["v_norm"][:, l]).all()
        }
    )
    sink_report = None
    if sred is not None:
        alpha, row_sum = sred.result()
        used = sorted(set(sred.proxy_layers.values()))
        sink_report = SinkReport(
            alpha=alpha.numpy(),
            row_sum=row_sum.numpy(),
            eps=0.3,
            score="softmax" if not used else "auto:" + "+".join(used),
            proxy_layers=dict(sred.proxy_layers),
            layers=tuple(sred.layers),
            provenance=prov,
        )
    return MassiveReport(
        **res,
        abs_threshold=abs_threshold,
        ratio_threshold=ratio_threshold,
        provenance=prov,
        key_after_rope=describe_attention(model).layer(0).rotary is not None,
        sink_report=sink_report,
        keys_unreadable=tuple(unreadable),
    )
