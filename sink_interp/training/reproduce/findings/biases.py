"""Learnable biases: the K-bias family (one finding, six arms), the V bias alone (control), a learnable sink token.

The paper packs its data without a fixed BOS, so the K-bias arms and the sink token run without
one (BB's ``bb_bos_num=0``); one arm with BB's BOS stands beside them, where layer 0 keeps its
sink on the BOS whatever bias is offered (the phenomenon the six arms used to count six times).
"""

from __future__ import annotations

from typing import Any

from ...config import TrainConfig
from ..finding import Finding, Verdict, base, fmt, has_sink, nobos, rates, sink, variant
from ..runs import Run
from ..verdict import Node, all_of, check

DA = (1, 4, 16, 64)
FIXED_V = (1, 5, 20)


def _kbias(cfg: TrainConfig) -> TrainConfig:
    return variant(cfg, "kbias", k_bias=True, v_bias="zero")


def _cfgs_kbias(s: str) -> dict[str, TrainConfig]:
    b, nb = base(s), nobos(s)
    out = {"base": nb, "kbias": _kbias(nb), "kv": variant(nb, "kvbias", k_bias=True, v_bias="learn")}
    out |= {f"da{d}": variant(nb, f"kbias-da{d}", k_bias=True, v_bias="zero", k_bias_dims=d) for d in DA if d < nb.d_head}
    for fam in ("e1", "ones"):
        for x in FIXED_V:
            out[f"{fam}_x{x}"] = variant(nb, f"kbias-v{fam}x{x}", k_bias=True, v_bias=fam, v_bias_scale=float(x))
    nope = variant(nb, "nope", pos="nope")
    deep = variant(nb, "l4", n_layers=4) if s == "cpu" else nb  # the GPU recipe is already deep
    out |= {"nope_base": nope, "nope_kbias": _kbias(nope), "deep_base": deep, "deep_kbias": _kbias(deep)}
    hb = nb if s == "gpu" else nb.replace(n_heads=2)  # head-wise needs more than one head (BB: one per layer)
    tag = "" if s == "gpu" else "h2-"
    out |= {
        "k_shared": variant(hb, f"{tag}kbias", k_bias=True, v_bias="zero"),
        "k_head": variant(hb, f"{tag}kbias-head", k_bias=True, v_bias="zero", bias_per_head=True),
        "kv_shared": variant(hb, f"{tag}kvbias", k_bias=True, v_bias="learn"),
        "kv_head": variant(hb, f"{tag}kvbias-head", k_bias=True, v_bias="learn", bias_per_head=True),
    }
    out |= {"bos_base": b, "bos_kbias": _kbias(b)}  # beside: with BB's BOS
    return out


def _takes(name: str, m: dict[str, Any], star: float = 30.0) -> list[Node]:
    return [check(f"{name}: Sink_1", sink(m), "<", 5.0), check(f"{name}: Sink_*", sink(m, "sink_rate_star"), ">=", star)]


def _layers(hs: dict[str, Any]) -> str:
    return ", ".join(
        f"L{l}: alpha_1 {max(hs['alpha_1_raw'][l]):.2f} / on k* {max(1 - x for x in hs['row_sum'][l]):.2f}"
        for l in range(len(hs["row_sum"]))
    )


def _j_kbias(r: dict[str, Run]) -> Verdict:
    m = {k: run.final for k, run in r.items()}
    da = [k for k in m if k.startswith("da")]
    parts: list[Node] = [*_takes("K bias (v*=0)", m["kbias"]), *_takes("K and V bias", m["kv"])]
    for k in da:
        parts += _takes(f"K bias with d_a {r[k].cfg.k_bias_dims}", m[k], star=20.0)
    for fam, label in (("e1", "v'"), ("ones", "v''")):
        stars = [sink(m[f"{fam}_x{x}"], "sink_rate_star") for x in FIXED_V]
        sinks = [sink(m[f"{fam}_x{x}"]) for x in FIXED_V]
        parts += [
            check(f"fixed v* = {label}: Sink_* drop from 1x to 20x (points)", stars[0] - stars[-1], ">", 10.0),
            *(
                check(f"fixed v* = {label}: Sink_* rise from {a}x to {b}x (points)", stars[i + 1] - stars[i], "<=", 5.0)
                for i, (a, b) in enumerate(zip(FIXED_V, FIXED_V[1:]))
            ),
            check(f"fixed v* = {label}: Sink_1 change from 1x to 20x (points)", sinks[-1] - sinks[0], ">=", 0.0),
        ]
    parts += [
        *_takes("K bias without positions (NoPE)", m["nope_kbias"]),
        *_takes(f"K bias, {r['deep_kbias'].cfg.n_layers} layers", m["deep_kbias"]),
    ]
    for a, b in (("k_shared", "k_head"), ("kv_shared", "kv_head")):
        for key, what in (("sink_rate_1", "Sink_1"), ("sink_rate_star", "Sink_*")):
            parts.append(
                check(
                    f"{b.replace('_', ' ')} vs {a.replace('_', ' ')}: |{what} difference| (points)",
                    abs(sink(m[a], key) - sink(m[b], key)),
                    "<=",
                    15.0,
                )
            )
    hs = {k: r[k].measured["heads-fast"] for k in ("kbias", "nope_kbias", "deep_kbias", "bos_kbias")}
    ours = (
        f"without BOS (the paper's packing): softmax {fmt(m['base'])}; K bias (v*=0): {fmt(m['kbias'], 'star')} ({_layers(hs['kbias'])}); "
        f"K and V bias: {fmt(m['kv'], 'star')}; "
        + "; ".join(f"d_a {r[k].cfg.k_bias_dims}: {fmt(m[k], 'star')}" for k in da)
        + "; "
        + "; ".join(
            f"fixed v* = {x}{label}: Sink_* {sink(m[f'{fam}_x{x}'], 'sink_rate_star'):.1f}%, Sink_1 {sink(m[f'{fam}_x{x}']):.1f}%"
            for fam, label in (("e1", "v'"), ("ones", "v''"))
            for x in FIXED_V
        )
        + f"; NoPE: softmax {fmt(m['nope_base'])}, K bias {fmt(m['nope_kbias'], 'star')} ({_layers(hs['nope_kbias'])}); "
        f"{r['deep_kbias'].cfg.n_layers} layers: softmax {fmt(m['deep_base'])}, K bias {fmt(m['deep_kbias'], 'star')} "
        f"({_layers(hs['deep_kbias'])}); 2 heads per layer: "
        + "; ".join(f"{k.replace('_', ' ')} {fmt(m[k], 'star')}" for k in ("k_shared", "k_head", "kv_shared", "kv_head"))
        + f". Beside, with BB's BOS: softmax {fmt(m['bos_base'])}; K bias {fmt(m['bos_kbias'], 'star')} ({_layers(hs['bos_kbias'])}): "
        "with a BOS, the layers that put their sink on it keep it there"
    )
    return Verdict(ours=ours, test=all_of(*parts), numbers={**m, "heads": hs})


def _cfgs_v_only(s: str) -> dict[str, TrainConfig]:
    b = base(s)
    return {"base": b, "v_only": variant(b, "vbias", v_bias="learn")}


def _j_v_only(r: dict[str, Run]) -> Verdict:
    b, v = r["base"].final, r["v_only"].final
    return Verdict(
        ours=f"softmax: {fmt(b, 'v')}; V bias only (y = Attn + v*): {fmt(v, 'v')}",
        comparable=has_sink("softmax", b),
        test=all_of(
            check("V bias: Sink_1", sink(v), ">=", 10.0),
            check("|Sink_1(V bias) - Sink_1(softmax)| (points)", abs(sink(v) - sink(b)), "<=", max(10.0, 0.35 * sink(b))),
        ),
        numbers={"base": b, "v_only": v},
    )


def _cfgs_sink_token(s: str) -> dict[str, TrainConfig]:
    b, nb = base(s), nobos(s)
    return {
        "base": nb,
        "sink_token": variant(nb, "sinktoken", sink_token=True),
        "bos_base": b,
        "bos_sink_token": variant(b, "sinktoken", sink_token=True),
    }


def _j_sink_token(r: dict[str, Run]) -> Verdict:
    b, s, bb, bs = (r[k].final for k in ("base", "sink_token", "bos_base", "bos_sink_token"))
    return Verdict(
        ours=f"without BOS (the paper's packing): softmax {fmt(b)}; learnable sink token at position 1: Sink on it "
        f"{s['sink_rates'][0]:.1f}%, on the first data token (position 2) {sink(s):.1f}%, Sink_1..4 {rates(s)}, loss {s['val_loss']:.3f}. "
        f"Beside, with BB's BOS after the sink token: softmax {fmt(bb)}; sink token: on it {bs['sink_rates'][0]:.1f}%, on the BOS "
        f"{sink(bs):.1f}%",
        test=all_of(
            check("sink token: Sink on it", s["sink_rates"][0], ">=", 30.0),
            check("sink token: Sink_1 of the first data token", sink(s), "<", 5.0),
        ),
        numbers={"base": b, "sink_token": s, "bos_base": bb, "bos_sink_token": bs},
    )


FINDINGS = [
    Finding(
        "kbias",
        "a learnable K bias takes the sink's role (v* = 0, with V bias, few learnable dims, fixed v*, head-wise, placement)",
        "K bias, v*=0: Sink_* 73.34%, Sink_1 0.00%; K and V bias: 72.76% / 0.04% (softmax: Sink_1 18.18%); d_a 1/2/4/8/16/32/64: "
        "Sink_* 32.18/30.88/30.94/31.39/23.30/51.23/69.19%, Sink_1 4.74/4.96/4.39/4.54/2.19/1.94/0.04%; fixed v*: Sink_* "
        "v*=0 73.34, v' 70.03, 5v' 44.43, 20v' 1.51, v'' 69.74, 5v'' 27.99, 20v'' 0.00 (v' = e1, v'' = 1/sqrt(d_h)), Sink_1 "
        "5v' 3.71, v'' 2.15, 5v'' 5.93, 20v'' 11.21",
        _cfgs_kbias,
        _j_kbias,
        measures={k: ("heads-fast",) for k in ("kbias", "nope_kbias", "deep_kbias", "bos_kbias")},
        not_in_seeds="the head-wise arms and the NoPE / deeper placements (the official configs k_head_bias, kv_head_bias, "
        "model_kv_bias.py; no numbers in the seeds)",
    ),
    Finding(
        "v_bias_only",
        "a V bias alone (control) leaves the sink on the first token",
        "V bias only (y = Attn + v*): Sink_1 17.53%, loss 3.73 (softmax 18.18%, 3.73)",
        _cfgs_v_only,
        _j_v_only,
    ),
    Finding(
        "sink_token",
        "a learnable sink token takes the sink",
        "learnable sink token ([q*; Q][k*; K]^T): Sink_* 74.12%, Sink_1 0.00%, loss 3.72; it encourages massive activations",
        _cfgs_sink_token,
        _j_sink_token,
    ),
]
