"""The attention description: :class:`LayerAttention` (how one layer turns q and k into attention
weights), :class:`Rotary` and :class:`AttentionSpec` (every layer of a model)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .._internal import hooknames
from .._internal.placement import materialized
from .._internal.scores import softcap
from ..masks import AttentionMask, as_mask

#: how the bridge runs a layer's attention
#: ``"rotated"``: the bridge computes attention itself and fires hook_rot_q/hook_rot_k as q and k meet;
#: ``"joint"``: the bridge computes attention itself from hook_q/hook_k (rotating them without a hook where the model
#: has RoPE); ``"alibi"``: like joint, plus Bloom's ALiBi bias; ``"delegated"``: the Hugging Face module computes
#: attention and the bridge reports its weights afterwards (edits at hook_attn_scores/hook_pattern are ignored).
KINDS = ("rotated", "joint", "alibi", "delegated")


#: what still works where scores cannot be rebuilt from q and k
PATTERN_FIX = "method='pattern' (reads the model's own attention weights)"

#: families whose norms follow attention and the MLP (GPT-1: ``ln_1(x + attn(x))``); W_K reads the raw residual
POST_NORM = frozenset({"openai-gpt"})


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
            out.append("post-norm (ln_1 after attention)" if self.family in POST_NORM else "no norm before attention")
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


def expand_kv(x: Float[Tensor, "b G ... d"], n_heads: int, dim: int = 1) -> Tensor:
    """Repeat KV heads along ``dim`` so that query head ``h`` meets KV head ``h // (H / G)``."""
    G = x.shape[dim]
    return x if G == n_heads else x.repeat_interleave(n_heads // G, dim=dim)
