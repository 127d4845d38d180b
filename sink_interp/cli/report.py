"""``sink-interp report``: one standalone offline HTML page (sink map, top heads, attention, massive activations)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from ._common import add_command, load, options, probe

#: the command's line in ``sink-interp --help``
HELP = "write one standalone offline HTML page: sink map, top heads, attention, massive activations"


def add_parser(sub: Any) -> None:
    r = add_command(sub, "report", HELP, n=100, length=64)
    r.add_argument("--eps", type=float, default=0.3, help="sink threshold in (0, 1) (default 0.3)")
    r.add_argument("--out", default="report.html", help="HTML file to write (default report.html)")
    r.add_argument("--sample", type=int, default=0, help="which input's attention to show (default 0)")
    r.add_argument("--n-detail", type=int, default=16, help="inputs used for massive activations and keys (default 16)")
    r.add_argument(
        "--attention-layers", type=int, default=3, help="layers of the top sink heads that get attention widgets (default 3)"
    )
    r.add_argument("--batch-size", type=int, default=None, help="samples per forward pass")
    r.add_argument(
        "--no-interventions",
        dest="interventions",
        action="store_false",
        help="skip the intervention battery (its slowest section; the page says it was skipped)",
    )
    r.add_argument("--no-trace", dest="trace", action="store_false", help="skip the trace chain (the page says it was skipped)")
    r.add_argument("--quiet", action="store_true", help="no progress bars or phase lines")
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .._internal.errors import check_eps, check_positive_int
    from ..pages import build_report

    check_eps(args.eps)
    check_positive_int(args.n_detail, "--n-detail")
    check_positive_int(args.attention_layers, "--attention-layers")
    t0 = time.time()
    if not args.quiet:
        print(f"report: loading {args.model} and {args.n} x {args.length} {args.data} tokens", file=sys.stderr, flush=True)
    model = load(args)
    tokens = probe(model, args)
    t_load = time.time() - t0
    skipped = [f"--no-{k}" for k in ("interventions", "trace") if not getattr(args, k)]
    command = " ".join(
        [
            "sink-interp report",
            *(
                f"--{k.replace('_', '-')} {v}"
                for k, v in vars(args).items()
                if k not in ("func", "command", "quiet", "interventions", "trace") and v not in (None, False)
            ),
            *skipped,
        ]
    )
    names = ("eps", "sample", "n_detail", "attention_layers", "batch_size", "trace", "interventions")
    page = build_report(model, tokens, command=command.replace("--bos True", "--bos"), **options(args, *names))
    path = page.save(args.out)
    size = os.path.getsize(path) / 1e6
    tm = page.meta["timings"]
    print(f"wrote {path} ({size:.1f} MB, {page.n_widgets} CircuitsVis widgets, bundle inlined once; opens offline)")
    print(f"load {t_load:.1f}s, " + ", ".join(f"{k} {v:.1f}s" for k, v in tm.items()))
    return 0
