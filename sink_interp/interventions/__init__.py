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

The package: the base class :class:`Intervention` (and :func:`sink_heads`) in ``base``; the catalogue, by kind:
stage edits (:class:`MaskKey`, :class:`StreamingWindow`, :class:`ScaleAttention`, :class:`Calibrate`,
:class:`ZeroValue`, :class:`AblateDims`) in ``edits``, virtual keys and kernels (:class:`KVBias`,
:class:`SinkLogit`, :class:`AttentionKernel`) in ``keys``; running them (:func:`intervene`, :func:`masked`,
:func:`mask_hooks`, nesting, the hooks attached and removed) in ``runtime``.

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

from .base import HeadSpec, Intervention, sink_heads
from .edits import AblateDims, Calibrate, MaskKey, ScaleAttention, StreamingWindow, ZeroValue
from .keys import AttentionKernel, KVBias, SinkLogit
from .runtime import active_interventions, flatten_interventions, intervene, mask_hooks, masked

__all__ = [
    "AblateDims",
    "AttentionKernel",
    "Calibrate",
    "HeadSpec",
    "Intervention",
    "KVBias",
    "MaskKey",
    "ScaleAttention",
    "SinkLogit",
    "StreamingWindow",
    "ZeroValue",
    "active_interventions",
    "flatten_interventions",
    "intervene",
    "mask_hooks",
    "masked",
    "sink_heads",
]
