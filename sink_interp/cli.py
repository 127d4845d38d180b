"""The ``sink-interp`` command.

    sink-interp measure --model smollm2-135m --data natural --n 100 --length 64 --eps 0.3 [--bos] [--json OUT]
    sink-interp train --preset bb-softmax [--steps N] [--set key=value ...] --out DIR
    sink-interp reproduce [--finding NAME|all] [--scale cpu|gpu] --out DIR
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Sequence

import numpy as np


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="model name (default: the offline smollm2-135m), HF id or local dir")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")


def _add_data_args(p: argparse.ArgumentParser, n: int, length: int) -> None:
    p.add_argument("--data", default="natural", help="natural | random | repeat | FILE.jsonl (a \"text\" field per line)")
    p.add_argument("--n", type=int, default=n, help=f"number of samples (default {n})")
    p.add_argument("--length", type=int, default=length, help=f"tokens per sample, BOS included (default {length})")
    p.add_argument("--bos", action="store_true", help="put the tokenizer's BOS token first (default: no BOS)")
    p.add_argument("--seed", type=int, default=0, help="seed for random/repeat probes")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sink-interp", description="Find, explain and switch off attention sinks.")
    sub = parser.add_subparsers(dest="command", required=True)

    m = sub.add_parser("measure", help="measure Sink_k (Gu et al.) for every layer and head")
    _add_model_args(m)
    _add_data_args(m, n=100, length=64)
    m.add_argument("--eps", type=float, default=0.3, help="sink threshold in (0, 1) (default 0.3)")
    m.add_argument("--batch-size", type=int, default=None, help="samples per forward pass")
    m.add_argument("--top", type=int, default=10, help="how many top sink heads to print")
    m.add_argument("--json", default=None, metavar="OUT", help="write the report as JSON")
    m.add_argument("--quiet", action="store_true", help="no progress bar")
    m.set_defaults(func=cmd_measure)

    from .training.config import PRESETS

    t = sub.add_parser("train", help="train a small model with the paper's knobs (resumable)")
    t.add_argument("--preset", default="bb-softmax", help=f"named config (default bb-softmax): {', '.join(PRESETS)}")
    t.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a TrainConfig field (repeatable), e.g. --set lr=3e-3")
    t.add_argument("--out", required=True, help="run directory (metrics.jsonl, checkpoint.pt, model/)")
    t.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint and start afresh")
    t.add_argument("--device", default="cpu", help="cpu (default; bit-identical resume) or cuda")
    t.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the machine is shared)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--list", action="store_true", help="list the presets and exit")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("reproduce", help="run paired experiments and tabulate the paper's findings")
    r.add_argument("--finding", default="all", help="a finding name or 'all' (see --list)")
    r.add_argument("--scale", default="cpu", choices=["cpu", "gpu"], help="cpu: BB task in minutes; gpu: the paper's recipe")
    r.add_argument("--out", required=True, help="directory for runs/ and the table (reproduce.json, reproduce.md)")
    r.add_argument("--steps", type=int, default=None, help="override every run's steps (smoke tests)")
    r.add_argument("--device", default="cpu")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--list", action="store_true", help="list the findings and exit")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_reproduce)
    return parser


def _fmt_table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [[str(h) for h in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _bar(pct: float, width: int = 30) -> str:
    filled = int(round(width * max(0.0, min(100.0, pct)) / 100.0))
    return "#" * filled + "." * (width - filled)


def cmd_measure(args: argparse.Namespace) -> int:
    from . import load_model, measure_sinks, probe_tokens
    from ._internal.errors import check_eps

    check_eps(args.eps)
    t0 = time.time()
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    t_load = time.time() - t0
    tokens = probe_tokens(model, args.data, n=args.n, length=args.length, bos=args.bos, seed=args.seed)
    info = tokens.probe_info
    t1 = time.time()
    report = measure_sinks(model, tokens, eps=args.eps, batch_size=args.batch_size, progress=not args.quiet)
    t_measure = time.time() - t1

    mi = report.model_info
    print(f"model   {report.model}  ({mi['n_layers']} layers x {mi['n_heads']} heads, {mi['n_kv_heads']} KV heads, {report.dtype}, {report.device})")
    skipped = f", {info['skipped']} shorter lines skipped" if info.get("skipped") else ""
    print(f"data    {report.data}  n={report.n} length={report.length} BOS={'yes' if report.bos else 'no'}{skipped}")
    print(f"metric  alpha_k = mean_(t>=k) A[t,k]; sink head when alpha_k > eps={report.eps}; score={report.score}")
    print()
    print(f"Sink_1 = {report.rate(1):.2f}%   (mean alpha_1 = {report.alpha[..., 0].mean():.3f})")
    sweep = ", ".join(f"eps {e}: {report.rate(1, e):.1f}%" for e in (0.1, 0.2, 0.3, 0.5, 0.8))
    print(f"         {sweep}")
    sec = report.secondary_sinks()
    if sec:
        rates = report.rates()
        print("other sink positions (k: Sink_k): " + ", ".join(f"{k}: {rates[k - 1]:.1f}%" for k in sec[:10]))
    last = report.rates()[-1]
    print(f"(Sink_T at the last position, k={report.length}, is {last:.1f}% but averages a single query: not evidence of a sink)")
    print()
    print("Sink_1 per layer")
    lr = report.layer_rates(1)
    print(_fmt_table([[layer, f"{r:6.2f}%", _bar(r)] for layer, r in zip(report.layers, lr)], ["layer", "Sink_1", ""]))
    print()
    print(f"top {args.top} sink heads (by mean alpha_1)")
    top = report.head_table().head(args.top)
    print(
        _fmt_table(
            [[int(r.layer), int(r.head), int(r.kv_head), f"{r.mean_alpha_1:.3f}", f"{r.sink_rate_1:.1f}%"] for r in top.itertuples()],
            ["layer", "head", "kv_head", "mean alpha_1", "sink in % of samples"],
        )
    )
    print()
    print(f"load {t_load:.1f}s, measure {t_measure:.1f}s; versions: " + ", ".join(f"{k} {v}" for k, v in report.versions.items()))
    if args.json:
        report.to_json(args.json)
        print(f"wrote {args.json}")
    return 0


def _parse_set(items: list[str]) -> dict[str, Any]:
    import json

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from .training import preset, preset_table, train

    if args.list:
        print(_fmt_table([[p["name"], p["description"]] for p in preset_table()], ["preset", "description"]))
        return 0
    over = _parse_set(args.set)
    if args.steps is not None:
        over["steps"] = args.steps
    cfg = preset(args.preset, **over)
    t0 = time.time()
    res = train(cfg, args.out, resume=not args.fresh, device=args.device, threads=args.threads, progress=not args.quiet)
    f = res.final
    print(f"{cfg.name}: {res.n_params:,} parameters, {f.get('step')} steps in {time.time() - t0:.0f}s"
          + (f" (resumed from step {res.resumed_from})" if res.resumed_from else ""))
    print(_fmt_table(
        [[m["step"], f"{m['val_loss']:.4f}", f"{m['sink_rate']:.1f}%", f"{m.get('sink_rate_eps0.1', float('nan')):.1f}%",
          f"{m['mean_alpha1']:.3f}", f"{m['value_norm_ratio_top']:.2f}", f"{m['resid_norm_ratio']:.2f}"] for m in res.metrics],
        ["step", "val_loss", f"Sink_1 (eps {cfg.eps})", "Sink_1 (0.1)", "mean alpha_1", "v-norm ratio (top head)", "resid-norm ratio"],
    ))
    print(f"metrics: {args.out}/metrics.jsonl; model: {res.model_dir or '(stopped before the end)'}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .training.reproduce import FINDINGS, reproduce

    if args.list:
        print(_fmt_table([[f.name, f.claim] for f in FINDINGS.values()], ["finding", "paper"]))
        return 0
    table = reproduce(
        args.finding, scale=args.scale, out=args.out, steps=args.steps, device=args.device, threads=args.threads,
        progress=not args.quiet,
    )
    print(table.to_markdown())
    print(f"wrote {args.out}/reproduce.json and {args.out}/reproduce.md")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, OSError) as e:
        print(f"sink-interp {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
