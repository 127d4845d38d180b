"""Interventions on attention sinks, as exact and differentiable hook functions.

``intervene(model, *interventions)`` is a context manager: inside the block the
model runs with the interventions, on exit (also after an exception) exactly
the hooks it added are removed; no parameter or buffer of the model is ever
written, so the model is bit-for-bit what it was.

Every intervention is scoped by ``layers`` (default: all), ``heads`` (default:
all; a list applies to every chosen layer, a ``{layer: heads}`` dict picks
heads per layer) and, where it makes sense, key ``positions`` (default ``(0,)``,
the first token; negative positions count from the end).

How they are computed. Per layer, in this fixed order of stages, with every
fact about how the layer forms its scores (scale, soft-cap, window, ALiBi,
sink logits, rotary) taken from its description (:mod:`sink_interp.architecture`):

1. **scores** — the scaled, masked scores ``S`` (masked entries at the dtype
   minimum). Score edits: :class:`MaskKey` (renormalised) and
   :class:`StreamingWindow` set entries to the mask value.
2. **pattern** — when a score edit, a kernel or a virtual key is present the
   pattern is recomputed from the edited scores with the kernel
   (:mod:`sink_interp.kernels`, default softmax) over the visible keys plus the
   virtual keys (:class:`KVBias`: logit ``scale q_h . k*_h`` with the query
   after RoPE, soft-capped like the layer's own scores; :class:`SinkLogit`: a
   logit ``s_h``; the model's own sink logits). Then pattern edits in the order
   given: :class:`MaskKey` (not renormalised), :class:`ScaleAttention`,
   :class:`Calibrate`.
3. **z** — ``z = A V`` per head. :class:`ZeroValue` subtracts ``A[t, p] v_p``
   for the chosen heads (exact for GQA: query head ``h`` reads value head
   ``h // (H / G)``); :class:`KVBias` adds ``A*[t] v*_h``.

Where the bridge computes attention itself (most families) the stages are its
hooks ``hook_attn_scores``, ``hook_pattern`` and ``hook_z``. Where it hands
attention to the Hugging Face module and only reports the weights afterwards
(OPT, GPT-J), edits at those hooks would be ignored, so the layer's attention
is rebuilt at ``hook_z`` from ``hook_q``, ``hook_k`` and ``hook_v`` by its
description, the stages run there, and the final pattern is what
``hook_pattern`` then reports. So ``KVBias`` computes exactly
``softmax([q k*, q K^T] * scale) [v*; V]`` on every family.
:class:`AblateDims` edits ``hook_resid_pre`` of the chosen layers.

Composition and nesting. Several interventions in one call form one pipeline
per layer, in the stage order above and, within a stage, in the order given.
Nested blocks on the same model give exactly that pipeline for the flattened
list, outer blocks first: ``with intervene(m, a): with intervene(m, b):`` runs
as ``intervene(m, a, b)``, for every pair of interventions (the inner block
pauses the outer block's hooks, attaches the composition, and on exit removes
exactly its own hooks and lets the outer block's run again). A
:func:`masked` block, inside or outside, is the mask of stage 1. Each
intervention object applies once: the same object twice, in one call or
nested, is a ``ValueError`` (make a second object to apply an edit twice);
two :class:`AttentionKernel` on one head are a ``ValueError`` too.

By default the queries at the sink position itself are left alone
(``include_self=False``): masking key ``p`` for query ``p`` would leave that
row empty and change the sink token's own residual stream, which builds the
sink. Pass ``include_self=True`` to change those entries too. ``min_query=q``
leaves the queries before position ``q`` alone as well. This matters: with key
0 masked in *every* head, token 1 sees no earlier token, is computed exactly
like a first token, and becomes the new sink (the sink relocates); masking
only for queries ``t >= 2`` (``min_query=2``), or only in the sink heads,
keeps token 1 an ordinary second token.

Example:
    >>> import torch
    >>> from sink_interp import tiny_model, intervene, ZeroValue, MaskKey
    >>> model = tiny_model()
    >>> tokens = torch.randint(4, 128, (2, 8))
    >>> clean = model(tokens)
    >>> with intervene(model, MaskKey(heads=[0, 1]), ZeroValue(layers=[1])):
    ...     changed = model(tokens)
    >>> bool((changed - clean).abs().max() > 0), torch.equal(model(tokens), clean)
    (True, True)
"""

from __future__ import annotations

import contextlib
import math
import warnings
import weakref
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, Union

import torch
from torch import Tensor, nn

from ._internal import hooknames, placement
from ._internal.report import register_codec
from ._internal.scores import softcap
from .architecture import LayerAttention, describe_attention, verify_rerotation
from .capture import attach_hooks
from .kernels import kernel_fn, visible_mask
from .masks import AttentionMask, as_mask
from .pipeline import Ctx, LayerPipeline

HeadSpec = Union[None, Sequence[int], Mapping[int, Sequence[int]]]

__all__ = [
    "AblateDims",
    "AttentionKernel",
    "Calibrate",
    "Intervention",
    "KVBias",
    "MaskKey",
    "ScaleAttention",
    "SinkLogit",
    "StreamingWindow",
    "ZeroValue",
    "intervene",
]


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
        self.layers_arg = None if layers is None else _int_tuple(layers, "layers")
        if isinstance(heads, Mapping):
            self.heads_arg: Any = {int(k): _int_tuple(v, f"heads[{k}]") for k, v in heads.items()}
        else:
            self.heads_arg = None if heads is None else _int_tuple(heads, "heads")
        if isinstance(positions, (int,)) and not isinstance(positions, bool):
            positions = (positions,)
        self.positions = _int_tuple(positions, "positions")
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
            lay = "all layers" if self.layers_arg is None else f"layers {_short(self.layers_arg)}"
            hd = "all heads" if self.heads_arg is None else f"heads {_short(self.heads_arg)}"
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


def _short(xs: Sequence[int]) -> str:
    xs = list(xs)
    return str(xs) if len(xs) <= 6 else f"[{xs[0]}, {xs[1]}, ..., {xs[-1]}] ({len(xs)})"


def _int_tuple(xs: Any, name: str) -> tuple[int, ...]:
    if isinstance(xs, (str, bytes)) or not isinstance(xs, Iterable):
        raise ValueError(f"{name} must be a sequence of integers, got {xs!r}")
    out = []
    for x in xs:
        if isinstance(x, bool) or not isinstance(x, (int,)) and not (hasattr(x, "__index__")):
            raise ValueError(f"{name} must hold integers, got {x!r}")
        out.append(int(x))
    return tuple(out)


# --------------------------------------------------------------------------- the interventions


class ZeroValue(Intervention):
    """The value vectors of the chosen key positions become 0 in the chosen heads.

    ``z_t = sum_{j not in P} A[t, j] v_j`` for queries ``t > p`` (the attention
    paid to the sink stays; it just carries nothing). Exact per query head,
    also under GQA, where the value head is shared by several query heads.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, intervene, ZeroValue
        >>> m = tiny_model("gqa")
        >>> with intervene(m, ZeroValue(heads={0: [1]})):  # one query head; its KV head stays intact for head 0
        ...     _ = m(torch.randint(4, 128, (1, 6)))
    """

    needs = frozenset({"v"})

    def edit_z(self, layer: int, z: Tensor, ctx: Ctx) -> Tensor:
        A, v = ctx.pattern, ctx.v  # [b, H, T, T], [b, T, G, d]
        T = A.shape[-1]
        P = self.resolved_positions(T)
        dev = A.device
        qsel = self.key_selection(T, dev)[:, P]  # [T, |P|]
        w = A[..., P] * qsel[None, None] * self.head_mask(layer, dev)[None, :, None, None]
        kv_of_head = torch.arange(self.n_heads, device=dev) // self.group
        vp = v[:, P][:, :, kv_of_head]  # [b, |P|, H, d]
        corr = torch.einsum("bhtp,bphd->bthd", w.to(vp.dtype), vp)
        return z - corr.to(z.dtype)


class MaskKey(Intervention):
    """Remove the chosen keys from attention.

    ``renormalise=True``: the key leaves the softmax (its score becomes the mask
    value), so the other keys share its mass: ``A'_j = e^{s_j} / sum_{i not in P} e^{s_i}``.
    ``renormalise=False``: its weight is set to 0 and the rows keep their other
    weights (rows then sum to ``1 - A[t, p]``; for the output this equals
    :class:`ZeroValue`, but the pattern shows the key gone).

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, intervene, MaskKey
        >>> m, x = tiny_model(), torch.randint(4, 128, (1, 6))
        >>> with intervene(m, MaskKey(heads={1: [0, 2]})):  # heads 0 and 2 of layer 1
        ...     _, cache = m.run_with_cache(x, names_filter="blocks.1.attn.hook_pattern")
        >>> p = cache["blocks.1.attn.hook_pattern"]
        >>> p[0, 0, 1:, 0].abs().max().item()  # no query after 0 sees key 0
        0.0
    """

    def __init__(self, *, renormalise: bool = True, **scope: Any):
        super().__init__(**scope)
        self.renormalise = bool(renormalise)

    def to_record(self) -> dict[str, Any]:
        return {**self._scope_record(), "renormalise": self.renormalise}

    def edits_scores(self) -> bool:
        return self.renormalise

    def edits_pattern(self) -> bool:
        return not self.renormalise

    def edit_scores(self, layer: int, scores: Tensor, ctx: Ctx) -> Tensor:
        if not self.renormalise:
            return scores
        sel = self.selection(layer, scores.shape[-1], scores.device)
        return scores.masked_fill(sel, torch.finfo(scores.dtype).min)

    def edit_pattern(self, layer: int, pattern: Tensor, ctx: Ctx) -> Tensor:
        if self.renormalise:
            return pattern
        return pattern.masked_fill(self.selection(layer, pattern.shape[-1], pattern.device), 0.0)

    def describe(self) -> str:
        return f"MaskKey({self._scope_text()}, renormalise={self.renormalise})"


class ScaleAttention(Intervention):
    """Scale the attention paid to the chosen keys by ``beta``: ``A'[t, p] = beta A[t, p]``.

    ``renormalise=True`` rescales each row afterwards to its old total.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, intervene, ScaleAttention
        >>> with intervene(tiny_model(), ScaleAttention(0.5, positions=[0, 1])) as m:
        ...     _ = m(torch.randint(4, 128, (1, 6)))
    """

    def __init__(self, beta: float, *, renormalise: bool = False, **scope: Any):
        super().__init__(**scope)
        beta = float(beta)
        if not math.isfinite(beta) or beta < 0:
            raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
        self.beta = beta
        self.renormalise = bool(renormalise)

    def edit_pattern(self, layer: int, pattern: Tensor, ctx: Ctx) -> Tensor:
        sel = self.selection(layer, pattern.shape[-1], pattern.device)
        out = torch.where(sel, pattern * self.beta, pattern)
        if self.renormalise:
            before = pattern.sum(-1, keepdim=True)
            after = out.sum(-1, keepdim=True)
            out = out * torch.where(
                after > 0, before / torch.where(after > 0, after, torch.ones_like(after)), torch.ones_like(after)
            )
        return out

    def describe(self) -> str:
        return f"ScaleAttention(beta={self.beta}, {self._scope_text()}, renormalise={self.renormalise})"


class Calibrate(Intervention):
    """ACT attention calibration (Yu et al. 2024) in the chosen heads.

    Per sample and head, ``alpha_k = mean_{t >= k} A[t, k]`` and the sinks are
    ``S = {k != first : alpha_k > tau}`` (keys averaged over fewer than
    ``min_queries`` queries are never sinks). Then ``A[:, S]`` is scaled by
    ``beta`` and the removed mass of each row goes back to the keys not in
    ``S`` in proportion to their weight, so rows keep their sums.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, intervene, Calibrate
        >>> m, x = tiny_model(), torch.randint(4, 128, (1, 8))
        >>> with intervene(m, Calibrate(tau=0.1, beta=0.4, heads=[0, 1])):
        ...     _, cache = m.run_with_cache(x, names_filter="blocks.0.attn.hook_pattern")
        >>> torch.allclose(cache["blocks.0.attn.hook_pattern"].sum(-1), torch.ones(1, 4, 8))  # rows keep their sums
        True
    """

    has_positions = False

    def __init__(
        self,
        tau: float = 0.1,
        beta: float = 0.4,
        *,
        min_queries: int = 1,
        layers: Sequence[int] | None = None,
        heads: HeadSpec = None,
        name: str | None = None,
    ):
        super().__init__(layers=layers, heads=heads, positions=(), name=name)
        if not 0 < float(tau) < 1:
            raise ValueError(f"tau must be in (0, 1), got {tau!r}")
        if not 0 <= float(beta) <= 1:
            raise ValueError(f"beta must be in [0, 1], got {beta!r}")
        self.tau, self.beta, self.min_queries = float(tau), float(beta), int(min_queries)

    def edit_pattern(self, layer: int, pattern: Tensor, ctx: Ctx) -> Tensor:
        A = pattern.float()
        T = A.shape[-1]
        nq = torch.arange(T, 0, -1, device=A.device, dtype=torch.float32)
        alpha = A.sum(-2) / nq  # [b, H, T]
        sink = (alpha > self.tau) & (nq >= self.min_queries)
        sink[..., 0] = False
        sink = sink & self.head_mask(layer, A.device)[None, :, None]
        S = sink[:, :, None, :]  # [b, H, 1, T]
        removed = ((1 - self.beta) * A * S).sum(-1, keepdim=True)
        others = A * ~S
        denom = others.sum(-1, keepdim=True)
        gain = torch.where(denom > 0, removed / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(denom))
        out = torch.where(S, A * self.beta, others * (1 + gain))
        # rows with no other key keep their sink mass
        out = torch.where((denom > 0) | ~S, out, A)
        return out.to(pattern.dtype)

    def describe(self) -> str:
        return f"Calibrate(tau={self.tau}, beta={self.beta}, {self._scope_text()})"


class AblateDims(Intervention):
    """Set residual-stream dims at the chosen positions to 0 or to a mean, before the chosen layers.

    Edits ``hook_resid_pre`` of each layer in scope. ``mode="zero"`` writes 0;
    ``mode="mean"`` writes the mean of that dim over the other positions of the
    same sample (or ``values`` if given: one number per dim). With the default
    ``layers=None`` every layer's input is edited, so a dim written back by a
    later block is removed again.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, intervene, AblateDims
        >>> m = tiny_model()
        >>> with intervene(m, AblateDims([5, 9], mode="mean")):  # dims 5 and 9 of the first token, every layer
        ...     _, cache = m.run_with_cache(torch.randint(4, 128, (1, 6)), names_filter="blocks.1.hook_resid_pre")
        >>> cache["blocks.1.hook_resid_pre"].shape
        torch.Size([1, 6, 64])
    """

    def __init__(
        self,
        dims: Sequence[int],
        *,
        mode: str = "zero",
        values: Sequence[float] | Tensor | None = None,
        layers: Sequence[int] | None = None,
        positions: Sequence[int] | int = (0,),
        name: str | None = None,
    ):
        super().__init__(layers=layers, heads=None, positions=positions, name=name)
        self.dims = _int_tuple(dims, "dims")
        if not self.dims:
            raise ValueError("dims must name at least one residual dimension (e.g. MassiveReport.recurring_dims())")
        if mode not in ("zero", "mean"):
            raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}")
        self.mode = mode
        self.values = None if values is None else torch.as_tensor(values, dtype=torch.float32)
        if self.values is not None and self.values.shape != (len(self.dims),):
            raise ValueError(f"values must hold one number per dim ({len(self.dims)}), got shape {tuple(self.values.shape)}")

    def bind(self, model: Any) -> None:
        super().bind(model)
        D = int(model.cfg.d_model)
        bad = [d for d in self.dims if not 0 <= d < D]
        if bad:
            raise ValueError(f"dims {bad} out of range; d_model is {D}")

    def residual_hooks(self, model: Any) -> list[tuple[str, Callable[..., Any]]]:
        def hook(x: Tensor, hook: Any) -> Tensor:
            T = x.shape[1]
            P = self.resolved_positions(T)
            dims = list(self.dims)
            out = x.clone()
            if self.mode == "zero":
                for p in P:
                    out[:, p, dims] = 0.0
            else:
                if self.values is not None:
                    val = self.values.to(x.device, x.dtype)[None, :]
                else:
                    keep = torch.ones(T, dtype=torch.bool, device=x.device)
                    keep[P] = False
                    if not keep.any():
                        raise ValueError("mode='mean' needs positions other than the ablated ones (or values=)")
                    val = x[:, keep][:, :, dims].mean(1)  # [b, |dims|]
                for p in P:
                    out[:, p, dims] = val
            return out

        return [(hooknames.resid_pre(layer), hook) for layer in self.layers]

    def describe(self) -> str:
        lay = "all layers" if self.layers_arg is None else f"layers {_short(self.layers_arg)}"
        return f"AblateDims(dims {_short(self.dims)}, mode={self.mode}, {lay}, positions {list(self.positions)})"


class KVBias(Intervention):
    """A learnable key ``k*`` (and optionally value ``v*``) prepended in every chosen layer.

    Per head ``h``: ``softmax([q_h k*_h, q_h K_h^T] / sqrt(d)) [v*_h; V_h]``, with
    ``q_h`` after RoPE and ``k*`` carrying no position (a key at position 0
    would give the same logits, since RoPE at position 0 is the identity).
    ``per_head=True``: one ``k*`` per query head (``[H, d]``), else one shared by
    all heads of the layer (``[d]``). ``value=False`` keeps ``v* = 0`` (the
    paper's "K bias"). Parameters live in :attr:`params` (an ``nn.ParameterDict``
    keyed by layer), created on first use (on that layer's device) and kept, so a fitted bias can be
    reused; pass ``k`` / ``v`` (``{layer: tensor}``) to set them.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, intervene, KVBias
        >>> m = tiny_model()
        >>> bias = KVBias(per_head=False, value=True, k={0: torch.ones(16)})
        >>> with intervene(m, bias):
        ...     _ = m(torch.randint(4, 128, (1, 6)))
        >>> [tuple(p.shape) for p in bias.parameters()]  # k*, v* of layers 0 and 1, shared across heads
        [(1, 16), (1, 16), (1, 16), (1, 16)]
    """

    has_positions = False
    needs = frozenset({"q"})

    def __init__(
        self,
        *,
        layers: Sequence[int] | None = None,
        heads: HeadSpec = None,
        per_head: bool = True,
        value: bool = False,
        k: Mapping[int, Tensor] | None = None,
        v: Mapping[int, Tensor] | None = None,
        name: str | None = None,
    ):
        super().__init__(layers=layers, heads=heads, positions=(), name=name)
        self.per_head, self.value = bool(per_head), bool(value)
        if v is not None and not value:
            self.value = True
        self._k_init, self._v_init = k, v
        self.params = nn.ParameterDict()

    def to_record(self) -> dict[str, Any]:
        """Scope, settings and the current ``k*``/``v*`` (fitted values included) per layer."""
        k = {int(key[1:]): p.detach().cpu().clone() for key, p in self.params.items() if key[0] == "k"}
        v = {int(key[1:]): p.detach().cpu().clone() for key, p in self.params.items() if key[0] == "v"}
        return {
            **self._scope_record(),
            "per_head": self.per_head,
            "value": self.value,
            "k": k or self._k_init,
            "v": (v or self._v_init) if self.value else None,
        }

    def bind(self, model: Any) -> None:
        super().bind(model)
        rows = self.n_heads if self.per_head else 1
        for layer in self.layers:
            dev = placement.layer_device(model, layer)  # split / offloaded models: each layer's own device
            for kind, init in (("k", self._k_init), ("v", self._v_init if self.value else None)):
                if kind == "v" and not self.value:
                    continue
                key = f"{kind}{layer}"
                if key in self.params:
                    continue
                t = torch.zeros(rows, self.d_head, dtype=torch.float32, device=dev)
                if init is not None and layer in init:
                    given = torch.as_tensor(init[layer], dtype=torch.float32, device=dev)
                    try:
                        t = t + given.reshape(-1, self.d_head).expand(rows, -1)
                    except RuntimeError:
                        raise ValueError(
                            f"{kind}[{layer}] must be [d_head] or [{rows}, d_head={self.d_head}], got {tuple(given.shape)}"
                        ) from None
                self.params[key] = nn.Parameter(t)

    def k_star(self, layer: int) -> Tensor:
        return self.params[f"k{layer}"]

    def v_star(self, layer: int) -> Tensor | None:
        return self.params[f"v{layer}"] if self.value else None

    def parameters(self) -> Iterator[nn.Parameter]:
        return iter(self.params.values())

    def extra_logits(self, layer: int, ctx: Ctx) -> Tensor:
        la = self.attention(layer)
        q = ctx.q  # [b, T, H, d]
        k = self.k_star(layer).to(q.dtype).expand(self.n_heads, -1)
        logits = torch.einsum("bthd,hd->bht", q, k)[..., None] * la.scale
        logits = softcap(logits, la.softcap)
        if not self.all_heads(layer):
            logits = logits.masked_fill(~self.head_mask(layer, q.device)[None, :, None, None], float("-inf"))
        return logits

    def extra_values(self, layer: int) -> Tensor | None:
        v = self.v_star(layer)
        return None if v is None else v.expand(self.n_heads, -1)[:, None, :]

    def describe(self) -> str:
        kind = "K+V bias" if self.value else "K bias (v*=0)"
        share = "per head" if self.per_head else "shared across heads"
        return f"KVBias({kind}, {share}, {self._scope_text()})"


class SinkLogit(Intervention):
    """A gpt-oss-style learned sink logit ``s_h`` per head: ``softmax([s_h, S_h])``, the sink column dropped.

    Rows of the pattern then sum to ``1 - sigma`` with the "sink mass"
    ``sigma = e^{s_h} / (e^{s_h} + sum_j e^{S_hj})``. Parameters in
    :attr:`params` (``{layer: [H]}``), initialised to ``init`` or ``logits``.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, intervene, SinkLogit
        >>> m = tiny_model()
        >>> with intervene(m, SinkLogit(init=2.0, layers=[1])):
        ...     _, cache = m.run_with_cache(torch.randint(4, 128, (1, 6)), names_filter="blocks.1.attn.hook_pattern")
        >>> bool((cache["blocks.1.attn.hook_pattern"].sum(-1) < 1).all())  # the sink takes mass from every row
        True
    """

    has_positions = False

    def __init__(
        self,
        *,
        layers: Sequence[int] | None = None,
        heads: HeadSpec = None,
        init: float = 0.0,
        logits: Mapping[int, Tensor] | None = None,
        name: str | None = None,
    ):
        super().__init__(layers=layers, heads=heads, positions=(), name=name)
        self.init = float(init)
        self._given = logits
        self.params = nn.ParameterDict()

    def to_record(self) -> dict[str, Any]:
        """Scope, ``init`` and the current logits (fitted values included) per layer."""
        logits = {int(key[1:]): p.detach().cpu().clone() for key, p in self.params.items()}
        return {**self._scope_record(), "init": self.init, "logits": logits or self._given}

    def bind(self, model: Any) -> None:
        super().bind(model)
        for layer in self.layers:
            key = f"s{layer}"
            if key in self.params:
                continue
            dev = placement.layer_device(model, layer)  # split / offloaded models: each layer's own device
            t = torch.full((self.n_heads,), self.init, dtype=torch.float32, device=dev)
            if self._given is not None and layer in self._given:
                t = t * 0 + torch.as_tensor(self._given[layer], dtype=torch.float32, device=dev).reshape(-1).expand(self.n_heads)
            self.params[key] = nn.Parameter(t)

    def parameters(self) -> Iterator[nn.Parameter]:
        return iter(self.params.values())

    def logit(self, layer: int) -> Tensor:
        return self.params[f"s{layer}"]

    def extra_logits(self, layer: int, ctx: Ctx) -> Tensor:
        b, H, T = ctx.scores.shape[0], self.n_heads, ctx.scores.shape[-1]
        s = self.logit(layer).to(ctx.scores.dtype)
        if not self.all_heads(layer):
            s = s.masked_fill(~self.head_mask(layer, s.device), float("-inf"))
        return s[None, :, None, None].expand(b, H, T, 1)

    def describe(self) -> str:
        return f"SinkLogit({self._scope_text()})"


class AttentionKernel(Intervention):
    """Replace softmax with another kernel (see :mod:`sink_interp.kernels`) in the chosen heads.

    ``AttentionKernel("sigmoid", bias="-log n")``, ``AttentionKernel("softpick")``,
    ``AttentionKernel("scaled", alpha=0.5)``, ``AttentionKernel("elu1", normalise=True)``...
    The kernel sees the model's own scaled scores; virtual keys (:class:`KVBias`,
    :class:`SinkLogit`) in the same layer enter it too.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, intervene, AttentionKernel
        >>> with intervene(tiny_model(), AttentionKernel("sigmoid", bias="-log n", heads=[0, 1])) as m:
        ...     _ = m(torch.randint(4, 128, (1, 6)))
    """

    has_positions = False

    def __init__(
        self,
        kernel: str = "sigmoid",
        *,
        layers: Sequence[int] | None = None,
        heads: HeadSpec = None,
        name: str | None = None,
        **params: Any,
    ):
        super().__init__(layers=layers, heads=heads, positions=(), name=name)
        self.kernel_name = kernel
        self.params = dict(params)
        self.kernel = kernel_fn(kernel, **params)
        self.kernel_name = self.kernel.kernel_name  # type: ignore[attr-defined]

    def describe(self) -> str:
        ps = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"AttentionKernel({self.kernel_name}{', ' + ps if ps else ''}, {self._scope_text()})"


class StreamingWindow(Intervention):
    """StreamingLLM attention: each query sees the first ``n_sinks`` keys and the last ``window`` keys.

    Query ``t`` sees keys ``j < n_sinks`` and ``t - window < j <= t``; ``n_sinks=0`` is
    plain sliding-window attention. ``rope_positions="cache"`` (default) gives RoPE
    positions as indices in the rolling cache, as StreamingLLM does: once the
    cache is full (``t >= n_sinks + window``) the query sits at cache index
    ``c = n_sinks + window - 1`` and sink ``i`` at index ``i``, so the sink scores
    become ``(R_c q_t) . (R_i k_i) / sqrt(d)``; recent keys keep their relative
    distance ``t - j``, which is the same in both frames. ``rope_positions="original"``
    keeps the absolute positions (only the mask changes). Every token's hidden
    states are computed with its own window, exactly as in token-by-token
    decoding with a rolling KV cache, so one forward pass gives the streaming
    log-likelihood of every token.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, intervene, StreamingWindow
        >>> m = tiny_model()
        >>> with intervene(m, StreamingWindow(4, n_sinks=1)):
        ...     _, cache = m.run_with_cache(torch.randint(4, 128, (1, 8)), names_filter="blocks.0.attn.hook_pattern")
        >>> p = cache["blocks.0.attn.hook_pattern"]
        >>> (p[0, 0, 7] > 0).int().tolist()  # query 7 sees key 0 and keys 4-7
        [1, 0, 0, 0, 1, 1, 1, 1]
    """

    has_positions = False

    def __init__(
        self,
        window: int,
        n_sinks: int = 4,
        *,
        rope_positions: str = "cache",
        layers: Sequence[int] | None = None,
        name: str | None = None,
    ):
        super().__init__(layers=layers, heads=None, positions=(), name=name)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an integer >= 1 (recent keys each query sees), got {window!r}")
        if isinstance(n_sinks, bool) or not isinstance(n_sinks, int) or n_sinks < 0:
            raise ValueError(f"n_sinks must be an integer >= 0, got {n_sinks!r}")
        if rope_positions not in ("cache", "original"):
            raise ValueError(f"rope_positions must be 'cache' (StreamingLLM) or 'original', got {rope_positions!r}")
        self.window, self.n_sinks, self.rope_positions = window, n_sinks, rope_positions

    def bind(self, model: Any) -> None:
        super().bind(model)
        spec = describe_attention(model)
        kind = spec.positional
        if self.rope_positions == "cache" and self.n_sinks > 0 and kind in ("learned", "sinusoidal", "alibi", "relative", "t5"):
            where = {
                "learned": "adds learned absolute position embeddings before the first block",
                "sinusoidal": "adds sinusoidal absolute position embeddings before the first block",
                "alibi": "biases scores by absolute key positions (" + ("MPT's ALiBi" if spec.family == "mpt" else "ALiBi") + ")",
            }.get(kind, f"biases scores by the original query-key distances ({kind} position buckets)")
            raise ValueError(
                f"rope_positions='cache' needs relative positions (RoPE or NoPE); this model {where}, which hooks "
                "cannot re-index per query. Fix: rope_positions='original'"
            )
        self._rerotate = self.rope_positions == "cache" and self.n_sinks > 0 and kind != "nope"
        if self._rerotate:
            # every rebuilt rotation gates itself: features it cannot carry are refused by name, the rest checked on a probe
            verify_rerotation(model, list(self.layers), "StreamingWindow(rope_positions='cache')")
        self.needs = frozenset({"q_pre", "k"}) if self._rerotate else frozenset()

    def edit_scores(self, layer: int, scores: Tensor, ctx: Ctx) -> Tensor:
        T = scores.shape[-1]
        la = self.attention(layer)
        # the layer's own sliding window still applies: a sink outside it stays hidden
        vis = la.mask(AttentionMask(window=self.window, n_sinks=self.n_sinks)).dense(T, scores.device)
        out = scores.masked_fill(~vis[None, None], torch.finfo(scores.dtype).min)
        full_from = self.n_sinks + self.window
        if self._rerotate and la.rotary is not None and T > full_from:
            # once the cache is full the query sits at cache index c and sink i at index i
            c = self.n_sinks + self.window - 1
            q = ctx.q_pre[:, full_from:]  # [b, T', H, d], before RoPE
            qc = la.rotary.apply(q, torch.full((q.shape[1],), c, device=q.device))
            ks = ctx.k[:, : self.n_sinks]  # [b, sinks, G, d], after RoPE at positions 0..sinks-1
            s = la.logits(qc.transpose(1, 2), ks.transpose(1, 2))  # [b, H, T', sinks]
            out = out.clone()
            keep = out[:, :, full_from:, : self.n_sinks]
            # only where the key is still visible: hidden by this window, or by an earlier score edit, stays hidden
            out[:, :, full_from:, : self.n_sinks] = torch.where(visible_mask(keep), s.to(out.dtype), keep)
        return out

    def describe(self) -> str:
        what = f"{self.n_sinks} sinks + window {self.window}" if self.n_sinks else f"window {self.window}"
        return f"StreamingWindow({what}, rope_positions={self.rope_positions})"


def _sites(
    model: Any, flat: list[Intervention], mask: AttentionMask | None = None, layers: Sequence[int] | None = None
) -> tuple[list[LayerPipeline], list[tuple[str, Callable[..., Any]]]]:
    """Bind ``flat``, group them by layer into sites (plus ``mask`` on ``layers``, default all); return sites and residual hooks."""
    for iv in flat:
        iv.bind(model)
    per_layer: dict[int, list[Intervention]] = {}
    residual: list[tuple[str, Callable[..., Any]]] = []
    for iv in flat:
        residual.extend(iv.residual_hooks(model))
        if isinstance(iv, AblateDims):
            continue
        for layer in iv.layers:
            per_layer.setdefault(layer, []).append(iv)
    masked_layers: set[int] | None = None
    if mask is not None and not mask.is_causal:
        L = int(model.cfg.n_layers)
        masked_layers = {int(x) for x in (range(L) if layers is None else layers)}
        for layer in sorted(masked_layers):
            per_layer.setdefault(layer, [])
    # the mask acts on its own layers only, also where an intervention shares a site with it
    sites = [
        LayerPipeline(model, layer, ivs, mask if masked_layers is not None and layer in masked_layers else None)
        for layer, ivs in sorted(per_layer.items())
    ]
    return sites, residual


# --------------------------------------------------------------------------- nested blocks


class _Frame:
    """One active :func:`intervene` or :func:`masked` block on a model: what it asked for, and whether its hooks run.

    Only the innermost block's hooks run: they apply the interventions and the mask of every
    enclosing block plus its own, built as one pipeline (see :func:`_compose`).
    """

    __slots__ = ("enabled", "ivs", "mask", "mask_layers")

    def __init__(self, ivs: list[Intervention], mask: AttentionMask | None = None, mask_layers: tuple[int, ...] | None = None):
        self.ivs, self.mask, self.mask_layers, self.enabled = ivs, mask, mask_layers, True


# model -> its active blocks, outermost first
_STACKS: weakref.WeakKeyDictionary[Any, list[_Frame]] = weakref.WeakKeyDictionary()


def active_interventions(model: Any) -> list[Intervention]:
    """The interventions active on ``model`` (enclosing :func:`intervene` blocks, outermost first).

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, intervene, MaskKey, ZeroValue
        >>> m = tiny_model()
        >>> with intervene(m, MaskKey()):
        ...     with intervene(m, ZeroValue(layers=[1])):
        ...         [type(iv).__name__ for iv in active_interventions(m)]
        ['MaskKey', 'ZeroValue']
    """
    return [iv for f in _STACKS.get(model, ()) for iv in f.ivs]


def _compose(model: Any, frames: list[_Frame]) -> tuple[list[LayerPipeline], list[tuple[str, Callable[..., Any]]]]:
    """One pipeline for ``frames`` flattened: their interventions in order (outer blocks first) and their mask."""
    flat = [iv for f in frames for iv in f.ivs]
    seen: set[int] = set()
    for iv in flat:
        if id(iv) in seen:
            raise ValueError(
                f"{iv.label} is given twice (in one intervene() call or in nested blocks); each object applies once: "
                "drop the repeat, or make a second object to apply the same edit twice"
            )
        seen.add(id(iv))
    for other, stack in list(_STACKS.items()):
        if other is not model and any(id(iv) in seen for f in stack for iv in f.ivs):
            busy = next(iv for f in stack for iv in f.ivs if id(iv) in seen)
            raise ValueError(
                f"{busy.label} is active in an intervene() block on another model; make a second object for this one"
            )
    mask: AttentionMask | None = None
    layers: set[int] | None = set()
    for f in frames:
        if f.mask is None:
            continue
        if mask is not None and f.mask != mask:
            raise ValueError(
                f"masked() blocks with different masks do not nest ({mask.describe()} outside, {f.mask.describe()} inside); "
                "pass the one AttentionMask that says which keys each query sees"
            )
        mask = f.mask
        layers = None if layers is None or f.mask_layers is None else layers | set(f.mask_layers)
    return _sites(model, flat, mask, None if layers is None else sorted(layers))


def _gated(frame: _Frame, fn: Callable[..., Any]) -> Callable[..., Any]:
    def hook(x: Tensor, hook: Any) -> Any:
        return fn(x, hook) if frame.enabled else None

    return hook


_RAW = "_sink_interp_raw_mask"


def _raw_mask_hook_points(model: Any) -> list[str]:
    """Hook points carrying hooks made by :func:`mask_hooks` (they do not take part in nesting)."""
    out = []
    for name, hp in model.hook_dict.items():
        if any(getattr(getattr(h, "user_hook", None), _RAW, False) for h in getattr(hp, "fwd_hooks", None) or []):
            out.append(name)
    return out


@contextlib.contextmanager
def _block(
    model: Any, ivs: list[Intervention], mask: AttentionMask | None = None, mask_layers: Sequence[int] | None = None
) -> Iterator[Any]:
    """Push a block on ``model``'s stack: attach the hooks of all active blocks plus this one, pause the enclosing
    block's hooks; on exit (also after an exception) remove exactly these hooks and let the enclosing block run again."""
    raw = _raw_mask_hook_points(model)
    if raw:
        raise ValueError(
            f"hooks from mask_hooks() are attached to this model ({raw[0]}, ...); they do not compose with intervene(): "
            "use `with masked(model, mask):` instead, which nests exactly"
        )
    stack = _STACKS.get(model, [])
    frame = _Frame(ivs, mask, None if mask_layers is None else tuple(int(x) for x in mask_layers))
    sites, residual = _compose(model, [*stack, frame])  # raises before anything on the model changes
    hooks = [(name, _gated(frame, fn)) for name, fn in residual + [h for s in sites for h in s.hooks()]]
    outer = stack[-1] if stack else None
    stack.append(frame)
    _STACKS[model] = stack
    try:
        with attach_hooks(model, hooks), _quiet_post_hoc():
            if outer is not None:
                outer.enabled = False
            yield model
    finally:
        for s in sites:
            s.ctx.clear()
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is frame:
                del stack[i]
                break
        if stack and stack[-1] is outer and outer is not None:
            outer.enabled = True
        if not stack:
            _STACKS.pop(model, None)


@contextlib.contextmanager
def _quiet_post_hoc() -> Iterator[None]:
    """Silence the bridge's warning that a delegated layer's reported pattern was replaced (we report the rebuilt one)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"A hook on .*hook_(pattern|attn_scores) returned a modified tensor")
        yield


@contextlib.contextmanager
def intervene(model: Any, *interventions: Intervention | Sequence[Intervention]) -> Iterator[Any]:
    """Run ``model`` with ``interventions`` inside a ``with`` block; restore it exactly on exit.

    Interventions are applied in the stage order described in the module
    docstring; within a stage, in the order given. Lists are flattened, so a
    composed intervention can be passed as one item. Yields the model.

    Blocks nest: inside ``with intervene(model, *inner)`` within
    ``with intervene(model, *outer)`` the model runs exactly as with
    ``intervene(model, *outer, *inner)`` (the outer block's interventions come
    first within each stage). The inner block pauses the outer block's hooks and
    attaches the flattened composition; on exit, also after an exception, it
    removes exactly its hooks and the outer block's own hooks run again. A
    :func:`masked` block, inside or outside, adds its mask to stage 1 of the
    composition. Each intervention object applies once: giving the same object
    twice, in one call or in nested blocks, is a ``ValueError`` (make a second
    object to apply an edit twice). Close blocks in reverse order (``with`` does).

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, intervene, KVBias, MaskKey
        >>> model = tiny_model()
        >>> bias = KVBias(per_head=True)
        >>> with intervene(model, MaskKey(), bias) as m:
        ...     logits = m(torch.randint(4, 128, (1, 6)))
        >>> len(list(bias.parameters()))  # one k* per layer
        2
        >>> x, zero = torch.randint(4, 128, (1, 6)), ZeroValue(positions=[1])
        >>> with intervene(model, bias), intervene(model, zero):  # nested == one call with both
        ...     nested = model(x)
        >>> with intervene(model, bias, zero):
        ...     torch.equal(model(x), nested)
        True
    """
    with _block(model, flatten_interventions(interventions)) as m:
        yield m


def mask_hooks(
    model: Any, mask: AttentionMask | dict[str, Any] | None, layers: Sequence[int] | None = None
) -> list[tuple[str, Callable[..., Any]]]:
    """Hooks that make a TransformerBridge attend with ``mask`` (pass them to :func:`sink_interp.capture.attach_hooks`).

    These raw hooks do not compose with :func:`intervene`: asking for them inside an
    ``intervene``/``masked`` block, or entering one while they are attached, is a ``ValueError``;
    :func:`masked` gives the same mask and nests exactly.

    Masks that only hide keys (window, sinks) set the hidden scores to the dtype's minimum; a prefix
    LM also *shows* keys the causal mask hid, so the scores are formed again from the layer's q and k
    by its description. Each layer keeps its own sliding window. Layers whose attention runs inside
    Hugging Face are rebuilt at ``hook_z`` (see the module docstring).

    Examples:
        >>> import torch
        >>> from sink_interp import tiny_model, AttentionMask
        >>> from sink_interp.capture import attach_hooks
        >>> m = tiny_model()
        >>> with attach_hooks(m, mask_hooks(m, AttentionMask(window=2))):
        ...     _, cache = m.run_with_cache(torch.randint(4, 128, (1, 5)), names_filter="blocks.0.attn.hook_pattern")
        >>> (cache["blocks.0.attn.hook_pattern"][0, 0, 4] > 0).int().tolist()
        [0, 0, 0, 1, 1]
    """
    mask = as_mask(mask)
    if mask.is_causal:
        return []
    if _STACKS.get(model):
        raise ValueError(
            "mask_hooks() does not compose with the intervene()/masked() block active on this model; "
            "use `with masked(model, mask):` inside it, which nests exactly"
        )
    sites, _ = _sites(model, [], mask, layers)
    hooks = [h for s in sites for h in s.hooks()]
    for _, fn in hooks:
        setattr(fn, _RAW, True)
    return hooks


@contextlib.contextmanager
def masked(model: Any, mask: AttentionMask | dict[str, Any] | None, layers: Sequence[int] | None = None) -> Iterator[Any]:
    """Run ``model`` with ``mask`` (:func:`mask_hooks`) inside a ``with`` block; nothing to do for a causal mask.

    Nests with :func:`intervene` either way round: the mask is stage 1 of every intervention's
    pipeline (see the module docstring). Nested ``masked`` blocks must give the same mask
    (their layers add up); different masks are a ``ValueError``. The raw :func:`mask_hooks`
    do not nest: use this.

    Examples:
        >>> import torch
        >>> from sink_interp import tiny_model, AttentionMask
        >>> m = tiny_model()
        >>> with masked(m, AttentionMask(prefix=3)):
        ...     _, cache = m.run_with_cache(torch.randint(4, 128, (1, 5)), names_filter="blocks.0.attn.hook_pattern")
        >>> bool(cache["blocks.0.attn.hook_pattern"][0, 0, 0, 2] > 0)  # the prefix sees itself both ways
        True
    """
    mask = as_mask(mask)
    if mask.is_causal:
        yield model
        return
    with _block(model, [], mask, layers) as m:
        yield m


def flatten_interventions(items: Iterable[Any]) -> list[Intervention]:
    out: list[Intervention] = []
    for it in items:
        if isinstance(it, Intervention):
            out.append(it)
        elif isinstance(it, (list, tuple)):
            out.extend(flatten_interventions(it))
        else:
            raise TypeError(f"intervene() takes Intervention objects (ZeroValue, MaskKey, KVBias, ...), got {type(it).__name__}")
    return out


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


for _cls in (MaskKey, KVBias, SinkLogit):  # interventions a report may hold (FitReport): saved and loaded with it
    register_codec(_cls, lambda rec, _cls=_cls: _cls(**rec))
