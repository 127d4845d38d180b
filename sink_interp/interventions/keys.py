"""Interventions that change what the softmax runs over: virtual keys and other kernels.

:class:`KVBias` prepends a learnable key (and value) ``k*``, :class:`SinkLogit` a learnable logit per head
(gpt-oss's sink), :class:`AttentionKernel` replaces softmax by another kernel of :mod:`sink_interp.kernels`.
The stages and their order are described in :mod:`sink_interp.interventions`.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from .._internal import placement
from .._internal.report import register_codec
from .._internal.scores import softcap
from ..kernels import kernel_fn
from ..pipeline import Ctx
from .base import HeadSpec, Intervention


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


for _cls in (KVBias, SinkLogit):  # interventions a report may hold (FitReport): saved and loaded with it
    register_codec(_cls, lambda rec, _cls=_cls: _cls(**rec))
