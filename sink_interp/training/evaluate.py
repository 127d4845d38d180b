"""Periodic evaluation of a training run: loss, sink rates, value drain, residual peak.

:func:`probe_stats` works on any ``TransformerBridge`` (one batched forward
through :func:`sink_interp.capture.run_reducers`): the Gu et al. sink rate at
several thresholds and positions, the sink mass of extra attention columns,
the value-norm ratio ``||v_sink|| / mean ||v_other||`` (value drain) and the
residual peak ``||h_sink|| / mean ||h_other||`` with the largest absolute
residual activation at the sink and elsewhere (massive activations).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._internal import hooknames
from .._internal.probe import ProbeSet, as_tokens
from ..capture import Reduce, run_reducers
from ..metrics import SinkScoreReducer

EPS_SWEEP = (0.1, 0.2, 0.3)
N_POSITIONS = 16  # Sink_k recorded for k = 1..16


def masked_ce(logits: Tensor, tokens: Tensor, loss_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-position cross entropy of predicting ``tokens[:, t + 1]`` from position ``t`` and its mask."""
    V = logits.shape[-1]
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), tokens[:, 1:].reshape(-1), reduction="none")
    return ce.view(tokens.shape[0], -1), loss_mask[:, :-1]


def val_losses(lab: Any, batches: Sequence[Any], task: Any = None) -> dict[str, float]:
    """Mean validation loss over the (fixed) batches; for BB also at copy and bigram targets."""
    device = next(lab.bridge.parameters()).device
    tot = n = copy_tot = copy_n = 0.0
    with torch.no_grad():
        for b in batches:
            with lab.runtime.documents(None if b.doc_ids is None else b.doc_ids.to(device)):
                logits = lab.bridge(b.tokens.to(device), return_type="logits")
            ce, m = masked_ce(logits, b.tokens.to(device), b.loss_mask.to(device))
            m = m.float()
            tot += float((ce * m).sum())
            n += float(m.sum())
            if task is not None and getattr(task, "kind", "") == "bb":
                # the target at t + 1 is a copy when position t holds a trigger
                trig = task.trigger_mask(b.tokens)[:, :-1].to(device).float() * m
                copy_tot += float((ce * trig).sum())
                copy_n += float(trig.sum())
    out = {"val_loss": tot / max(n, 1.0)}
    if copy_n:
        out["val_loss_copy"] = copy_tot / copy_n
        out["val_loss_bigram"] = (tot - copy_tot) / max(n - copy_n, 1.0)
    return out


def probe_stats(
    model: Any,
    tokens: Tensor | ProbeSet,
    *,
    score: str = "auto",
    eps: float = 0.3,
    first_k: int = 1,
    sink_k: int = 1,
    max_k: int = N_POSITIONS,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Sink and extreme-token statistics of ``model`` on ``tokens``.

    ``first_k`` (the first data token), ``sink_k`` (the token whose norms are compared) and ``max_k``
    are the paper's 1-indexed key positions ``k``.

    Returns ``sink_rate_1`` (``Sink_{first_k}`` at ``eps``, percent: the first
    data token), ``sink_rate_1_by_eps`` (the same at the other thresholds of
    ``EPS_SWEEP``, keyed by the threshold as text), ``mean_alpha_1``,
    ``sink_rates`` (``Sink_k`` for ``k = 1..max_k``, ``sink_rates[k - 1]``),
    ``top_sink_k`` (the ``k`` with the largest ``Sink_k`` among keys scored by at
    least 8 queries), ``sink_rate_star``/``sink_mass`` (attention given to
    no token: the K-bias / sink-logit column's share), ``attn_mass`` (mean row
    sum), ``value_norm_ratio`` (mean over layers and KV heads of
    ``||v_sink|| / mean_{t != sink} ||v_t||``; the strongest sink head's in
    ``value_norm_ratio_top``), ``resid_norm_ratio`` (max over layers of
    ``||h_sink|| / mean_{t != sink} ||h_t||``) and ``max_abs_sink`` /
    ``max_abs_rest`` (largest ``|h|`` at the sink and elsewhere, max over layers,
    mean over samples).
    """
    tokens = as_tokens(tokens)
    L = int(model.cfg.n_layers)
    s_idx = sink_k - 1
    sinks = SinkScoreReducer(score=score)
    v_ratio = torch.zeros(L, int(getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads))
    h_ratio = torch.zeros(L)
    max_sink = torch.zeros(L)
    max_rest = torch.zeros(L)
    n_total = tokens.shape[0]

    def on_tensor(name: str, x: Tensor, start: int) -> None:
        layer = hooknames.layer_of(name)
        x = x.detach().float()
        others = torch.ones(x.shape[1], dtype=torch.bool, device=x.device)
        others[s_idx] = False
        if name.endswith("attn.hook_v"):  # [b, s, G, d]
            norms = x.norm(dim=-1)  # [b, s, G]
            r = norms[:, s_idx] / norms[:, others].mean(1).clamp(min=1e-12)
            v_ratio[layer] += r.sum(0).cpu() / n_total
        else:  # resid_post [b, s, D]
            norms = x.norm(dim=-1)
            h_ratio[layer] += (norms[:, s_idx] / norms[:, others].mean(1).clamp(min=1e-12)).sum().cpu() / n_total
            a = x.abs()
            max_sink[layer] += a[:, s_idx].amax(-1).sum().cpu() / n_total
            max_rest[layer] += a[:, others].flatten(1).amax(-1).sum().cpu() / n_total

    names = [hooknames.v(layer) for layer in range(L)] + [hooknames.resid_post(layer) for layer in range(L)]
    extra = Reduce(names, on_tensor)
    with torch.no_grad():
        run_reducers(model, tokens, [sinks, extra], batch_size=batch_size, progress=False, desc="eval")
    alpha, row_sum = sinks.result()  # [n, L, H, T], [n, L, H]
    alpha = alpha.numpy()
    row_sum = row_sum.numpy()
    T = alpha.shape[-1]
    k0 = first_k - 1
    out: dict[str, Any] = {
        "sink_rate_1": float(100.0 * (alpha[..., k0] > eps).mean()),
        "sink_rate_1_by_eps": {f"{e:g}": float(100.0 * (alpha[..., k0] > e).mean()) for e in EPS_SWEEP if e != eps},
    }
    out["mean_alpha_1"] = float(alpha[..., k0].mean())
    rates = 100.0 * (alpha > eps).mean(axis=(0, 1, 2))
    out["sink_rates"] = [round(float(r), 3) for r in rates[:max_k]]
    reliable = [k for k in range(T) if T - k >= 8]
    kmax = max(reliable, key=lambda k: rates[k]) if reliable else 0
    out["top_sink_k"] = int(kmax + 1)
    mass = 1.0 - row_sum  # [n, L, H]
    out["sink_mass"] = float(mass.mean())
    out["sink_rate_star"] = float(100.0 * (mass > eps).mean())
    out["attn_mass"] = float(row_sum.mean())
    mean_alpha_sink = alpha[..., s_idx].mean(0)  # [L, H]
    H = mean_alpha_sink.shape[1]
    G = v_ratio.shape[1]
    top_l, top_h = np.unravel_index(int(np.argmax(mean_alpha_sink)), mean_alpha_sink.shape)
    out["value_norm_ratio"] = float(v_ratio.mean())
    out["value_norm_ratio_top"] = float(v_ratio[top_l, top_h // max(1, H // G)])
    out["top_sink_head"] = [int(top_l), int(top_h)]
    out["resid_norm_ratio"] = float(h_ratio.max())
    out["max_abs_sink"] = float(max_sink.max())
    out["max_abs_rest"] = float(max_rest.max())
    return out


def round_metric(d: dict[str, Any], nd: int = 6) -> dict[str, Any]:
    """``d`` with its float values (those of nested dicts included) rounded to ``nd`` digits."""
    out = {}
    for k, v in d.items():
        if isinstance(v, float):
            out[k] = round(v, nd)
        elif isinstance(v, dict):
            out[k] = round_metric(v, nd)
        else:
            out[k] = v
    return out
