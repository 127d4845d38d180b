"""The standard battery of interventions on a model's sink, defined once.

``sink-interp ablate``, the HTML report (:func:`sink_interp.build_report`) and
tutorial 3 all run :func:`standard_battery`; each takes the groups it needs,
in this order:

* ``"sink"``: zero the sink's value and mask its key in the sink heads (mean
  α₁ > eps), then in every head, then in every head for queries t ≥ 2 only
  (masking key 0 for token 1 too turns token 1 into a first token that
  inherits the sink);
* ``"massive"``: the massive dims (Sun et al.: flagged in at least half of the
  samples) set to 0, or to the mean of the other tokens, at the positions where
  they recur;
* ``"grafts"`` (only with ``train_tokens`` and sink heads): the sink masked in
  the sink heads and replaced by the mean sink key as ``k*`` (``v* = 0``), by
  the mean sink key and value, and by a K bias fitted from zeros;
* ``"calibration"``: ACT (tau 0.1, beta 0.4; Yu et al. 2024);
* ``"kernels"``: softmax swapped for softmax + 1, sigmoid (bare, ``- log n``,
  normalised), normalised elu+1, softpick, and softmax with ``Z / 0.5``.

Example:
    >>> import torch
    >>> from sink_interp import tiny_model, compare
    >>> model, tokens = tiny_model(), torch.randint(4, 100, (2, 12))
    >>> battery = standard_battery(model, tokens, progress=False)
    >>> list(battery.items("sink"))
    ['zero value, all heads', 'mask key, all heads', 'mask key, all heads, queries>=2']
    >>> len(compare(model, tokens, battery.items("sink", "calibration"), progress=False).effects)  # + the clean row
    5
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from torch import Tensor

from ._internal.probe import ProbeSet
from .fit import FitSettings, fit_bias
from .interventions import AblateDims, AttentionKernel, Calibrate, MaskKey, ZeroValue, sink_heads
from .massive import massive_activations
from .metrics import measure_sinks

#: the groups of the battery, in the order they run
GROUPS = ("sink", "massive", "grafts", "calibration", "kernels")


@dataclass
class Battery:
    """The standard interventions (``groups``: group -> ``{label: intervention}``) and the facts they were chosen from."""

    sink_heads: dict[int, list[int]]
    massive_dims: list[int]
    massive_positions: list[int]
    massive_layers: list[int]
    sink_rate_1: float
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    fit: Any = None  # the FitReport of the fitted K bias ("grafts" with fit_steps > 0)

    def items(self, *groups: str) -> dict[str, Any]:
        """``{label: intervention}`` of the chosen groups (default: all, in :data:`GROUPS` order), for :func:`sink_interp.compare`."""
        unknown = [g for g in groups if g not in GROUPS]
        if unknown:
            raise ValueError(f"unknown battery group(s) {unknown}; known: {', '.join(GROUPS)}")
        out: dict[str, Any] = {}
        for g in groups or GROUPS:
            out.update(self.groups.get(g, {}))
        return out

    def facts(self) -> dict[str, Any]:
        """What the battery was built from (sink heads, massive dims, positions and layers, Sink_1, the fit), as plain data."""
        d: dict[str, Any] = {
            "sink_heads": {int(k): v for k, v in self.sink_heads.items()},
            "massive_dims": self.massive_dims,
            "massive_positions": self.massive_positions,
            "massive_layers": self.massive_layers,
            "sink_rate_1": self.sink_rate_1,
        }
        if self.fit is not None:
            d["fit"] = {k: v for k, v in self.fit.summary().items() if k != "effects"}
        return d


def standard_battery(
    model: Any,
    tokens: Tensor | ProbeSet,
    *,
    train_tokens: Tensor | ProbeSet | None = None,
    sink_report: Any | None = None,
    massive_report: Any | None = None,
    eps: float = 0.3,
    fit_steps: int = 40,
    fit_lr: float = 0.1,
    fit_batch: int = 8,
    batch_size: int | None = None,
    progress: bool = True,
    log: Callable[[str], Any] | None = None,
) -> Battery:
    """Choose the standard interventions for ``model`` on ``tokens`` (see the module docstring for the groups).

    Args:
        model: a TransformerBridge.
        tokens: ``[n, length]`` evaluation tokens (a tensor or a :class:`~sink_interp.ProbeSet`): the sink
            heads and massive dims are found on them.
        train_tokens: other tokens to fit the grafted biases on; ``None``: no ``"grafts"`` group.
        sink_report: a :class:`~sink_interp.SinkReport` already measured on ``tokens`` (its eps then
            picks the sink heads); ``None``: measured here at ``eps``.
        massive_report: a :class:`~sink_interp.MassiveReport` already measured on ``tokens`` (its flags
            pick the massive dims); ``None``: measured here.
        fit_steps, fit_lr, fit_batch: Adam steps, learning rate and samples per step of the fitted K bias
            (``fit_steps=0``: only the grafts of the mean sink key and value).
        log: called with one line per choice made (sink heads, massive dims, the fit); ``None``: silent.
    """
    say = log or (lambda _line: None)
    rep = (
        sink_report
        if sink_report is not None
        else measure_sinks(model, tokens, eps=eps, batch_size=batch_size, progress=progress)
    )
    if sink_report is not None:
        eps = sink_report.eps
    sh = sink_heads(rep)
    n_sh = sum(len(v) for v in sh.values())
    n_all = rep.alpha.shape[1] * rep.alpha.shape[2]
    say(f"sink heads (mean alpha_1 > {eps}): {n_sh} of {n_all}")
    mrep = massive_report
    if mrep is None:
        mrep = massive_activations(model, tokens, measure_sinks=False, batch_size=batch_size, progress=progress)
    elif (mrep.n, mrep.length) != tuple(tokens.shape):
        raise ValueError(
            f"massive_report was measured on {mrep.n} x {mrep.length} tokens but tokens are "
            f"{tokens.shape[0]} x {tokens.shape[1]}; fix: pass the report of these tokens, or none"
        )
    dims = mrep.recurring_dims(min_share=0.5)
    flags = mrep.flags_frame()
    flags = flags[flags["dim"].isin(dims)]
    share = flags.groupby("pos")["sample"].nunique() / mrep.n if len(flags) else {}
    positions = sorted(int(p) for p, sh_ in dict(share).items() if sh_ >= 0.5)
    mlayers = sorted(int(x) for x in flags["layer"].unique()) if len(flags) else []
    say(
        f"massive dims (Sun et al.: |x| > {mrep.abs_threshold:g} and >= {mrep.ratio_threshold:g} x the median |x| of the "
        f"sample's hidden state, in >= 50% of samples): {dims or 'none'} at positions {positions or '-'}, "
        f"flagged in layers {_ranges(mlayers) or '-'} (hook_resid_pre)"
    )
    groups: dict[str, dict[str, Any]] = {g: {} for g in GROUPS}
    sink = groups["sink"]
    if sh:
        sink["zero value, sink heads"] = ZeroValue(heads=sh)
        sink["mask key, sink heads"] = MaskKey(heads=sh)
    sink["zero value, all heads"] = ZeroValue()
    sink["mask key, all heads"] = MaskKey()
    sink["mask key, all heads, queries>=2"] = MaskKey(min_query=2)
    if dims and positions:
        groups["massive"]["massive dims -> 0"] = AblateDims(dims, positions=positions)
        groups["massive"]["massive dims -> mean of other tokens"] = AblateDims(dims, mode="mean", positions=positions)
    battery = Battery(sh, dims, positions, mlayers, rep.rate(1), groups)
    if sh and train_tokens is not None:
        _grafts(battery, model, tokens, train_tokens, fit_steps, fit_lr, fit_batch, progress, say)
    groups["calibration"]["ACT calibration (tau 0.1, beta 0.4)"] = Calibrate(0.1, 0.4)
    groups["kernels"].update(
        {
            "kernel softmax1 (softmax + 1)": AttentionKernel("softmax1"),
            "kernel sigmoid": AttentionKernel("sigmoid"),
            "kernel sigmoid - log n": AttentionKernel("sigmoid", bias="-log n"),
            "kernel sigmoid, normalised": AttentionKernel("sigmoid", normalise=True),
            "kernel elu+1, normalised": AttentionKernel("elu1", normalise=True),
            "kernel softpick": AttentionKernel("softpick"),
            "kernel softmax, Z / 0.5": AttentionKernel("scaled", alpha=0.5),
        }
    )
    return battery


def _grafts(
    battery: Battery,
    model: Any,
    tokens: Any,
    train_tokens: Any,
    fit_steps: int,
    fit_lr: float,
    fit_batch: int,
    progress: bool,
    say: Callable[[str], Any],
) -> None:
    """The ``"grafts"`` group: the sink masked in the sink heads and replaced by a constant key (and value)."""
    sh, grafts = battery.sink_heads, battery.groups["grafts"]
    common = dict(eval_tokens=tokens, evaluate=False, progress=progress)
    graft_k = FitSettings(kind="k", heads=sh, init="sink", steps=0)
    graft = fit_bias(model, train_tokens, graft_k, **common)
    grafts["mask key, sink heads + mean sink key as k*, v*=0 (no training)"] = [graft.mask, graft.bias]
    graft_kv = fit_bias(model, train_tokens, replace(graft_k, kind="kv"), **common)
    grafts["mask key, sink heads + mean sink key and value as k*, v* (no training)"] = [graft_kv.mask, graft_kv.bias]
    if fit_steps > 0:
        fitted = FitSettings(kind="k", heads=sh, init="zeros", steps=fit_steps, lr=fit_lr, batch_size=fit_batch)
        fit = fit_bias(model, train_tokens, fitted, **common)
        grafts[f"mask key, sink heads + fitted K bias ({fit_steps} steps)"] = [fit.mask, fit.bias]
        battery.fit = fit
        say(
            f"fitted K bias (v*=0, per head, from zeros, {fit_steps} Adam steps, lr {fit_lr}, {min(fit_batch, len(train_tokens))} samples/step, "
            f"{len(train_tokens)} training samples): training loss {fit.history[:3].mean():.3f} -> {fit.history[-3:].mean():.3f}"
        )


def _ranges(xs: Sequence[int]) -> str:
    """[3, 4, 5, 9] -> '3-5, 9'."""
    out: list[str] = []
    for x in sorted(xs):
        if out and int(out[-1].split("-")[-1]) == x - 1:
            out[-1] = out[-1].split("-")[0] + f"-{x}"
        else:
            out.append(str(x))
    return ", ".join(out)
