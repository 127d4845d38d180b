"""``sink-interp circuit``: the heads, MLPs and residual paths that make a metric differ (the sink circuit)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ._common import add_command, corrupt_line, load, probe, write_json

#: the command's line in ``sink-interp --help``
HELP = "the sink circuit: heads, MLPs and residual paths that make a metric differ"


def add_parser(sub: Any) -> None:
    ci = add_command(sub, "circuit", HELP, n=2, length=16, concat=True)
    ci.add_argument("--corrupt", default="bos", choices=["bos", "first-token", "shuffle"], help="as for patch (default bos)")
    ci.add_argument("--move-to", type=int, default=1, help="--corrupt first-token: where the first token goes (default 1)")
    ci.add_argument(
        "--massive", default=None, metavar="LAYER,DIM", help="metric: |residual| leaving block LAYER at --position, dim DIM"
    )
    ci.add_argument("--position", type=int, default=0, help="--massive: the token position (default 0)")
    ci.add_argument("--alpha", default=None, metavar="LAYER,HEAD", help="metric: alpha_1 (sink score) of that head")
    ci.add_argument("--scores", default="ig", choices=["ig", "attribution", "exact"], help="edge scores (default ig)")
    ci.add_argument("--steps", type=int, default=4, help="integrated-gradient steps (default 4)")
    ci.add_argument("--keep", type=float, default=0.8, help="fraction of the effect the circuit keeps (default 0.8)")
    ci.add_argument("--direction", default="noise", choices=["noise", "denoise"], help="default noise")
    ci.add_argument("--top", type=int, default=15, help="edges listed (default 15)")
    ci.add_argument("--json", default=None, metavar="OUT", help="write the report as JSON")
    ci.add_argument("--html", default=None, metavar="OUT", help="write the graph as a standalone offline HTML page")
    ci.add_argument("--quiet", action="store_true", help="no progress bar")
    ci.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The sink circuit between the probe inputs and their corrupted partners (:func:`sink_interp.circuits.sink_circuit`)."""
    from ..circuits import CircuitSettings, alpha_metric, massive_metric, sink_circuit
    from ..patching import corrupt_tokens, named_metric

    if args.corrupt == "bos" and not args.bos:
        raise ValueError("--corrupt bos compares the input with BOS and the same text without it; fix: add --bos")
    t0 = time.time()
    model = load(args)
    tokens = probe(model, args)
    corrupted = corrupt_tokens(model, tokens, args.corrupt, move_to=args.move_to)
    if args.massive:
        layer, dim = (int(x) for x in args.massive.split(","))
        metric: Any = massive_metric(layer, dim, args.position)
    elif args.alpha:
        layer, head = (int(x) for x in args.alpha.split(","))
        metric = alpha_metric(model, layer, head)
    else:
        metric = named_metric("logprob", tokens.tokens, corrupted, None, start=1 if args.corrupt == "bos" else 0)  # type: ignore[arg-type]
    settings = CircuitSettings(scores=args.scores, steps=args.steps, keep=args.keep, direction=args.direction)
    rep = sink_circuit(model, tokens, corrupted, metric, settings, progress=not args.quiet)
    print(corrupt_line(args, rep))
    print(
        f"metric  {rep.metric}: clean {rep.clean:.4f}, corrupted {rep.corrupted:.4f}; {len(rep.scores)} edges scored ({rep.mode})"
    )
    print()
    print(rep.edges().head(args.top).to_string(index=False, float_format=lambda x: f"{x:+.4f}"))
    print()
    print("faithfulness by exact patching (best k edges patched):")
    print("  " + ", ".join(f"{k}: {f:.3f}" for k, f in zip(rep.curve_sizes, rep.curve)))
    if rep.size:
        print(f"circuit {rep.size} edges keep >= {rep.keep:.0%}; nodes: {' '.join(rep.circuit_nodes())}")
    else:
        print(f"no point of the curve keeps {rep.keep:.0%} of the effect")
    secs = ", ".join(f"{k} {v:.1f}s" for k, v in rep.seconds.items())
    print(f"total {time.time() - t0:.0f}s ({secs})")
    write_json(args, rep)
    if args.html:
        from ..views import view_for

        view_for(rep).save(args.html)
        print(f"wrote {args.html}")
    return 0
