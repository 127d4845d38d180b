"""Weights of a TransformerBridge block in TransformerLens conventions (one place, like hook names).

Shapes: ``W_Q [H, D, d]``, ``W_K`` / ``W_V [G, D, d]`` (G = KV heads), biases ``[H or G, d]``;
MLP ``W_gate`` / ``W_in [D, d_mlp]``, ``W_out [d_mlp, D]``. Norm gains (with Gemma's ``1 + w``) come from
:meth:`sink_interp.architecture.AttentionSpec.norm_gain`.
Missing biases come back as ``None``. Everything is detached, copied, float32 on the CPU; weights offloaded by a
``device_map`` are read inside :func:`~sink_interp._internal.placement.materialized`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .placement import materialized


def _get(obj: Any, name: str) -> Tensor | None:
    try:
        w = getattr(obj, name)
    except (AttributeError, TypeError, RuntimeError):
        return None
    if not isinstance(w, torch.Tensor):
        return None
    return w.detach().float().cpu().clone()


def attn_weights(model: Any, layer: int) -> dict[str, Tensor | None]:
    """``W_Q, b_Q, W_K, b_K, W_V, b_V`` of block ``layer``'s attention."""
    attn = model.blocks[layer].attn
    try:
        with materialized(attn):
            out = {name: _get(attn, name) for name in ("W_Q", "b_Q", "W_K", "b_K", "W_V", "b_V")}
    except Exception as e:  # the bridge cannot split this layer's weights into heads (Gemma-4's per-layer geometry...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"block {layer}'s attention weights cannot be read as per-head W_Q/W_K/W_V ({type(e).__name__}: {first[:160]}); "
            "the W_K link needs them (fix: trace without the 'wk' link: links=[...] without 'wk')"
        ) from None
    for name in ("W_Q", "W_K", "W_V"):
        if out[name] is None:
            raise ValueError(
                f"block {layer}'s attention exposes no {name}; the W_K link needs the projection weights "
                "(fix: trace without the 'wk' link: links=[...] without 'wk')"
            )
    return out


def mlp_weights(model: Any, layer: int) -> dict[str, Any]:
    """``W_gate`` (None when not gated), ``W_in``, ``W_out``, their biases, and the activation name."""
    mlp = model.blocks[layer].mlp
    with materialized(mlp):
        out: dict[str, Any] = {name: _get(mlp, name) for name in ("W_gate", "W_in", "W_out", "b_gate", "b_in", "b_out")}
    out["act_fn"] = str(getattr(model.cfg, "act_fn", "") or "")
    out["gated"] = out["W_gate"] is not None
    return out


def attn_out_weights(model: Any, layer: int) -> Tensor:
    """``W_O [H, d, D]`` of block ``layer``'s attention: head ``h`` writes ``z[..., h, :] @ W_O[h]`` to the residual."""
    attn = model.blocks[layer].attn
    with materialized(attn):
        w = _get(attn, "W_O")
    if w is None:
        raise ValueError(f"block {layer}'s attention exposes no W_O; fix: a model whose bridge exposes the output projection")
    return w
