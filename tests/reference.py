"""Independent references used by the tests (written from the paper, not from the library)."""

from __future__ import annotations

import torch


def official_alpha(attentions: torch.Tensor) -> torch.Tensor:
    """The official eval_sink_open_source.py formula on stacked attentions [..., T, T].

    ratios[k] = T - k (0-indexed); importance = (A / ratios).sum over queries.
    """
    T = attentions.shape[-1]
    ratios = torch.arange(T, 0, -1)[None, :].to(attentions)
    return (attentions / ratios).sum(dim=-2)


def official_rates(alpha: torch.Tensor, eps: float) -> torch.Tensor:
    """Sink_k in percent from alpha [samples, layers, heads, T]."""
    return (alpha > eps).float().mean(dim=(0, 1, 2)) * 100


def hf_attentions(hf_model, tokens: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """[samples, layers, heads, T, T] from a Hugging Face model with eager attention."""
    out = []
    with torch.no_grad():
        for i in range(0, tokens.shape[0], batch_size):
            res = hf_model(tokens[i : i + batch_size], output_attentions=True)
            out.append(torch.stack([a.float() for a in res.attentions], dim=1))
    return torch.cat(out, dim=0)


def uniform_alpha(T: int) -> torch.Tensor:
    """alpha_k for uniform causal attention A[t, j] = 1/t (1-indexed): mean over t >= k of 1/t."""
    t = torch.arange(1, T + 1, dtype=torch.float64)
    return torch.tensor([(1.0 / t[k - 1 :]).sum().item() / (T - k + 1) for k in range(1, T + 1)], dtype=torch.float64)
