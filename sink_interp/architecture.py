"""How each layer of a loaded model forms its attention: one description, read from its config and modules.

Every analysis that computes attention itself (the blockwise ``lse`` scores,
the fused engine, masks, the interventions, streaming, the trace links) asks
this module, and nothing else, how layer ``l`` turns its queries and keys into
attention weights:

    s[t, j] = softcap(scale * q_t . k_j) + alibi[h, j]          (cap * tanh(x / cap) when soft-capped)
    A[t, j] = exp(s[t, j]) / (sum_{i visible} exp(s[t, i]) + exp(sink_h))   over visible keys j

with ``q`` and ``k`` after the model's QK-norm and rotary embedding, visible
meaning causal and inside the layer's sliding window (``t - j < window``), and
``sink_h`` the learned sink logit of gpt-oss-style models (absent elsewhere).
:func:`describe_attention` reads, per layer:

* **where q and k are**: the bridge hooks that carry them as they meet
  (``hook_rot_q``/``hook_rot_k`` where the bridge fires them after RoPE), or
  the hooks before the rotary embedding plus the rotation to apply (GPT-NeoX,
  Phi-3 and Falcon, whose bridges rotate without firing those hooks, and GPT-J,
  whose attention runs inside Hugging Face);
* the **scale** (``1/sqrt(d)``, ``query_pre_attn_scalar``, ``attention_multiplier``...),
  **logit soft-capping**, the **sliding window** of each layer (alternating
  local/global layers), **ALiBi**, **learned sink logits**;
* the **rotary** style (rotate-half or interleaved), the rotated dims and the
  Hugging Face module that makes its tables;
* **QK-norm**, **Q/K/V biases**, the **GQA** mapping (query head ``h`` reads KV
  head ``h // (H / G)``), **parallel** attention + MLP, the **norm gain**
  convention (Gemma stores ``g = 1 + w``), **fused** ``qkv`` / ``gate_up``
  weights, mixture-of-experts MLPs;
* whether edits at ``hook_attn_scores`` / ``hook_pattern`` reach the output
  (they do not where the bridge hands attention to the Hugging Face module and
  only reports its weights afterwards: OPT, GPT-J).

:func:`check_attention` compares the description with the model's own
``hook_pattern`` on a short input; the tests do this for every family of the
zoo (:mod:`sink_interp.zoo`) against Hugging Face eager attention.

Examples:
    >>> from sink_interp import load_model, describe_attention
    >>> from sink_interp.zoo import tiny_checkpoint
    >>> spec = describe_attention(load_model(str(tiny_checkpoint("gemma2"))))
    >>> [(la.window, la.softcap, round(la.scale, 4)) for la in spec.layers]
    [(8, 5.0, 0.2041), (None, 5.0, 0.2041)]
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ._internal import hooknames
from ._internal.placement import materialized
from ._internal.probe import ProbeSet, as_tokens
from ._internal.scores import softcap
from .masks import AttentionMask, as_mask

#: how the bridge runs a layer's attention
#: ``"rotated"``: the bridge computes attention itself and fires hook_rot_q/hook_rot_k as q and k meet;
#: ``"joint"``: the bridge computes attention itself from hook_q/hook_k (rotating them without a hook where the model
#: has RoPE); ``"alibi"``: like joint, plus Bloom's ALiBi bias; ``"delegated"``: the Hugging Face module computes
#: attention and the bridge reports its weights afterwards (edits at hook_attn_scores/hook_pattern are ignored).
KINDS = ("rotated", "joint", "alibi", "delegated")


#: what still works where scores cannot be rebuilt from q and k
PATTERN_FIX = "method='pattern' (reads the model's own attention weights)"


class UnsupportedAttention(NotImplementedError):
    """The description cannot reproduce this model's attention scores; the message names the feature and the alternative."""


# --------------------------------------------------------------------------- rotary


@dataclass(frozen=True, eq=False)
class Rotary:
    """A rotary position embedding: which dims rotate, how, and the model's own table maker.

    ``style``: ``"half"`` (Llama, GPT-NeoX: ``x cos + rotate_half(x) sin`` on the first ``dims`` dims)
    or ``"interleaved"`` (GPT-J: adjacent pairs). ``in_hooks``: the bridge fires ``hook_rot_q`` /
    ``hook_rot_k`` with rotated q and k; otherwise :meth:`apply` rotates ``hook_q`` / ``hook_k``.
    """

    style: str
    dims: int
    in_hooks: bool
    module: Any = field(repr=False, default=None)
    layer_type: str | None = None
    duplicate_halves: bool = False

    def tables(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """``(cos, sin)`` ``[1 or b, T, dims]`` for ``positions`` (``[T]`` or ``[b, T]``), from the model's rotary module."""
        if self.module is None:
            raise UnsupportedAttention(
                "this rotary embedding has no table module to rotate at other positions; fix: positions='original'"
            )
        pos = positions.reshape(1, -1) if positions.dim() == 1 else positions
        pos = pos.to(x.device)
        params = inspect.signature(self.module.forward).parameters
        with torch.no_grad():
            if "layer_type" in params:
                out = self.module(x, pos, self.layer_type)
            else:
                out = self.module(x, pos)
        a, b = out[0], out[1]
        cos, sin = (b, a) if self.style == "interleaved" else (a, b)  # GPT-J's module returns (sin, cos)
        if self.style == "interleaved":
            cos, sin = cos.repeat_interleave(2, -1), sin.repeat_interleave(2, -1)
        elif self.duplicate_halves:
            cos, sin = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)
        return cos.to(x.dtype), sin.to(x.dtype)

    def apply(self, x: Float[Tensor, "b T heads d"], positions: Tensor | None = None) -> Float[Tensor, "b T heads d"]:
        """``x`` rotated to ``positions`` (default ``0..T-1``) exactly as the model rotates its q and k."""
        T = x.shape[1]
        if positions is None:
            positions = torch.arange(T, device=x.device)
        cos, sin = self.tables(x, positions)
        r = cos.shape[-1]
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # broadcast over heads
        xr, xp = x[..., :r], x[..., r:]
        if self.style == "interleaved":
            x1, x2 = xr[..., ::2], xr[..., 1::2]
            turned = torch.stack((-x2, x1), dim=-1).flatten(-2)
        else:
            turned = torch.cat((-xr[..., r // 2 :], xr[..., : r // 2]), dim=-1)
        out = xr * cos + turned * sin
        return torch.cat([out, xp], dim=-1) if xp.shape[-1] else out

    def to_dict(self) -> dict[str, Any]:
        return {"style": self.style, "dims": self.dims, "in_hooks": self.in_hooks}


# --------------------------------------------------------------------------- one layer


@dataclass(frozen=True, eq=False)
class LayerAttention:
    """How one layer forms its attention (see the module docstring for the formula).

    Examples:
        >>> from sink_interp import tiny_model, describe_attention
        >>> la = describe_attention(tiny_model()).layer(0)
        >>> la.kind, la.q_hook, la.scale
        ('rotated', 'blocks.0.attn.hook_rot_q', 0.25)
    """

    layer: int
    kind: str
    n_heads: int
    n_kv_heads: int
    d_head: int
    scale: float
    q_hook: str
    k_hook: str
    rotary: Rotary | None
    softcap: float | None = None
    window: int | None = None
    alibi: str | None = None
    qk_norm: str | None = None
    module: Any = field(repr=False, default=None)
    unsupported: tuple[str, ...] = ()
    position: str = "nope"
    clip_qkv: float | None = None
    query_scale: str | None = None
    multipliers: tuple[str, ...] = ()
    qk_norm_after_rope: bool = False

    # ------------------------------------------------------------ facts
    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    def kv_head(self, head: int) -> int:
        """The KV head query head ``head`` reads."""
        return head // self.group

    @property
    def qkv_readable(self) -> bool:
        """Whether the hooks give this layer's q, k and v per head as ``[b, T, heads, d_head]`` (not MLA's, not missing)."""
        return not any(u.startswith(("attention bridge", "no hook")) for u in self.unsupported)

    @property
    def scores_hookable(self) -> bool:
        """Whether edits at ``hook_attn_scores`` / ``hook_pattern`` reach the layer's output."""
        return self.kind != "delegated"

    @property
    def rotate_after_hooks(self) -> Rotary | None:
        """The rotation to apply to ``q_hook`` / ``k_hook`` (None when they are final)."""
        return None if self.rotary is None or self.rotary.in_hooks else self.rotary

    @property
    def q_pre_rotary_hook(self) -> str:
        """Queries right before the rotary embedding (after QK-norm where the model has one)."""
        normed = self.qk_norm and not self.qk_norm_after_rope
        return hooknames.block(self.layer, "attn.hook_q_normed") if normed else hooknames.q(self.layer)

    @property
    def k_pre_rotary_hook(self) -> str:
        """Keys right before the rotary embedding (after QK-norm where the model has one)."""
        normed = self.qk_norm and not self.qk_norm_after_rope
        return hooknames.block(self.layer, "attn.hook_k_normed") if normed else hooknames.k(self.layer)

    def sink_logits(self) -> Tensor | None:
        """The learned per-head sink logits ``[H]`` (gpt-oss), read live from the module; None elsewhere."""
        s = getattr(self.module, "sinks", None)
        return s if isinstance(s, Tensor) else None

    @property
    def has_sink_logits(self) -> bool:
        return self.sink_logits() is not None

    def mask(self, mask: AttentionMask | dict[str, Any] | None = None) -> AttentionMask:
        """The keys each query sees: ``mask`` (default causal) within the layer's own sliding window."""
        m = as_mask(mask)
        return m.within(self.window) if self.window is not None else m

    def check_supported(self, what: str, fix: str | None = None) -> None:
        """Raise :class:`UnsupportedAttention` naming the feature when q/k cannot give this layer's scores."""
        if self.unsupported:
            raise UnsupportedAttention(
                f"{what}: layer {self.layer} uses {', '.join(self.unsupported)}, which sink_interp cannot rebuild from q and k; "
                f"fix: {fix or PATTERN_FIX}"
            )

    # ------------------------------------------------------------ scores
    def _bthd(self, x: Tensor, heads_first: bool) -> Tensor:
        """``x`` as ``[b, T, heads, d]``: flat ``[b, T, heads * d]`` is split; a 4-d tensor is read by its head count
        (the bridge fires some QK-norm hooks heads-first, ``[b, heads, T, d]``), by ``heads_first`` where ambiguous."""
        if x.dim() == 3:
            return x.reshape(x.shape[0], x.shape[1], -1, self.d_head)
        if x.dim() != 4:
            return x
        counts = {self.n_heads, self.n_kv_heads}
        if x.shape[2] in counts and x.shape[1] not in counts:
            return x
        if x.shape[1] in counts and x.shape[2] not in counts:
            return x.transpose(1, 2)
        return x.transpose(1, 2) if heads_first else x

    def pre_rotary(self, x: Tensor) -> Float[Tensor, "b T heads d"]:
        """A tensor read at :attr:`q_pre_rotary_hook` / :attr:`k_pre_rotary_hook` as ``[b, T, heads, d]``.

        The bridge fires per-head QK-norm hooks heads-first (``[b, heads, T, d]``) and OLMo-2's all-heads
        norm on the flat ``[b, T, heads * d]``; plain ``hook_q`` / ``hook_k`` are already ``[b, T, heads, d]``.
        With OLMo's ``clip_qkv`` the clamp the model applies before RoPE is applied here too.
        """
        x = self._bthd(x, heads_first=self.qk_norm == "per-head")
        if self.clip_qkv is not None and not self.qk_norm:
            x = x.clamp(-self.clip_qkv, self.clip_qkv)
        return x

    def final(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """A tensor read at :attr:`q_hook` or :attr:`k_hook` (``[b, T, heads, d]``) as it meets the other in the scores."""
        x = self._bthd(x, heads_first=self.qk_norm_after_rope)
        rot = self.rotate_after_hooks
        return x if rot is None else rot.apply(x, positions)

    def final_qk(self, q: Tensor, k: Tensor, positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``q``/``k`` as read at :attr:`q_hook`/:attr:`k_hook` (``[b, T, heads, d]``) turned into the ones that meet."""
        return self.final(q, positions), self.final(k, positions)

    def alibi_bias(self, key_positions: Tensor, dtype: torch.dtype = torch.float32) -> Float[Tensor, "H K"]:
        """The ALiBi term ``[H, K]`` the model adds to its scores for keys at ``key_positions`` (0 without ALiBi)."""
        H = self.n_heads
        if self.alibi is None:
            return torch.zeros(H, key_positions.numel(), dtype=dtype, device=key_positions.device)
        from transformers.models.bloom.modeling_bloom import build_alibi_tensor

        K = int(key_positions.max()) + 1
        table = build_alibi_tensor(torch.ones(1, K, dtype=torch.long, device=key_positions.device), H, torch.float32)
        return table.reshape(H, K)[:, key_positions].to(dtype)

    def logits(
        self,
        q: Float[Tensor, "b H Q d"],
        k: Float[Tensor, "b G K d"],
        key_positions: Tensor | None = None,
        check: bool = True,
    ) -> Float[Tensor, "b H Q K"]:
        """Scaled (soft-capped, ALiBi-biased) scores in float32, before any mask; GQA keys are not copied.

        ``check=False`` skips the refusal of unsupported layers (for a caller that verified the layer,
        or that applies the unsupported features itself, as the training knobs do)."""
        if check:
            self.check_supported("attention scores from q and k")
        b, H, Q, d = q.shape
        G, K = k.shape[1], k.shape[2]
        r = H // G
        s = torch.matmul(q.float().reshape(b, G, r * Q, d), k.float().transpose(-1, -2)).view(b, H, Q, K)
        s = s * self.scale
        s = softcap(s, self.softcap)
        if self.alibi is not None:
            kp = torch.arange(K, device=s.device) if key_positions is None else key_positions.to(s.device)
            s = s + self.alibi_bias(kp)[None, :, None, :]
        return s

    def pattern(
        self,
        q: Float[Tensor, "b H T d"],
        k: Float[Tensor, "b G T d"],
        mask: AttentionMask | None = None,
    ) -> Float[Tensor, "b H T T"]:
        """The attention weights ``[b, H, T, T]`` (float32) from final q and k: a reference for short inputs."""
        T = q.shape[2]
        s = self.logits(q, k)
        vis = self.mask(mask).dense(T, device=s.device)
        s = s.masked_fill(~vis, float("-inf"))
        sinks = self.sink_logits()
        if sinks is not None:
            col = sinks.detach().float().to(s.device).reshape(1, -1, 1, 1).expand(s.shape[0], -1, T, 1)
            return torch.softmax(torch.cat([s, col], -1), -1)[..., :-1]
        return torch.softmax(s, -1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "kind": self.kind,
            "scale": self.scale,
            "softcap": self.softcap,
            "window": self.window,
            "alibi": self.alibi,
            "qk_norm": self.qk_norm,
            "sink_logits": self.has_sink_logits,
            "rotary": None if self.rotary is None else self.rotary.to_dict(),
            "q_hook": self.q_hook,
            "k_hook": self.k_hook,
            "scores_hookable": self.scores_hookable,
            "unsupported": list(self.unsupported),
            "position": self.position,
            "n_heads": self.n_heads,
            "clip_qkv": self.clip_qkv,
            "query_scale": self.query_scale,
            "multipliers": list(self.multipliers),
        }


# --------------------------------------------------------------------------- the whole model


@dataclass(frozen=True, eq=False)
class AttentionSpec:
    """The description of a model's attention, layer by layer, and the block facts around it.

    Examples:
        >>> from sink_interp import tiny_model, describe_attention
        >>> spec = describe_attention(tiny_model(attention="mqa"))
        >>> spec.family, spec.n_kv_heads, spec.positional, spec.layer(1).window
        ('llama', 1, 'rope', None)
    """

    family: str
    architecture: str
    layers: tuple[LayerAttention, ...]
    n_heads: int
    n_kv_heads: int
    d_head: int
    positional: str
    qkv_bias: bool
    parallel: bool
    pre_norm: bool
    norm: str
    gain_offset: float
    fused_qkv: bool
    fused_gate_up: bool
    moe: bool
    knobs: tuple[str, ...] = ()

    def layer(self, layer: int) -> LayerAttention:
        """The description of layer ``layer`` (negative counts from the end)."""
        L = len(self.layers)
        if isinstance(layer, bool) or not isinstance(layer, int) or not -L <= layer < L:
            raise ValueError(f"layer must be an integer in 0..{L - 1}, got {layer!r}")
        return self.layers[layer]

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def windows(self) -> list[int | None]:
        return [la.window for la in self.layers]

    @property
    def has_sink_logits(self) -> bool:
        return any(la.has_sink_logits for la in self.layers)

    @property
    def softcap(self) -> float | None:
        caps = {la.softcap for la in self.layers}
        return caps.pop() if len(caps) == 1 else None

    @property
    def scores_hookable(self) -> bool:
        return all(la.scores_hookable for la in self.layers)

    @property
    def unsupported(self) -> list[str]:
        return sorted({u for la in self.layers for u in la.unsupported})

    def features(self) -> list[str]:
        """The ways this model departs from plain causal softmax attention with RoPE, in words."""
        out = []
        scales = {round(la.scale, 6) for la in self.layers}
        if scales != {round(self.d_head**-0.5, 6)}:
            out.append("scale " + "/".join(f"{s:g}" for s in sorted(scales)))
        if any(la.softcap for la in self.layers):
            out.append(f"soft-cap {self.softcap:g}" if self.softcap else "soft-cap")
        ws = self.windows
        if any(w is not None for w in ws):
            out.append(
                "sliding window "
                + ("on all layers" if all(w is not None for w in ws) else "on some layers")
                + f" ({max(w for w in ws if w)})"
            )
        heads = [la.n_heads for la in self.layers]
        if len(set(heads)) > 1:
            out.append("per-layer head counts (" + "/".join(str(h) for h in heads) + ")")
        positions = [la.position for la in self.layers]
        if any(p == "alibi" for p in positions):
            out.append("MPT's ALiBi" if self.family == "mpt" else "ALiBi")
        if self.positional == "sinusoidal":
            out.append("sinusoidal absolute positions")
        if any(p == "rope inside MLA" for p in positions):
            out.append("MLA (latent attention; RoPE on part of each head, inside the bridge)")
        inside = sorted({p for p in positions if p.startswith("rope inside ") and p != "rope inside MLA"})
        if inside:
            out.append("RoPE applied " + ", ".join(p[5:] for p in inside))
        nope = [la.layer for la in self.layers if la.position == "nope"]
        if nope and len(nope) < len(self.layers) and any(p.startswith("rope") for p in positions):
            out.append(f"NoPE on layer(s) {nope}")
        clip = {la.clip_qkv for la in self.layers if la.clip_qkv is not None}
        if clip:
            out.append(f"clip_qkv {max(clip):g} (q, k, v clamped)")
        qs = {la.query_scale for la in self.layers if la.query_scale}
        if qs:
            out.append("position-dependent query scale (" + ", ".join(sorted(qs)) + ")")
        mult = sorted({m for la in self.layers for m in la.multipliers})
        if mult:
            out.append("multipliers (" + ", ".join(mult) + ")")
        if self.has_sink_logits:
            out.append("learned sink logits")
        if any(la.qk_norm for la in self.layers):
            out.append("QK-norm")
        rot = next((la.rotary for la in self.layers if la.rotary is not None), None)
        if rot is not None and (rot.style != "half" or rot.dims < self.d_head):
            label = {"half": "rotate-half", "interleaved": "interleaved", "adjacent": "adjacent-pair"}.get(rot.style, rot.style)
            out.append(f"{label} rotary on {rot.dims}/{self.d_head} dims")
        if self.n_kv_heads not in (self.n_heads,) and len(set(heads)) == 1:
            out.append("MQA" if self.n_kv_heads == 1 else f"GQA ({self.n_heads} q / {self.n_kv_heads} kv heads)")
        if self.qkv_bias:
            out.append("QKV bias")
        if self.parallel:
            out.append("parallel attention + MLP")
        if not self.pre_norm:
            out.append("post-norm (ln_1 after attention)" if self.family in _POST_NORM else "no norm before attention")
        if self.gain_offset:
            out.append("norm gain 1 + w")
        if self.fused_qkv:
            out.append("fused qkv")
        if self.fused_gate_up:
            out.append("fused gate_up")
        if self.moe:
            out.append("mixture of experts")
        if not self.scores_hookable:
            out.append("attention inside HF (scores rebuilt from q, k, v)")
        if self.knobs:
            out.append("training knobs: " + ", ".join(self.knobs))
        return out

    def norm_gain(self, model: Any, layer: int | None, which: str = "ln1") -> tuple[Tensor | None, Tensor | None]:
        """Effective gain ``g`` and bias of ``blocks[layer].<which>`` (``ln_final`` for layer None), float32 on the CPU.

        The gain is what multiplies the normalised input (``1 + w`` for Gemma's RMSNorm); ``(None, None)``
        when the block has no such norm. ``which`` may name a submodule path, e.g. ``"attn.k_norm"``.
        """
        module = getattr(model, "ln_final", None) if layer is None else model.blocks[layer]
        for part in [] if layer is None else which.split("."):
            module = getattr(module, part, None)
        if module is None:
            return None, None
        with materialized(module):  # weights offloaded by a device_map hold their values only in here
            w = getattr(module, "weight", None)
            if w is None:
                w = getattr(module, "w", None)
            if not isinstance(w, Tensor):
                return None, None
            g = w.detach().float().cpu().clone()
            if getattr(module, "uses_weight_offset", False):
                g = g + 1.0
            b = getattr(getattr(module, "original_component", None), "bias", None)
            if b is None:
                b = getattr(module, "b", None)
            b = b.detach().float().cpu().clone() if isinstance(b, Tensor) else None
        return g, b

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "architecture": self.architecture,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "d_head": self.d_head,
            "positional": self.positional,
            "qkv_bias": self.qkv_bias,
            "parallel": self.parallel,
            "pre_norm": self.pre_norm,
            "norm": self.norm,
            "gain_offset": self.gain_offset,
            "fused_qkv": self.fused_qkv,
            "fused_gate_up": self.fused_gate_up,
            "moe": self.moe,
            "knobs": list(self.knobs),
            "features": self.features(),
            "layers": [la.to_dict() for la in self.layers],
        }

    def summary(self) -> str:
        """One line: family and its departures from plain attention."""
        return f"{self.family} ({self.architecture}): " + (", ".join(self.features()) or "plain causal softmax attention")


# --------------------------------------------------------------------------- reading a model

_CACHE: weakref.WeakKeyDictionary[Any, AttentionSpec] = weakref.WeakKeyDictionary()
_REGISTERED: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def register_attention_facts(
    model: Any, *, positional: str | None = None, attention_knobs: Sequence[str] = (), other_knobs: Sequence[str] = ()
) -> None:
    """Facts the config cannot tell: sink_interp's training laboratory attaches its knobs as permanent hooks.

    ``positional`` overrides the positional scheme (learned or ALiBi positions added by hooks);
    ``attention_knobs`` change how scores or weights form (kernels, biases, masks, ALiBi): every layer then
    lists them as unsupported, so the ``lse`` method refuses by name; ``other_knobs`` change the hidden
    states only (post-norm, other FFNs), which the hooks engine sees but a fused twin would not.
    """
    _REGISTERED[model] = {"positional": positional, "attention_knobs": tuple(attention_knobs), "other_knobs": tuple(other_knobs)}
    _CACHE.pop(model, None)


def unwrap(obj: Any) -> Any:
    """The Hugging Face module a TransformerLens bridge component wraps (the object itself otherwise)."""
    while type(obj).__module__.startswith("transformer_lens") and getattr(obj, "original_component", None) is not None:
        obj = obj.original_component
    return obj


def _bridge_kind(attn: Any) -> str:
    from transformer_lens.model_bridge.generalized_components import attention as tl_attention

    mods = {}
    for modname, cls in (
        ("position_embeddings_attention", "PositionEmbeddingsAttentionBridge"),
        ("joint_qkv_position_embeddings_attention", "JointQKVPositionEmbeddingsAttentionBridge"),
        ("joint_qkv_attention", "JointQKVAttentionBridge"),
        ("bloom_attention", "BloomAttentionBridge"),
        ("alibi_joint_qkv_attention", "ALiBiJointQKVAttentionBridge"),
    ):
        try:
            module = __import__(f"transformer_lens.model_bridge.generalized_components.{modname}", fromlist=[cls])
            mods[cls] = getattr(module, cls)
        except (ImportError, AttributeError):  # pragma: no cover - TransformerLens layout changed
            pass

    def isa(name: str) -> bool:
        return name in mods and isinstance(attn, mods[name])

    if isa("PositionEmbeddingsAttentionBridge"):
        return "rotated"
    if isa("ALiBiJointQKVAttentionBridge"):
        return "alibi-falcon"
    if isa("BloomAttentionBridge"):
        return "alibi"
    if isa("JointQKVPositionEmbeddingsAttentionBridge") or isa("JointQKVAttentionBridge"):
        return "joint"
    if type(attn).forward is tl_attention.AttentionBridge.forward:
        return "delegated"
    return "unknown"


def _rotary_module(hf_model: Any) -> Any:
    """The model-level rotary table maker (``model.rotary_emb``...), unwrapped; None when there is none."""
    best = None
    for name, mod in hf_model.named_modules():
        inner = unwrap(mod)
        if type(inner).__name__.endswith("RotaryEmbedding") and ".layers." not in f".{name}." and ".h." not in f".{name}.":
            if best is None or name.count(".") < best[0].count("."):
                best = (name, inner)
    return None if best is None else best[1]


def _rotary_fraction(cfg: Any) -> float:
    d = cfg.to_dict()
    for src in (d.get("rope_parameters"), d.get("rope_scaling"), d):
        if isinstance(src, dict):
            for key in ("partial_rotary_factor", "rotary_pct"):
                if src.get(key) is not None:
                    return float(src[key])
    return 1.0


def _layer_types(cfg: Any, n_layers: int) -> list[str]:
    types = getattr(cfg, "layer_types", None)
    if isinstance(types, (list, tuple)) and len(types) >= n_layers:
        return [str(t) for t in types[:n_layers]]
    return ["full_attention"] * n_layers


def _window(cfg: Any, layer_type: str) -> int | None:
    w = getattr(cfg, "sliding_window", None)
    if not w or getattr(cfg, "use_sliding_window", True) is False and "sliding" not in layer_type:
        return None
    if getattr(cfg, "layer_types", None) is not None:
        return int(w) if "sliding" in layer_type else None
    return int(w)


def _uses_rope(cfg: Any, layer: int, hf_attn: Any) -> bool:
    no_rope = getattr(cfg, "no_rope_layers", None)
    if isinstance(no_rope, (list, tuple)) and layer < len(no_rope):
        return bool(no_rope[layer])  # SmolLM3 / Llama-4: 1 = this layer uses RoPE
    use = getattr(hf_attn, "use_rope", None)
    return True if use is None else bool(use)


def check_head_counts(spec: AttentionSpec, layers: Sequence[int], what: str) -> int:
    """The query-head count shared by ``layers``; one line naming the counts where they differ (Laguna sets them per layer).

    Reports hold one ``[layer, head]`` grid, so an analysis runs on layers that share a head count.
    """
    counts: dict[int, list[int]] = {}
    for layer in layers:
        counts.setdefault(spec.layer(layer).n_heads, []).append(int(layer))
    if len(counts) > 1:
        groups = "; ".join(f"{h} heads: layers {ls}" for h, ls in sorted(counts.items()))
        first = next(iter(sorted(counts.items())))[1]
        raise UnsupportedAttention(
            f"{what}: this {spec.family} model has per-layer head counts ({groups}), and a report holds one head count "
            f"for all its layers; fix: analyse the layers of one head count at a time, e.g. layers={first}"
        )
    return next(iter(counts)) if counts else spec.n_heads


#: families whose norms follow attention and the MLP (GPT-1: ``ln_1(x + attn(x))``); W_K reads the raw residual
_POST_NORM = frozenset({"openai-gpt"})


#: attention bridges that read an attribute of the Hugging Face module that newer transformers releases dropped
_BRIDGE_NEEDS = {"CodeGenAttentionBridge": "embed_positions"}


def _mixer(layer: Any) -> str:
    """A non-attention block in words: its token mixer (``mamba (JambaMambaMixer)``), else the block's class."""
    skip = ("norm", "mlp", "feed_forward", "ffn", "moe", "dropout", "act", "hook")
    if isinstance(layer, torch.nn.Module):
        for name, child in layer.named_children():
            if not any(w in name.lower() for w in skip):
                return f"{type(layer).__name__} with {name} ({type(unwrap(child)).__name__})"
    return type(layer).__name__


def _check_blocks(model: Any, family: str, arch: str) -> None:
    """Refuse, in one line, a model whose blocks are not all attention, or whose bridge exposes no attention weights."""
    blocks = list(model.blocks)
    other = [l for l, blk in enumerate(blocks) if getattr(blk, "attn", None) is None]
    if other:
        kinds = sorted({_mixer(unwrap(blocks[l])) for l in other})
        attn_layers = [l for l in range(len(blocks)) if l not in other]
        what = (
            f"a hybrid: block(s) {other} are {', '.join(kinds)}"
            if attn_layers
            else f"not attention: its blocks are {', '.join(kinds)}"
        )
        raise UnsupportedAttention(
            f"{arch} ({family}) is {what}"
            + (f" (attention only in block(s) {attn_layers})" if attn_layers else "")
            + "; sink_interp analyses models whose every block is attention (see docs/support.md)"
        )
    for blk in blocks:
        attn, hf_attn = blk.attn, unwrap(blk.attn)
        for bridge_name, needs in _BRIDGE_NEEDS.items():
            if type(attn).__name__ == bridge_name and not hasattr(hf_attn, needs):
                import transformers

                raise UnsupportedAttention(
                    f"{arch} ({family}): the TransformerLens bridge reads {type(hf_attn).__name__}.{needs}, which "
                    f"transformers {transformers.__version__} no longer has, so this model cannot run through the bridge; "
                    "see docs/support.md"
                )
    missing = [nm for nm in (hooknames.pattern(0), hooknames.resid_pre(0)) if nm not in model.hook_dict]
    if missing:
        raise UnsupportedAttention(
            f"{arch} ({family}): the TransformerLens bridge exposes no {', '.join(missing)} for this architecture "
            "(its attention is wrapped as a generic component), so no analysis can read its attention; see docs/support.md"
        )


def _query_scale(cfg: Any) -> str | None:
    """A position-dependent query scale the model applies after RoPE (Ministral-3 / Llama-4 ``llama_4_scaling_beta``)."""
    if cfg is None:
        return None
    rp = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None)
    beta = rp.get("llama_4_scaling_beta") if isinstance(rp, dict) else None
    if beta:
        return f"llama_4_scaling_beta {float(beta):g}"
    if getattr(cfg, "attn_temperature_tuning", False) and getattr(cfg, "model_type", "").startswith("llama4"):
        return "attn_temperature_tuning"
    return None


def _multipliers(cfg: Any) -> tuple[str, ...]:
    """Scalar multipliers on attention's input or keys (Falcon-H1's muP multipliers), in words."""
    out = []
    for name in ("key_multiplier", "attention_in_multiplier"):
        v = getattr(cfg, name, None) if cfg is not None else None
        if isinstance(v, (int, float)) and not isinstance(v, bool) and float(v) != 1.0:
            out.append(f"{name} {float(v):g}")
    return tuple(out)


def _layer_heads(hf_attn: Any, d: int, default: int) -> int:
    """Query heads of one layer (Laguna sets them per layer), from the module's own attributes or projection."""
    for name in ("num_heads", "num_attention_heads", "n_heads"):
        v = getattr(hf_attn, name, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    q = getattr(hf_attn, "q_proj", None)
    out = getattr(q, "out_features", None)
    hd = getattr(hf_attn, "head_dim", None) or d
    if (
        isinstance(out, int)
        and isinstance(hd, int)
        and hd > 0
        and out % hd == 0
        and getattr(hf_attn, "kv_a_proj_with_mqa", None) is None
    ):
        return out // hd
    return default


def _sinusoidal(hf_model: Any) -> bool:
    """Whether the model adds fixed sinusoidal position embeddings (XGLM)."""
    if hf_model is None:
        return False
    return any("Sinusoidal" in type(m).__name__ for _, m in hf_model.named_modules())


def describe_attention(model: Any) -> AttentionSpec:
    """Read how every layer of ``model`` (a TransformerBridge) forms its attention.

    Cached per model. Features sink_interp cannot rebuild from q and k are listed per layer
    (``LayerAttention.unsupported``); analyses that need them refuse with the feature named.

    Examples:
        >>> from sink_interp import load_model
        >>> from sink_interp.zoo import tiny_checkpoint
        >>> spec = describe_attention(load_model(str(tiny_checkpoint("gpt_neox"))))
        >>> la = spec.layer(0)
        >>> la.kind, la.q_hook, la.rotary.dims, spec.parallel
        ('joint', 'blocks.0.attn.hook_q', 4, True)
    """
    try:
        cached = _CACHE.get(model)
    except TypeError:  # not weak-referenceable
        cached = None
    if cached is not None:
        return cached
    spec = _describe(model)
    try:
        _CACHE[model] = spec
    except TypeError:  # pragma: no cover
        pass
    return spec


def _describe(model: Any) -> AttentionSpec:
    cfg = model.cfg
    hf_model = getattr(model, "original_model", None)
    hf_cfg = getattr(hf_model, "config", None)
    if hf_cfg is not None and hasattr(hf_cfg, "get_text_config"):
        hf_cfg = hf_cfg.get_text_config()
    L, H, d = int(cfg.n_layers), int(cfg.n_heads), int(cfg.d_head)
    G = int(getattr(cfg, "n_key_value_heads", None) or H)
    family = str(getattr(hf_cfg, "model_type", "") or "unknown")
    arch = type(hf_model).__name__ if hf_model is not None else type(model).__name__
    types = _layer_types(hf_cfg, L) if hf_cfg is not None else ["full_attention"] * L
    rot_module = _rotary_module(hf_model) if hf_model is not None else None
    fraction = _rotary_fraction(hf_cfg) if hf_cfg is not None else 1.0
    points = model.hook_dict
    positional_cfg = str(getattr(cfg, "positional_embedding_type", "") or "").lower()
    try:
        registered = _REGISTERED.get(model, {})
    except TypeError:  # not weak-referenceable
        registered = {}

    _check_blocks(model, family, arch)
    mpt_alibi = family == "mpt"
    clip_qkv = getattr(hf_cfg, "clip_qkv", None) if hf_cfg is not None else None
    if clip_qkv is None and hf_cfg is not None:
        clip_qkv = (
            (getattr(hf_cfg, "attn_config", None) or {}).get("clip_qkv")
            if isinstance(getattr(hf_cfg, "attn_config", None), dict)
            else None
        )
    query_scale = _query_scale(hf_cfg)
    multipliers = _multipliers(hf_cfg)
    layers = []
    for l in range(L):
        attn = model.blocks[l].attn
        hf_attn = unwrap(attn)
        kind = _bridge_kind(attn)
        unsupported: list[str] = []
        softcap = getattr(hf_attn, "attn_logit_softcapping", None)
        window = _window(hf_cfg, types[l]) if hf_cfg is not None else None
        if "chunked" in types[l]:
            unsupported.append("chunked attention")
        alibi = None
        rotary = None
        subs = getattr(attn, "submodules", {}) or {}
        qk_norm = None
        if "q_norm" in subs or "k_norm" in subs:
            qk_norm = "all-heads" if getattr(attn, "_qk_norm_phase", None) == "pre_reshape" else "per-head"
        if kind == "rotated":
            scale = float(getattr(hf_attn, "scaling", d**-0.5))
            q_hook, k_hook = hooknames.rot_q(l), hooknames.rot_k(l)
            if getattr(cfg, "qk_norm_after_rope", False) and qk_norm:
                q_hook, k_hook = hooknames.block(l, "attn.hook_q_normed"), hooknames.block(l, "attn.hook_k_normed")
            if rot_module is not None and _uses_rope(hf_cfg, l, hf_attn) and positional_cfg in ("rotary", ""):
                if getattr(cfg, "rotary_interleaved_cos_sin", False) or getattr(cfg, "rotary_adjacent_pairs", False):
                    style = "adjacent"
                else:
                    style = "half"
                rotary = Rotary(
                    style, int(round(d * fraction)), True, rot_module, layer_type=types[l], duplicate_halves=family == "gpt_oss"
                )
        elif kind in ("joint", "alibi", "alibi-falcon"):
            scale = d**-0.5
            if getattr(attn.config, "scale_attn_by_inverse_layer_idx", False) and getattr(attn, "_layer_idx", None) is not None:
                scale /= float(attn._layer_idx + 1)
            q_hook, k_hook = hooknames.q(l), hooknames.k(l)
            if getattr(attn, "requires_position_embeddings", False) and rot_module is not None:
                rotary = Rotary("half", int(round(d * fraction)), False, rot_module)
            if kind == "alibi":
                alibi = "bloom"
            elif kind == "alibi-falcon" and mpt_alibi:
                unsupported.append("MPT's ALiBi (its own slopes, alibi_bias_max, which sink_interp does not rebuild)")
            elif kind == "alibi-falcon":
                unsupported.append("Falcon's ALiBi (added twice in Hugging Face's eager attention)")
        elif kind == "delegated":
            scale = float(getattr(hf_attn, "scaling", d**-0.5))
            q_hook, k_hook = hooknames.q(l), hooknames.k(l)
            if family == "gpt_neo":  # GPT-Neo does not scale q.k; its "local" layers see the last window_size keys
                scale = 1.0
                if getattr(hf_attn, "attention_type", "global") == "local":
                    window = int(hf_cfg.window_size)
            elif not hasattr(hf_attn, "scaling"):
                unsupported.append(f"{type(hf_attn).__name__} without a 'scaling' attribute (unknown score scale)")
            if family in ("gptj",) and rot_module is not None:
                rd = getattr(hf_cfg, "rotary_dim", None) or d
                rotary = Rotary("interleaved", int(rd), False, rot_module)
            elif rot_module is not None:
                unsupported.append(f"rotary embedding applied inside {type(hf_attn).__name__}")
        else:
            scale = float(getattr(hf_attn, "scaling", d**-0.5))
            q_hook, k_hook = hooknames.q(l), hooknames.k(l)
            unsupported.append(f"attention bridge {type(attn).__name__}")
        if rotary is not None and rotary.style == "adjacent" and not rotary.in_hooks:
            unsupported.append("adjacent-pair rotary")
        for nm in (q_hook, k_hook):
            if nm not in points:
                unsupported.append(f"no hook {nm}")
        if type(attn).__name__.startswith("MLA"):
            position = "rope inside MLA"
        elif rotary is not None:
            position = "rope"
        elif kind in ("alibi", "alibi-falcon"):
            position = "alibi"
        elif rot_module is not None and _uses_rope(hf_cfg, l, hf_attn) and positional_cfg in ("rotary", ""):
            position = f"rope inside {type(hf_attn).__name__}"
        else:
            position = "nope"
        heads_l = _layer_heads(hf_attn, d, H)
        if heads_l != H:
            unsupported.append(f"per-layer head counts (layer {l} has {heads_l} heads, the config {H})")
        if registered.get("attention_knobs"):
            unsupported.append("training knobs on attention (" + ", ".join(registered["attention_knobs"]) + ")")
        layers.append(
            LayerAttention(
                layer=l,
                kind=kind if kind in KINDS else "unknown",
                n_heads=heads_l,
                n_kv_heads=G,
                d_head=d,
                scale=scale,
                q_hook=q_hook,
                k_hook=k_hook,
                rotary=rotary,
                softcap=None if softcap is None else float(softcap),
                window=window,
                alibi=alibi,
                qk_norm=qk_norm,
                module=hf_attn,
                unsupported=tuple(dict.fromkeys(unsupported)),
                position=position,
                clip_qkv=None if clip_qkv is None else float(clip_qkv),
                query_scale=query_scale,
                multipliers=multipliers,
                qk_norm_after_rope=bool(getattr(cfg, "qk_norm_after_rope", False) and qk_norm),
            )
        )

    hf_first = unwrap(model.blocks[0].attn)
    names = {n for n, _ in hf_first.named_children()} if isinstance(hf_first, torch.nn.Module) else set()
    fused_qkv = bool(names & {"qkv_proj", "query_key_value", "c_attn", "Wqkv", "W_pack"})
    qkv_bias = False
    for nm in ("q_proj", "k_proj", "v_proj", "qkv_proj", "query_key_value", "c_attn"):
        sub = getattr(hf_first, nm, None)
        if sub is not None and getattr(sub, "bias", None) is not None:
            qkv_bias = True
    mlp = unwrap(model.blocks[0].mlp) if hasattr(model.blocks[0], "mlp") else None
    mlp_names = {n for n, _ in mlp.named_modules()} if isinstance(mlp, torch.nn.Module) else set()
    fused_gate_up = any(n.endswith("gate_up_proj") for n in mlp_names) or any(
        "gate_up_proj" in n for n, _ in (mlp.named_parameters() if isinstance(mlp, torch.nn.Module) else [])
    )
    moe = bool(
        getattr(hf_cfg, "num_local_experts", None)
        or getattr(hf_cfg, "num_experts", None)
        or any("expert" in n for n in mlp_names)
    )
    parallel = hooknames.resid_mid(0) not in points
    pre_norm = hooknames.ln1_normalized(0) in points and family not in _POST_NORM
    ln = getattr(model.blocks[0], "ln1", None) or getattr(model.blocks[0], "ln2", None)
    norm = "rms" if getattr(ln, "uses_rms_norm", str(getattr(cfg, "normalization_type", "")).startswith("RMS")) else "layer"
    gain_offset = 1.0 if getattr(ln, "uses_weight_offset", False) else 0.0
    if any(la.position == "alibi" for la in layers):
        positional = "alibi"
    elif any(la.position.startswith("rope") for la in layers):
        positional = "rope" if all(la.position.startswith("rope") for la in layers) else "rope+nope"
    elif _sinusoidal(hf_model):
        positional = "sinusoidal"
    elif "pos_embed" in dict(model.named_children()):
        positional = "learned"
    else:
        positional = "nope"
    positional = registered.get("positional") or positional
    knobs = tuple(registered.get("attention_knobs", ())) + tuple(registered.get("other_knobs", ()))
    return AttentionSpec(
        family=family,
        architecture=arch,
        layers=tuple(layers),
        n_heads=H,
        n_kv_heads=G,
        d_head=d,
        positional=positional,
        qkv_bias=qkv_bias,
        parallel=parallel,
        pre_norm=pre_norm,
        norm=norm,
        gain_offset=gain_offset,
        fused_qkv=fused_qkv,
        fused_gate_up=fused_gate_up,
        moe=moe,
        knobs=knobs,
    )


# --------------------------------------------------------------------------- checking it


def qk_hooks(model: Any, layers: Sequence[int] | None = None) -> list[str]:
    """The hook names that carry every chosen layer's q and k (see :attr:`LayerAttention.q_hook`)."""
    spec = describe_attention(model)
    out: list[str] = []
    for l in range(spec.n_layers) if layers is None else layers:
        la = spec.layer(l)
        out += [la.q_hook, la.k_hook]
    return out


def check_attention(model: Any, tokens: Tensor | ProbeSet | None = None, *, length: int = 24, seed: int = 0) -> dict[int, float]:
    """``{layer: max |A_description - A_model|}``: the description against the model's own ``hook_pattern``.

    Runs one short forward (default: one random sample of ``length`` tokens) and rebuilds each
    layer's pattern from its q and k with :meth:`LayerAttention.pattern`. Layers the description
    cannot rebuild are left out.

    Examples:
        >>> from sink_interp import tiny_model
        >>> max(check_attention(tiny_model()).values()) < 1e-5
        True
    """
    from .capture import Keep, model_device, run_reducers

    spec = describe_attention(model)
    if tokens is None:
        gen = torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, int(model.cfg.d_vocab), (1, length), generator=gen)
    tokens = as_tokens(tokens)
    layers = [la for la in spec.layers if not la.unsupported]
    names = [n for la in layers for n in (la.q_hook, la.k_hook, hooknames.pattern(la.layer))]
    keep = Keep(names, dtype=None)
    run_reducers(model, tokens.to(model_device(model)), [keep], progress=False, stop_early=True)
    got = keep.result()
    out = {}
    for la in layers:
        try:
            q, k = la.final_qk(got[la.q_hook], got[la.k_hook])
            A = la.pattern(q.transpose(1, 2), k.transpose(1, 2))
            out[la.layer] = float((A - got[hooknames.pattern(la.layer)].float()).abs().max())
        except (RuntimeError, ValueError, IndexError):  # q and k that do not fit together: not reproduced
            out[la.layer] = float("inf")
    return out


#: largest |difference| from the model's own attention weights or sink scores accepted as "the same", by weight dtype
ATTENTION_ATOL = {torch.float32: 1e-4, torch.float64: 1e-6, torch.float16: 2e-2, torch.bfloat16: 2e-2}


def attention_atol(model: Any) -> float:
    """The tolerance of :data:`ATTENTION_ATOL` for ``model``'s weight dtype."""
    return ATTENTION_ATOL.get(next(model.parameters()).dtype, 2e-2)


#: tokens of the check that gates rebuilding a layer's attention from q and k (more where a window is short)
VERIFY_TOKENS = 64
_VERIFIED: weakref.WeakKeyDictionary[Any, dict[int, float]] = weakref.WeakKeyDictionary()


def verify_attention(model: Any, layers: Sequence[int], what: str, fix: str | None = None) -> None:
    """Refuse, by name, to rebuild attention from q and k where the description does not reproduce the model.

    Interventions that form scores again from q and k (prefix masks; every edit on layers whose
    attention runs inside Hugging Face) call this first. The comparison with the model's own
    ``hook_pattern`` (:func:`check_attention`, once per model, on ``VERIFY_TOKENS`` tokens or past
    the shortest window) is cached.
    """
    spec = describe_attention(model)
    for layer in layers:
        spec.layer(layer).check_supported(what, fix)
    try:
        diffs = _VERIFIED.get(model)
    except TypeError:  # pragma: no cover - not weak-referenceable
        diffs = None
    if diffs is None:
        windows = [w for w in spec.windows if w]
        length = max(VERIFY_TOKENS, min(windows) + 16) if windows else VERIFY_TOKENS
        length = min(length, int(getattr(model.cfg, "n_ctx", length) or length))
        diffs = check_attention(model, length=length)
        try:
            _VERIFIED[model] = diffs
        except TypeError:  # pragma: no cover
            pass
    tol = attention_atol(model)
    bad = {layer: diffs[layer] for layer in layers if layer in diffs and not diffs[layer] <= tol}
    if bad:
        worst = max(bad.values())
        raise UnsupportedAttention(
            f"{what}: the description of layer(s) {sorted(bad)} does not reproduce this {spec.family} model's own "
            f"attention (max |diff| {worst:.2e}), so sink_interp will not rebuild it from q and k; fix: use analyses "
            "that read the model's own weights (method='pattern', AblateDims), and see docs/support.md"
        )


_REROTATED: weakref.WeakKeyDictionary[Any, dict[int, float]] = weakref.WeakKeyDictionary()


def rerotation_blockers(la: LayerAttention) -> list[str]:
    """What stops re-rotating layer ``la``'s queries to other positions from q before RoPE, in words (empty: nothing)."""
    out = []
    if la.position == "alibi":
        out.append("ALiBi (a bias by absolute key position)")
    elif la.position == "rope inside MLA":
        out.append("MLA's internal RoPE")
    elif la.position.startswith("rope inside "):
        out.append("RoPE applied " + la.position[5:])
    if la.position == "rope" and la.rotary is not None and la.rotary.module is None:
        out.append(f"{la.rotary.style} rotary without a table module")
    elif la.position == "rope" and la.rotary is not None and la.rotary.style not in ("half", "interleaved"):
        out.append(f"{la.rotary.style}-pair rotary, which sink_interp does not rotate itself")
    if la.query_scale:
        out.append(f"a position-dependent query scale ({la.query_scale})")
    if la.qk_norm_after_rope:
        out.append("QK-norm after RoPE")
    said = ("rotary embedding applied inside", "attention bridge MLA") if out else ("\0",)
    out.extend(u for u in la.unsupported if not u.startswith(said))
    return out


def verify_rerotation(model: Any, layers: Sequence[int], what: str) -> None:
    """Refuse, by name, to rotate queries to other positions where the description cannot rebuild the model's own.

    :class:`~sink_interp.StreamingWindow` with cache positions rotates each layer's queries (read before
    RoPE) to a new position. Features that rotation cannot carry (a position-dependent query scale,
    ALiBi, MLA's internal RoPE, RoPE inside a Hugging Face module) are refused by name; then, once per
    model, the queries rotated back to their own positions on a probe of ``VERIFY_TOKENS`` random tokens
    are compared with the model's own rotated queries, and a layer off by more than :func:`attention_atol`
    (relative to the largest query entry) is refused too.
    """
    spec = describe_attention(model)
    for layer in layers:
        why = rerotation_blockers(spec.layer(layer))
        if why:
            raise UnsupportedAttention(
                f"{what}: layer {layer} of this {spec.family} model uses {', '.join(why)}, which sink_interp cannot "
                "rebuild at other positions; fix: rope_positions='original' (only the mask changes)"
            )
    verify_attention(model, layers, what)
    rotated = [spec.layer(layer) for layer in layers if spec.layer(layer).rotary is not None]
    if not rotated:
        return
    try:
        errs = _REROTATED.get(model)
    except TypeError:  # pragma: no cover
        errs = None
    if errs is None:
        from .capture import Keep, model_device, run_reducers

        gen = torch.Generator().manual_seed(0)
        length = min(VERIFY_TOKENS, int(getattr(model.cfg, "n_ctx", VERIFY_TOKENS) or VERIFY_TOKENS))
        tokens = torch.randint(0, int(model.cfg.d_vocab), (1, length), generator=gen)
        las = [la for la in spec.layers if la.rotary is not None and not rerotation_blockers(la)]
        keep = Keep(list(dict.fromkeys(n for la in las for n in (la.q_pre_rotary_hook, la.q_hook))), dtype=None)
        run_reducers(model, tokens.to(model_device(model)), [keep], progress=False, stop_early=True)
        got = keep.result()
        errs = {}
        for la in las:
            try:
                want = la.final(got[la.q_hook]).float()
                mine = la.rotary.apply(la.pre_rotary(got[la.q_pre_rotary_hook]).float())
                errs[la.layer] = float((mine - want).abs().max() / want.abs().max().clamp_min(1e-30))
            except (RuntimeError, ValueError, IndexError):
                errs[la.layer] = float("inf")
        try:
            _REROTATED[model] = errs
        except TypeError:  # pragma: no cover
            pass
    tol = attention_atol(model)
    bad = {la.layer: errs.get(la.layer, float("inf")) for la in rotated if not errs.get(la.layer, float("inf")) <= tol}
    if bad:
        raise UnsupportedAttention(
            f"{what}: on a probe, the queries of layer(s) {sorted(bad)} rotated from before RoPE differ from this "
            f"{spec.family} model's own by {max(bad.values()):.2e} (relative; tolerance {tol:g}), so sink_interp will not "
            "rotate them to other positions; fix: rope_positions='original' (only the mask changes)"
        )


_CONTEXT_WARNED: weakref.WeakSet[Any] = weakref.WeakSet()


def check_context(model: Any, length: int) -> None:
    """Refuse ``length`` beyond the context of a model with learned positions; warn once for other schemes.

    A learned position table has no row past ``model.cfg.n_ctx``; rotary, ALiBi and position-free
    models run at any length but were trained up to it, so their numbers past it describe extrapolation.

    Examples:
        >>> from sink_interp import tiny_model
        >>> m = tiny_model(attention="mha", positions="learned", norm="layer", n_ctx=32)
        >>> check_context(m, 32)
        >>> check_context(m, 33)
        Traceback (most recent call last):
        ...
        ValueError: length 33 exceeds the context of this model (32 tokens) and its positions are learned: there is no position embedding for tokens 33 on; fix: length <= 32 (CLI: --length 32)
    """
    n_ctx = int(getattr(model.cfg, "n_ctx", 0) or 0)
    if n_ctx <= 0 or length <= n_ctx:
        return
    positional = describe_attention(model).positional
    if positional == "learned":
        raise ValueError(
            f"length {length} exceeds the context of this model ({n_ctx} tokens) and its positions are learned: there is "
            f"no position embedding for tokens {n_ctx + 1} on; fix: length <= {n_ctx} (CLI: --length {n_ctx})"
        )
    try:
        if model in _CONTEXT_WARNED:
            return
        _CONTEXT_WARNED.add(model)
    except TypeError:  # pragma: no cover - not weak-referenceable
        pass
    import warnings

    warnings.warn(
        f"length {length} is beyond the context this model was built for ({n_ctx} tokens, {positional} positions): "
        "the numbers describe extrapolation past its training length",
        stacklevel=4,
    )


def check_model_tokens(model: Any, tokens: Any, min_length: int = 2, name: str = "tokens") -> Tensor:
    """:func:`sink_interp._internal.errors.check_tokens` for ``model``'s vocabulary, then :func:`check_context`.

    ``tokens`` is a tensor (or list) of ids or a :class:`~sink_interp.ProbeSet`; the checked plain tensor is returned.
    """
    from ._internal.errors import check_tokens

    toks = check_tokens(tokens, d_vocab=int(model.cfg.d_vocab), min_length=min_length, name=name)
    check_context(model, int(toks.shape[1]))
    return toks


def expand_kv(x: Float[Tensor, "b G ... d"], n_heads: int, dim: int = 1) -> Tensor:
    """Repeat KV heads along ``dim`` so that query head ``h`` meets KV head ``h // (H / G)``."""
    G = x.shape[dim]
    return x if G == n_heads else x.repeat_interleave(n_heads // G, dim=dim)


__all__ = [
    "AttentionSpec",
    "LayerAttention",
    "Rotary",
    "UnsupportedAttention",
    "check_attention",
    "describe_attention",
]
