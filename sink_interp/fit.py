"""Fit a bias that takes over from a masked sink: :func:`fit_bias` and its :class:`FitReport`.

The first token's key is masked (:class:`~sink_interp.interventions.MaskKey`) in the chosen
heads, a key bias, a key+value bias or a sink logit per head is added, and the bias alone is
fitted on the next-token loss (the model frozen). :func:`~sink_interp.effects.compare` then
measures the clean model, the masked sink, and the masked sink plus the fitted bias. The fit's knobs are one
:class:`FitSettings`.

Example:
    >>> import torch
    >>> from sink_interp import tiny_model
    >>> rep = fit_bias(tiny_model(), torch.randint(4, 128, (4, 10)), FitSettings(kind="kv", steps=2), progress=False)
    >>> rep.kind, len(rep.history)
    ('kv', 2)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from ._internal import hooknames
from ._internal.errors import NonFiniteError, check_positive_int
from ._internal.probe import ProbeSet
from ._internal.provenance import Provenance
from ._internal.report import Report
from .architecture import check_model_tokens, describe_attention
from .capture import Keep, explain_non_finite, model_device, run_reducers
from .effects import EffectReport, compare
from .interventions import Intervention, KVBias, MaskKey, SinkLogit, intervene

#: the biases :func:`fit_bias` fits (``FitSettings.kind``)
KINDS = ("k", "kv", "logit")
#: where a key (and value) bias starts (``FitSettings.init``)
INITS = ("zeros", "sink")


@dataclass(frozen=True)
class FitSettings:
    """The knobs of :func:`fit_bias` (one object): what is fitted (``kind`` to ``init``), how it is optimised
    (``steps`` to ``seed``) and evaluated (``eps``). Checked when made: a wrong value is one line naming the field.

    Args:
        kind: ``"k"`` (default): a key bias ``k*`` with ``v* = 0`` (:class:`~sink_interp.KVBias`); ``"kv"``: key and
            value biases; ``"logit"``: a sink logit per head (:class:`~sink_interp.SinkLogit`).
        layers: layers where the first key is masked and the bias added (default all).
        heads: heads there: a list, or ``{layer: [heads]}`` such as ``sink_heads(report)`` (default all).
        positions: the key positions masked (default ``(0,)``).
        min_query: queries before this position keep the masked key (``2``: the sink is removed without token 1
            becoming a new first token).
        per_head: one bias per head (default), or one per layer shared by its heads.
        init: ``"zeros"`` (default) or ``"sink"``: ``k*`` (and ``v*`` for ``kind="kv"``) start at the model's mean
            first-token key (after RoPE) and value.
        steps: Adam steps (``0``: the start grafted unfitted).
        lr: Adam's learning rate.
        batch_size: samples per step.
        seed: the seed of the samples drawn at each step.
        eps: the sink threshold of the evaluation (the ``Sink_k`` rates of ``effects``).

    Example:
        >>> FitSettings(kind="kv", steps=10).lr
        0.05
        >>> FitSettings(kind="logit", init="sink")
        Traceback (most recent call last):
        ...
        ValueError: init='sink' sets k* from the sink's key; kind='logit' has no key. Fix: init='zeros'
    """

    kind: str = "k"
    layers: Sequence[int] | None = None
    heads: Any = None
    positions: Sequence[int] = (0,)
    min_query: int = 0
    per_head: bool = True
    init: str = "zeros"
    steps: int = 100
    lr: float = 0.05
    batch_size: int = 8
    seed: int = 0
    eps: float = 0.3

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(
                f"kind must be 'k' (key bias, v*=0), 'kv' (key and value bias) or 'logit' (sink logit per head), got {self.kind!r}"
            )
        if self.init not in INITS:
            raise ValueError(f"init must be 'zeros' or 'sink', got {self.init!r}")
        if self.init == "sink" and self.kind == "logit":
            raise ValueError("init='sink' sets k* from the sink's key; kind='logit' has no key. Fix: init='zeros'")
        object.__setattr__(self, "steps", check_positive_int(self.steps, "steps", minimum=0))
        object.__setattr__(self, "batch_size", check_positive_int(self.batch_size, "batch_size"))
        try:
            ok = not isinstance(self.lr, bool) and float(self.lr) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"lr must be > 0, got {self.lr!r}; fix: a learning rate such as lr=0.05")


@dataclass(frozen=True, eq=False, repr=False)
class FitReport(Report):
    """A bias fitted to take over from a masked sink, and what it recovers.

    ``effects`` holds the clean model, the masked sink, and the masked sink plus
    the fitted bias, on the evaluation tokens. ``recovered`` is the share of the
    loss gap that the bias closes: ``(L_masked - L_fitted) / (L_masked - L_clean)``.
    ``bias`` is the fitted intervention (reuse it in :func:`intervene`).

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, fit_bias, intervene
        >>> m, x = tiny_model(), torch.randint(4, 128, (4, 10))
        >>> rep = fit_bias(m, x, FitSettings(kind="logit", steps=2), progress=False)
        >>> rep.loss_masked >= 0, rep.settings["n_params"]  # one sink logit per head and layer
        (True, 8)
        >>> with intervene(m, rep.mask, rep.bias):
        ...     _ = m(x)
    """

    kind: str
    bias: Intervention
    mask: MaskKey
    history: Float[np.ndarray, " steps"]
    effects: EffectReport | None
    settings: dict[str, Any]

    @property
    def provenance(self) -> Provenance:
        """That of the evaluation (``effects``); empty for a fit that was not evaluated."""
        if self.effects is None:
            return Provenance(model="", model_info={}, data="", bos=None, versions={})
        return self.effects.provenance

    def _eff(self) -> EffectReport:
        if self.effects is None:
            raise ValueError("this fit was not evaluated; fix: fit_bias(..., evaluate=True), or compare() the bias yourself")
        return self.effects

    @property
    def loss_clean(self) -> float:
        return self._eff().clean.loss

    @property
    def loss_masked(self) -> float:
        return self._eff()["sink masked"].loss

    @property
    def loss_fitted(self) -> float:
        return self._eff()["sink masked + fitted bias"].loss

    @property
    def recovered(self) -> float:
        gap = self.loss_masked - self.loss_clean
        return float("nan") if gap == 0 else (self.loss_masked - self.loss_fitted) / gap

    def to_frame(self) -> pd.DataFrame:
        return self._eff().to_frame()

    def summary(self) -> dict[str, Any]:
        h = self.history
        idx = sorted(set(np.linspace(0, len(h) - 1, min(len(h), 50)).astype(int).tolist())) if len(h) else []
        out: dict[str, Any] = {"kind": self.kind, "bias": self.bias.describe(), "mask": self.mask.describe()}
        if self.effects is not None:
            out.update(
                loss_clean=self.loss_clean, loss_masked=self.loss_masked, loss_fitted=self.loss_fitted, recovered=self.recovered
            )
        out.update(settings=self.settings, history={int(i): float(h[i]) for i in idx})
        if self.effects is not None:
            out["effects"] = self.effects.summary()
        return out

    def __repr__(self) -> str:
        if self.effects is None:
            return f"FitReport(kind={self.kind!r}, {len(self.history)} steps, not evaluated)"
        return (
            f"FitReport(kind={self.kind!r}, loss clean={self.loss_clean:.4f}, masked={self.loss_masked:.4f}, "
            f"masked+bias={self.loss_fitted:.4f}, recovered={100 * self.recovered:.1f}%)"
        )


def _sink_kv_init(
    model: Any, tokens: Tensor, layers: Sequence[int], per_head: bool, position: int
) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
    """Mean key (after RoPE) and value of the sink position per layer (per query head, or averaged over heads)."""
    spec = describe_attention(model)
    desc = {layer: spec.layer(layer) for layer in layers}
    for layer in layers:  # the sink's key must be readable as attention sees it (not MLA's latent keys, not a missing hook)
        desc[layer].check_supported(
            "fit_bias(init='sink') reads the sink's key and value",
            "a fitted bias needs q and k on its layers; sink scores (method='pattern') and massive_activations still run",
        )
    knames = [desc[layer].k_hook for layer in layers]
    vnames = [hooknames.v(layer) for layer in layers]
    # keys are put in [b, T, G, d] and rotated (where the description rotates them after the hook) before the position
    # is picked: some bridges fire QK-normed keys heads-first
    keep = Keep(knames + vnames)
    run_reducers(model, tokens, [keep], progress=False)
    got = keep.result()
    H, G = spec.n_heads, spec.n_kv_heads
    ks, vs = {}, {}
    for layer, kn, vn in zip(layers, knames, vnames):
        for name, out in ((kn, ks), (vn, vs)):
            x = desc[layer].final(got[name]) if name == kn else got[name]
            x = x[:, position].mean(0)  # [G, d]
            x = x[torch.arange(H) // max(1, H // G)]  # [H, d]
            out[layer] = x if per_head else x.mean(0)
    return ks, vs


def fit_bias(
    model: Any,
    tokens: Tensor | ProbeSet,
    settings: FitSettings | None = None,
    *,
    eval_tokens: Tensor | ProbeSet | None = None,
    evaluate: bool = True,
    progress: bool = True,
) -> FitReport:
    """Mask the first token's key and fit a bias that takes over its job.

    With ``MaskKey(positions)`` in the chosen layers and heads of ``settings`` (a :class:`FitSettings`; default:
    all; renormalised), and a bias in the same heads, fit by Adam on the next-token loss of ``tokens`` (model
    parameters frozen, and restored exactly afterwards):

    * ``kind="k"``: a key bias ``k*`` with ``v* = 0`` (:class:`KVBias`);
    * ``kind="kv"``: key and value biases;
    * ``kind="logit"``: a sink logit per head (:class:`SinkLogit`).

    ``init="sink"`` starts ``k*`` at the model's own mean first-token key
    (after RoPE, so ``q . k*`` equals the sink's score when the first token's
    key is the same in every sample) and, for ``kind="kv"``, ``v*`` at its mean
    value; ``"zeros"`` starts from 0. ``steps=0`` grafts that start unfitted.
    Reports loss with the sink, with it masked, and masked + fitted bias on
    ``eval_tokens`` (default: ``tokens``; ``evaluate=False`` skips this).

    Mind the scope: with the first key masked in *all* heads, token 1 becomes
    a first token and the sink relocates to it (little loss, nothing for a bias
    to recover); mask in the sink heads (``FitSettings(heads=sink_heads(report))``)
    or pass ``FitSettings(min_query=2)`` to remove the sink without giving it a new home.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, fit_bias
        >>> from sink_interp.fit import FitSettings
        >>> rep = fit_bias(tiny_model(), torch.randint(4, 128, (4, 10)), FitSettings(kind="k", steps=3), progress=False)
        >>> sorted(rep.effects.labels)
        ['clean', 'sink masked', 'sink masked + fitted bias']
    """
    if settings is not None and not isinstance(settings, FitSettings):
        raise ValueError(
            f"settings must be a FitSettings, got {type(settings).__name__}; fix: "
            "fit_bias(model, tokens, FitSettings(kind='k', steps=100))"
        )
    cfg = settings or FitSettings()
    kind, heads, per_head, init, steps, lr = cfg.kind, cfg.heads, cfg.per_head, cfg.init, cfg.steps, cfg.lr
    toks = check_model_tokens(model, tokens, min_length=2)
    mask = MaskKey(
        layers=cfg.layers, heads=heads, positions=cfg.positions, min_query=cfg.min_query, renormalise=True, name="sink masked"
    )
    mask.bind(model)
    lay = list(mask.layers)
    bias_heads = heads if not isinstance(heads, Mapping) else {k: v for k, v in heads.items()}
    bias_layers = None if isinstance(bias_heads, Mapping) else lay
    if kind == "logit":
        bias: Intervention = SinkLogit(layers=bias_layers, heads=bias_heads, name="fitted bias")
    else:
        k0 = v0 = None
        if init == "sink":
            k0, v0 = _sink_kv_init(model, toks, lay, per_head, int(mask.resolved_positions(toks.shape[1])[0]))
        bias = KVBias(
            layers=bias_layers,
            heads=bias_heads,
            per_head=per_head,
            value=(kind == "kv"),
            k=k0,
            v=v0 if kind == "kv" else None,
            name="fitted bias",
        )
    bias.bind(model)
    params = list(bias.parameters())  # type: ignore[attr-defined]

    device = model_device(model)
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    gen = torch.Generator().manual_seed(int(cfg.seed))
    history: list[float] = []
    used = [torch.zeros_like(q, dtype=torch.bool) for q in params]  # entries that ever got a gradient
    from tqdm.auto import tqdm

    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        model.eval()
        opt = torch.optim.Adam(params, lr=float(lr))
        bar = tqdm(range(steps), desc=f"fit {kind} bias", disable=not progress, leave=False)
        with torch.enable_grad():
            for _ in bar:
                idx = torch.randperm(toks.shape[0], generator=gen)[: cfg.batch_size]
                batch = toks[idx].to(device)
                with intervene(model, mask, bias):
                    logits = model(batch)
                loss = torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1).to(logits.device)
                )
                if not bool(torch.isfinite(loss)):
                    with intervene(model, mask, bias):
                        why = explain_non_finite(model, batch, seen_at=f"the fit's loss at step {len(history)}")
                    raise NonFiniteError(why + (f"; fix: a smaller lr than {lr}" if history else ""))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                for u, q in zip(used, params):
                    if q.grad is not None:
                        u |= q.grad != 0
                opt.step()
                history.append(float(loss.detach()))
                bar.set_postfix(loss=f"{history[-1]:.4f}")
        bar.close()
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
            p.grad = None
        model.train(was_training)
    for p in params:
        p.requires_grad_(False)
    ev = (tokens if isinstance(tokens, ProbeSet) else toks) if eval_tokens is None else eval_tokens  # a ProbeSet keeps its facts
    effects = (
        compare(model, ev, {"sink masked": mask, "sink masked + fitted bias": [mask, bias]}, eps=cfg.eps, progress=progress)
        if evaluate
        else None
    )
    return FitReport(
        kind=kind,
        bias=bias,
        mask=mask,
        history=np.asarray(history, dtype=np.float64),
        effects=effects,
        settings={
            "layers": lay,
            "heads": "all"
            if heads is None
            else ({int(k): list(v) for k, v in heads.items()} if isinstance(heads, Mapping) else list(heads)),
            "positions": list(cfg.positions),
            "min_query": cfg.min_query,
            "per_head": per_head,
            "init": init,
            "steps": steps,
            "lr": float(lr),
            "batch_size": cfg.batch_size,
            "seed": cfg.seed,
            "n_train": int(toks.shape[0]),
            "n_eval": int(ev.shape[0]),
            "eval_is_train": eval_tokens is None,
            "n_params": int(sum(p.numel() for p in params)),
            # entries that got a gradient: per-head rows of heads outside `heads` stay unused
            "n_params_trained": int(sum(int(u.sum()) for u in used)),
        },
    )
