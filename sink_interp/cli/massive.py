"""``sink-interp massive``: massive activations (Sun et al.) per block, norms at the sink, the extreme-token triple."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ._common import add_data_args, add_model_args, add_output_args, load, massive_table, probe, write_json


def add_parser(sub: Any) -> None:
    mv = sub.add_parser("massive", help="massive activations (Sun et al.) per block, norms at the sink, the extreme-token triple")
    add_model_args(mv)
    add_data_args(mv, n=20, length=64)
    mv.add_argument("--abs-threshold", type=float, default=100.0, help="massive activation: |x| above this (default 100)")
    mv.add_argument(
        "--ratio-threshold", type=float, default=1000.0, help="massive activation: at least this many medians (default 1000)"
    )
    mv.add_argument("--top-k", type=int, default=5, help="largest |x| entries kept per sample and layer (default 5)")
    mv.add_argument("--batch-size", type=int, default=None, help="samples per forward pass")
    add_output_args(mv)
    mv.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import massive_activations

    t0 = time.time()
    model = load(args)
    t_load = time.time() - t0
    tokens = probe(model, args)
    t1 = time.time()
    rep = massive_activations(
        model,
        tokens,
        abs_threshold=args.abs_threshold,
        ratio_threshold=args.ratio_threshold,
        top_k=args.top_k,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    t_run = time.time() - t1
    mi = rep.model_info
    print(
        f"model   {rep.model}  ({mi['n_layers']} layers x {mi['n_heads']} heads, d_model {mi['d_model']}, {rep.dtype}, {rep.device})"
    )
    print(f"data    {rep.data}  n={rep.n} length={rep.length} BOS={'yes' if rep.bos else 'no'}")
    print(f"massive: |x| > {rep.abs_threshold:g} and > {rep.ratio_threshold:g} x the median |x| (Sun et al.)")
    print()
    print(massive_table(rep, h_norm=True))
    triple = rep.extreme_triple()
    parts = [
        f"{role} at position {v['pos']} ({v['layers']}/{v['of']} layers)" for role, v in triple.items() if isinstance(v, dict)
    ]
    if parts:
        print()
        print("extreme tokens: " + "; ".join(parts) + ("; they coincide" if triple.get("coincide") else ""))
    print()
    print(f"load {t_load:.1f}s, massive {t_run:.1f}s")
    write_json(args, rep)
    return 0
