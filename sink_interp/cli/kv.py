"""``sink-interp kv``: KV-cache eviction policies at a budget (window, sinks+window, FastGen, H2O); loss per policy.

sink-interp kv --model smollm2-135m --length 512 --n 4 --budgets 64,128,256,512 --sinks 4 [--json OUT]
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

from ._common import add_text_command, footer, load_texts, options, practice_header

#: the command's line in ``sink-interp --help``
HELP = "KV-cache eviction policies at a budget: window, sinks+window, FastGen, H2O; loss per policy"


def add_parser(sub: Any) -> None:
    kv = add_text_command(sub, "kv", HELP)
    kv.add_argument("--policies", default="window,sinks+window,fastgen,h2o,h2o+sinks", help="comma-separated policies")
    kv.add_argument(
        "--budgets", default="64,128,256,512", help="keys per query, or fractions of the length (default 64,128,256,512)"
    )
    kv.add_argument("--sinks", type=int, default=4, help="first tokens kept by sinks+window and h2o+sinks (default 4)")
    kv.set_defaults(func=run)


def _budgets(text: str) -> list[int | float]:
    out: list[int | float] = []
    for x in text.split(","):
        x = x.strip()
        if not x:
            continue
        try:
            out.append(int(x) if x.isdigit() else float(x))
        except ValueError:
            raise ValueError(f"--budgets {text!r}: write keys (64) or fractions of the length (0.25), comma-separated") from None
    return out


def run(args: argparse.Namespace) -> int:
    from ..kvcache import kv_policies

    t0 = time.time()
    pols = [p.strip() for p in args.policies.split(",") if p.strip()]
    budgets = _budgets(args.budgets)
    model, toks = load_texts(args)
    rep = kv_policies(model, toks, pols, budgets, n_sinks=args.sinks, **options(args, "batch_size"))
    practice_header(rep, toks)
    print(
        f"cache   each query sees at most `budget` keys; a policy evicts one key per step past the budget (original positions); "
        f"{rep.n_sinks} sink tokens for sinks+window and h2o+sinks"
    )
    print()
    print("mean next-token loss by budget (keys) and policy")
    print(rep.table().to_string(float_format=lambda x: f"{x:.4f}"))
    print()
    print("perplexity")
    df = rep.to_frame()
    pv = df.pivot(index="budget", columns="policy", values="ppl")[list(rep.policies)]
    pv["full"] = float(math.exp(rep.full_loss))
    print(pv.to_string(float_format=lambda x: f"{x:.2f}"))
    if "seconds" in df:
        print()
        print(
            "seconds per policy (all budgets): " + ", ".join(f"{p} {df[df.policy == p].seconds.sum():.0f}" for p in rep.policies)
        )
    footer(args, rep, t0)
    return 0
