"""The ``sink-interp`` command: one module per command over the shared preamble in ``_common``.

sink-interp measure --model smollm2-135m --data natural --n 100 --length 64 --eps 0.3 [--bos] [--json OUT]
sink-interp ablate  --model smollm2-135m --data natural --n 32 --length 64 [--fit-steps 40] [--json OUT]
sink-interp stream  --model smollm2-135m --sinks 4 --window 256 [--length 1536 --n 8] [--json OUT]
sink-interp kv | quant | outliers --model smollm2-135m --length 512 --n 4 [--json OUT]   # sinks in practice
sink-interp measure --length 8192            # long inputs: method auto -> lse, passages joined
sink-interp long --length 8192 --buckets 8   # Sink_k by query bucket and by key position
sink-interp train --preset bb-softmax [--steps N] [--set key=value ...] --out DIR
sink-interp reproduce [--finding NAME|all] [--scale cpu|gpu] --out DIR [--jobs N | --executor submitit|ray]
sink-interp reproduce --out DIR --plan-only | --run-one INDEX | --tabulate   # the same in steps (SLURM arrays)
sink-interp report --model smollm2-135m [--data natural] --out report.html
sink-interp trace --model smollm2-135m --data natural --n 20 --length 64 [--layer L --head H] [--json OUT]
sink-interp patch --model smollm2-135m --data natural --n 4 --length 32 --corrupt bos|first-token|shuffle \
                  --what z|k-sink|v-sink|... --method exact|attribution|atp*|ig|verified|both [--metric logprob] [--json OUT]

A new command is a module here with ``add_parser(sub)`` (its arguments, ``set_defaults(func=run)``) and
``run(args) -> int``, listed in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence

from . import ablate, circuit, kv, long, massive, measure, outliers, patch, quant, report, reproduce, stream, trace, train
from ._common import Parser, check_arguments, default_n, one_line_warnings, run_command

__all__ = ["COMMANDS", "build_parser", "default_n", "main"]

#: the command modules, in the order ``sink-interp --help`` lists them
COMMANDS = (measure, train, reproduce, ablate, patch, circuit, stream, long, report, massive, trace, kv, quant, outliers)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="sink-interp", description="Find, explain and switch off attention sinks.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    for sp in sub.choices.values():
        check_arguments(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors and Ctrl-C give one line on stderr (exit 2 and 130), ``--debug`` shows tracebacks."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a wrong argument (2, one line on stderr, before anything heavy loads)
        return int(e.code or 0)
    debug = bool(getattr(args, "debug", False)) or os.environ.get("SINK_INTERP_DEBUG", "") not in ("", "0")
    import warnings

    with warnings.catch_warnings():
        if not debug:
            one_line_warnings()
        return run_command(args, debug)
