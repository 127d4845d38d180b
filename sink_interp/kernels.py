"""Attention kernels as pure functions of scaled scores and a visibility mask.

Every kernel maps the scaled scores ``x[..., t, j] = q_t . k_j / sqrt(d)``
(or any other similarity, e.g. ``phi(q_t) . phi(k_j) / sqrt(d)`` for an MLP
feature map) of the keys a query can see to attention weights ``A[..., t, j]``.
The output of a head is then ``z_t = sum_j A[t, j] v_j`` (plus ``sum_m
A*[t, m] v*_m`` for virtual keys, see below). Masked entries get weight 0; a
row with no visible key gets weight 0 everywhere (its output is 0).

Kernels (``x`` = visible scores of one row, ``m`` = their maximum, sums over
the visible keys and the virtual keys):

============  ================================================================
``softmax``    ``A_j = e^{x_j} / sum_i e^{x_i}``
``softmax1``   softmax plus one ("quiet" attention): ``A_j = e^{x_j} / (1 + sum_i e^{x_i})``
               — a virtual key with logit 0 and value 0; rows sum to < 1
``scaled``     normaliser scaled by ``alpha``: ``Z -> Z / alpha``, so ``A_j = alpha e^{x_j} / sum_i e^{x_i}``
``pnorm``      p-norm normaliser: ``A_j = e^{x_j} / (sum_i e^{p x_i})^{1/p}`` (``p = 1`` is softmax)
``sigmoid``    ``A_j = sigmoid(x_j + b)``, ``b`` a float or ``"-log n"`` (``b = -log n``,
               ``n`` = number of key positions); with ``normalise=True``: ``A_j / sum_i A_i``
``elu1``       ``A_j = elu(x_j) + 1``; with ``normalise=True``: ``A_j / sum_i A_i``
``softpick``   ``A_j = ReLU(e^{x_j - m} - e^{-m}) / (sum_i |e^{x_i - m} - e^{-m}| + eps)``
               (Zuhri et al. 2025: ``ReLU(e^x - 1) / sum |e^x - 1|``, computed stably)
``linear``     ``A_j = x_j``; with ``normalise=True``: ``A_j / max(|sum_i x_i|, 1)``
               (the paper's linear / MLP kernels: pass ``phi(q) . phi(k) / sqrt(d)`` as the scores)
``relu``       ``A_j = ReLU(x_j)`` (Guo et al.); ``normalise="sum"``: ``A_j / (sum_i A_i + 1e-8)``,
               ``"length"``: ``A_j / n`` (``n`` visible keys); no virtual keys
============  ================================================================

**Virtual keys** (``extra``, shape ``[..., t, m]``): logits of keys that every
query sees (``-inf`` marks one as absent for that row) and that sit outside the sequence — a learnable key bias ``q . k* /
sqrt(d)`` (Sun et al. 2024; the paper's K/V-bias variants) or a per-head sink
logit (gpt-oss). They enter the kernel exactly like visible keys (they are in
the normaliser of normalised kernels) and their weights are returned
separately: ``softmax([x*, x]) [v*; V]`` is
``A, A_extra = softmax_attention(x, mask, extra); z = A @ V + A_extra @ v*``.

All kernels compute in float32 and return the dtype of ``scores``; they are
differentiable. :func:`attention` runs a whole head from ``q``, ``k``, ``v``
(any kernel, causal mask, GQA, key/value biases, sink logits, a feature map)
for model code that wants the same formulas outside hooks (the training laboratory uses it).

Example:
    >>> import torch
    >>> x = torch.tensor([[0.0, -1e30], [1.0, 2.0]])
    >>> A, _ = softmax_attention(x, torch.tensor([[True, False], [True, True]]))
    >>> A.round(decimals=4)
    tensor([[1.0000, 0.0000],
            [0.2689, 0.7311]])
    >>> A, _ = sigmoid_attention(x, torch.tensor([[True, False], [True, True]]))
    >>> A.sum(-1).round(decimals=4)  # no normaliser: rows need not sum to 1
    tensor([0.5000, 1.6119])
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

Scores = Float[Tensor, "... q k"]
Mask = Bool[Tensor, "... q k"]
Extra = Float[Tensor, "... q m"]
Weights = tuple[Float[Tensor, "... q k"], Optional[Float[Tensor, "... q m"]]]

SOFTPICK_EPS = 1e-6


def visible_mask(scores: Scores) -> Mask:
    """Which entries of a masked score tensor are visible.

    TransformerLens' bridge fills masked entries with the dtype's minimum
    (``-inf`` in compatibility mode); anything below half the minimum counts as
    masked.
    """
    return scores > torch.finfo(scores.dtype).min / 2


def _prepare(scores: Scores, mask: Mask | None, extra: Extra | None) -> tuple[Tensor, Tensor, Tensor | None]:
    if mask is None:
        mask = visible_mask(scores)
    else:
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor (True = visible), got dtype {mask.dtype}")
        mask = mask.expand_as(scores) if mask.shape != scores.shape else mask
    x = scores.float()
    e = None
    if extra is not None:
        if extra.shape[:-1] != scores.shape[:-1]:
            try:
                extra = extra.expand(*scores.shape[:-1], extra.shape[-1])
            except RuntimeError:
                raise ValueError(
                    f"extra must have shape [..., q, m] matching scores {tuple(scores.shape)} up to the last dim; "
                    f"got {tuple(extra.shape)}"
                ) from None
        e = extra.float()
    return x, mask, e


def _split(w: Tensor, k: int, dtype: torch.dtype, has_extra: bool) -> Weights:
    if has_extra:
        return w[..., :k].to(dtype), w[..., k:].to(dtype)
    return w.to(dtype), None


def _joint(x: Tensor, mask: Tensor, e: Tensor | None) -> tuple[Tensor, Tensor]:
    """Scores and visibility of the real keys followed by the virtual keys (absent where their logit is -inf)."""
    if e is None:
        return x, mask
    return torch.cat([x, e], dim=-1), torch.cat([mask, e > torch.finfo(e.dtype).min / 2], dim=-1)


def _masked_log_normaliser(x: Tensor, mask: Tensor, p: float = 1.0) -> Tensor:
    """``log sum_{visible} e^{p x}`` per row (``-inf`` for rows with no visible key)."""
    return torch.logsumexp((p * x).masked_fill(~mask, float("-inf")), dim=-1, keepdim=True)


def _safe(mm: Tensor) -> tuple[Tensor, Tensor]:
    """A mask with empty rows made full (so no NaN appears, forward or backward), and which rows were non-empty."""
    live = mm.any(-1, keepdim=True)
    return mm | ~live, live


def softmax_attention(scores: Scores, mask: Mask | None = None, extra: Extra | None = None) -> Weights:
    """``A_j = e^{x_j} / sum_i e^{x_i}`` over visible and virtual keys."""
    x, mask, e = _prepare(scores, mask, extra)
    k = x.shape[-1]
    xx, mm = _joint(x, mask, e)
    safe, live = _safe(mm)
    w = torch.softmax(xx.masked_fill(~safe, float("-inf")), dim=-1)
    w = w * live  # rows with nothing visible -> 0 (not NaN, also in the backward pass)
    return _split(w, k, scores.dtype, e is not None)


def softmax1_attention(scores: Scores, mask: Mask | None = None, extra: Extra | None = None) -> Weights:
    """Softmax plus one: ``A_j = e^{x_j} / (1 + sum_i e^{x_i})`` (a virtual key with logit 0, value 0)."""
    x, mask, e = _prepare(scores, mask, extra)
    zero = torch.zeros(*x.shape[:-1], 1, dtype=x.dtype, device=x.device)
    e1 = zero if e is None else torch.cat([e, zero], dim=-1)
    w, we = softmax_attention(x, mask, e1)
    assert we is not None
    return w.to(scores.dtype), (we[..., :-1].to(scores.dtype) if e is not None else None)


def scaled_softmax_attention(scores: Scores, mask: Mask | None = None, extra: Extra | None = None, alpha: float = 1.0) -> Weights:
    """Normaliser scaled by ``alpha``: ``A_j = alpha e^{x_j} / sum_i e^{x_i}`` (rows sum to ``alpha``)."""
    if not float(alpha) > 0:
        raise ValueError(f"alpha must be > 0 (rows sum to alpha), got {alpha!r}")
    w, we = softmax_attention(scores, mask, extra)
    return w * alpha, (None if we is None else we * alpha)


def pnorm_attention(scores: Scores, mask: Mask | None = None, extra: Extra | None = None, p: float = 2.0) -> Weights:
    """p-norm normaliser: ``A_j = e^{x_j} / (sum_i e^{p x_i})^{1/p}`` (rows have unit p-norm)."""
    if not float(p) > 0:
        raise ValueError(f"p must be > 0, got {p!r}")
    x, mask, e = _prepare(scores, mask, extra)
    k = x.shape[-1]
    xx, mm = _joint(x, mask, e)
    safe, live = _safe(mm)
    log_z = _masked_log_normaliser(xx, safe, float(p)) / float(p)
    w = torch.exp((xx - log_z).masked_fill(~safe, float("-inf"))) * live
    return _split(w, k, scores.dtype, e is not None)


def _elementwise(
    f: Callable[[Tensor], Tensor], scores: Scores, mask: Mask | None, extra: Extra | None, normalise: bool, signed: bool = False
) -> Weights:
    x, mask, e = _prepare(scores, mask, extra)
    k = x.shape[-1]
    xx, mm = _joint(x, mask, e)
    w = f(xx.masked_fill(~mm, 0.0)).masked_fill(~mm, 0.0)
    if normalise:
        s = w.sum(-1, keepdim=True)
        if signed:  # linear kernel: Z = max(|sum|, 1)
            w = w / s.abs().clamp_min(1.0)
        else:
            w = w / torch.where(s > 0, s, torch.ones_like(s))
    return _split(w, k, scores.dtype, e is not None)


def _sigmoid_bias(bias: Union[float, str], n_keys: int) -> float:
    if isinstance(bias, str):
        if bias.replace(" ", "") not in ("-logn", "-log(n)"):
            raise ValueError(f"bias must be a number or '-log n', got {bias!r}")
        return -math.log(max(n_keys, 1))
    return float(bias)


def sigmoid_attention(
    scores: Scores, mask: Mask | None = None, extra: Extra | None = None, bias: Union[float, str] = 0.0, normalise: bool = False
) -> Weights:
    """``A_j = sigmoid(x_j + b)`` (``b`` a float or ``"-log n"``, ``n`` = key positions); ``normalise``: ``/ sum_i A_i``."""
    b = _sigmoid_bias(bias, scores.shape[-1])
    return _elementwise(lambda t: torch.sigmoid(t + b), scores, mask, extra, normalise)


def elu1_attention(scores: Scores, mask: Mask | None = None, extra: Extra | None = None, normalise: bool = False) -> Weights:
    """``A_j = elu(x_j) + 1`` (positive); ``normalise``: ``/ sum_i A_i``."""
    return _elementwise(lambda t: F.elu(t) + 1.0, scores, mask, extra, normalise)


def linear_attention(scores: Scores, mask: Mask | None = None, extra: Extra | None = None, normalise: bool = True) -> Weights:
    """``A_j = x_j`` (signed); ``normalise``: ``A_j / max(|sum_i x_i|, 1)`` (the paper's linear / MLP kernels)."""
    return _elementwise(lambda t: t, scores, mask, extra, normalise, signed=True)


def softpick_attention(
    scores: Scores, mask: Mask | None = None, extra: Extra | None = None, eps: float = SOFTPICK_EPS
) -> Weights:
    """``A_j = ReLU(e^{x_j-m} - e^{-m}) / (sum_i |e^{x_i-m} - e^{-m}| + eps)``, ``m`` the row max of the visible scores."""
    x, mask, e = _prepare(scores, mask, extra)
    k = x.shape[-1]
    xx, mm = _joint(x, mask, e)
    m = xx.masked_fill(~mm, float("-inf")).amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    d = (torch.exp(xx - m) - torch.exp(-m)).masked_fill(~mm, 0.0)
    w = F.relu(d) / (d.abs().sum(-1, keepdim=True) + eps)
    return _split(w, k, scores.dtype, e is not None)


RELU_SUM_EPS = 1e-8  # the official normaliser epsilon (model_attn_sim.py)


def relu_attention(scores: Scores, mask: Mask | None = None, extra: Extra | None = None, normalise: str | None = None) -> Weights:
    """``A_j = ReLU(x_j)`` (Guo et al.); ``normalise="sum"``: ``/ (sum_i A_i + 1e-8)``; ``"length"``: ``/ n`` visible keys."""
    if extra is not None:
        raise ValueError("the relu kernel takes no virtual keys (K bias, sink logit); fix: use another kernel or drop them")
    if normalise not in (None, "none", "sum", "length"):
        raise ValueError(f"relu normalise must be None, 'sum' or 'length', got {normalise!r}")
    if mask is None:
        mask = visible_mask(scores)
    a = torch.where(mask, F.relu(scores.float()), torch.zeros((), device=scores.device))
    if normalise == "sum":
        a = a / (a.sum(-1, keepdim=True) + RELU_SUM_EPS)
    elif normalise == "length":
        a = a / mask.sum(-1, keepdim=True).to(a.dtype)
    return a.to(scores.dtype), None


#: name -> (function, allowed keyword parameters, one-line formula)
KERNELS: dict[str, tuple[Callable[..., Weights], tuple[str, ...], str]] = {
    "softmax": (softmax_attention, (), "e^x / sum e^x"),
    "softmax1": (softmax1_attention, (), "e^x / (1 + sum e^x)"),
    "scaled": (scaled_softmax_attention, ("alpha",), "alpha e^x / sum e^x"),
    "pnorm": (pnorm_attention, ("p",), "e^x / (sum e^{px})^{1/p}"),
    "sigmoid": (sigmoid_attention, ("bias", "normalise"), "sigmoid(x + b) [/ sum]"),
    "elu1": (elu1_attention, ("normalise",), "elu(x) + 1 [/ sum]"),
    "softpick": (softpick_attention, ("eps",), "ReLU(e^x - 1) / (sum |e^x - 1| + eps)"),
    "linear": (linear_attention, ("normalise",), "x [/ max(|sum x|, 1)]"),
    "relu": (relu_attention, ("normalise",), "ReLU(x) [/ sum | / n]"),
}
ALIASES = {"softmax-plus-one": "softmax1", "softmax+1": "softmax1", "elu+1": "elu1", "elu": "elu1", "softmax-alpha": "scaled"}


def kernel_fn(name: str, **params: Any) -> Callable[[Scores, Optional[Mask], Optional[Extra]], Weights]:
    """The kernel called ``name`` with its parameters bound: ``fn(scores, mask=None, extra=None) -> (A, A_extra)``.

    Example:
        >>> import torch
        >>> f = kernel_fn("sigmoid", bias="-log n", normalise=False)
        >>> A, _ = f(torch.zeros(1, 4, 4), torch.ones(4, 4, dtype=torch.bool).tril())
        >>> float(A[0, 3, 0])  # sigmoid(0 - log 4) = 1 / (1 + 4)
        0.20000000298023224
    """
    key = ALIASES.get(name, name)
    if key not in KERNELS:
        raise ValueError(f"unknown attention kernel {name!r}; choose one of {sorted(KERNELS)} (aliases: {sorted(ALIASES)})")
    fn, allowed, _ = KERNELS[key]
    bad = sorted(set(params) - set(allowed))
    if bad:
        raise ValueError(f"kernel {key!r} takes parameters {list(allowed) or 'none'}, got unexpected {bad}")

    def bound(scores: Scores, mask: Mask | None = None, extra: Extra | None = None) -> Weights:
        return fn(scores, mask, extra, **params)

    bound.__name__ = f"{key}_attention"
    bound.kernel_name = key  # type: ignore[attr-defined]
    bound.kernel_params = dict(params)  # type: ignore[attr-defined]
    return bound


def causal_mask(
    q_len: int, k_len: int | None = None, device: Any = None, window: int | None = None, n_sinks: int = 0
) -> Bool[Tensor, "q k"]:
    """``[q, k]`` visibility: causal (queries are the last ``q_len`` of ``k_len`` positions),
    optionally only the last ``window`` keys plus the first ``n_sinks`` keys (StreamingLLM)."""
    from .masks import AttentionMask

    k_len = q_len if k_len is None else k_len
    mask = AttentionMask(window=window, n_sinks=n_sinks if window is not None else 0)
    return mask.visible(torch.arange(k_len - q_len, k_len, device=device), torch.arange(k_len, device=device))


def attention(
    q: Float[Tensor, "b h q d"],
    k: Float[Tensor, "b g k d"],
    v: Float[Tensor, "b g k dv"],
    kernel: str = "softmax",
    *,
    mask: Mask | None = None,
    causal: bool = True,
    scale: float | None = None,
    k_bias: Float[Tensor, "*h d"] | None = None,
    v_bias: Float[Tensor, "*h dv"] | None = None,
    sink_logit: Float[Tensor, " h"] | None = None,
    feature_map: Callable[[Tensor], Tensor] | None = None,
    return_weights: bool = False,
    **params: Any,
) -> Any:
    """One attention layer from ``q``, ``k``, ``v`` with any kernel, for model code.

    ``[b, H, T, d]`` queries and ``[b, G, T, d]`` keys/values (``G`` divides
    ``H``; query head ``h`` uses key/value head ``h // (H // G)``). Scores are
    ``q . k * scale`` (default ``1 / sqrt(d)``), or ``phi(q) . phi(k) * scale``
    with a ``feature_map`` (the MLP kernel). ``k_bias`` (``[d]`` shared or
    ``[H, d]`` per head) prepends a learnable key ``k*`` that every query sees,
    ``v_bias`` its value ``v*`` (default 0), ``sink_logit`` (``[H]``) a gpt-oss
    sink logit with value 0:

        z = kernel([q k* * scale, s_h, q K^T * scale]) [v*; 0; V]

    Returns ``z`` ``[b, H, T, dv]`` (and ``(A, A_extra)`` with ``return_weights``).

    Example:
        >>> import torch
        >>> q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 1, 5, 8), torch.randn(1, 1, 5, 8)
        >>> ref = torch.nn.functional.scaled_dot_product_attention(q, k.expand(1, 2, 5, 8), v.expand(1, 2, 5, 8), is_causal=True)
        >>> torch.allclose(attention(q, k, v), ref, atol=1e-6)
        True
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"q, k, v must be [batch, heads, pos, d]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    H, G = q.shape[1], k.shape[1]
    if H % G:
        raise ValueError(f"the number of query heads ({H}) must be a multiple of the key/value heads ({G})")
    if G != H:
        k = k.repeat_interleave(H // G, dim=1)
        v = v.repeat_interleave(H // G, dim=1)
    d = q.shape[-1]
    scale = d**-0.5 if scale is None else float(scale)
    qf, kf = (feature_map(q), feature_map(k)) if feature_map is not None else (q, k)
    scores = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    if mask is None:
        mask = (
            causal_mask(q.shape[-2], k.shape[-2], device=q.device)
            if causal
            else torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device)
        )
    extras, values = [], []
    if k_bias is not None:
        kb = k_bias.reshape(-1, k_bias.shape[-1]) if k_bias.ndim > 1 else k_bias[None]
        if kb.shape[0] not in (1, H) or kb.shape[-1] != d:
            raise ValueError(f"k_bias must be [d] or [H, d] = [{H}, {d}], got {tuple(k_bias.shape)}")
        qk = feature_map(q) if feature_map is not None else q
        kbf = feature_map(kb) if feature_map is not None else kb
        extras.append(torch.einsum("bhqd,hd->bhq", qk, kbf.expand(H, -1).to(qk.dtype))[..., None] * scale)
        if v_bias is not None:
            vb = v_bias.reshape(-1, v_bias.shape[-1]) if v_bias.ndim > 1 else v_bias[None]
            values.append(vb.expand(H, -1)[:, None, :])
        else:
            values.append(torch.zeros(H, 1, v.shape[-1], dtype=v.dtype, device=v.device))
    elif v_bias is not None:
        raise ValueError("v_bias needs k_bias (a value without a key); for 'y = Attn + v*' add v* to the output yourself")
    if sink_logit is not None:
        s = sink_logit.reshape(-1)
        if s.shape[0] not in (1, H):
            raise ValueError(f"sink_logit must be [H] = [{H}] or a scalar, got {tuple(sink_logit.shape)}")
        extras.append(s.expand(H).to(scores.dtype)[None, :, None, None].expand(q.shape[0], H, q.shape[-2], 1))
        values.append(torch.zeros(H, 1, v.shape[-1], dtype=v.dtype, device=v.device))
    extra = torch.cat(extras, dim=-1) if extras else None
    A, Ae = kernel_fn(kernel, **params)(scores, mask, extra)
    z = torch.matmul(A.to(v.dtype), v)
    if Ae is not None:
        vals = torch.cat(values, dim=1)  # [H, m, dv]
        z = z + torch.einsum("bhqm,hmd->bhqd", Ae.to(v.dtype), vals.to(v.dtype))
    return (z, (A, Ae)) if return_weights else z
