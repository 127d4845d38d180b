"""``sink-interp long``: sinks at long context, Sink_k by query bucket and by key position."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import add_command, add_output_args, analyse, bar, fmt_table, header, method_line, peak_rss_mb, write_json

#: the command's line in ``sink-interp --help``
HELP = "sinks at long context: Sink_k by query bucket and by key position (blockwise, no T x T map)"


def add_parser(sub: Any) -> None:
    lc = add_command(sub, "long", HELP, n=1, length=8192, data="natural-concat", concat=True)
    lc.add_argument("--eps", type=float, default=0.3, help="sink threshold in (0, 1) (default 0.3)")
    lc.add_argument("--buckets", type=int, default=8, help="number of equal query buckets (default 8)")
    lc.add_argument("--batch-size", type=int, default=None, help="samples per forward pass")
    lc.add_argument("--top", type=int, default=10, help="how many key positions to list")
    add_output_args(lc)
    lc.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .._internal.errors import check_eps
    from ..longctx import long_context_sinks

    check_eps(args.eps)
    model, _, rep, t_load, t_measure = analyse(args, long_context_sinks, "eps", "buckets", "batch_size")
    r = rep.sink_report
    header(r, "kv")
    print(f"method  {method_line(r)}")
    print()
    print(f"Sink_1 over all queries = {r.rate(1):.2f}%  (mean alpha_1 = {r.alpha[..., 0].mean():.3f}, eps={r.eps})")
    print()
    print("Sink_1 by query position (does the first-token sink hold far from it?)")
    rates, mean = rep.bucket_rates(1), rep.bucket_mean_alpha(1)
    print(
        fmt_table(
            [
                [f"{a + 1}-{b}", f"{rates[i]:6.2f}%", f"{mean[i]:.3f}", bar(rates[i])]
                for i, (a, b) in enumerate(zip(rep.edges, rep.edges[1:]))
            ],
            ["queries", "Sink_1", "mean alpha_1", ""],
        )
    )
    print()
    tok = getattr(model, "tokenizer", None)
    table = rep.key_table(top=args.top)
    rows = []
    for row in table.to_dict(orient="records"):
        token = ""
        if tok is not None and "token_id" in row:
            token = repr(tok.decode([row["token_id"]]))
        rows.append(
            [
                row["k"],
                f"{row['sink_rate']:.2f}%",
                f"{row['mean_alpha']:.4f}",
                row["n_queries"],
                "yes" if row["reliable"] else "no",
                token,
            ]
        )
    print(f"top {args.top} key positions by Sink_k over all queries")
    print(fmt_table(rows, ["k", "Sink_k", "mean alpha_k", "queries", "reliable", "token"]))
    sec = rep.secondary_sinks()
    print()
    print("secondary sinks (k > 1, Sink_k >= 1%, >= 64 queries): " + (", ".join(str(k) for k in sec[:20]) if sec else "none"))
    print()
    print(f"load {t_load:.1f}s, measure {t_measure:.1f}s, peak RSS {peak_rss_mb():.0f} MB")
    write_json(args, rep)
    return 0
