"""The attention operation: normalisers scaled or p-normed, kernels without (and with) the normaliser, softpick,
and Guo et al.'s mitigations (ReLU attention, SGD)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ...config import TrainConfig
from ..finding import PEAK_RATIO, Finding, Verdict, base, fmt, has_peak, has_sink, no_peak, sink, variant
from ..runs import Run
from ..verdict import Node, all_of, any_of, check

# --------------------------------------------------------------------------- kernels without the normaliser


def _cfgs_kernel(kernel: str, norm: str) -> Callable[[str], dict[str, TrainConfig]]:
    def cfgs(s: str) -> dict[str, TrainConfig]:
        b = base(s)
        return {
            "base": b,
            "nonorm": variant(b, f"{kernel}-nonorm", kernel=kernel, attn_norm="none"),
            "norm": variant(b, f"{kernel}-norm", kernel=kernel, attn_norm=norm),
        }

    return cfgs


def _heads_text(hs: dict[str, Any]) -> str:
    return "; ".join(
        f"L{l}H{h}: raw mass on key 1 {hs['alpha_1_raw'][l][h]:.2f} (proxy {hs['alpha_1_proxy'][l][h]:.2f}), row sum "
        f"{hs['row_sum'][l][h]:.2f}, v-ratio {hs['value_ratio'][l][h]:.2f}, |z|/|v| {hs['z_ratio'][l][h]:.2f}"
        + (
            f", zeroing it changes the non-copy loss by {hs['dloss_bigram'][l][h]:+.3f} ({'dormant' if hs['dormant'][l][h] else 'active'})"
            if "dloss_bigram" in hs
            else ""
        )
        for l in range(len(hs["alpha_1_raw"]))
        for h in range(len(hs["alpha_1_raw"][l]))
    )


def _j_no_norm(name: str, returns: bool) -> Callable[[dict[str, Run]], Verdict]:
    """Without the normaliser: no sink and no massive activation; with it both return (``returns``) or stay absent."""

    def judge(r: dict[str, Run]) -> Verdict:
        b, n, y = r["base"].final, r["nonorm"].final, r["norm"].final
        ours = f"softmax: {fmt(b, 'v', 'massive')}; {name} without normaliser: {fmt(n, 'v', 'massive')}; with normaliser: {fmt(y, 'v', 'massive')}"
        if "raw" in r["nonorm"].measured:
            raw = r["nonorm"].measured["raw"]
            ours += (
                f"; without normaliser the paper's proxy A / sum A gives Sink_1 {sink(n):.1f}%, the raw weights "
                f"{raw['sink_rate_1_raw']:.1f}% (mean raw alpha_1 {raw['mean_alpha_1_raw']:.3f}, mean row sum {raw['attn_mass']:.2f})"
            )
        for key in ("base", "nonorm", "norm"):
            if "heads" in r[key].measured:
                ours += f"; heads of {key}: {_heads_text(r[key].measured['heads'])}"
        parts: list[Node] = [
            check(f"{name} without normaliser: Sink_1", sink(n), "<", 5.0),
            no_peak(f"{name} without normaliser", n),
        ]
        if returns:
            parts += [
                check(f"{name} with normaliser: Sink_1 above without (points)", sink(y) - sink(n), ">", 10.0),
                has_peak(f"{name} with normaliser", y),
            ]
        else:
            parts += [check(f"{name} with normaliser: Sink_1", sink(y), "<", 5.0), no_peak(f"{name} with normaliser", y)]
        return Verdict(
            ours=ours + f"; a massive activation at this scale: first-token residual norm >= {PEAK_RATIO} x the others'",
            test=all_of(*parts),
            numbers={"base": b, "nonorm": n, "norm": y, **{k: r[k].measured for k in r if r[k].measured}},
        )

    return judge


# --------------------------------------------------------------------------- softpick, ReLU attention and SGD


def _cfgs_softpick(s: str) -> dict[str, TrainConfig]:
    b = base(s)
    return {"base": b, "softpick": variant(b, "softpick", kernel="softpick")}


def _j_softpick(r: dict[str, Run]) -> Verdict:
    b, s = r["base"].final, r["softpick"].final
    return Verdict(
        ours=f"softmax: {fmt(b, 'massive')}; softpick: {fmt(s, 'massive')}",
        test=all_of(check("softpick: Sink_1", sink(s), "<", 5.0), no_peak("softpick", s)),
        numbers={"base": b, "softpick": s},
    )


def _cfgs_relu_sgd(s: str) -> dict[str, TrainConfig]:
    b = base(s)
    return {
        "base": b,
        "relu": variant(b, "relu", kernel="relu", attn_norm="none"),
        "sgd": variant(b, "sgd", optimizer="sgd", lr=0.1 if s == "cpu" else 0.03),
    }


def _j_relu_sgd(r: dict[str, Run]) -> Verdict:
    b, re, sg = r["base"].final, r["relu"].final, r["sgd"].final
    return Verdict(
        ours=f"softmax+AdamW: {fmt(b, 'v', 'massive')}; ReLU attention: {fmt(re, 'v', 'massive')}; SGD: {fmt(sg, 'v', 'massive')}",
        comparable=has_sink("softmax + AdamW", b),
        test=all_of(
            check("ReLU attention: Sink_1 below softmax's (points)", sink(b) - sink(re), ">", 10.0),
            check("SGD: Sink_1 below AdamW's (points)", sink(b) - sink(sg), ">", 10.0),
        ),
        numbers={"base": b, "relu": re, "sgd": sg},
    )


# --------------------------------------------------------------------------- the normaliser scaled or p-normed


def _cfgs_alpha(s: str) -> dict[str, TrainConfig]:
    b = base(s)
    return {"base": b} | {f"alpha{a}": variant(b, f"alpha{a}", softmax_alpha=float(a)) for a in (2, 4)}


def _cfgs_pnorm(s: str) -> dict[str, TrainConfig]:
    b = base(s)
    return {"base": b} | {f"p{p}": variant(b, f"pnorm{p}", softmax_p=float(p)) for p in (2, 4)}


def _j_mitigate(keys: Sequence[str], what: str) -> Callable[[dict[str, Run]], Verdict]:
    """'May mitigate the sink, but not prevent its emergence': every variant keeps a sink, one clearly weaker than softmax."""

    def judge(r: dict[str, Run]) -> Verdict:
        b = r["base"].final
        ms = {k: r[k].final for k in keys}
        value = {k: f"{r[k].cfg.softmax_alpha:g}" if what == "alpha" else f"{r[k].cfg.softmax_p:g}" for k in keys}
        return Verdict(
            ours=f"softmax: {fmt(b)}; " + "; ".join(f"{what} {value[k]}: {fmt(m)}" for k, m in ms.items()),
            comparable=has_sink("softmax", b),
            test=all_of(
                *(check(f"{what} {value[k]}: Sink_1 (not prevented)", sink(m), ">=", 5.0) for k, m in ms.items()),
                any_of(
                    *(
                        check(f"{what} {value[k]}: Sink_1 below softmax's (points)", sink(b) - sink(m), ">", 5.0)
                        for k, m in ms.items()
                    )
                ),
            ),
            numbers={"base": b, **ms},
        )

    return judge


FINDINGS = [
    Finding(
        "sigmoid",
        "sigmoid attention without normaliser: no sink, no massive activations; with the normaliser they return",
        "'No normalization -> No attention sink, no massive activations! Added back normalization -> Attention sink, "
        "massive activations!'; no sink without normaliser up to 1B (abstract)",
        _cfgs_kernel("sigmoid", "sum"),
        _j_no_norm("sigmoid", returns=True),
        measures={"base": ("heads",), "nonorm": ("raw", "heads"), "norm": ("heads",)},
    ),
    Finding(
        "elu",
        "elu+1 attention: no sink without normaliser, the sink returns with it",
        "'No normalization -> No attention sink, no massive activations! Added back normalization -> Attention sink, "
        "massive activations!'",
        _cfgs_kernel("elu", "sum"),
        _j_no_norm("elu+1", returns=True),
    ),
    Finding(
        "mlp_kernel",
        "a learned MLP kernel (linear attention) has no sink, with or without Z = max(|sum|, 1)",
        "MLP kernel: 'No attention sink, no massive activations', also with the normaliser max(|sum|, 1)",
        _cfgs_kernel("mlp", "max1"),
        _j_no_norm("MLP kernel", returns=False),
    ),
    Finding(
        "softpick",
        "softpick: no sink, no massive activations",
        "'Softpick: No Attention Sink, No Massive Activations with Rectified Softmax' (Zuhri et al. 2025, in the talk)",
        _cfgs_softpick,
        _j_softpick,
        source="Zuhri et al. 2025",
    ),
    Finding(
        "relu_sgd",
        "ReLU attention or SGD mitigates the sink",
        "BB task: ReLU attention or SGD removes sinks, value drains and residual peaks (Guo et al. 2024)",
        _cfgs_relu_sgd,
        _j_relu_sgd,
        source="Guo et al. 2024",
        not_in_seeds="the claim (Guo et al. 2024's Bigram-Backcopy study, not in the seed documents)",
    ),
    Finding(
        "softmax_alpha",
        "scaling the normaliser (Z -> Z / alpha) mitigates but does not prevent the sink",
        "Z -> Z / alpha: 'May mitigate attention sink, but not prevent the emergence'",
        _cfgs_alpha,
        _j_mitigate(("alpha2", "alpha4"), "alpha"),
    ),
    Finding(
        "softmax_pnorm",
        "p-norm softmax mitigates but does not prevent the sink",
        "the p-th powers of the scores sum to one: 'May mitigate attention sink, but not prevent the emergence'",
        _cfgs_pnorm,
        _j_mitigate(("p2", "p4"), "p"),
    ),
]
