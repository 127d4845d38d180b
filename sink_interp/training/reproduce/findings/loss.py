"""Loss function: prefix language modelling and sliding-window attention."""

from __future__ import annotations

from typing import Any

from ...config import TrainConfig
from ..finding import Finding, Verdict, base, has_sink, nobos, sink, variant
from ..runs import Run
from ..verdict import all_of, any_of, check

# --------------------------------------------------------------------------- prefix LM

#: the arms without a fixed first token (where a sink can only be positional) and with one (BB's BOS)
_MOVABLE = ("no_bos", "learned", "random_first")


def _cfgs_prefix(s: str) -> dict[str, TrainConfig]:
    p = 4 if s == "cpu" else 10
    nb, b = nobos(s), base(s)
    learned = variant(nb, "learned", pos="learned")
    rnd = variant(b, "random1", random_token_pos=1)
    out = {}
    for arm, cfg in (("no_bos", nb), ("learned", learned), ("random_first", rnd), ("bos", b)):
        out[f"{arm}_causal"] = cfg
        out[f"{arm}_prefix"] = variant(cfg, f"prefix{p}", prefix=p)
    return out


def _j_prefix(r: dict[str, Run]) -> Verdict:
    p = r["no_bos_prefix"].cfg.prefix
    arms: dict[str, Any] = {}
    for arm in (*_MOVABLE, "bos"):
        c, px = r[f"{arm}_causal"].final["sink_rates"], r[f"{arm}_prefix"].final["sink_rates"]
        arms[arm] = {"causal": c, "prefix": px}
    ours = "; ".join(
        f"{arm.replace('_', ' ')}: causal Sink_1..{p + 2} {[round(x, 1) for x in a['causal'][: p + 2]]} vs prefix p={p} "
        f"{[round(x, 1) for x in a['prefix'][: p + 2]]}"
        for arm, a in arms.items()
    )
    moved = []
    for arm in _MOVABLE:
        px = arms[arm]["prefix"]
        inside = max(px[1:p])  # a sink on prefix positions 2..p: moved off position 1
        moved.append(
            all_of(
                check(f"{arm.replace('_', ' ')}, prefix: largest Sink_k for k = 2..{p}", inside, ">=", 10.0),
                check(f"{arm.replace('_', ' ')}, prefix: that sink above Sink_1 (points)", inside - px[0], ">", 0.0),
                check(
                    f"{arm.replace('_', ' ')}, prefix: inside the prefix above after it (points)", inside - max(px[p:]), ">", 0.0
                ),
            )
        )
    positional = any_of(
        *(check(f"{arm.replace('_', ' ')}, causal: Sink_1", arms[arm]["causal"][0], ">=", 10.0) for arm in _MOVABLE)
    )
    if not any(arms[arm]["causal"][0] >= 10.0 for arm in _MOVABLE):
        ours = "not comparable: no positional sink to move (causal Sink_1 < 10% without a fixed first token); " + ours
    return Verdict(
        ours=ours + "; with BB's fixed BOS the sink is a fixed token's (see fixed_token), not positional",
        comparable=positional,
        test=any_of(*moved),
        numbers={"p": p, **arms},
    )


# --------------------------------------------------------------------------- sliding window

#: the small window (the mitigation) and a half-length one (where a sink can still form, to see where it sits)
SMALL_W, HALF_W = 8, 32


def _sizes(s: str) -> tuple[int, int]:
    return (SMALL_W, HALF_W) if s == "cpu" else (32, 1024)


def _cfgs_window(s: str) -> dict[str, TrainConfig]:
    b = base(s)
    small, half = _sizes(s)
    return {"base": b, "small": variant(b, f"window{small}", window=small), "half": variant(b, f"window{half}", window=half)}


def _j_window(r: dict[str, Run]) -> Verdict:
    small, half = r["small"].cfg.window, r["half"].cfg.window
    b_small, b_half = r["base"].measured[f"window:{small}"], r["base"].measured[f"window:{half}"]
    ws, wh = r["small"].measured["window"], r["half"].measured["window"]
    b = r["base"].final
    return Verdict(
        ours=f"full attention: Sink_1 {sink(b):.1f}%, over the first {small} queries {b_small['sink_rate_1_visible_queries']:.1f}%; "
        f"window {small}: Sink_1 {sink(r['small'].final):.1f}% (alpha_1 <= w/T = {ws['alpha_1_bound']:.2f} by construction), over "
        f"the queries that see position 1 {ws['sink_rate_1_visible_queries']:.1f}%, on each query's oldest visible key "
        f"{ws['sink_rate_relative_first']:.1f}%; window {half}: over the queries that see position 1 "
        f"{wh['sink_rate_1_visible_queries']:.1f}% (full attention, same queries: {b_half['sink_rate_1_visible_queries']:.1f}%), "
        f"on the oldest visible key {wh['sink_rate_relative_first']:.1f}%",
        comparable=has_sink("full attention", b),
        test=all_of(
            check(
                f"window {small} mitigates: the first {small} queries' Sink_1 below full attention's (points)",
                b_small["sink_rate_1_visible_queries"] - ws["sink_rate_1_visible_queries"],
                ">",
                10.0,
            ),
            check(
                f"window {half}: Sink_1 on the absolute first token above the relative first (points)",
                wh["sink_rate_1_visible_queries"] - wh["sink_rate_relative_first"],
                ">",
                10.0,
            ),
        ),
        numbers={"base": b, "base_first_queries": {small: b_small, half: b_half}, "small": ws, "half": wh},
    )


FINDINGS = [
    Finding(
        "prefix",
        "prefix LM moves the sink into the prefix",
        "the sink token shifts from the first position to other positions within the prefix",
        _cfgs_prefix,
        _j_prefix,
    ),
    Finding(
        "window",
        "a small sliding window mitigates the sink, which sits on the absolute, not the relative, first token",
        "'Attention sink appears on the absolute, not the relative first token'; 'Small window size mitigates attention sink'",
        _cfgs_window,
        _j_window,
        measures=lambda s: {"base": tuple(f"window:{w}" for w in _sizes(s)), "small": ("window",), "half": ("window",)},
    ),
]
