"""``sink-interp massive``: massive activations (Sun et al.) per block, norms at the sink, the extreme-token triple."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ._common import add_command, add_output_args, data_line, load_and_probe, massive_table, model_line, options, write_json


def add_parser(sub: Any) -> None:
    mv = add_command(
        sub, "massive", "massive activations (Sun et al.) per block, norms at the sink, the extreme-token triple", n=20, length=64
    )
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

    model, tokens, t_load = load_and_probe(args)
    t1 = time.time()
    rep = massive_activations(model, tokens, **options(args, "abs_threshold", "ratio_threshold", "top_k", "batch_size"))
    t_run = time.time() - t1
    print(model_line(rep, "d_model"))
    print(data_line(rep))
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
