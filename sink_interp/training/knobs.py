"""The paper's architecture knobs as permanent TransformerLens hooks on a ``TransformerBridge``.

A trained model is a stock Hugging Face Llama (RoPE) or SmolLM3 (NoPE: every
layer without RoPE) booted as a ``TransformerBridge``; everything the stock
architecture cannot express is a hook, attached permanently (``is_permanent``)
so that the same code runs in training and in every later analysis:

* attention kernels, normalisers, K/V biases, sink logits, prefix and
  sliding-window masks, intra-document masks and ALiBi: one recipe per layer at
  the q/k hooks the attention description names (capture), ``attn.hook_attn_scores``
  (mask, bias; the scores that analyses see), ``attn.hook_pattern`` (the
  kernel's weights replace the softmax) and ``attn.hook_z`` (the value of the
  extra K-bias column, or a V bias);
* absolute positions (learned or sinusoidal) at ``hook_embed``;
* post-norm blocks (``x = Norm(x + F(x))``): ``ln1``/``ln2`` become the
  identity and the sublayer outputs become ``Norm(x + F(x)) - x``, so the
  residual stream carries exactly the post-norm states (the norm gains are the
  model's own ``ln1``/``ln2`` weights);
* non-gated FFNs (GELU/ReLU/Swish): ``mlp.hook_post = act(mlp.hook_pre)``.

Hooks on ``hook_pattern`` and ``hook_z`` change the output because the bridge
computes attention itself (DESIGN section 3). The formulas follow the official
code (``sail-sg/Attention-Sink``: ``model_attn_sim.py``, ``model_kv_bias.py``,
``model_prefix.py``, ``model_window.py``, ``model_postln.py``).

Every kernel formula (softmax with virtual K-bias / sink-logit columns,
scaled and p-norm softmax, sigmoid, elu+1, softpick, linear) comes from
:mod:`sink_interp.kernels`; only Guo et al.'s ReLU attention is computed here.
The interventions (``AttentionKernel``, ``KVBias``, ``SinkLogit``)
graft the same operations onto pretrained models inside context managers;
training needs them permanently attached, with parameters owned by the model
(:class:`KnobParams`, saved with the weights) and composed with prefix /
window / document masks and ALiBi in one pattern computation, which is what
:class:`KnobRuntime` does.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._internal import hooknames
from ..architecture import describe_attention
from .config import TrainConfig

PROXY_EPS = 1e-8  # official normaliser epsilon (model_attn_sim.py)

_RUNTIMES: weakref.WeakKeyDictionary[nn.Module, KnobRuntime] = weakref.WeakKeyDictionary()


def alibi_slopes(n_heads: int) -> Tensor:
    """ALiBi head slopes (Press et al. 2022), including the non-power-of-two rule."""

    def pow2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        s = pow2(n_heads)
    else:
        closest = 2 ** math.floor(math.log2(n_heads))
        s = pow2(closest) + pow2(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(s, dtype=torch.float32)


def sinusoidal_positions(n_ctx: int, d_model: int) -> Tensor:
    """Vaswani et al. sinusoidal position table ``[n_ctx, d_model]``."""
    pos = torch.arange(n_ctx, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(n_ctx, d_model)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : d_model // 2]
    return pe


def allowed_mask(
    T: int,
    *,
    prefix: int = 0,
    window: int | None = None,
    doc_ids: Tensor | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Which keys each query may see: ``[T, T]`` (or ``[b, 1, T, T]`` with ``doc_ids``) bool.

    Causal (``j <= t``); with ``prefix = p`` every query also sees keys
    ``j < p`` (official ``model_prefix.py``: ``mask[:, :p] = True``); with
    ``window = w`` only keys ``t - w < j <= t`` (flash-attn ``window_size=(w-1, 0)``);
    with ``doc_ids`` only keys of the same document (id ``-1`` is visible to all).
    """
    t = torch.arange(T, device=device)
    allowed = t[None, :] <= t[:, None]
    if window is not None:
        allowed = allowed & (t[:, None] - t[None, :] < window)
    if prefix:
        allowed = allowed | (t[None, :] < prefix)
    if doc_ids is not None:
        d = doc_ids.to(device)
        same = (d[:, :, None] == d[:, None, :]) | (d[:, None, :] < 0)
        allowed = (allowed[None] & same)[:, None]
    return allowed


class KnobParams(nn.Module):
    """Parameters the stock architecture does not have: K/V biases, sink logits, absolute positions.

    It is registered on the Hugging Face model (``model.sink_knobs``), so it is
    saved with the weights and trained with them.
    """

    def __init__(self, cfg: TrainConfig, n_ctx: int):
        super().__init__()
        L, H, d, D = cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_model
        hb = H if cfg.bias_per_head else 1
        if cfg.k_bias:
            self.k_bias = nn.Parameter(torch.randn(L, hb, d) * 0.02)  # official init N(0, 0.02)
        if cfg.v_bias == "learn":
            self.v_bias = nn.Parameter(torch.randn(L, hb, d) * 0.02)
        elif cfg.v_bias in ("e1", "ones"):
            v = torch.zeros(d)
            if cfg.v_bias == "e1":
                v[0] = 1.0  # v' = [1, 0, ..., 0]
            else:
                v[:] = 1.0 / math.sqrt(d)  # v'' = [1, ..., 1] / sqrt(d_h)
            self.register_buffer("v_bias_fixed", cfg.v_bias_scale * v.expand(L, hb, d).clone())
        if cfg.sink_logit:
            self.sink_logit = nn.Parameter(torch.zeros(L, H))
        if cfg.pos == "learned":
            self.pos_embed = nn.Parameter(torch.randn(n_ctx, D) * math.sqrt(2.0 / 5.0 / D))
        elif cfg.pos == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_positions(n_ctx, D))
        if cfg.pos == "alibi":
            self.register_buffer("alibi", alibi_slopes(H))

    def value_bias(self, layer: int) -> Tensor | None:
        if hasattr(self, "v_bias"):
            return self.v_bias[layer]
        if hasattr(self, "v_bias_fixed"):
            return self.v_bias_fixed[layer]
        return None


def kernel_for(cfg: TrainConfig) -> Callable[..., Any]:
    """The :func:`sink_interp.kernels.kernel_fn` of a config (``relu`` is handled locally)."""
    from ..kernels import kernel_fn

    norm = cfg.resolved_attn_norm
    if cfg.kernel == "softmax":
        if cfg.softmax_p != 1.0:
            return kernel_fn("pnorm", p=cfg.softmax_p)
        if cfg.softmax_alpha != 1.0:
            return kernel_fn("scaled", alpha=cfg.softmax_alpha)
        return kernel_fn("softmax")
    if cfg.kernel == "sigmoid":
        return kernel_fn("sigmoid", normalise=norm == "sum")
    if cfg.kernel == "elu":
        return kernel_fn("elu1", normalise=norm == "sum")
    if cfg.kernel == "linear":
        return kernel_fn("linear", normalise=norm == "max1")
    if cfg.kernel == "softpick":
        return kernel_fn("softpick")
    return lambda *a, **k: None  # relu: see KnobRuntime._kernel


def _rms(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    dtype = x.dtype
    x32 = x.float()
    return (weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)).to(dtype)


class KnobRuntime:
    """Attaches, runs and removes the knob hooks of one trained model.

    ``documents(doc_ids)`` (a context manager) sets the per-batch document ids
    for intra-document masking; outside it attention is plain causal (plus the
    config's prefix/window).
    """

    def __init__(
        self,
        bridge: nn.Module,
        cfg: TrainConfig,
        params: KnobParams,
        norm_weights: list[tuple[Tensor, Tensor]] | None = None,
        norm_eps: float = 1e-6,
    ):
        self.bridge = bridge
        self.cfg = cfg
        self.params = params
        self.norm_weights = norm_weights or []  # (ln1 gain, ln2 gain) per layer, for post-norm
        self.eps_norm = float(norm_eps)
        # how the stock model forms its scores (before any knob): the description is the one place for it
        self.attention = describe_attention(bridge).layers
        self.scale = self.attention[0].scale
        self.group = cfg.n_heads // (cfg.n_kv_heads or cfg.n_heads)
        self.doc_ids: Tensor | None = None
        self.ctx: dict[Any, Tensor] = {}
        self._handles: list[tuple[Any, Any]] = []
        c = cfg
        self.extra_column = c.k_bias or c.sink_logit
        self.custom_mask = bool(c.prefix or c.window is not None or c.intra_doc)
        self.recompute = bool(c.prefix)  # unmasking needs the raw scores
        self.replace_pattern = c.kernel != "softmax" or self.extra_column or c.softmax_alpha != 1.0 or c.softmax_p != 1.0
        self.attention_active = self.replace_pattern or self.custom_mask or c.pos == "alibi" or c.v_bias == "learn"
        self._kernel_fn = kernel_for(c)

    def knob_names(self) -> tuple[list[str], list[str]]:
        """``(attention knobs, other knobs)`` this runtime attaches: what changes how attention forms, and the rest."""
        c = self.cfg
        att, other = [], []
        if c.kernel != "softmax":
            att.append(f"kernel {c.kernel}")
        if c.softmax_alpha != 1.0 or c.softmax_p != 1.0:
            att.append("scaled/p-norm softmax")
        if c.k_bias:
            att.append("K bias")
        if c.sink_logit:
            att.append("sink logit")
        if c.v_bias == "learn":
            other.append("V bias")
        if c.prefix:
            att.append(f"prefix {c.prefix}")
        if c.window is not None:
            att.append(f"window {c.window}")
        if c.intra_doc:
            att.append("intra-document mask")
        if c.pos == "alibi":
            att.append("ALiBi")
        if c.pos in ("learned", "sinusoidal"):
            other.append(f"{c.pos} positions")
        if c.norm == "post":
            other.append("post-norm")
        if c.ffn in ("gelu", "relu", "swish"):
            other.append(f"{c.ffn} FFN")
        return att, other

    # ---------------------------------------------------------------- attach / detach
    def hooks(self) -> list[tuple[str, Callable[..., Any]]]:
        c = self.cfg
        out: list[tuple[str, Callable[..., Any]]] = []
        if self.attention_active or c.pos in ("learned", "sinusoidal") or c.norm == "post" or c.ffn in ("gelu", "relu", "swish"):
            out.append((hooknames.EMBED, self._embed_hook))
        for layer in range(c.n_layers):
            if self.attention_active:
                if self.recompute or c.k_bias:
                    out.append((self.attention[layer].q_hook, self._capture(("q", layer))))
                if self.recompute:
                    out.append((self.attention[layer].k_hook, self._capture(("k", layer))))
                out.append((hooknames.attn_scores(layer), self._scores_hook(layer)))
                if self.replace_pattern:
                    out.append((hooknames.pattern(layer), self._pattern_hook(layer)))
                if self.params.value_bias(layer) is not None:
                    out.append((hooknames.z(layer), self._z_hook(layer)))
            if c.norm == "post":
                out += [
                    (hooknames.resid_pre(layer), self._capture(("x", layer))),
                    (hooknames.ln1_out(layer), self._replay(("x", layer))),
                    (hooknames.attn_out(layer), self._post_norm_hook(layer, "x", 1)),
                    (hooknames.block(layer, "ln2.hook_in"), self._capture(("x1", layer))),
                    (hooknames.ln2_out(layer), self._replay(("x1", layer))),
                    (hooknames.mlp_out(layer), self._post_norm_hook(layer, "x1", 2)),
                ]
            if c.ffn in ("gelu", "relu", "swish"):
                act = {"gelu": F.gelu, "relu": F.relu, "swish": F.silu}[c.ffn]
                out += [
                    (hooknames.mlp_pre(layer), self._capture(("mlp_pre", layer))),
                    (hooknames.mlp_post(layer), self._ffn_hook(layer, act)),
                ]
        return out

    def attach(self) -> KnobRuntime:
        points = self.bridge.hook_dict
        for name, fn in self.hooks():
            hp = points[name]
            handle = hp.add_hook(fn, dir="fwd", is_permanent=True)
            self._handles.append((hp, handle))
        _RUNTIMES[self.bridge] = self
        return self

    def detach(self) -> None:
        for hp, handle in reversed(self._handles):
            handle.hook.remove()
            for i, h in enumerate(hp.fwd_hooks):
                if h is handle:
                    del hp.fwd_hooks[i]
                    break
        self._handles.clear()
        _RUNTIMES.pop(self.bridge, None)

    @contextlib.contextmanager
    def documents(self, doc_ids: Tensor | None) -> Iterator[None]:
        """Mask attention across documents for the forward passes inside the block."""
        old = self.doc_ids
        self.doc_ids = doc_ids
        try:
            yield
        finally:
            self.doc_ids = old

    # ---------------------------------------------------------------- hook functions
    def _embed_hook(self, e: Tensor, hook: Any) -> Tensor:
        self.ctx.clear()  # first hook of every forward: drop captures of an interrupted forward
        p = self.params
        T = e.shape[1]
        if hasattr(p, "pos_embed"):
            e = e + p.pos_embed[:T].to(e.dtype)
        elif hasattr(p, "pos_table"):
            e = e + p.pos_table[:T].to(e.dtype)
        return e

    def _capture(self, key: Any) -> Callable[..., None]:
        def fn(x: Tensor, hook: Any) -> None:
            self.ctx[key] = x
            return None

        return fn

    def _replay(self, key: Any) -> Callable[..., Tensor]:
        def fn(x: Tensor, hook: Any) -> Tensor:
            return self.ctx[key]

        return fn

    def _post_norm_hook(self, layer: int, key: str, which: int) -> Callable[..., Tensor]:
        def fn(out: Tensor, hook: Any) -> Tensor:
            x = self.ctx[(key, layer)]
            gain = self.norm_weights[layer][which - 1]
            return _rms(x + out, gain, self.eps_norm) - x

        return fn

    def _ffn_hook(self, layer: int, act: Callable[[Tensor], Tensor]) -> Callable[..., Tensor]:
        def fn(post: Tensor, hook: Any) -> Tensor:
            return act(self.ctx.pop(("mlp_pre", layer)))

        return fn

    def _allowed(self, T: int, device: torch.device) -> Tensor:
        c = self.cfg
        key = ("mask", T, str(device))
        doc = self.doc_ids if c.intra_doc else None
        if doc is None and key in self.ctx:
            return self.ctx[key]
        m = allowed_mask(T, prefix=c.prefix, window=c.window, doc_ids=doc, device=device)
        if doc is None:
            self.ctx[key] = m
        return m

    def _scores_hook(self, layer: int) -> Callable[..., Tensor]:
        c = self.cfg

        def fn(scores: Tensor, hook: Any) -> Tensor:
            b, H, T, _ = scores.shape
            allowed = self._allowed(T, scores.device)
            if self.recompute:
                q = self.ctx.pop(("q", layer)) if not c.k_bias else self.ctx[("q", layer)]
                k = self.ctx.pop(("k", layer))
                if self.group > 1:
                    k = k.repeat_interleave(self.group, dim=2)
                s = torch.einsum("bqhd,bkhd->bhqk", q, k) * self.scale
            else:
                s = scores
            if c.pos == "alibi":
                t = torch.arange(T, device=s.device)
                rel = (t[None, :] - t[:, None]).clamp(max=0).to(s.dtype)  # j - t <= 0
                s = s + self.params.alibi.to(s.dtype)[:, None, None] * rel
            if self.custom_mask or c.pos == "alibi":
                s = s.masked_fill(~allowed, torch.finfo(s.dtype).min)
            if self.replace_pattern:
                P, extra = self._kernel(s, allowed, layer)
                self.ctx[("p", layer)] = P
                if extra is not None:
                    self.ctx[("extra", layer)] = extra
            return s

        return fn

    def _kernel(self, s: Tensor, allowed: Tensor, layer: int) -> tuple[Tensor, Tensor | None]:
        """Attention weights of the config's kernel (:mod:`sink_interp.kernels`), and the
        weight of the K-bias column when there is one."""
        c = self.cfg
        b, H, T, _ = s.shape
        extras = []
        if c.k_bias:
            q = self.ctx.pop(("q", layer))  # [b, T, H, d] after RoPE; k* is not rotated (official model_kv_bias.py)
            kb = self.params.k_bias[layer].to(q.dtype).expand(H, -1)
            extras.append(torch.einsum("bqhd,hd->bhq", q, kb)[..., None] * self.scale)
        if c.sink_logit:
            extras.append(self.params.sink_logit[layer].to(s.dtype)[None, :, None, None].expand(b, H, T, 1))
        extra = torch.cat(extras, -1) if extras else None
        if c.kernel == "relu":  # Guo et al.'s ReLU attention (not among sink_interp.kernels)
            a = torch.where(allowed, F.relu(s.float()), torch.zeros((), device=s.device))
            norm = c.resolved_attn_norm
            if norm == "sum":
                a = a / (a.sum(-1, keepdim=True) + PROXY_EPS)
            elif norm == "length":
                a = a / allowed.sum(-1, keepdim=True).to(a.dtype)
            return a.to(s.dtype), None
        A, A_extra = self._kernel_fn(s, allowed.expand_as(s), extra)
        return A, (None if A_extra is None or not c.k_bias else A_extra[..., 0])

    def _pattern_hook(self, layer: int) -> Callable[..., Tensor]:
        def fn(pattern: Tensor, hook: Any) -> Tensor:
            return self.ctx.pop(("p", layer))

        return fn

    def _z_hook(self, layer: int) -> Callable[..., Tensor]:
        c = self.cfg

        def fn(z: Tensor, hook: Any) -> Tensor:  # z: [b, T, H, d]
            v = self.params.value_bias(layer)
            H = z.shape[2]
            v = v.to(z.dtype).expand(H, -1)
            if c.k_bias:
                w = self.ctx.pop(("extra", layer))  # [b, H, T]: the K-bias column's weight
                return z + torch.einsum("bhq,hd->bqhd", w, v)
            return z + v  # V bias only: y = Attn + v*

        return fn


def runtime_of(model: nn.Module) -> KnobRuntime | None:
    """The knob runtime attached to a trained model, if any."""
    return _RUNTIMES.get(model)
