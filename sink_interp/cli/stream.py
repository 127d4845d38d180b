"""``sink-interp stream``: StreamingLLM, sinks + window vs window only vs full attention, perplexity by position."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ._common import add_model_args, add_output_args, footer, load_texts, long_data_line, options


def add_parser(sub: Any) -> None:
    st = sub.add_parser("stream", help="StreamingLLM: sinks + window vs window only vs full attention, perplexity by position")
    add_model_args(st)
    st.add_argument("--sinks", type=int, default=4, help="first tokens kept (default 4)")
    st.add_argument("--window", type=int, default=256, help="recent tokens kept, the query included (default 256)")
    st.add_argument("--length", type=int, default=1536, help="tokens per text (default 1536)")
    st.add_argument("--n", type=int, default=8, help="number of texts (default 8)")
    st.add_argument("--bucket", type=int, default=None, help="position bucket width (default: the window)")
    st.add_argument("--data", default=None, help="JSONL file with text/source/title (default: the shipped natural corpus)")
    st.add_argument("--bos", action="store_true", help="put the tokenizer's BOS token first (default: no BOS)")
    add_output_args(st, quiet_help="no progress bars")
    st.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..streaming import streaming_ppl

    t0 = time.time()
    model, toks = load_texts(args)
    rep = streaming_ppl(model, toks, n_sinks=args.sinks, **options(args, "window", "bucket"))
    mi = rep.model_info
    print(f"model   {rep.model}  ({mi['n_layers']} layers, positions: {rep.positional}, {mi['dtype']}, {mi['device']})")
    print(long_data_line(rep, toks.info["documents"], more=rep.n > 4))
    print(
        f"cache   {rep.n_sinks} sink tokens + {rep.window} recent tokens; window only keeps the last {rep.n_sinks + rep.window}; "
        f"tokens are evicted from query position {rep.full_from} on"
    )
    print()
    print("perplexity by predicted position (t predicts token t+1)")
    print(rep.pivot().to_string(float_format=lambda x: f"{x:.2f}"))
    print()
    after = rep.full_from
    print(f"perplexity over positions >= {after} (cache full):")
    for c in rep.conditions:
        print(f"  {c:<45} {rep.ppl(c, after):8.2f}   (all positions {rep.ppl(c):.2f})")
    footer(args, rep, t0)
    return 0
