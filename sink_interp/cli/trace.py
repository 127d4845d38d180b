"""``sink-interp trace``: trace the sink mechanism (spike, writer, norm, W_K, RoPE, key manifold)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ._common import add_data_args, add_model_args, add_output_args, load, massive_table, probe, versions, write_json


def add_parser(sub: Any) -> None:
    t = sub.add_parser("trace", help="trace the sink mechanism: spike, writer, norm, W_K, RoPE, key manifold")
    add_model_args(t)
    add_data_args(t, n=20, length=64)
    t.add_argument("--layer", type=int, default=None, help="layer to trace (default: the strongest sink head's)")
    t.add_argument("--head", type=int, default=None, help="head to trace (default: the strongest sink head)")
    t.add_argument("--sink-pos", type=int, default=0, help="sink position, 0 = first token (default 0)")
    t.add_argument("--abs-threshold", type=float, default=100.0, help="massive activation: |x| above this (default 100)")
    t.add_argument(
        "--ratio-threshold", type=float, default=1000.0, help="massive activation: at least this many medians (default 1000)"
    )
    t.add_argument("--batch-size", type=int, default=None, help="samples per forward pass")
    t.add_argument("--explain", action="store_true", help="also print every number with its one-line doc")
    add_output_args(t)
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import trace_sink

    t0 = time.time()
    model = load(args)
    t_load = time.time() - t0
    tokens = probe(model, args)
    info = tokens.info
    t1 = time.time()
    rep = trace_sink(
        model,
        tokens,
        layer=args.layer,
        head=args.head,
        sink_pos=args.sink_pos,
        abs_threshold=args.abs_threshold,
        ratio_threshold=args.ratio_threshold,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    t_trace = time.time() - t1
    mi = rep.model_info
    m = rep.massive
    print(
        f"model   {rep.model}  ({mi['n_layers']} layers x {mi['n_heads']} heads, {mi['n_kv_heads']} KV heads, d_model {mi['d_model']}, "
        f"{mi['normalization']}, {mi['positional']} positions, {rep.dtype}, {rep.device})"
    )
    skipped = f", {info['skipped']} shorter lines skipped" if info.get("skipped") else ""
    print(f"data    {rep.data}  n={rep.n} length={rep.length} BOS={'yes' if rep.bos else 'no'}{skipped}")
    print()
    print(rep.story())
    print()
    print("per block: largest |x| entering it (hook_resid_pre), and ||v|| at position 0 over the mean at positions >= 1")
    print(massive_table(m))
    if args.explain:
        print()
        print(rep.explain())
    print()
    print(f"load {t_load:.1f}s, trace {t_trace:.1f}s; " + versions(rep))
    write_json(args, rep)
    return 0
