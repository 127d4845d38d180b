"""``sink-interp trace``: trace the sink mechanism (spike, writer, norm, W_K, RoPE, key manifold)."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import add_command, add_output_args, analyse, header, massive_table, versions, write_json

#: the command's line in ``sink-interp --help``
HELP = "trace the sink mechanism: spike, writer, norm, W_K, RoPE, key manifold"


def add_parser(sub: Any) -> None:
    t = add_command(sub, "trace", HELP, n=20, length=64)
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

    names = ("layer", "head", "sink_pos", "abs_threshold", "ratio_threshold", "batch_size")
    _, tokens, rep, t_load, t_trace = analyse(args, trace_sink, *names)
    header(rep, "kv", "d_model", "normalization", "positional", info=tokens.info)
    print()
    print(rep.story())
    print()
    print("per block: largest |x| entering it (hook_resid_pre), and ||v|| at position 0 over the mean at positions >= 1")
    print(massive_table(rep.massive))
    if args.explain:
        print()
        print(rep.explain())
    print()
    print(f"load {t_load:.1f}s, trace {t_trace:.1f}s; " + versions(rep))
    write_json(args, rep)
    return 0
