"""The base class of every intervention: its scope (layers, heads, key positions) and the stages it may edit.

A new intervention subclasses :class:`Intervention` and overrides the stages it edits; the stages
and their order are described in :mod:`sink_interp.interventions`. Also :func:`sink_heads`, the
heads of a sink report that an intervention is usually scoped to.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import torch
from torch import Tensor

from ..architecture import LayerAttention, describe_attention
from ..pipeline import Ctx

HeadSpec = Union[None, Sequence[int], Mapping[int, Sequence[int]]]

# --------------------------------------------------------------------------- base class


class Intervention:
    """Base class: a scope (layers, heads, positions) and the stages it edits.

    Subclasses override some of :meth:`edit_scores`, :meth:`extra_logits`,
    :meth:`edit_pattern`, :meth:`edit_z`, :meth:`residual_hooks`, and declare
    what they read in :attr:`needs` (``"q"``: queries as they meet the keys,
    after QK-norm and RoPE; ``"q_pre"``: queries before RoPE; ``"k"``: keys as
    they meet the queries; ``"v"``). :meth:`attention` gives the layer's
    description (scale, soft-cap, rotary...).

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, intervene
        >>> class HalveFirstKey(Intervention):  # a pattern edit of your own
        ...     def edit_pattern(self, layer, pattern, ctx):
        ...         return torch.where(self.selection(layer, pattern.shape[-1], pattern.device), pattern / 2, pattern)
        >>> with intervene(tiny_model(), HalveFirstKey(layers=[0])) as m:
        ...     _ = m(torch.randint(4, 128, (1, 6)))
    """

    needs: frozenset[str] = frozenset()
    kernel: Callable[..., Any] | None = None
    has_positions: bool = True

    def __init__(
        self,
        *,
        layers: Sequence[int] | None = None,
        heads: HeadSpec = None,
        positions: Sequence[int] | int = (0,),
        include_self: bool = False,
        min_query: int = 0,
        name: str | None = None,
    ):
        if isinstance(heads, Mapping) and layers is not None:
            if sorted(int(x) for x in heads) != sorted(int(x) for x in layers):
                raise ValueError("heads given as a {layer: heads} dict already names the layers; drop layers= or make them agree")
        self.layers_arg = None if layers is None else int_tuple(layers, "layers")
        if isinstance(heads, Mapping):
            self.heads_arg: Any = {int(k): int_tuple(v, f"heads[{k}]") for k, v in heads.items()}
        else:
            self.heads_arg = None if heads is None else int_tuple(heads, "heads")
        if isinstance(positions, (int,)) and not isinstance(positions, bool):
            positions = (positions,)
        self.positions = int_tuple(positions, "positions")
        if not self.positions and self.has_positions:
            raise ValueError("positions must name at least one key position (default (0,), the first token)")
        self.include_self = bool(include_self)
        if isinstance(min_query, bool) or not isinstance(min_query, int) or min_query < 0:
            raise ValueError(f"min_query must be an integer >= 0 (queries before it are left alone), got {min_query!r}")
        self.min_query = min_query
        self.name = name
        self._bound: Any = None

    def _scope_record(self) -> dict[str, Any]:
        """The scope arguments this intervention was made with (for saving it inside a report)."""
        rec: dict[str, Any] = {"layers": self.layers_arg, "heads": self.heads_arg, "name": self.name}
        if self.has_positions:
            rec.update(positions=self.positions, include_self=self.include_self, min_query=self.min_query)
        return rec

    # ---------------------------------------------------------------- scope
    def bind(self, model: Any) -> None:
        """Check the scope against ``model`` and create parameters (idempotent)."""
        spec = describe_attention(model)
        L, H, G = spec.n_layers, spec.n_heads, spec.n_kv_heads
        self.n_layers, self.n_heads, self.n_kv, self.d_head = L, H, G, spec.d_head
        self.group = max(1, H // G)
        if isinstance(self.heads_arg, dict):
            layers = tuple(sorted(self.heads_arg))
        else:
            layers = tuple(range(L)) if self.layers_arg is None else self.layers_arg
        bad = [x for x in layers if not 0 <= x < L]
        if bad:
            raise ValueError(f"layers {bad} out of range; the model has layers 0..{L - 1}")
        self.layers = layers
        head_lists = self.heads_arg.values() if isinstance(self.heads_arg, dict) else ([self.heads_arg] if self.heads_arg else [])
        for hs in head_lists:
            badh = [h for h in hs if not 0 <= h < H]
            if badh:
                raise ValueError(f"heads {badh} out of range; the model has heads 0..{H - 1} per layer")
        self._hm_cache: dict[tuple[int, Any], Tensor] = {}
        self._bound = model

    def attention(self, layer: int) -> LayerAttention:
        """How ``layer`` of the bound model forms its attention (:mod:`sink_interp.architecture`)."""
        return describe_attention(self._bound).layer(layer)

    def head_mask(self, layer: int, device: Any = None) -> Tensor:
        """``[H]`` bool: the heads of ``layer`` this intervention touches."""
        key = (layer, str(device))
        if key not in self._hm_cache:
            m = torch.zeros(self.n_heads, dtype=torch.bool, device=device)
            if self.heads_arg is None:
                m[:] = True
            elif isinstance(self.heads_arg, dict):
                m[list(self.heads_arg.get(layer, ()))] = True
            else:
                m[list(self.heads_arg)] = True
            self._hm_cache[key] = m
        return self._hm_cache[key]

    def all_heads(self, layer: int) -> bool:
        return self.heads_arg is None

    def resolved_positions(self, T: int) -> list[int]:
        out = []
        for p in self.positions:
            q = p + T if p < 0 else p
            if not 0 <= q < T:
                raise ValueError(
                    f"{type(self).__name__}: position {p} is outside a sequence of length {T}; fix: positions within 0..{T - 1}"
                )
            out.append(q)
        return sorted(set(out))

    def key_selection(self, T: int, device: Any) -> Tensor:
        """``[T_q, T_k]`` bool: entries (query t, key p) with p a chosen position, t > p (t >= p with
        ``include_self``) and t >= ``min_query``."""
        P = torch.tensor(self.resolved_positions(T), device=device)
        t = torch.arange(T, device=device)[:, None]
        col = torch.zeros(T, dtype=torch.bool, device=device)
        col[P] = True
        rows = t >= torch.arange(T, device=device)[None, :] if self.include_self else t > torch.arange(T, device=device)[None, :]
        rows = rows & (t >= self.min_query)
        return col[None, :] & rows

    def selection(self, layer: int, T: int, device: Any) -> Tensor:
        """``[1, H, T, T]`` bool: the pattern entries this intervention acts on."""
        return self.head_mask(layer, device)[None, :, None, None] & self.key_selection(T, device)[None, None]

    # ---------------------------------------------------------------- stages (defaults: no-op)
    def edits_scores(self) -> bool:
        return type(self).edit_scores is not Intervention.edit_scores

    def edits_pattern(self) -> bool:
        return type(self).edit_pattern is not Intervention.edit_pattern

    def edits_z(self) -> bool:
        return type(self).edit_z is not Intervention.edit_z

    def has_extra(self) -> bool:
        return type(self).extra_logits is not Intervention.extra_logits

    def edit_scores(self, layer: int, scores: Tensor, ctx: Ctx) -> Tensor:
        return scores

    def extra_logits(self, layer: int, ctx: Ctx) -> Tensor | None:
        """``[b, H, T, m]`` logits of virtual keys (``-inf`` where a head has none)."""
        return None

    def extra_values(self, layer: int) -> Tensor | None:
        """``[H, m, d]`` values of the virtual keys, or None when they are 0."""
        return None

    def edit_pattern(self, layer: int, pattern: Tensor, ctx: Ctx) -> Tensor:
        return pattern

    def edit_z(self, layer: int, z: Tensor, ctx: Ctx) -> Tensor:
        return z

    def residual_hooks(self, model: Any) -> list[tuple[str, Callable[..., Any]]]:
        return []

    # ---------------------------------------------------------------- text
    def _scope_text(self) -> str:
        if isinstance(self.heads_arg, dict):
            n = sum(len(v) for v in self.heads_arg.values())
            where = f"{n} heads in {len(self.heads_arg)} layers"
        else:
            lay = "all layers" if self.layers_arg is None else f"layers {short_list(self.layers_arg)}"
            hd = "all heads" if self.heads_arg is None else f"heads {short_list(self.heads_arg)}"
            where = f"{lay}, {hd}"
        if self.has_positions:
            where += f", keys {list(self.positions)}" + (" (incl. own query)" if self.include_self else "")
            if self.min_query:
                where += f", queries >= {self.min_query}"
        return where

    def describe(self) -> str:
        return f"{type(self).__name__}({self._scope_text()})"

    @property
    def label(self) -> str:
        return self.name or self.describe()

    def __repr__(self) -> str:
        return self.describe()


def short_list(xs: Sequence[int]) -> str:
    """``xs`` as text for a description: in full up to 6 items, else the ends and the count."""
    xs = list(xs)
    return str(xs) if len(xs) <= 6 else f"[{xs[0]}, {xs[1]}, ..., {xs[-1]}] ({len(xs)})"


def int_tuple(xs: Any, name: str) -> tuple[int, ...]:
    """``xs`` (a sequence of integers) as a tuple of ints; anything else is a ``ValueError`` naming ``name``."""
    if isinstance(xs, (str, bytes)) or not isinstance(xs, Iterable):
        raise ValueError(f"{name} must be a sequence of integers, got {xs!r}")
    out = []
    for x in xs:
        if isinstance(x, bool) or not isinstance(x, (int,)) and not (hasattr(x, "__index__")):
            raise ValueError(f"{name} must hold integers, got {x!r}")
        out.append(int(x))
    return tuple(out)


# --------------------------------------------------------------------------- helpers


def sink_heads(report: Any, eps: float | None = None, k: int = 1) -> dict[int, list[int]]:
    """``{layer: [heads]}`` whose mean ``alpha_k`` over samples exceeds ``eps`` (default: the report's eps).

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, measure_sinks
        >>> rep = measure_sinks(tiny_model(), torch.randint(4, 128, (2, 8)), progress=False)
        >>> isinstance(sink_heads(rep, eps=0.99), dict)
        True
    """
    e = report.eps if eps is None else float(eps)
    mean = report.mean_alpha(k)
    out: dict[int, list[int]] = {}
    for li, layer in enumerate(report.layers):
        hs = [int(h) for h in range(mean.shape[1]) if mean[li, h] > e]
        if hs:
            out[int(layer)] = hs
    return out
