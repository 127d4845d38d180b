"""``sink-interp measure``: Sink_k (Gu et al.) for every layer and head."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import add_command, add_output_args, analyse, bar, fmt_table, header, method_line, peak_rss_mb, versions, write_json

#: the command's line in ``sink-interp --help``
HELP = "measure Sink_k (Gu et al.) for every layer and head"


def add_parser(sub: Any) -> None:
    m = add_command(sub, "measure", HELP, n=None, length=64, concat=True)
    m.add_argument("--eps", type=float, default=0.3, help="sink threshold in (0, 1) (default 0.3)")
    m.add_argument("--batch-size", type=int, default=None, help="samples per forward pass")
    m.add_argument(
        "--method",
        default="auto",
        choices=["auto", "pattern", "lse", "lse-fused", "lse-hooks"],
        help="pattern: reduce hook_pattern; lse: blockwise from q, k and the row log-sum-exp (no T x T map), with "
        "fused attention when it can, else through the bridge's hooks; lse-fused: lse that requires fused attention; "
        "lse-hooks: lse through the bridge's hooks; auto (default): lse from length 512 or when the maps would not fit",
    )
    m.add_argument(
        "--keep",
        default="alpha",
        choices=["alpha", "summary"],
        help="alpha (default): every sample's scores; summary: counts over a fixed eps grid and fixed-point sums "
        "(memory independent of --n; --eps must be on the grid 0.05, 0.10, ..., 0.95)",
    )
    m.add_argument("--top", type=int, default=10, help="how many top sink heads to print")
    add_output_args(m)
    m.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import measure_sinks, sink_summary
    from .._internal.errors import check_eps

    check_eps(args.eps)
    analysis = sink_summary if args.keep == "summary" else measure_sinks
    _, tokens, report, t_load, t_measure = analyse(args, analysis, "eps", "batch_size", "method")
    if args.keep == "summary":
        return _print_summary(report, args, t_load, t_measure)

    header(report, "kv", info=tokens.info)
    print(f"metric  alpha_k = mean_(t>=k) A[t,k]; sink head when alpha_k > eps={report.eps}; score={report.score}")
    print(f"method  {method_line(report)}")
    print()
    print(f"Sink_1 = {report.rate(1):.2f}%   (mean alpha_1 = {report.alpha[..., 0].mean():.3f})")
    print(f"         {_sweep(report)}")
    sec = report.secondary_sinks()
    if sec:
        rates = report.rates()
        print("other sink positions (k: Sink_k): " + ", ".join(f"{k}: {rates[k - 1]:.1f}%" for k in sec[:10]))
    last = report.rates()[-1]
    print(f"(Sink_T at the last position, k={report.length}, is {last:.1f}% but averages a single query: not evidence of a sink)")
    print()
    print("Sink_1 per layer")
    print(_layer_table(report))
    print()
    print(f"top {args.top} sink heads (by mean alpha_1)")
    top = report.head_table().head(args.top)
    print(
        fmt_table(
            [
                [int(r.layer), int(r.head), int(r.kv_head), f"{r.mean_alpha_1:.3f}", f"{r.sink_rate_1:.1f}%"]
                for r in top.itertuples()
            ],
            ["layer", "head", "kv_head", "mean alpha_1", "sink in % of samples"],
        )
    )
    print()
    print(f"load {t_load:.1f}s, measure {t_measure:.1f}s, peak RSS {peak_rss_mb():.0f} MB; " + versions(report))
    write_json(args, report)
    return 0


def _sweep(report: Any) -> str:
    return ", ".join(f"eps {e}: {report.rate(1, e):.1f}%" for e in (0.1, 0.2, 0.3, 0.5, 0.8))


def _layer_table(report: Any) -> str:
    lr = report.layer_rates(1)
    return fmt_table([[layer, f"{r:6.2f}%", bar(r)] for layer, r in zip(report.layers, lr)], ["layer", "Sink_1", ""])


def _print_summary(report: Any, args: argparse.Namespace, t_load: float, t_measure: float) -> int:
    """``measure --keep summary``: the rates and top heads a :class:`~sink_interp.metrics.SinkSummary` (:func:`~sink_interp.sink_summary`) answers."""
    print(f"model   {report.model}  ({report.dtype}, {report.device}); data {report.data}  n={report.n} length={report.length}")
    print(f"method  {method_line(report)}; keep=summary (counts over eps {report.eps_grid[0]}..{report.eps_grid[-1]})")
    print(f"Sink_1 = {report.rate(1):.2f}%   {_sweep(report)}")
    print(_layer_table(report))
    top = report.head_table().head(args.top)
    rows = [[int(r.layer), int(r.head), f"{r.mean_alpha_1:.3f}", f"{r.sink_rate_1:.1f}%"] for r in top.itertuples()]
    print(fmt_table(rows, ["layer", "head", "mean alpha_1", "sink in % of samples"]))
    print(f"load {t_load:.1f}s, measure {t_measure:.1f}s, peak RSS {peak_rss_mb():.0f} MB")
    write_json(args, report)
    return 0
