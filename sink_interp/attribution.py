"""Attribution estimators of head patching: AtP, AtP* (QK fix + GradDrop) and integrated gradients.

Each estimates ``metric(patched) - metric(base)`` for every head at once as ``(a_other - a_base) . g``, summed over the
batch, the patched positions and the head's dimensions; they differ in the gradient ``g`` of the metric:

* ``"attribution"`` (AtP, Nanda 2023): ``g`` at the base run; one forward and one backward.
* ``"ig"`` (integrated gradients along the base->other path, as EAP-IG, Hanna et al. 2024): ``g`` averaged over
  ``steps`` runs whose token embeddings lie on the straight line from the base input's to the other's (midpoints
  ``(i + 0.5) / steps``); the runs are stacked in one forward and one backward. Sees what a gradient at one end misses
  where the model is far from linear between the inputs (saturated sink heads, massive activations).
* ``"atp*"`` (Kramár et al. 2024): AtP with GradDrop: for every layer ``l`` the gradient is taken again with block
  ``l``'s writes to the residual stream (attention and MLP outputs) cut from the backward, and the magnitude is
  ``sum_l |estimate_l| / (L - 1)``: a head whose direct and indirect paths cancel in the plain gradient shows up. The sign
  is the plain estimate's. One forward and one backward per layer above the lowest patched one.

All three recompute the softmax with the patched query or key for ``q``/``k`` sites (the QK fix of AtP*); the plain
linear estimate through the softmax is kept beside it (``estimate_linear``, AtP only).

The patching problem they estimate (the model, the site, the heads, the base input, the other input's activations, the
metric, the patched positions) is one :class:`PatchProblem`, built once by :func:`sink_interp.patch_heads`.

Example:
    >>> from sink_interp.attribution import AttributionSettings
    >>> AttributionSettings(steps=4).steps
    4
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ._internal import hooknames
from ._internal.errors import NonFiniteError, check_positive_int
from .capture import attach_hooks

#: the estimators :func:`estimate` computes
ESTIMATORS = ("attribution", "atp*", "ig")
#: the estimator ``method="verified"`` and ``"fast"`` rank heads with (see docs/patching.md for the measurements)
DEFAULT_ESTIMATOR = "attribution"


@dataclass(frozen=True)
class AttributionSettings:
    """The knobs of the attribution estimators and of ``method="verified"`` (one object, passed as
    ``patch_heads(..., attribution=AttributionSettings(...))``).

    Args:
        steps: integrated-gradient steps (``"ig"``): runs on the line between the two inputs' embeddings.
        estimator: the estimator ``method="both"`` and ``"verified"`` use (one of :data:`ESTIMATORS`).
        top: ``"verified"``: how many of the largest effects must be exact. Heads are patched exactly in the order of
            their estimated ``|effect|`` until no head left unpatched has an estimate that beats the ``top``-th largest
            exact ``|effect|`` found so far.
        batch: ``"verified"``: heads patched exactly per round (default ``top``).
        max_verified: ``"verified"``: at most this many heads are patched exactly (default: no limit).
        budget: ``"fast"``: the fraction of the heads patched exactly, the best-screened first (default 0.1).

    Example:
        >>> AttributionSettings(estimator="atp*", top=3).batch
        3
    """

    steps: int = 8
    estimator: str = DEFAULT_ESTIMATOR
    top: int = 5
    batch: int | None = None
    max_verified: int | None = None
    budget: float = 0.1

    def __post_init__(self) -> None:
        check_positive_int(self.steps, "steps")
        check_positive_int(self.top, "top")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.batch is None:
            object.__setattr__(self, "batch", self.top)
        check_positive_int(self.batch, "batch")
        if self.max_verified is not None:
            check_positive_int(self.max_verified, "max_verified")
        if isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)) or not 0 < self.budget <= 1:
            raise ValueError(f"budget must be a fraction of the heads in (0, 1], got {self.budget!r}")


@dataclass(frozen=True, eq=False)
class PatchProblem:
    """What an estimate patches, and where: built once by :func:`sink_interp.patch_heads`, read by every estimator.

    Args:
        model: the TransformerBridge.
        spec: its attention description (:class:`~sink_interp.architecture.AttentionSpec`).
        site: what is patched (a :class:`~sink_interp.patching.sites.Site`: ``z``, ``k-sink``, ...).
        layers: the patched layers.
        heads: the patched query heads.
        base_t: ``[n, T]`` the input that is run (its activations are replaced).
        src: the other input's activations at the site's hooks (and its token embedding, ``hook_embed``, for ``"ig"``).
        fn: the metric, ``fn(logits) -> scalar tensor``.
        pos: the patched positions (an index tensor, or ``slice(None)``: all).
        T: the length of the inputs.
        n: the number of samples.
    """

    model: Any
    spec: Any
    site: Any
    layers: Sequence[int]
    heads: Sequence[int]
    base_t: Tensor
    src: dict[str, Tensor]
    fn: Callable[[Tensor], Tensor]
    pos: Any
    T: int
    n: int


# --------------------------------------------------------------------------- running the model


def metric_value(value: Any, where: str) -> float:
    """The metric's value on one run (``where`` names it): a float tensor of one element, finite.

    Anything else is one line: the wrong type or shape a ``ValueError``, NaN/Inf a :class:`NonFiniteError`
    (as in every analysis: no number is made from a NaN).
    """
    fix = "return a float tensor of one number computed from the logits, e.g. logits[:, -2, token].mean()"
    if not isinstance(value, torch.Tensor):
        shown = repr(value)
        shown = shown if len(shown) <= 40 else shown[:40] + "..."
        raise ValueError(
            f"metric must return a scalar tensor; it returned a {type(value).__name__} ({shown}) on {where}; fix: {fix}"
        )
    if value.numel() != 1:
        raise ValueError(
            f"metric must return one number (a scalar tensor), got shape {tuple(value.shape)} on {where}; "
            "fix: reduce inside it, e.g. .mean()"
        )
    if not value.dtype.is_floating_point:
        raise ValueError(f"metric must return a float tensor, got {value.dtype} on {where}; fix: {fix}")
    v = float(value.detach().reshape(()))
    if not math.isfinite(v):
        raise NonFiniteError(
            f"the metric is {v} on {where}: a report holds finite numbers only; fix: check the metric (a log of 0, "
            "a division by 0) and the model (measure_sinks names a NaN in its weights or hooks)"
        )
    return v


def forward_capture(
    model: Any,
    tokens: Tensor,
    names: Sequence[str],
    *,
    grad: bool = False,
    cut: str | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Logits of ``tokens`` and the tensors at ``names`` (in the graph when ``grad``; ``cut``: a hook whose
    tensor becomes a fresh leaf, so the backward stops there)."""
    got: dict[str, Tensor] = {}

    def keeper(name: str) -> Any:
        def keep(x: Tensor, hook: Any) -> Tensor:
            got[name] = x if grad else x.detach()
            return x  # returned, so that the tensor kept is the one the model goes on with (its gradient is the one wanted)

        return keep

    def leaf(x: Tensor, hook: Any) -> Tensor:
        return x.detach().requires_grad_(True)

    hooks = ([(cut, leaf)] if cut else []) + [(nm, keeper(nm)) for nm in dict.fromkeys(names)]
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with attach_hooks(model, hooks), ctx:
        logits = model(tokens, return_type="logits")
    if not bool(torch.isfinite(logits).all()):
        raise NonFiniteError("the logits of an unpatched run hold NaN/Inf; fix: check the model's weights and dtype")
    return logits, got


def _names(p: PatchProblem) -> list[str]:
    """The tensors whose activations and gradients an estimate reads."""
    spec, site, layers = p.spec, p.site, p.layers
    per_q_kv = site.kv and spec.n_kv_heads < spec.n_heads
    names: list[str] = []
    for l_ in layers:
        la = spec.layer(l_)
        names.append(site.hook(l_))
        if site.qk:
            names += [la.q_hook, la.k_hook, hooknames.pattern(l_)]
        if per_q_kv and site.base == "v":
            names += [hooknames.z(l_), hooknames.pattern(l_)]
    return list(dict.fromkeys(names))


def _needs_grad(value: Tensor) -> None:
    if not value.requires_grad:
        raise ValueError(
            "method='attribution' needs the metric's gradient, but the metric's value does not depend on the logits "
            "(it was detached or made with .item()); fix: compute it from the logits with torch operations, or method='exact'"
        )


def _grads(value: Tensor, got: dict[str, Tensor], names: Sequence[str], retain: bool = False) -> dict[str, Tensor]:
    gs = torch.autograd.grad(value.reshape(()), [got[nm] for nm in names], allow_unused=True, retain_graph=retain)
    return {nm: (torch.zeros_like(got[nm]) if g is None else g.detach()) for nm, g in zip(names, gs)}


def estimate(
    p: PatchProblem, *, estimator: str = "attribution", steps: int = 8
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Estimates of ``metric(patched) - metric(base)``: per query head ``[L, H]``, the plain linear one for q/k
    sites (AtP only, else None), per KV head ``[L, G]`` for k/v sites (else None); NaN for heads not asked for.
    Last, screens ``[k, L, H]`` that order the heads for ``method="verified"``/``"fast"``: the estimate's size, AtP's
    (``"ig"``) and the sum of AtP's per-position terms' sizes (:func:`_by_position`; NaN where not defined).
    ``p.src`` holds the other input's activations (and its token embedding, ``hook_embed``, for ``"ig"``)."""
    model, base_t, src, fn, n = p.model, p.base_t, p.src, p.fn, p.n
    names = _names(p)
    cut = hooknames.resid_pre(min(p.layers))
    where = "the attribution's forward (the input that is patched)"
    if estimator == "ig":
        emb_src = src[hooknames.EMBED]
        k = steps
        # replica 0 is the base run itself (alpha 0: the AtP gradient, and the base activations); replicas 1..k lie at
        # the midpoints (i + 0.5) / k of the line from the base input's token embedding to the other input's
        alphas = torch.cat([torch.zeros(1), (torch.arange(k, dtype=torch.float32) + 0.5) / k])

        def mix(x: Tensor, hook: Any) -> Tensor:
            a = alphas.to(x.device, x.dtype).repeat_interleave(n)[:, None, None]
            return x + a * (emb_src.to(x.dtype).repeat(k + 1, 1, 1) - x)

        with attach_hooks(model, [(hooknames.EMBED, mix)]):
            logits, got = forward_capture(model, base_t.repeat(k + 1, 1), names, grad=True, cut=cut)
        at_base = fn(logits[:n])
        metric_value(at_base, where)
        _needs_grad(at_base)
        value = at_base + sum(fn(logits[i * n : (i + 1) * n]) for i in range(1, k + 1)) / k
        metric_value(value, where)
        g_all = _grads(value, got, names)
        acts = {nm: t.detach()[:n] for nm, t in got.items()}
        del logits, value, got
        # rows are independent: replica 0's gradient is AtP's; the others', summed, the path average of the gradient
        g_atp = {nm: g[:n] for nm, g in g_all.items()}
        grad = {nm: g[n:].reshape(k, n, *g.shape[1:]).sum(0) for nm, g in g_all.items()}
        out = _from_grads(p, acts, grad)
        atp = _from_grads(p, acts, g_atp)[0]
        screens = np.stack([np.abs(out[0]), np.abs(atp), _by_position(p, acts, g_atp)])
        return (*out, screens)
    logits, got = forward_capture(model, base_t, names, grad=True, cut=cut)
    value = fn(logits)
    metric_value(value, where)
    _needs_grad(value)
    if estimator == "attribution":
        grad = _grads(value, got, names)
        acts = {nm: t.detach() for nm, t in got.items()}
        out = _from_grads(p, acts, grad)
        return (*out, np.stack([np.abs(out[0]), _by_position(p, acts, grad)]))
    raise AssertionError(estimator)  # pragma: no cover - atp* goes through estimate_graddrop


def _by_position(p: PatchProblem, acts: dict[str, Tensor], grad: dict[str, Tensor]) -> np.ndarray:
    """``sum over samples and positions of |(a_other - a_base) . g|`` per query head: the estimate's terms without their
    cancellations (a screen for ``method="verified"``; NaN where the site's estimate is not a plain sum of such terms)."""
    site, layers, heads, spec, src, pos = p.site, p.layers, p.heads, p.spec, p.src, p.pos
    L, H, G = spec.n_layers, spec.n_heads, spec.n_kv_heads
    out = np.full((L, H), np.nan)
    if site.base == "pattern" or site.qk or (site.kv and G < H):
        return out
    for l_ in layers:
        nm = site.hook(l_)
        d = (src[nm].float() - acts[nm].float())[:, pos]
        out[l_, list(heads)] = (d * grad[nm].float()[:, pos]).sum(-1).abs().sum((0, 1)).double().cpu().numpy()[list(heads)]
    return out


def estimate_graddrop(p: PatchProblem) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """AtP* with GradDrop (see the module): ``sign(AtP) * sum_l |AtP with block l's writes cut| / (L - 1)``."""
    model, fn = p.model, p.fn
    L = p.spec.n_layers
    names = _names(p)
    low = min(p.layers)
    state: dict[str, int | None] = {"drop": None}

    def dropper(layer: int) -> Any:
        def hook(x: Tensor, hook: Any) -> Tensor:
            if x.requires_grad:
                x.register_hook(lambda g: torch.zeros_like(g) if state["drop"] == layer else None)
            return x

        return hook

    drops = [(nm, dropper(l_)) for l_ in range(low, L) for nm in (hooknames.attn_out(l_), hooknames.mlp_out(l_))]
    with attach_hooks(model, drops):
        logits, got = forward_capture(model, p.base_t, names, grad=True, cut=hooknames.resid_pre(low))
    value = fn(logits)
    metric_value(value, "the attribution's forward (the input that is patched)")
    _needs_grad(value)
    acts = {nm: t.detach() for nm, t in got.items()}
    plain = _from_grads(p, acts, _grads(value, got, names, retain=True))
    total = [None if q is None else np.abs(q) * low for q in plain]  # blocks below the lowest patched layer: the plain one
    for l_ in range(low, L):
        state["drop"] = l_
        part = _from_grads(p, acts, _grads(value, got, names, retain=l_ < L - 1))
        total = [None if t is None else t + np.abs(q) for t, q in zip(total, part)]
    state["drop"] = None
    div = max(L - 1, 1)
    est, _, kv = (None if t is None else np.sign(q) * t / div for t, q in zip(total, plain))
    return est, None, kv, np.stack([np.abs(est), np.abs(plain[0])])  # type: ignore[return-value,arg-type]


def _from_grads(
    p: PatchProblem, acts: dict[str, Tensor], grad: dict[str, Tensor]
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``(a_other - a_base) . grad`` per head, the softmax recomputed for q/k sites (the QK fix)."""
    spec, site, layers, heads, src, pos, T = p.spec, p.site, p.layers, p.heads, p.src, p.pos, p.T
    L, H, G = spec.n_layers, spec.n_heads, spec.n_kv_heads
    per_q_kv = site.kv and G < H
    est = np.full((L, H), np.nan)
    est_lin = np.full((L, H), np.nan) if site.qk else None
    kv_est = np.full((L, G), np.nan) if site.kv else None
    for l_ in layers:
        la = spec.layer(l_)
        name = site.hook(l_)
        a, s, g_ = acts[name].float(), src[name].float(), grad[name].float()
        delta = torch.zeros_like(a)
        if site.base == "pattern":
            if site.sink:
                delta[:, :, :, pos] = (s - a)[:, :, :, pos]
            else:
                delta[:, :, pos] = (s - a)[:, :, pos]
            lin = (g_ * delta).sum((0, 2, 3))  # [H]
        else:
            delta[:, pos] = (s - a)[:, pos]
            lin = (g_ * delta).sum((0, 1, 3))  # [heads or KV heads]
        if site.kv:
            kv_est[l_] = lin.double().cpu().numpy()  # type: ignore[index]
        if site.qk:
            # AtP*: the softmax recomputed with the patched queries/keys; the estimate goes through the pattern change
            q_f, k_f = acts[la.q_hook], acts[la.k_hook]
            hook_q = src[la.q_hook] if site.base == "q" else q_f
            hook_k = src[la.k_hook] if site.base == "k" else k_f
            q_mix, k_mix = q_f.clone(), k_f.clone()
            q_mix[:, pos] = hook_q[:, pos].to(q_mix.dtype)
            k_mix[:, pos] = hook_k[:, pos].to(k_mix.dtype)
            qa, ka = la.final_qk(q_f, k_f)
            qb, kb = la.final_qk(q_mix, k_mix)
            A0 = la.pattern(qa.transpose(1, 2), ka.transpose(1, 2))
            A1 = la.pattern(qb.transpose(1, 2), kb.transpose(1, 2))
            star = (grad[hooknames.pattern(l_)].float() * (A1 - A0)).sum((0, 2, 3))  # [H]
            if site.base == "q":
                est_lin[l_] = lin.double().cpu().numpy()  # type: ignore[index]
            else:
                # the plain estimate per query head: through the scores, which are linear in the key
                s0 = la.logits(qa.transpose(1, 2), ka.transpose(1, 2), check=False)
                s1 = la.logits(qa.transpose(1, 2), kb.transpose(1, 2), check=False)
                vis = la.mask().dense(T, device=s0.device)
                ds = torch.where(vis, s1 - s0, torch.zeros_like(s0))
                dA = (grad[hooknames.pattern(l_)].float() * A0).detach()
                # d metric / d scores through the softmax: A * (g - sum_j A g)
                gs = dA - A0 * dA.sum(-1, keepdim=True)
                est_lin[l_] = (gs * ds).sum((0, 2, 3)).double().cpu().numpy()  # type: ignore[index]
                kv_est[l_] = np.array([float(star[[h for h in range(H) if la.kv_head(h) == g]].sum()) for g in range(G)])  # type: ignore[index]
            est[l_] = star.double().cpu().numpy()
        elif site.kv:
            if per_q_kv:  # v per query head: z_h changes by A_h @ dv_g
                A = acts[hooknames.pattern(l_)].float()
                gz = grad[hooknames.z(l_)].float()
                dv = delta.repeat_interleave(la.group, dim=2)  # [b, T, H, d]
                dz = torch.einsum("bhqk,bkhd->bqhd", A, dv)
                est[l_] = (gz * dz).sum((0, 1, 3)).double().cpu().numpy()
            else:
                est[l_] = lin.double().cpu().numpy()
        else:
            est[l_] = lin.double().cpu().numpy()
    mask = np.zeros((L, H), bool)
    mask[np.ix_(list(layers), list(heads))] = True
    est[~mask] = np.nan
    if est_lin is not None:
        est_lin[~mask] = np.nan
    return est, est_lin, kv_est
