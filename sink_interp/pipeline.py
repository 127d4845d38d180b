"""One layer's attention, edited: the stages every attention edit in sink_interp runs through.

Both the interventions (:func:`sink_interp.intervene`, :func:`sink_interp.interventions.masked`)
and the training laboratory's knobs (permanent hooks on a trained model) hand their edits to a
:class:`LayerPipeline`, which turns them into the layer's hook functions. The stages, in order:

1. **scores**: the layer's own scores at ``hook_attn_scores`` (formed again from q and k by the
   layer's description when a mask shows keys the causal mask hid, or when the layer's attention
   runs inside Hugging Face), then the mask (an :class:`~sink_interp.AttentionMask` and an optional
   per-batch ``documents`` mask), then each edit's :meth:`edit_scores`;
2. **kernel and virtual keys**: the weights from the scores with every edit's extra logits (K bias,
   sink logit) and the model's own sink logits; softmax, or an edit's ``kernel`` in its heads;
3. **pattern**: each edit's :meth:`edit_pattern`; the result is what ``hook_pattern`` reports;
4. **output**: each edit's :meth:`edit_z` and the values of the virtual keys, at ``hook_z``.

An *edit* is any object with the :class:`sink_interp.Intervention` interface (its ``layers``,
``needs``, ``kernel``, ``head_mask`` and the stage methods); the pipeline itself owns no state
beyond one forward pass's scratch space (:class:`Ctx`).

Example:
    >>> import torch
    >>> from sink_interp import tiny_model, MaskKey
    >>> from sink_interp.capture import attach_hooks
    >>> model = tiny_model()
    >>> edit = MaskKey(layers=[0]); edit.bind(model)
    >>> with attach_hooks(model, LayerPipeline(model, 0, [edit]).hooks()):
    ...     _, cache = model.run_with_cache(torch.randint(4, 128, (1, 6)), names_filter="blocks.0.attn.hook_pattern")
    >>> float(cache["blocks.0.attn.hook_pattern"][0, :, 1:, 0].abs().max())  # no query past the first sees key 0
    0.0
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ._internal import hooknames
from .architecture import LayerAttention, describe_attention, expand_kv, verify_attention
from .kernels import softmax_attention, visible_mask
from .masks import AttentionMask

#: ``documents(T, device) -> [b, 1, T, T] bool | None``: which keys each query may see in this batch
DocumentsMask = Callable[[int, Any], "Tensor | None"]


class Ctx:
    """Per-layer, per-forward scratch space shared by the hooks of one layer.

    ``q`` / ``k``: queries and keys as they meet in the scores (after QK-norm and RoPE), ``[b, T, heads, d]``;
    ``q_pre``: queries before RoPE; ``v``: values; ``scores`` / ``pattern``: ``[b, H, T, T]``.
    """

    __slots__ = ("q", "q_pre", "k", "v", "scores", "pattern", "extra_w", "published")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        for s in self.__slots__:
            setattr(self, s, None)


class LayerPipeline:
    """All edits (and a mask) acting on one attention layer, as one set of hook functions.

    ``"hooks"`` mode edits the bridge's own ``hook_attn_scores`` / ``hook_pattern`` / ``hook_z``;
    ``"rebuild"`` mode (attention computed inside Hugging Face) rebuilds the layer's attention at
    ``hook_z`` from its q, k and v and reports the final pattern at ``hook_pattern``.

    Args:
        model: the TransformerBridge.
        layer: the layer index.
        edits: bound edits acting on this layer (:class:`sink_interp.Intervention`), in stage order.
        mask: which keys each query sees (``None`` or causal: the model's own mask).
        attention: the layer's description (default: ``describe_attention(model).layer(layer)``).
        documents: a per-batch visibility (intra-document masking), joined with ``mask``.
        verify: before forming scores again from q and k, check the description reproduces the
            model's own attention (:func:`sink_interp.architecture.verify_attention`). The training
            knobs pass ``False``: there the description is the stock model they were built on.
    """

    def __init__(
        self,
        model: Any,
        layer: int,
        edits: Sequence[Any],
        mask: AttentionMask | None = None,
        *,
        attention: LayerAttention | None = None,
        documents: DocumentsMask | None = None,
        verify: bool = True,
    ):
        self.model, self.layer, self.ivs = model, layer, list(edits)
        self.la = attention if attention is not None else describe_attention(model).layer(layer)
        self.mask = None if mask is None or mask.is_causal else mask
        self.documents = documents
        self.ctx = Ctx()
        ivs = self.ivs
        self.score_editors = [iv for iv in ivs if iv.edits_scores()]
        self.pattern_editors = [iv for iv in ivs if iv.edits_pattern()]
        self.z_editors = [iv for iv in ivs if iv.edits_z()]
        self.extras = [iv for iv in ivs if iv.has_extra()]
        self.kernels = [iv for iv in ivs if iv.kernel is not None]
        self.native = self.la.sink_logits()
        H = self.la.n_heads
        claimed = torch.zeros(H, dtype=torch.bool)
        for kv in self.kernels:
            hm = kv.head_mask(layer).cpu()
            if (claimed & hm).any():
                raise ValueError(
                    f"two AttentionKernel interventions act on the same head of layer {layer}; give them disjoint heads"
                )
            claimed |= hm
        self.kernels_cover_all = bool(self.kernels) and bool(claimed.all())
        self.needs: set[str] = set().union(*(iv.needs for iv in ivs)) if ivs else set()
        self.rebuild = not self.la.scores_hookable
        # a prefix LM shows keys the causal mask hid: the scores are formed again from q and k
        self.reform = self.rebuild or (self.mask is not None and self.mask.prefix > 1)
        if self.reform:
            if verify:
                verify_attention(
                    model,
                    [layer],
                    f"an intervention or mask that rebuilds layer {layer}'s attention",
                    "AblateDims (edits the residual stream) still runs here, and sink scores with method='pattern'",
                )
            self.needs |= {"q", "k"}
        if self.rebuild:
            self.needs |= {"v"}
        self.recompute = bool(self.score_editors or self.extras or self.kernels or self.rebuild)
        reads_qkv = bool(self.needs & {"q", "k", "v", "q_pre"}) or bool(self.z_editors)
        if not self.la.qkv_readable and reads_qkv:
            from .architecture import UnsupportedAttention

            names = ", ".join(dict.fromkeys(type(iv).__name__ for iv in ivs))
            raise UnsupportedAttention(
                f"{names} on layer {layer}: it uses {', '.join(self.la.unsupported)}; these hooks do not give q, k and v "
                "per head as attention uses them, so edits that read them cannot run there; fix: edits of the attention "
                "pattern only (MaskKey, ScaleAttention, Calibrate, SinkLogit), or AblateDims"
            )
        self.value_ivs = [(i, iv) for i, iv in enumerate(self.extras) if iv.extra_values(layer) is not None]
        self.has_z_hook = bool(self.z_editors or self.value_ivs or self.rebuild)

    # ------------------------------------------------------------ stages shared by both modes
    def _scores(self, s: Tensor | None) -> Tensor:
        """Stage 1: the layer's scores (formed again from q and k when needed), the masks, then score edits."""
        la, ctx = self.la, self.ctx
        vis: Tensor | None = None
        if self.reform:
            dtype = s.dtype if s is not None else ctx.v.dtype
            s = la.logits(ctx.q.transpose(1, 2), ctx.k.transpose(1, 2), check=False).to(dtype)
            vis = la.mask(self.mask).dense(s.shape[-1], s.device)
        elif self.mask is not None:
            vis = self.mask.dense(s.shape[-1], s.device)
        assert s is not None
        if self.documents is not None:
            docs = self.documents(s.shape[-1], s.device)
            if docs is not None:
                vis = docs if vis is None else vis & docs
        if vis is not None:
            s = s.masked_fill(~vis, torch.finfo(s.dtype).min)
        for iv in self.score_editors:
            s = iv.edit_scores(self.layer, s, ctx)
        return s

    def _pattern(self, scores: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        """Stage 2: weights from the scores (kernels, virtual keys, the model's sink logits), then pattern edits."""
        L = self.layer
        extras = [iv.extra_logits(L, self.ctx) for iv in self.extras]
        if self.native is not None:
            b, H, T = scores.shape[0], scores.shape[1], scores.shape[-1]
            extras.append(self.native.to(scores.dtype).reshape(1, -1, 1, 1).expand(b, H, T, 1))
        E = torch.cat(extras, dim=-1) if extras else None
        mask = visible_mask(scores)
        A: Tensor | None = None
        Ae: Tensor | None = None
        if not self.kernels_cover_all:
            A, Ae = softmax_attention(scores, mask, E)
        for kv in self.kernels:
            Ak, Aek = kv.kernel(scores, mask, E)
            if A is None:  # the kernels cover every head: the first one fills its heads and the rest
                A, Ae = Ak, Aek
                continue
            hm = kv.head_mask(L, scores.device)[None, :, None, None]
            A = torch.where(hm, Ak, A)
            if Ae is not None:
                Ae = torch.where(hm, Aek, Ae)
        assert A is not None
        return self._edit_pattern(A.to(dtype)), Ae

    def _edit_pattern(self, A: Tensor) -> Tensor:
        for iv in self.pattern_editors:
            A = iv.edit_pattern(self.layer, A, self.ctx)
        return A

    def _z(self, z: Tensor) -> Tensor:
        """Stage 4: z edits and the values of virtual keys."""
        ctx, L = self.ctx, self.layer
        for iv in self.z_editors:
            z = iv.edit_z(L, z, ctx)
        if self.value_ivs and ctx.extra_w is not None:
            # column i of the extras belongs to self.extras[i] (one virtual key each)
            for i, iv in self.value_ivs:
                vals = iv.extra_values(L)  # [H, 1, d]
                w = ctx.extra_w[..., i : i + 1]  # [b, H, T, 1]
                z = z + torch.einsum("bhtm,hmd->bthd", w.to(z.dtype), vals.to(z.dtype))
        return z

    # ------------------------------------------------------------ hooks
    def hooks(self) -> list[tuple[str, Callable[..., Any]]]:
        """``(hook name, function)`` pairs that run this pipeline (attach them with :func:`sink_interp.capture.add_hooks`)."""
        L, la, ctx = self.layer, self.la, self.ctx
        out: list[tuple[str, Callable[..., Any]]] = []

        def stash(attr: str, how: Callable[[Tensor], Tensor] | None = None) -> Callable[..., None]:
            def hook(x: Tensor, hook: Any) -> None:
                setattr(ctx, attr, x if how is None else how(x))

            return hook

        if "q" in self.needs:
            out.append((la.q_hook, stash("q", la.final)))
        if "q_pre" in self.needs:
            out.append((la.q_pre_rotary_hook, stash("q_pre", la.pre_rotary)))
        if "k" in self.needs:
            out.append((la.k_hook, stash("k", la.final)))
        if "v" in self.needs:
            out.append((hooknames.v(L), stash("v")))

        if self.rebuild:
            out.extend(self._rebuild_hooks())
            return out

        def scores_hook(s: Tensor, hook: Any) -> Tensor | None:
            new = self._scores(s)
            ctx.scores = new
            return new if new is not s else None

        out.append((hooknames.attn_scores(L), scores_hook))

        def pattern_hook(p: Tensor, hook: Any) -> Tensor | None:
            A, Ae = p, None
            if self.recompute:
                A, Ae = self._pattern(ctx.scores, p.dtype)
            else:
                A = self._edit_pattern(A)
            # keep only what the hook_z stage reads; free the rest now (T x T scores per layer add up)
            v = ctx.v
            ctx.clear()
            if self.has_z_hook:
                ctx.pattern, ctx.extra_w, ctx.v = A, Ae, v
            return A if A is not p else None

        out.append((hooknames.pattern(L), pattern_hook))

        if self.has_z_hook:

            def z_hook(z: Tensor, hook: Any) -> Tensor:
                z = self._z(z)
                ctx.clear()
                return z

            out.append((hooknames.z(L), z_hook))
        return out

    def _rebuild_hooks(self) -> list[tuple[str, Callable[..., Any]]]:
        L, la, ctx = self.layer, self.la, self.ctx

        def z_hook(z: Tensor, hook: Any) -> Tensor:
            scores = self._scores(None)
            ctx.scores = scores
            A, Ae = self._pattern(scores, z.dtype)
            ctx.pattern, ctx.extra_w = A, Ae
            v = expand_kv(ctx.v, la.n_heads, dim=2)  # [b, T, H, d]
            new = torch.einsum("bhts,bshd->bthd", A, v.to(A.dtype)).to(z.dtype)
            new = self._z(new)
            published = A
            ctx.clear()
            ctx.published = published
            return new

        def pattern_hook(p: Tensor, hook: Any) -> Tensor | None:
            # the Hugging Face weights arrive after the output was computed: report the rebuilt ones
            A = ctx.published
            ctx.clear()
            return None if A is None else A.to(p.dtype)

        return [(hooknames.z(L), z_hook), (hooknames.pattern(L), pattern_hook)]
