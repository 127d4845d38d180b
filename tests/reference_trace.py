"""Independent references for the massive-activation and trace tests.

Everything here runs on the Hugging Face models (``tiny_hf_model`` copies, the
dense SmolLM2) with plain forward hooks on the HF modules and formulas written
from the papers: nothing goes through sink_interp's hooks or reducers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def decoder_layers(hf: Any) -> list[Any]:
    if hasattr(hf, "model") and hasattr(hf.model, "layers"):
        return list(hf.model.layers)
    return list(hf.transformer.h)


def is_gpt(hf: Any) -> bool:
    return hasattr(hf, "transformer")


@contextlib.contextmanager
def capture(modules: dict[str, Any]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Plain PyTorch forward hooks on HF modules: name -> outputs (first element of tuples), in call order."""
    out: dict[str, list[torch.Tensor]] = {k: [] for k in modules}

    def make(name: str):
        def hook(module, args, output):
            y = output[0] if isinstance(output, tuple) else output
            out[name].append(y.detach().float())

        return hook

    handles = [mod.register_forward_hook(make(name)) for name, mod in modules.items()]
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


def hidden_states(hf: Any, tokens: torch.Tensor) -> torch.Tensor:
    """[n, L, T, D]: the residual stream entering each block (HF hidden_states[0..L-1])."""
    with torch.no_grad():
        res = hf(tokens, output_hidden_states=True)
    L = len(decoder_layers(hf))
    return torch.stack([h.float() for h in res.hidden_states[:L]], dim=1)


def config_numbers(hf: Any) -> dict[str, Any]:
    c = hf.config
    D = int(getattr(c, "hidden_size", None) or c.n_embd)
    H = int(getattr(c, "num_attention_heads", None) or c.n_head)
    d = int(getattr(c, "head_dim", None) or D // H)
    if is_gpt(hf):
        G = 1 if getattr(c, "multi_query", False) else H
    else:
        G = int(c.num_key_value_heads)
    rp = getattr(c, "rope_parameters", None) or {}
    base = float(rp.get("rope_theta", getattr(c, "rope_theta", 10000.0)))
    rope = not is_gpt(hf) and not (hasattr(c, "no_rope_layers") and not any(c.no_rope_layers))
    eps = float(getattr(c, "rms_norm_eps", None) or getattr(c, "layer_norm_eps", None) or getattr(c, "layer_norm_epsilon", 1e-5))
    return {"D": D, "H": H, "d": d, "G": G, "base": base, "rope": rope, "eps": eps}


def qkv(hf: Any, tokens: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pre-RoPE q [n,T,H,d], k [n,T,G,d], v [n,T,G,d] of block ``layer``, and the attention input [n,T,D]."""
    cfg = config_numbers(hf)
    H, G, d, D = cfg["H"], cfg["G"], cfg["d"], cfg["D"]
    lay = decoder_layers(hf)[layer]
    n, T = tokens.shape
    if is_gpt(hf):
        with capture({"qkv": lay.attn.c_attn, "ln": lay.ln_1}) as got, torch.no_grad():
            hf(tokens)
        y = got["qkv"][0]
        q = y[..., :D].reshape(n, T, H, d)
        k = y[..., D : D + G * d].reshape(n, T, G, d)
        v = y[..., D + G * d :].reshape(n, T, G, d)
        return q, k, v, got["ln"][0]
    a = lay.self_attn
    with capture({"q": a.q_proj, "k": a.k_proj, "v": a.v_proj, "ln": lay.input_layernorm}) as got, torch.no_grad():
        hf(tokens)
    return (
        got["q"][0].reshape(n, T, H, d),
        got["k"][0].reshape(n, T, G, d),
        got["v"][0].reshape(n, T, G, d),
        got["ln"][0],
    )


def rope(x: torch.Tensor, base: float) -> torch.Tensor:
    """RoPE by its formula (HF's rotate-half layout): x [n, T, heads, d] at positions 0..T-1."""
    _, T, _, d = x.shape
    inv = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]  # [T, d/2]
    cos = torch.cat([ang.cos(), ang.cos()], -1)[None, :, None, :]
    sin = torch.cat([ang.sin(), ang.sin()], -1)[None, :, None, :]
    x = x.double()
    rot = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1)
    return x * cos + rot * sin


def rotated_qk(hf: Any, tokens: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k as attention sees them (RoPE applied by formula where the model rotates)."""
    cfg = config_numbers(hf)
    q, k, _, _ = qkv(hf, tokens, layer)
    if cfg["rope"]:
        return rope(q, cfg["base"]), rope(k, cfg["base"])
    return q.double(), k.double()


def norm_scale(x: torch.Tensor, layernorm: bool, eps: float) -> torch.Tensor:
    """RMSNorm's divisor sqrt(mean x^2 + eps), or LayerNorm's sqrt(var + eps) (biased variance)."""
    x = x.double()
    if layernorm:
        return (x.var(-1, unbiased=False) + eps).sqrt()
    return (x.pow(2).mean(-1) + eps).sqrt()


def mean_pairwise_cos_loop(x: np.ndarray) -> float:
    n = len(x)
    tot, cnt = 0.0, 0
    for i in range(n):
        for j in range(n):
            if i != j:
                tot += float(x[i] @ x[j] / (np.linalg.norm(x[i]) * np.linalg.norm(x[j])))
                cnt += 1
    return tot / cnt


def angle_deg(v: np.ndarray, basis: np.ndarray) -> float:
    """Angle between v and span(basis columns), basis orthonormal."""
    p = basis @ (basis.T @ v)
    return math.degrees(math.acos(min(1.0, np.linalg.norm(p) / np.linalg.norm(v))))
