"""``sink-interp massive``: massive activations (Sun et al.) per block, norms at the sink, the extreme-token triple."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import add_command, add_output_args, analyse, header, massive_table, write_json

#: the command's line in ``sink-interp --help``
HELP = "massive activations (Sun et al.) per block, norms at the sink, the extreme-token triple"


def add_parser(sub: Any) -> None:
    mv = add_command(sub, "massive", HELP, n=20, length=64)
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

    names = ("abs_threshold", "ratio_threshold", "top_k", "batch_size")
    _, _, rep, t_load, t_run = analyse(args, massive_activations, *names)
    header(rep, "d_model")
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
