"""Measurements of a trained run beyond its metrics.jsonl, taken once after training and stored in the run folder.

A finding names the measurements its judge reads (``Finding.measures``); :func:`measure_run`
takes the missing ones when the run finishes and writes each to ``measured/<name>.json``
(atomically), so a table is re-tabulated from run folders without their models (what
``docs/results/reproduce`` holds). Names: ``bos`` (:func:`bos_dependence`), ``window`` or
``window:W`` (:func:`window_stats`), ``raw`` (:func:`raw_stats`), ``heads`` / ``heads-fast``
(:func:`head_stats` with / without the ablation of every head), ``massive`` (:func:`massive_stats`).

    >>> parse("window:8")
    ('window', 8)
    >>> file_name("window:8")
    'window-8.json'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from ..._internal.provenance import dumps, write_atomic
from ..config import TrainConfig
from ..loop import make_sampler, make_task
from .runs import MEASURED, Run


def _probe(cfg: TrainConfig, n: int | None = None, **over: Any) -> torch.Tensor:
    task = make_task(cfg)
    return make_sampler(cfg, task, seed=cfg.seed + 20_011, split="val", intra_doc=False, **over).sample(n or cfg.probe_n).tokens


def bos_dependence(run: Run) -> dict[str, Any]:
    """Loss and Sink_1 of a model on its validation data with and without the first token (BOS).

    Without BOS the sequences are the same minus their first token, so the
    losses compare the same predictions (positions 2..T of the original).
    """
    from ..evaluate import masked_ce, probe_stats
    from ..model import load_trained

    lab = load_trained(run.model_dir)
    cfg = run.cfg
    task = make_task(cfg)
    batches = make_sampler(cfg, task, seed=cfg.seed + 10_007, split="val").fixed_batches(cfg.eval_batches, cfg.batch_size)
    out: dict[str, Any] = {}
    for tag, cut in (("with", 0), ("without", 1)):
        tot = n = 0.0
        with torch.no_grad():
            for b in batches:
                toks = b.tokens[:, cut:]
                ce, _ = masked_ce(lab.bridge(toks, return_type="logits"), toks, b.loss_mask[:, cut:])
                # score the same targets both ways: tokens 3..T of the full sequence (1-indexed)
                if cut == 0:
                    ce = ce[:, 1:]
                tot += float(ce.sum())
                n += ce.numel()
        stats = probe_stats(lab.bridge, _probe(cfg)[:, cut:], score=cfg.metric_score, eps=cfg.eps)
        out[f"val_loss_{tag}_first"] = tot / n
        out[f"sink_rate_1_{tag}_first"] = stats["sink_rate_1"]
        out[f"mean_alpha_1_{tag}_first"] = stats["mean_alpha_1"]
    return out


def window_stats(run: Run, w: int | None = None) -> dict[str, Any]:
    """The sink metric restricted to the first ``w`` queries (those a window of width ``w`` lets see position 1),
    and the attention to each query's oldest visible key in a window of ``w`` (the 'relative first token').

    ``w`` defaults to the run's own window; give it for a full-attention model to compare the same queries.
    """
    from ..._internal import hooknames
    from ...capture import Reduce, run_reducers
    from ..model import load_trained

    lab = load_trained(run.model_dir)
    cfg = run.cfg
    w = int(w or cfg.window or cfg.seq_len)
    tokens = _probe(cfg)
    L = cfg.n_layers
    vis: list[torch.Tensor] = []
    rel: list[torch.Tensor] = []

    def fn(name: str, p: torch.Tensor, start: int) -> None:
        p = p.detach().float()  # [b, H, T, T]
        T = p.shape[-1]
        k = min(w, T)
        vis.append(p[:, :, :k, 0].mean(-1))  # queries 1..w see key 1
        t = torch.arange(k - 1, T)
        rel.append(p[:, :, t, t - k + 1].mean(-1))  # attention to the oldest visible key

    red = Reduce([hooknames.pattern(layer) for layer in range(L)], fn)
    with torch.no_grad():
        run_reducers(lab.bridge, tokens, [red], progress=False)
    a_vis = torch.stack(vis)  # [L * batches, b, H] (order irrelevant for the rate)
    a_rel = torch.stack(rel)
    return {
        "window": w,
        "sink_rate_1_visible_queries": float(100 * (a_vis > cfg.eps).float().mean()),
        "mean_alpha_1_visible_queries": float(a_vis.mean()),
        "sink_rate_relative_first": float(100 * (a_rel > cfg.eps).float().mean()),
        "mean_alpha_relative_first": float(a_rel.mean()),
        "alpha_1_bound": min(1.0, w / cfg.seq_len) if cfg.window else 1.0,
    }


def raw_stats(run: Run) -> dict[str, Any]:
    """Sink statistics of a run's model read from the raw pattern (no proxy normalisation)."""
    from ..evaluate import probe_stats
    from ..model import load_trained

    lab = load_trained(run.model_dir)
    st = probe_stats(lab.bridge, _probe(run.cfg), score="softmax", eps=run.cfg.eps)
    return {"sink_rate_1_raw": st["sink_rate_1"], "mean_alpha_1_raw": st["mean_alpha_1"], "attn_mass": st["attn_mass"]}


def head_stats(run: Run, ablate: bool = True) -> dict[str, Any]:
    """Per layer and head: the absolute attention mass on each of the first keys, the row sum, the proxy alpha_1,
    the value drain, the head-output norm, and (``ablate``) whether the head is dormant.

    Lists are indexed ``[layer][head]``. ``mass_first_keys[l][h][k]`` is the raw mean weight on key ``k + 1``
    (over the queries that see it); ``alpha_1_raw``/``alpha_1_proxy`` the Gu et al. score of the first data
    token from the raw weights / from ``|A| / sum |A|``; ``row_sum`` the mean row sum (1 for softmax,
    ``1 - `` the K-bias column's share with a K bias); ``value_ratio`` ``||v_1|| / mean ||v_j||`` of the
    head's KV head; ``z_ratio`` the head's mean output norm ``||z_t||`` over the mean value norm;
    ``dloss`` / ``dloss_bigram`` the validation-loss change when the head's output is zeroed (all targets /
    BB's non-copy targets); a head is ``dormant`` when zeroing it changes the non-copy loss by less than 1 %.
    """
    from ..._internal import hooknames
    from ...capture import Reduce, attach_hooks, run_reducers
    from ..evaluate import val_losses
    from ..model import load_trained

    lab = load_trained(run.model_dir)
    cfg = run.cfg
    k0 = cfg.first_token_pos - 1
    tokens = _probe(cfg)
    L, H, G = cfg.n_layers, cfg.n_heads, cfg.n_kv_heads or cfg.n_heads
    nk = 8
    acc: dict[str, Any] = {
        "mass": torch.zeros(L, H, nk),
        "row": torch.zeros(L, H),
        "a_raw": torch.zeros(L, H),
        "a_proxy": torch.zeros(L, H),
        "v": torch.zeros(L, G),
        "vnorm": torch.zeros(L),
        "z": torch.zeros(L, H),
    }
    n = tokens.shape[0]

    def fn(name: str, x: torch.Tensor, start: int) -> None:
        layer = hooknames.layer_of(name)
        x = x.detach().float()
        if name.endswith("hook_pattern"):  # [b, H, T, T]
            T = x.shape[-1]
            for k in range(min(nk, T)):
                acc["mass"][layer, :, k] += x[:, :, k:, k].mean(-1).sum(0) / n
            acc["row"][layer] += x[:, :, k0:].sum(-1).mean(-1).sum(0) / n
            acc["a_raw"][layer] += x[:, :, k0:, k0].mean(-1).sum(0) / n
            pr = x.abs() / (x.abs().sum(-1, keepdim=True) + 1e-8)
            acc["a_proxy"][layer] += pr[:, :, k0:, k0].mean(-1).sum(0) / n
        elif name.endswith("hook_v"):  # [b, T, G, d]
            nv = x.norm(dim=-1)
            others = torch.ones(nv.shape[1], dtype=torch.bool)
            others[k0] = False
            acc["v"][layer] += (nv[:, k0] / nv[:, others].mean(1).clamp(min=1e-12)).sum(0) / n
            acc["vnorm"][layer] += nv[:, others].mean() * x.shape[0] / n
        else:  # hook_z [b, T, H, d]
            acc["z"][layer] += x[:, k0:].norm(dim=-1).mean(1).sum(0) / n

    names = [f(layer) for layer in range(L) for f in (hooknames.pattern, hooknames.v, hooknames.z)]
    with torch.no_grad():
        run_reducers(lab.bridge, tokens, [Reduce(names, fn)], progress=False)
    out: dict[str, Any] = {
        "mass_first_keys": [[[round(float(v), 4) for v in acc["mass"][l, h]] for h in range(H)] for l in range(L)],
        "row_sum": [[round(float(v), 4) for v in acc["row"][l]] for l in range(L)],
        "alpha_1_raw": [[round(float(v), 4) for v in acc["a_raw"][l]] for l in range(L)],
        "alpha_1_proxy": [[round(float(v), 4) for v in acc["a_proxy"][l]] for l in range(L)],
        "value_ratio": [[round(float(acc["v"][l, h // max(1, H // G)]), 4) for h in range(H)] for l in range(L)],
        "z_ratio": [[round(float(acc["z"][l, h] / acc["vnorm"][l].clamp(min=1e-12)), 4) for h in range(H)] for l in range(L)],
    }
    if ablate:
        task = make_task(cfg)
        batches = make_sampler(cfg, task, seed=cfg.seed + 10_007, split="val").fixed_batches(cfg.eval_batches, cfg.batch_size)
        ref = val_losses(lab, batches, task)
        key = "val_loss_bigram" if "val_loss_bigram" in ref else "val_loss"
        d_all, d_big = [], []
        for layer in range(L):
            row_all, row_big = [], []
            for h in range(H):

                def zero(x: torch.Tensor, hook: Any = None, h: int = h) -> torch.Tensor:
                    x = x.clone()
                    x[:, :, h] = 0
                    return x

                with attach_hooks(lab.bridge, [(hooknames.z(layer), zero)]):
                    ab = val_losses(lab, batches, task)
                row_all.append(round(ab["val_loss"] - ref["val_loss"], 5))
                row_big.append(round(ab[key] - ref[key], 5))
            d_all.append(row_all)
            d_big.append(row_big)
        out["dloss"] = d_all
        out["dloss_bigram"] = d_big
        out["dormant"] = [[abs(d) < 0.01 * ref[key] for d in row] for row in d_big]
        out["val_loss"] = round(ref["val_loss"], 5)
    return out


def _sink_heads(hs: dict[str, Any], eps: float, drain: float = 0.5) -> list[tuple[int, int]]:
    """Heads that park absolute attention mass (> eps) on the first token *and* whose value there is drained (< drain)."""
    return [
        (l, h)
        for l, row in enumerate(hs["alpha_1_raw"])
        for h, a in enumerate(row)
        if a > eps and hs["value_ratio"][l][h] < drain
    ]


def _parked_heads(hs: dict[str, Any], eps: float) -> list[tuple[int, int]]:
    return [(l, h) for l, row in enumerate(hs["alpha_1_raw"]) for h, a in enumerate(row) if a > eps]


def classify_heads(hs: dict[str, Any], eps: float) -> dict[str, Any]:
    """``head_stats`` with its ``sink_heads`` (mass > eps on a drained value) and ``parked_heads`` (mass > eps) added."""
    return {**hs, "sink_heads": _sink_heads(hs, eps), "parked_heads": _parked_heads(hs, eps)}


def massive_stats(run: Run) -> dict[str, Any]:
    """Massive activations of a run's model on its validation probe (:func:`sink_interp.massive_activations`), per block.

    ``max`` the largest ``|x|`` of the block's input residual, ``ratio`` that value over the
    median ``|x|`` of its hidden state, ``pos``/``dim`` where it sits (0 = the first token),
    ``h_norm_ratio_first`` the first token's residual norm over the others'.
    """
    from ...massive import massive_activations
    from ..model import load_trained

    lab = load_trained(run.model_dir)
    rep = massive_activations(lab.bridge, _probe(run.cfg), measure_sinks=False, progress=False)
    arg = rep.layer_argmax
    return {
        "max": [round(float(x), 4) for x in rep.layer_max],
        "ratio": [round(float(x), 2) for x in rep.layer_ratio],
        "pos": [int(x) for x in arg[:, 1]],
        "dim": [int(x) for x in arg[:, 2]],
        "h_norm_ratio_first": [round(float(x), 3) for x in rep.norm_ratio("h", 0)],
        "sun_massive": [bool(x) for x in rep.is_massive()],  # |x| > 100 and >= 1000 medians (Sun et al. 2024)
    }


#: name -> ``fn(run, arg)``; ``arg`` is the integer after ``:`` in the name (or None)
MEASUREMENTS: dict[str, Callable[[Run, int | None], dict[str, Any]]] = {
    "bos": lambda run, _: bos_dependence(run),
    "window": lambda run, w: window_stats(run, w),
    "raw": lambda run, _: raw_stats(run),
    "heads": lambda run, _: head_stats(run, ablate=True),
    "heads-fast": lambda run, _: head_stats(run, ablate=False),
    "massive": lambda run, _: massive_stats(run),
}


def parse(name: str) -> tuple[str, int | None]:
    """``"window:8"`` -> ``("window", 8)``; a name :data:`MEASUREMENTS` does not know is a ``ValueError``."""
    base, _, arg = name.partition(":")
    if base not in MEASUREMENTS or (arg and not arg.isdigit()):
        raise ValueError(f"unknown measurement {name!r}; known: {', '.join(MEASUREMENTS)} (window takes ':W')")
    return base, int(arg) if arg else None


def file_name(name: str) -> str:
    base, arg = parse(name)
    return f"{base}-{arg}.json" if arg is not None else f"{base}.json"


def read_measured(run_dir: str | Path, names: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """The stored measurements of a run folder (missing ones are left out)."""
    out = {}
    for name in names:
        path = Path(run_dir) / MEASURED / file_name(name)
        if path.is_file():
            out[name] = json.loads(path.read_text(encoding="utf-8"))
    return out


def missing(run_dir: str | Path, names: tuple[str, ...] | list[str]) -> list[str]:
    return [n for n in names if not (Path(run_dir) / MEASURED / file_name(n)).is_file()]


def measure_run(run: Run, names: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Take the measurements ``names`` of a finished run that its folder lacks (each written atomically); all of them."""
    for name in missing(run.out_dir, names):
        base, arg = parse(name)
        with torch.no_grad():
            value = MEASUREMENTS[base](run, arg)
        path = Path(run.out_dir) / MEASURED / file_name(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, dumps(value))
    return read_measured(run.out_dir, names)
