"""Model architecture: positional encodings, pre- or post-norm, FFN types ("do not affect the emergence")."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ...config import TrainConfig
from ..finding import Finding, Verdict, base, fmt, has_sink, sink, variant
from ..runs import Run
from ..verdict import all_of, check

#: "emerges" at this scale: Sink_1 at or above this in every arm
EMERGES = 10.0


def _emerges(keys: Sequence[str]) -> Callable[[dict[str, Run]], Verdict]:
    """'The design does not affect the emergence': every variant (and the base) has a sink."""

    def judge(r: dict[str, Run]) -> Verdict:
        ms = {k: r[k].final for k in keys}
        return Verdict(
            ours="; ".join(f"{k}: {fmt(ms[k], 'v')}" for k in keys),
            comparable=has_sink(f"{keys[0]} (the base)", ms[keys[0]]),
            test=all_of(*(check(f"{k}: Sink_1", sink(ms[k]), ">=", EMERGES) for k in keys[1:])),
            numbers=dict(ms),
        )

    return judge


POS = ("nope", "alibi", "learned", "sinusoidal", "relative")
FFN = ("geglu", "reglu", "gelu", "relu", "swish")


def _cfgs_pos(s: str) -> dict[str, TrainConfig]:
    b = base(s)
    return {"rope": b} | {p: variant(b, p, pos=p) for p in POS}


def _cfgs_t5(s: str) -> dict[str, TrainConfig]:
    b = base(s)
    return {"rope": b, "t5": variant(b, "t5", pos="t5")}


def _cfgs_norm(s: str) -> dict[str, TrainConfig]:
    b = base(s)
    return {"pre": b, "post": variant(b, "postnorm", norm="post")}


def _cfgs_ffn(s: str) -> dict[str, TrainConfig]:
    b = base(s)
    return {"swiglu": b} | {f: variant(b, f"ffn-{f}", ffn=f) for f in FFN}


FINDINGS = [
    Finding(
        "pos_types",
        "positional encoding does not decide whether the sink emerges",
        "NoPE, learnable, absolute, relative, rotary and ALiBi PEs 'do not affect the emergence of attention sink'",
        _cfgs_pos,
        _emerges(("rope", *POS)),
    ),
    Finding(
        "t5_relative",
        "a T5-style learned relative bias also develops the sink",
        "relative PEs 'do not affect the emergence of attention sink'",
        _cfgs_t5,
        _emerges(("rope", "t5")),
        not_in_seeds="T5's learned bias itself (the official relative run adds the bucket index; the T5 arm is ours)",
    ),
    Finding(
        "post_norm",
        "pre- or post-norm blocks both develop the sink",
        "pre-norm and post-norm 'do not affect the emergence'; in post-norm models the massive activations sit before the norms",
        _cfgs_norm,
        _emerges(("pre", "post")),
    ),
    Finding(
        "ffn_types",
        "the FFN type does not decide whether the sink emerges",
        "FFNs with different activation functions (ReLU, GeLU, Swish, ReGLU, GeGLU, SwiGLU) 'do not affect the emergence'",
        _cfgs_ffn,
        _emerges(("swiglu", *FFN)),
    ),
]
