"""The paper's architecture knobs as permanent TransformerLens hooks on a ``TransformerBridge``.

A trained model is a stock Hugging Face Llama (RoPE) or SmolLM3 (NoPE: every
layer without RoPE) booted as a ``TransformerBridge``; everything the stock
architecture cannot express is a hook, attached permanently (``is_permanent``)
so that the same code runs in training and in every later analysis:

* attention kernels, normalisers, K/V biases, sink logits, prefix and
  sliding-window masks, intra-document masks and ALiBi: the same edits the
  interventions make (:class:`~sink_interp.KVBias`, :class:`~sink_interp.SinkLogit`,
  :class:`~sink_interp.AttentionKernel`, an :class:`~sink_interp.AttentionMask`),
  with parameters owned by the model, run by the same per-layer pipeline
  (:class:`sink_interp.pipeline.LayerPipeline`: scores, mask, kernel with virtual
  keys, pattern, output);
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
scaled and p-norm softmax, sigmoid, elu+1, softpick, linear, ReLU) comes from
:mod:`sink_interp.kernels`. The interventions graft these edits onto pretrained
models inside ``with`` blocks; training needs them permanently attached
(:func:`sink_interp.capture.add_hooks` with ``permanent=True``), with parameters
owned by the model (:class:`KnobParams`, saved with the weights), which is what
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
from ..architecture import describe_attention, expand_kv
from ..capture import AttachedHooks, add_hooks
from ..interventions import AttentionKernel, Intervention, KVBias, SinkLogit
from ..kernels import visible_mask
from ..masks import AttentionMask, documents_mask
from ..pipeline import Ctx, LayerPipeline
from .config import TrainConfig

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


def knob_mask(prefix: int = 0, window: int | None = None) -> AttentionMask:
    """The :class:`~sink_interp.AttentionMask` of the prefix / window knobs.

    Official ``model_prefix.py`` (``mask[:, :p] = True``): every query sees the first ``p`` keys,
    also past a window, so with a window the prefix keys are its sink tokens too.
    """
    return AttentionMask(window=window, prefix=prefix, n_sinks=prefix if window is not None else 0)


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
    allowed = knob_mask(prefix, window).dense(T, device)
    if doc_ids is None:
        return allowed
    return allowed[None, None] & documents_mask(doc_ids.to(device))


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
            # official init N(0, 0.02); with d_a = k_bias_dims only the first d_a dims are parameters, the rest is 0
            self.k_bias = nn.Parameter(torch.randn(L, hb, cfg.k_bias_dims or d) * 0.02)
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
        if cfg.pos == "t5":
            # T5 (Raffel et al.): one learned bias per (bucket, head), shared by all layers; HF T5 init N(0, d_model^-1/2)
            self.rel_bias = nn.Parameter(torch.randn(cfg.rel_buckets, H) * D**-0.5)
        if cfg.kernel == "mlp":
            # official model_attn_kernel.py: phi(x) = W2 relu(W1 x), two bias-free d_head x d_head linears per layer,
            # shared by the heads, applied to q and k after RoPE; init N(0, sqrt(2 / 5 / d_head)) (fan-in)
            std = math.sqrt(2.0 / 5.0 / d)
            self.kernel_w1 = nn.Parameter(torch.randn(L, d, d) * std)  # [layer, out, in] like nn.Linear.weight
            self.kernel_w2 = nn.Parameter(torch.randn(L, d, d) * std)

    def value_bias(self, layer: int) -> Tensor | None:
        if hasattr(self, "v_bias"):
            return self.v_bias[layer]
        if hasattr(self, "v_bias_fixed"):
            return self.v_bias_fixed[layer]
        return None


def kernel_for(cfg: TrainConfig) -> tuple[str, dict[str, Any]] | None:
    """The :mod:`sink_interp.kernels` kernel (name, parameters) of a config; ``None`` for plain softmax."""
    norm = cfg.resolved_attn_norm
    if cfg.kernel == "softmax":
        if cfg.softmax_p != 1.0:
            return "pnorm", {"p": cfg.softmax_p}
        if cfg.softmax_alpha != 1.0:
            return "scaled", {"alpha": cfg.softmax_alpha}
        return None
    if cfg.kernel == "sigmoid":
        return "sigmoid", {"normalise": norm == "sum"}
    if cfg.kernel == "elu":
        return "elu1", {"normalise": norm == "sum"}
    if cfg.kernel in ("linear", "mlp"):  # mlp: the linear kernel on phi(q) . phi(k) / sqrt(d) (see _MlpFeatureMap)
        return "linear", {"normalise": norm == "max1"}
    if cfg.kernel == "softpick":
        return "softpick", {}
    return "relu", {"normalise": norm if norm in ("sum", "length") else None}


# --------------------------------------------------------------------------- the knobs as attention edits


class _KnobKVBias(KVBias):
    """The K bias (and its value) of a trained model: :class:`~sink_interp.KVBias` reading :class:`KnobParams`."""

    def __init__(self, params: KnobParams, per_head: bool, value: bool):
        super().__init__(per_head=per_head, value=value, name="K bias")
        self.knobs = params

    def bind(self, model: Any) -> None:
        Intervention.bind(self, model)  # the parameters are the model's own

    def k_star(self, layer: int) -> Tensor:
        k = self.knobs.k_bias[layer]  # not rotated (official model_kv_bias.py)
        d_a = k.shape[-1]
        return k if d_a == self.d_head else F.pad(k, (0, self.d_head - d_a))  # d_a learnable dims, the rest fixed at 0

    def v_star(self, layer: int) -> Tensor | None:
        return self.knobs.value_bias(layer) if self.value else None


class _KnobSinkLogit(SinkLogit):
    """The per-head sink logit of a trained model: :class:`~sink_interp.SinkLogit` reading :class:`KnobParams`."""

    def __init__(self, params: KnobParams):
        super().__init__(name="sink logit")
        self.knobs = params

    def bind(self, model: Any) -> None:
        Intervention.bind(self, model)

    def logit(self, layer: int) -> Tensor:
        return self.knobs.sink_logit[layer]


class _ValueBias(Intervention):
    """A V bias without a K bias: ``y = Attn + v*`` (official ``model_kv_bias.py``)."""

    has_positions = False

    def __init__(self, params: KnobParams):
        super().__init__(positions=(), name="V bias")
        self.knobs = params

    def edit_z(self, layer: int, z: Tensor, ctx: Ctx) -> Tensor:  # z: [b, T, H, d]
        return z + self.knobs.value_bias(layer).to(z.dtype).expand(z.shape[2], -1)


class _Alibi(Intervention):
    """ALiBi (Press et al.): ``slope_h * (j - t)`` added to the scores of past keys."""

    has_positions = False

    def __init__(self, params: KnobParams):
        super().__init__(positions=(), name="ALiBi")
        self.knobs = params

    def edit_scores(self, layer: int, s: Tensor, ctx: Ctx) -> Tensor:
        T = s.shape[-1]
        t = torch.arange(T, device=s.device)
        rel = (t[None, :] - t[:, None]).clamp(max=0).to(s.dtype)  # j - t <= 0
        return s + self.knobs.alibi.to(s.dtype)[:, None, None] * rel


def relative_buckets(T: int, n_buckets: int = 32, max_distance: int = 128, *, bf16: bool = False, device: Any = None) -> Tensor:
    """``[T, T]`` long: the causal T5 bucket of distance ``t - j`` (0 for keys after the query).

    Half the buckets hold the exact distances ``0 .. n/2 - 1``, the other half
    log-spaced distances up to ``max_distance`` (larger ones share the last
    bucket): HF T5's ``_relative_position_bucket(bidirectional=False)`` and the
    official ``model_relpos.py``. ``bf16=True`` computes as the official code
    does (relative positions and the logarithm in bfloat16), which moves a few
    bucket edges.

    Example:
        >>> relative_buckets(40, 32, 128)[39, ::4].tolist()  # query 39, keys 0, 4, ..., 36: distances 39, 35, ..., 3
        [22, 22, 21, 20, 18, 17, 15, 11, 7, 3]
    """
    pos = torch.arange(T, device=device)
    rel = pos[None, :] - pos[:, None]  # j - t
    if bf16:
        rel = rel.to(torch.bfloat16)
    rel = -torch.min(rel, torch.zeros_like(rel))  # t - j >= 0
    max_exact = n_buckets // 2
    is_small = rel < max_exact
    rel_f = rel if bf16 else rel.float()
    large = max_exact + (torch.log(rel_f / max_exact) / math.log(max_distance / max_exact) * (n_buckets - max_exact)).to(
        torch.long
    )
    large = torch.min(large, torch.full_like(large, n_buckets - 1))
    return torch.where(is_small, rel.to(torch.long), large)


class _RelativeBias(Intervention):
    """Relative positions as a bias on the scores of every layer.

    ``"relative"`` is the official ``model_relpos.py``: the bucket index itself,
    ``+bucket(t - j)``, added to every head's scores (not learned; it grows with
    the distance). ``"t5"`` is T5's learned bias ``b[bucket(t - j), h]`` per
    head, one table shared by all layers.
    """

    has_positions = False

    def __init__(self, params: KnobParams, kind: str, n_buckets: int, max_distance: int):
        super().__init__(positions=(), name="T5 relative bias" if kind == "t5" else "relative positions")
        self.knobs, self.kind = params, kind
        self.n_buckets, self.max_distance = n_buckets, max_distance
        self._buckets: dict[tuple[int, str], Tensor] = {}

    def bind(self, model: Any) -> None:
        Intervention.bind(self, model)

    def buckets(self, T: int, device: Any) -> Tensor:
        key = (T, str(device))
        if key not in self._buckets:
            self._buckets[key] = relative_buckets(
                T, self.n_buckets, self.max_distance, bf16=self.kind == "relative", device=device
            )
        return self._buckets[key]

    def bias(self, T: int, device: Any) -> Tensor:
        """``[H or 1, T, T]``: what is added to the scores."""
        b = self.buckets(T, device)
        if self.kind == "relative":
            return b.float()[None]
        return self.knobs.rel_bias[b].permute(2, 0, 1)  # [H, T, T]

    def edit_scores(self, layer: int, s: Tensor, ctx: Ctx) -> Tensor:
        return s + self.bias(s.shape[-1], s.device).to(s.dtype)


class _MlpFeatureMap(Intervention):
    """The paper's MLP kernel: scores ``phi(q) . phi(k) / sqrt(d)`` with ``phi(x) = W2 relu(W1 x)`` (official ``model_attn_kernel.py``).

    Replaces the scores (keeping the mask) before the kernel stage, which then
    applies the linear kernel (``A = x``, or ``x / max(|sum x|, 1)`` with the normaliser).
    """

    has_positions = False
    needs = frozenset({"q", "k"})

    def __init__(self, params: KnobParams):
        super().__init__(positions=(), name="MLP feature map")
        self.knobs = params

    def bind(self, model: Any) -> None:
        Intervention.bind(self, model)

    def phi(self, layer: int, x: Tensor) -> Tensor:
        w1, w2 = self.knobs.kernel_w1[layer].to(x.dtype), self.knobs.kernel_w2[layer].to(x.dtype)
        return F.relu(x @ w1.T) @ w2.T

    def edit_scores(self, layer: int, s: Tensor, ctx: Ctx) -> Tensor:
        q = self.phi(layer, ctx.q)  # [b, T, H, d], after RoPE
        k = expand_kv(self.phi(layer, ctx.k), q.shape[2], dim=2)
        new = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
        return new.to(s.dtype).masked_fill(~visible_mask(s), torch.finfo(s.dtype).min)


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
        self.doc_ids: Tensor | None = None
        self.ctx: dict[Any, Tensor] = {}
        self._handles: AttachedHooks | None = None
        c = cfg
        custom_mask = bool(c.prefix or c.window is not None or c.intra_doc)
        replace_pattern = c.kernel != "softmax" or c.k_bias or c.sink_logit or c.softmax_alpha != 1.0 or c.softmax_p != 1.0
        positional = c.pos in ("alibi", "relative", "t5")
        self.attention_active = replace_pattern or custom_mask or positional or c.v_bias == "learn"

    def knob_names(self) -> tuple[list[str], list[str]]:
        """``(attention knobs, other knobs)`` this runtime attaches: what changes how attention forms, and the rest."""
        c = self.cfg
        att, other = [], []
        if c.kernel != "softmax":
            att.append(f"kernel {c.kernel}")
        if c.softmax_alpha != 1.0 or c.softmax_p != 1.0:
            att.append("scaled/p-norm softmax")
        if c.k_bias:
            att.append("K bias" if c.k_bias_dims is None else f"K bias (d_a = {c.k_bias_dims})")
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
        if c.pos in ("relative", "t5"):
            att.append("T5 relative bias" if c.pos == "t5" else "relative positions (official bucket bias)")
        if c.pos in ("learned", "sinusoidal"):
            other.append(f"{c.pos} positions")
        if c.norm == "post":
            other.append("post-norm")
        if c.ffn in ("gelu", "relu", "swish"):
            other.append(f"{c.ffn} FFN")
        return att, other

    # ---------------------------------------------------------------- the attention edits
    def edits(self) -> list[Intervention]:
        """The attention knobs as edits of :class:`sink_interp.pipeline.LayerPipeline`, in stage order."""
        c, p = self.cfg, self.params
        out: list[Intervention] = []
        if c.k_bias:
            out.append(_KnobKVBias(p, per_head=c.bias_per_head, value=p.value_bias(0) is not None))
        elif p.value_bias(0) is not None:
            out.append(_ValueBias(p))
        if c.sink_logit:
            out.append(_KnobSinkLogit(p))
        if c.kernel == "mlp":  # replaces the scores: first of the score edits
            out.append(_MlpFeatureMap(p))
        kernel = kernel_for(c)
        if kernel is not None:
            out.append(AttentionKernel(kernel[0], name=f"kernel {c.kernel}", **kernel[1]))
        if c.pos == "alibi":
            out.append(_Alibi(p))
        if c.pos in ("relative", "t5"):
            out.append(_RelativeBias(p, c.pos, c.rel_buckets, c.rel_max_distance))
        return out

    def _documents(self, T: int, device: Any) -> Tensor | None:
        return None if self.doc_ids is None else documents_mask(self.doc_ids.to(device))

    def pipelines(self) -> list[LayerPipeline]:
        """One pipeline per layer running the attention knobs (none when no knob touches attention)."""
        if not self.attention_active:
            return []
        c = self.cfg
        edits = self.edits()
        for e in edits:
            e.bind(self.bridge)
        mask = knob_mask(c.prefix, c.window)
        return [
            LayerPipeline(
                self.bridge,
                layer,
                edits,
                mask,
                attention=self.attention[layer],
                documents=self._documents if c.intra_doc else None,
                verify=False,  # the description is the stock model's; the knobs are its only changes
            )
            for layer in range(c.n_layers)
        ]

    # ---------------------------------------------------------------- attach / detach
    def hooks(self) -> list[tuple[str, Callable[..., Any]]]:
        c = self.cfg
        out: list[tuple[str, Callable[..., Any]]] = []
        if c.pos in ("learned", "sinusoidal") or c.norm == "post" or c.ffn in ("gelu", "relu", "swish"):
            out.append((hooknames.EMBED, self._embed_hook))
        for pipe in self.pipelines():
            out.extend(pipe.hooks())
        for layer in range(c.n_layers):
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
        """Attach the knob hooks permanently (TransformerLens' ``reset_hooks`` leaves them on)."""
        self._handles = add_hooks(self.bridge, self.hooks(), permanent=True)
        _RUNTIMES[self.bridge] = self
        return self

    def detach(self) -> None:
        if self._handles is not None:
            self._handles.remove()
            self._handles = None
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


def runtime_of(model: nn.Module) -> KnobRuntime | None:
    """The knob runtime attached to a trained model, if any."""
    return _RUNTIMES.get(model)
