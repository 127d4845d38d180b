"""KV-cache quantization with intact sinks (IntactKV), measured against the model's own full-precision run.

The quantizer (asymmetric min-max, ``torch.round``), over the reduced dimensions of each group:

    scale = (max - min) / (2^b - 1)
    q     = clamp(round((x - min) / scale), 0, 2^b - 1)
    x'    = q * scale + min

computed in float32 and cast back to ``x``'s dtype; a group whose ``max == min`` is returned unchanged
(``x' = x``: the formula's 0/0). ``bits=16`` (or None) means no quantization.

What is quantized are the keys and values a KV cache would hold: keys **after** the rotary embedding
(and QK-norm), values as projected, both **before** GQA repetition (one group per KV head):

* ``key_mode="token"`` (default): one group per (token, KV head), over ``head_dim``; values likewise;
* ``key_mode="channel"`` (KIVI): keys grouped per (KV head, channel) over ``group`` consecutive tokens
  counted from the first non-intact position; a group is quantized once it is complete, so query ``t``
  sees key ``j`` quantized when ``j``'s group ends at or before ``t`` and in full precision before (the
  residual of the newest, incomplete group); values stay per token.

The first ``s`` positions (``intact=s``, or a list of positions) are kept in full precision: their
keys, values and scores are the model's own, bit for bit. Per-token quantization is causal (a token's
cache entry depends on that token alone), so one forward pass with the fake-quantized cache equals
token-by-token decoding with a quantized cache.

Where the bridge computes a layer's attention itself from the final keys at a hook (after RoPE: Llama,
Mistral, Qwen, Gemma...), per-token quantization is applied right at that hook and at ``hook_v``: the
model's own attention reads the quantized cache, with the same arithmetic as Hugging Face's eager attention
(bit for bit on SmolLM2). Elsewhere (RoPE applied after the hooks, as in GPT-NeoX; attention inside Hugging
Face, as in OPT; KIVI's per-query residual) it runs through the layer pipeline (:mod:`sink_interp.pipeline`):
scores are formed again from the layer's queries and quantized keys by the layer's description (scale,
soft-cap, ALiBi; the model's own sliding window and sink logits stay), and ``A (V' - V)`` is added at
``hook_z``, exact to float rounding; layers the description does not reproduce are refused by name.

Example:
    >>> import torch
    >>> from sink_interp import tiny_model
    >>> rep = kv_quant(tiny_model(), torch.randint(4, 128, (2, 16)), bits=(4, 2), intact=(0, 1), progress=False)
    >>> rep.to_frame()[["bits", "intact", "loss"]].shape
    (5, 3)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from ._internal import distributed as dist
from ._internal import hooknames
from ._internal.errors import check_positive_int
from ._internal.probe import ProbeSet
from ._internal.provenance import Provenance
from ._internal.report import FieldError, Provenanced, Report, check_range, summary_head, summary_tail
from .architecture import check_model_tokens, describe_attention, expand_kv, verify_attention
from .capture import attach_hooks, run_reducers
from .effects import NextTokenReducer
from .interventions import Intervention, intervene
from .kernels import visible_mask
from .pipeline import Ctx
from .provenance import provenance

__all__ = ["KVQuant", "QuantReport", "fake_quant", "kv_quant", "quantize_keys", "quantize_values"]

FULL_BITS = 16


# --------------------------------------------------------------------------- the quantizer


def _bits(bits: Any, name: str = "bits") -> int | None:
    """``None`` for full precision (None or 16), else an int in 1..15."""
    if bits is None:
        return None
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= int(bits) <= FULL_BITS:
        raise ValueError(f"{name} must be an integer in 1..16 (16: full precision), got {bits!r}")
    return None if int(bits) == FULL_BITS else int(bits)


def fake_quant(x: Tensor, bits: int | None, dim: int | Sequence[int] = -1) -> Tensor:
    """Asymmetric min-max fake quantization of ``x`` over ``dim`` (one scale and zero point per group).

    ``scale = (max - min) / (2^b - 1)``, ``q = clamp(round((x - min) / scale), 0, 2^b - 1)``,
    ``x' = q * scale + min`` with ``torch.round``, in float32, cast back to ``x.dtype``; groups with
    ``max == min`` are returned unchanged; ``bits`` None or 16: ``x`` itself.

    Example:
        >>> fake_quant(torch.tensor([[0.0, 0.1, 0.5, 1.0]]), 2)
        tensor([[0.0000, 0.0000, 0.6667, 1.0000]])
    """
    b = _bits(bits)
    if b is None:
        return x
    xf = x.float()
    mn = xf.amin(dim=dim, keepdim=True)
    mx = xf.amax(dim=dim, keepdim=True)
    levels = float(2**b - 1)
    scale = (mx - mn) / levels
    flat = scale == 0
    q = torch.clamp(torch.round((xf - mn) / torch.where(flat, torch.ones_like(scale), scale)), 0, levels)
    out = torch.where(flat, xf, q * scale + mn)
    return out.to(x.dtype)


def _intact_cols(intact: int | Sequence[int], T: int, device: Any) -> Tensor:
    """``[T]`` bool: the positions kept in full precision."""
    keep = torch.zeros(T, dtype=torch.bool, device=device)
    if isinstance(intact, int):
        keep[: min(intact, T)] = True
    else:
        idx = [p for p in intact if 0 <= p < T]
        if idx:
            keep[torch.tensor(idx, device=device)] = True
    return keep


def quantize_values(v: Float[Tensor, "b T G d"], bits: int | None, intact: int | Sequence[int] = 0) -> Float[Tensor, "b T G d"]:
    """Per (token, KV head) fake quantization over ``head_dim``; ``intact`` positions returned bit for bit.

    Example:
        >>> v = torch.randn(1, 5, 2, 8)
        >>> torch.equal(quantize_values(v, 2, intact=1)[:, 0], v[:, 0])
        True
    """
    out = fake_quant(v, bits, dim=-1)
    if out is v:
        return v
    keep = _intact_cols(intact, v.shape[1], v.device)[None, :, None, None]
    return torch.where(keep, v, out)


def quantize_keys(
    k: Float[Tensor, "b T G d"],
    bits: int | None,
    intact: int | Sequence[int] = 0,
    mode: str = "token",
    group: int = 32,
) -> Float[Tensor, "b T G d"]:
    """Keys after RoPE as a cache holds them: per token (like :func:`quantize_values`) or per channel (KIVI).

    ``mode="channel"``: from position ``s = intact`` on, every complete group of ``group`` tokens is
    quantized per (KV head, channel) over its tokens; the last incomplete group stays in full precision.
    (Which queries see a group quantized is the caller's business: :class:`KVQuant` shows it from the
    group's last token on.)

    Example:
        >>> k = torch.randn(1, 9, 2, 4)  # groups 2-5 (complete) and 6-8 (the residual)
        >>> kq = quantize_keys(k, 2, intact=2, mode="channel", group=4)
        >>> torch.equal(kq[:, :2], k[:, :2]), torch.equal(kq[:, 2:6], k[:, 2:6]), torch.equal(kq[:, 6:], k[:, 6:])
        (True, False, True)
    """
    if mode == "token":
        return quantize_values(k, bits, intact)
    if mode != "channel":
        raise ValueError(f"key mode must be 'token' or 'channel' (KIVI), got {mode!r}")
    if not isinstance(intact, int):
        raise ValueError("key mode 'channel' groups tokens after the intact ones: pass intact as a number of first tokens")
    if _bits(bits) is None:
        return k
    T = k.shape[1]
    out = k.clone()
    for a in range(intact, T - group + 1, group):
        out[:, a : a + group] = fake_quant(k[:, a : a + group], bits, dim=1)
    return out


def top_sink_positions(model: Any, tokens: Tensor | ProbeSet, k: int) -> list[int]:
    """The ``k`` key positions with the largest mean sink score ``alpha`` (over texts, layers and heads), among the
    first half of the positions (the last keys average too few queries to be called sinks).

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> len(top_sink_positions(tiny_model(), torch.randint(4, 128, (1, 12)), 2))
        2
    """
    from .metrics import measure_sinks

    k = check_positive_int(k, "k")
    rep = measure_sinks(model, tokens, progress=False)
    score = rep.alpha.mean(axis=(0, 1, 2))  # [T]
    half = max(k, (score.shape[0] + 1) // 2)
    order = np.argsort(-score[:half], kind="stable")
    return sorted(int(p) for p in order[:k])


def _check_intact(intact: Any, name: str = "intact") -> int | tuple[int, ...]:
    if isinstance(intact, (int, np.integer)) and not isinstance(intact, bool):
        if intact < 0:
            raise ValueError(f"{name} must be >= 0 (number of first tokens kept in full precision), got {intact}")
        return int(intact)
    if isinstance(intact, (list, tuple)) and all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in intact):
        if any(p < 0 for p in intact):
            raise ValueError(f"{name} positions must be >= 0, got {list(intact)}")
        return tuple(sorted({int(p) for p in intact}))
    raise ValueError(f"{name} must be a number of first tokens or a list of positions, got {intact!r}")


# --------------------------------------------------------------------------- the intervention


class KVQuant(Intervention):
    """Attention as it reads a fake-quantized KV cache (keys after RoPE, before GQA; values), some positions intact.

    Args:
        bits: key bits (None or 16: full precision); ``value_bits`` default the same.
        intact: first ``s`` positions (an int) or a list of positions kept in full precision.
        key_mode: ``"token"`` (per token and KV head, over head_dim) or ``"channel"`` (KIVI: per channel over
            groups of ``group`` tokens, a group quantized from its last token on).
        layers: the layers whose cache is quantized (default all).

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, intervene
        >>> m, x = tiny_model(), torch.randint(4, 128, (1, 8))
        >>> with intervene(m, KVQuant(bits=2, intact=1)):
        ...     changed = m(x)
        >>> bool((changed - m(x)).abs().max() > 0)
        True
    """

    has_positions = False
    needs = frozenset({"q", "k", "v"})

    def __init__(
        self,
        bits: int | None = 4,
        *,
        value_bits: int | None | str = "same",
        intact: int | Sequence[int] = 0,
        key_mode: str = "token",
        group: int = 32,
        layers: Sequence[int] | None = None,
        name: str | None = None,
    ):
        super().__init__(layers=layers, heads=None, positions=(), name=name)
        self.bits = _bits(bits)
        self.value_bits = self.bits if value_bits == "same" else _bits(value_bits, "value_bits")
        self.intact = _check_intact(intact)
        if key_mode not in ("token", "channel"):
            raise ValueError(f"key_mode must be 'token' or 'channel' (KIVI), got {key_mode!r}")
        if key_mode == "channel" and not isinstance(self.intact, int):
            raise ValueError(
                "key_mode='channel' groups the tokens after the intact ones: pass intact as a number of first tokens"
            )
        self.key_mode = key_mode
        self.group_size = check_positive_int(group, "group")

    def to_record(self) -> dict[str, Any]:
        return {
            "bits": self.bits,
            "value_bits": self.value_bits,
            "intact": self.intact,
            "key_mode": self.key_mode,
            "group": self.group_size,
            "layers": self.layers_arg,
            "name": self.name,
        }

    def bind(self, model: Any) -> None:
        super().bind(model)
        spec = describe_attention(model)
        asked = self.layers_arg if self.layers_arg is not None else tuple(range(spec.n_layers))
        # where the bridge computes attention itself from the final keys (after RoPE) at a hook, the cache is
        # quantized right there: the model's own attention reads it, bit for bit as HF's does; elsewhere (RoPE
        # applied after the hooks, attention inside HF, KIVI's per-query residual) through the layer pipeline
        self.direct_layers = tuple(
            layer
            for layer in asked
            if self.key_mode == "token"
            and spec.layer(layer).kind in ("rotated", "joint")
            and spec.layer(layer).rotate_after_hooks is None
        )
        self.layers = tuple(layer for layer in asked if layer not in self.direct_layers)
        if self.layers and (self.bits is not None or self.value_bits is not None):
            verify_attention(model, list(self.layers), "KV quantization (scores formed again from q and the quantized keys)")

    def residual_hooks(self, model: Any) -> list[tuple[str, Callable[..., Any]]]:
        spec = describe_attention(model)
        out: list[tuple[str, Callable[..., Any]]] = []
        for layer in self.direct_layers:
            if self.bits is not None:
                out.append((spec.layer(layer).k_hook, self._direct_hook(quantize_keys, self.bits)))
            if self.value_bits is not None:
                out.append((hooknames.v(layer), self._direct_hook(quantize_values, self.value_bits)))
        return out

    def _direct_hook(self, fn: Callable[..., Tensor], bits: int) -> Callable[..., Tensor]:
        def hook(x: Tensor, hook: Any) -> Tensor:
            return fn(x, bits, self.intact)

        return hook

    def edits_scores(self) -> bool:
        return self.bits is not None

    def edits_z(self) -> bool:
        return self.value_bits is not None

    def edit_scores(self, layer: int, scores: Tensor, ctx: Ctx) -> Tensor:
        k = ctx.k  # [b, T, G, d] as it meets the queries (after RoPE)
        T = k.shape[1]
        kq = quantize_keys(k, self.bits, self.intact, self.key_mode, self.group_size)
        la = self.attention(layer)
        sq = la.logits(ctx.q.transpose(1, 2), kq.transpose(1, 2)).to(scores.dtype)  # [b, H, T, T]
        dev = scores.device
        use = visible_mask(scores) & ~_intact_cols(self.intact, T, dev)[None, None, None, :]
        if self.key_mode == "channel":
            s = int(self.intact)  # type: ignore[arg-type]
            j = torch.arange(T, device=dev)
            ends = s + ((j - s) // self.group_size + 1) * self.group_size - 1  # each key's group ends here
            quantized = (j >= s) & (ends < T)
            seen = torch.arange(T, device=dev)[:, None] >= ends[None, :]  # [T, T]: the query sees the group quantized
            use = use & (quantized[None, :] & seen)[None, None]
        return torch.where(use, sq, scores)

    def edit_z(self, layer: int, z: Tensor, ctx: Ctx) -> Tensor:
        v, A = ctx.v, ctx.pattern  # [b, T, G, d], [b, H, T, T]
        dv = quantize_values(v, self.value_bits, self.intact).float() - v.float()
        dvh = expand_kv(dv, A.shape[1], dim=2)  # [b, T, H, d]
        corr = torch.einsum("bhts,bshd->bthd", A.float(), dvh)
        return (z.float() + corr).to(z.dtype)

    def describe(self) -> str:
        kb = "fp" if self.bits is None else f"{self.bits}-bit"
        vb = "fp" if self.value_bits is None else f"{self.value_bits}-bit"
        it = f"first {self.intact}" if isinstance(self.intact, int) else f"positions {list(self.intact)}"
        mode = "per token" if self.key_mode == "token" else f"keys per channel (groups of {self.group_size})"
        return f"KVQuant(K {kb}, V {vb}, {mode}, {it} intact)"


# --------------------------------------------------------------------------- evaluation shared by kv, quant, outliers


def condition_losses(
    model: Any,
    toks: Tensor,
    conditions: Sequence[tuple[str, Sequence[Intervention]]],
    *,
    batch_size: int = 1,
    progress: bool = True,
    desc: str = "conditions",
    settings: Any = None,
    score_from: int = 0,
) -> tuple[np.ndarray, list[float]]:
    """``[C, T-1]`` mean next-token loss per predicted position for each condition, and its wall seconds.

    Each condition's interventions run inside :func:`sink_interp.intervene` (none: the model itself).
    Interventions with a ``set_batch(tokens)`` method are told each batch's token ids first.
    Inside :func:`sink_interp.distributed` whole batches are sharded over the ranks and the sums folded
    in batch order (every rank ends with the same numbers).
    """
    import time

    from tqdm.auto import tqdm

    n, T = toks.shape
    bs = check_positive_int(batch_size, "batch_size")
    n_batches = (n + bs - 1) // bs
    mine = dist.shard(n_batches, {"tokens": toks, "batch_size": bs, "model": model, "settings": settings})
    parts: list[tuple[int, np.ndarray, list[float]]] = []
    bar = tqdm(
        total=len(mine) * len(conditions), desc=desc, unit="forward", disable=not (progress and dist.is_main()), leave=False
    )
    failed: BaseException | None = None
    try:
        with dist.local():
            for b in mine:
                batch = toks[b * bs : (b + 1) * bs]
                sums = np.zeros((len(conditions), T - 1))
                secs = []
                for c, (label, ivs) in enumerate(conditions):
                    for iv in ivs:
                        if hasattr(iv, "set_batch"):
                            iv.set_batch(batch)
                    r = NextTokenReducer()
                    t0 = time.perf_counter()
                    if ivs:
                        with intervene(model, *ivs):
                            run_reducers(model, batch, [r], batch_size=len(batch), progress=False)
                    else:
                        run_reducers(model, batch, [r], batch_size=len(batch), progress=False)
                    secs.append(time.perf_counter() - t0)
                    sums[c] = r.nll_pos.numpy()
                    bar.set_postfix_str(label[:30])
                    bar.update(1)
                parts.append((b, sums, secs))
    except Exception as e:  # noqa: BLE001 - re-raised on every rank
        failed = e
    finally:
        bar.close()
    dist.raise_any(failed)
    total = np.zeros((len(conditions), T - 1))
    wall = [0.0] * len(conditions)
    for _, sums, secs in sorted((p for rank_parts in dist.gather(parts) for p in rank_parts), key=lambda p: p[0]):
        total += sums
        wall = [w + s for w, s in zip(wall, secs)]
    return total / n, wall


def _grab(store: dict[tuple[int, str], Tensor], layer: int, which: str, how: Callable[[Tensor], Tensor]) -> Callable[..., None]:
    def hook(x: Tensor, hook: Any) -> None:
        store[(layer, which)] = how(x.detach())

    return hook


def _kv_errors(
    model: Any, toks: Tensor, bits: Sequence[int | None], sink_positions: int, key_mode: str, group: int, batch_size: int
) -> np.ndarray:
    """``[bits, layer, 2 (k, v), 2 (first sink_positions, rest)]`` mean relative error ``||x' - x|| / ||x||`` per vector,
    the quantizer applied to every position (what the intact positions would have lost)."""
    spec = describe_attention(model)
    L = spec.n_layers
    n, T = toks.shape
    sums = np.zeros((len(bits), L, 2, 2))
    counts = np.zeros(2)
    sink = torch.arange(T) < sink_positions
    bs = max(1, batch_size)
    mine = dist.shard((n + bs - 1) // bs, {"tokens": toks, "what": "kv errors", "bits": list(bits)})
    parts = []
    with dist.local():
        for b in mine:
            batch = toks[b * bs : (b + 1) * bs]
            got: dict[tuple[int, str], Tensor] = {}

            hooks = []
            for layer in range(L):
                la = spec.layer(layer)
                hooks.append((la.k_hook, _grab(got, layer, "k", la.final)))
                hooks.append((hooknames.v(layer), _grab(got, layer, "v", lambda t: t)))
            with torch.no_grad(), attach_hooks(model, hooks):
                model(batch)
            part = np.zeros((len(bits), L, 2, 2))
            for i, bt in enumerate(bits):
                for layer in range(L):
                    for w, which in enumerate(("k", "v")):
                        x = got[(layer, which)].float()
                        xq = quantize_keys(x, bt, 0, key_mode, group) if which == "k" else quantize_values(x, bt, 0)
                        rel = (xq - x).norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-12)  # [b, T, G]
                        part[i, layer, w, 0] = float(rel[:, sink].sum())
                        part[i, layer, w, 1] = float(rel[:, ~sink].sum())
            cnt = np.array([len(batch) * int(sink.sum()), len(batch) * int((~sink).sum())]) * spec.n_kv_heads
            parts.append((b, part, cnt))
    for _, part, cnt in sorted((p for rp in dist.gather(parts) for p in rp), key=lambda p: p[0]):
        sums += part
        counts += cnt
    return sums / np.maximum(counts, 1)[None, None, None, :]


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True, eq=False, repr=False)
class QuantReport(Provenanced, Report):
    """Next-token loss with a fake-quantized KV cache, per (bits, intact first tokens), against full precision.

    ``nll[c, t]``: mean loss of predicting token ``t + 1`` under condition ``c`` (``bits[c]``, ``intact[c]``;
    bits 16 = full precision). ``qerr[i, l, w, p]``: mean relative error ``||x' - x|| / ||x||`` of the keys
    (``w=0``) and values (``w=1``) of layer ``l`` at ``qerr_bits[i]``, at the first ``sink_positions``
    positions (``p=0``) and at the others (``p=1``), with every position quantized.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> rep = kv_quant(tiny_model(), torch.randint(4, 128, (1, 12)), bits=(2,), intact=(0, 1), progress=False)
        >>> rep.loss(16, 0) == rep.full_loss
        True
    """

    conditions: tuple[str, ...]
    bits: tuple[int, ...]
    intact: tuple[Any, ...]
    nll: Float[np.ndarray, "condition pos"]
    qerr: Float[np.ndarray, "bits layer kv where"]
    qerr_bits: tuple[int, ...]
    sink_positions: int
    key_mode: str
    group: int
    provenance: Provenance
    n: int
    length: int
    seconds: tuple[float, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def _check(self) -> None:
        C = len(self.conditions)
        for name in ("bits", "intact"):
            if len(getattr(self, name)) != C:
                raise FieldError(name, f"has {len(getattr(self, name))} entries for {C} conditions")
        if self.nll.shape[0] != C:
            raise FieldError("nll", f"holds {self.nll.shape[0]} conditions, but {C} are named")
        if self.qerr.shape[0] != len(self.qerr_bits):
            raise FieldError("qerr", f"holds {self.qerr.shape[0]} bit widths, qerr_bits names {len(self.qerr_bits)}")
        check_range("nll", self.nll, 0.0, None)
        check_range("qerr", self.qerr, 0.0, None)

    @property
    def full_loss(self) -> float:
        """Mean loss of the model's own full-precision run."""
        return self.loss(FULL_BITS, 0)

    def _index(self, bits: int, intact: Any) -> int:
        for c, (b, s) in enumerate(zip(self.bits, self.intact)):
            if b == bits and (b == FULL_BITS or s == intact or (isinstance(s, list) and tuple(s) == intact)):
                return c
        raise KeyError(f"no condition with bits={bits}, intact={intact!r}; the report has {list(zip(self.bits, self.intact))}")

    def loss(self, bits: int, intact: Any = 0, start: int = 0) -> float:
        """Mean next-token loss at ``bits`` with ``intact`` first tokens over predicted positions ``>= start``."""
        return float(self.nll[self._index(bits, intact), start:].mean())

    def to_frame(self) -> pd.DataFrame:
        """One row per condition: bits, intact, loss, perplexity, loss minus full precision, seconds."""
        full = self.full_loss
        rows = []
        for c, name in enumerate(self.conditions):
            lo = float(self.nll[c].mean())
            rows.append(
                {
                    "condition": name,
                    "bits": self.bits[c],
                    "intact": self.intact[c] if isinstance(self.intact[c], int) else str(list(self.intact[c])),
                    "loss": lo,
                    "ppl": float(np.exp(lo)),
                    "delta_loss": lo - full,
                    **({"seconds": self.seconds[c]} if len(self.seconds) == len(self.conditions) else {}),
                }
            )
        return pd.DataFrame(rows)

    def error_frame(self) -> pd.DataFrame:
        """Relative quantization error per (bits, layer, keys/values) at the sink positions and elsewhere."""
        rows = []
        for i, b in enumerate(self.qerr_bits):
            for layer in range(self.qerr.shape[1]):
                for w, which in enumerate(("k", "v")):
                    rows.append(
                        {
                            "bits": b,
                            "layer": layer,
                            "kv": which,
                            "sink": float(self.qerr[i, layer, w, 0]),
                            "rest": float(self.qerr[i, layer, w, 1]),
                        }
                    )
        return pd.DataFrame(rows)

    def summary(self) -> dict[str, Any]:
        return {
            **summary_head(self, "n", "length", "key_mode", "group"),
            "quantizer": "asymmetric min-max; scale=(max-min)/(2^b-1), q=clamp(round((x-min)/scale),0,2^b-1), x'=q*scale+min",
            "full_loss": self.full_loss,
            "conditions": self.to_frame().to_dict(orient="records"),
            "error_sink_positions": self.sink_positions,
            "error_mean": {
                str(b): {
                    "k_sink": float(self.qerr[i, :, 0, 0].mean()),
                    "k_rest": float(self.qerr[i, :, 0, 1].mean()),
                    "v_sink": float(self.qerr[i, :, 1, 0].mean()),
                    "v_rest": float(self.qerr[i, :, 1, 1].mean()),
                }
                for i, b in enumerate(self.qerr_bits)
            },
            "dtype": self.model_info.get("dtype"),
            "device": self.model_info.get("device"),
            **summary_tail(self),
        }

    def table(self) -> pd.DataFrame:
        """Loss with bits as rows and intact first tokens as columns."""
        df = self.to_frame()
        df = df[df["bits"] != FULL_BITS]
        return df.pivot(index="bits", columns="intact", values="loss").sort_index(ascending=False)

    def __repr__(self) -> str:
        return f"QuantReport({self.model!r}, n={self.n}, length={self.length}, full loss {self.full_loss:.4f}, {len(self.conditions)} conditions)"


def kv_quant(
    model: Any,
    tokens: Tensor | ProbeSet,
    bits: Sequence[int] = (8, 4, 3, 2),
    intact: Sequence[int | Sequence[int] | str] = (0, 1, 4),
    *,
    key_mode: str = "token",
    group: int = 32,
    sink_positions: int = 1,
    errors: bool = True,
    batch_size: int = 1,
    progress: bool = True,
) -> QuantReport:
    """Loss with the KV cache fake-quantized at each of ``bits``, keeping each of ``intact`` in full precision.

    Args:
        model: a TransformerBridge.
        tokens: ``[n, T]`` token ids.
        bits: bit widths (16 is full precision and always included).
        intact: numbers of first tokens (or lists of positions) kept in full precision; ``"sinks:K"``: the ``K``
            positions with the largest sink score on these texts (:func:`top_sink_positions`).
        key_mode: ``"token"`` or ``"channel"`` (KIVI, groups of ``group`` tokens); values are per token.
        sink_positions: the quantization error is reported at positions ``< sink_positions`` and at the rest.
        errors: also measure the per-layer quantization error (one more forward per batch).
        batch_size: texts per forward pass.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> rep = kv_quant(tiny_model(), torch.randint(4, 128, (1, 12)), bits=(4,), intact=(0,), progress=False)
        >>> rep.conditions
        ('full precision', '4-bit, 0 intact')
    """
    toks = check_model_tokens(model, tokens, min_length=2)
    bl = [_bits(b) for b in bits]
    if not bl:
        raise ValueError("bits must name at least one bit width, e.g. (8, 4, 3, 2)")
    by_score: dict[str, list[int]] = {}
    for s in intact:
        if isinstance(s, str):
            head, _, k = s.partition(":")
            if head != "sinks" or not k.isdigit() or int(k) < 1:
                raise ValueError(f"intact {s!r}: write 'sinks:K' (the K positions with the largest sink score) or a number")
            by_score[s] = top_sink_positions(model, toks, int(k))
    its = [_check_intact(by_score.get(s, s) if isinstance(s, str) else s) for s in intact] or [0]
    sink_positions = check_positive_int(sink_positions, "sink_positions", minimum=1)
    conds: list[tuple[str, list[Intervention]]] = [("full precision", [])]
    meta: list[tuple[int, Any]] = [(FULL_BITS, 0)]
    for b in bl:
        if b is None:
            continue
        for s in its:
            lab = f"{b}-bit, {s if isinstance(s, int) else list(s)} intact"
            conds.append((lab, [KVQuant(b, intact=s, key_mode=key_mode, group=group)]))
            meta.append((b, s))
    settings = {"bits": bl, "intact": its, "key_mode": key_mode, "group": group}
    extra_by_score = {s: v for s, v in by_score.items()}
    nll, secs = condition_losses(model, toks, conds, batch_size=batch_size, progress=progress, desc="kv quant", settings=settings)
    qb = [b for b in bl if b is not None]
    qerr = (
        _kv_errors(model, toks, qb, sink_positions, key_mode, group, batch_size)
        if errors and qb
        else np.zeros((0, describe_attention(model).n_layers, 2, 2))
    )
    return QuantReport(
        conditions=tuple(c[0] for c in conds),
        bits=tuple(m[0] for m in meta),
        intact=tuple(m[1] if isinstance(m[1], int) else list(m[1]) for m in meta),
        nll=nll,
        qerr=qerr if errors and qb else qerr,
        qerr_bits=tuple(qb) if errors else (),
        sink_positions=sink_positions,
        key_mode=key_mode,
        group=int(group),
        n=int(toks.shape[0]),
        length=int(toks.shape[1]),
        seconds=tuple(secs),
        provenance=provenance(model, tokens),
        extra={"intact_by_sink_score": extra_by_score} if extra_by_score else {},
    )
