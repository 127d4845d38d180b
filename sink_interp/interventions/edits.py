"""Interventions that edit one stage of a layer's attention: its scores, its pattern, its output, or the residual.

:class:`MaskKey` and :class:`StreamingWindow` edit the scores (and :class:`MaskKey` the pattern when not
renormalised), :class:`ScaleAttention` and :class:`Calibrate` the pattern, :class:`ZeroValue` the heads'
output ``z``, :class:`AblateDims` the residual stream entering a layer. The stages and their order are
described in :mod:`sink_interp.interventions`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .._internal import hooknames
from .._internal.report import register_codec
from ..architecture import describe_attention, verify_rerotation
from ..kernels import visible_mask
from ..masks import AttentionMask
from ..pipeline import Ctx
from .base import HeadSpec, Intervention, int_tuple, short_list


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
        self.dims = int_tuple(dims, "dims")
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
        lay = "all layers" if self.layers_arg is None else f"layers {short_list(self.layers_arg)}"
        return f"AblateDims(dims {short_list(self.dims)}, mode={self.mode}, {lay}, positions {list(self.positions)})"


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


register_codec(MaskKey, lambda rec: MaskKey(**rec))  # an intervention a report may hold (FitReport): saved and loaded with it
