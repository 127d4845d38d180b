"""``sink-interp quant``: KV-cache quantization with intact first tokens (IntactKV, KIVI); loss per bits.

sink-interp quant --model smollm2-135m --length 512 --n 4 --bits 8,4,3,2 --intact 0,1,4 [--key-mode channel] [--json OUT]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from ._common import add_text_command, footer, ints, load_texts, options, practice_header

#: the command's line in ``sink-interp --help``
HELP = "KV-cache quantization with intact first tokens (IntactKV, KIVI): loss per bits"


def add_parser(sub: Any) -> None:
    q = add_text_command(sub, "quant", HELP)
    q.add_argument("--bits", default="8,4,3,2", help="KV bit widths (default 8,4,3,2)")
    q.add_argument(
        "--intact",
        default="0,1,4",
        help="first tokens kept in full precision (default 0,1,4); sinks:K = the K positions of largest sink score",
    )
    q.add_argument(
        "--key-mode", default="token", choices=["token", "channel"], help="keys per token (default) or per channel (KIVI)"
    )
    q.add_argument("--group", type=int, default=32, help="tokens per group for --key-mode channel (default 32)")
    q.add_argument("--sink-positions", type=int, default=1, help="the error table's sink positions: the first N (default 1)")
    q.add_argument("--no-errors", dest="errors", action="store_false", help="skip the per-layer quantization error")
    q.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..quant import kv_quant

    t0 = time.time()
    bits = ints(args.bits, "--bits")
    intact: list[Any] = [
        x.strip() if x.strip().startswith("sinks:") else ints(x, "--intact")[0] for x in args.intact.split(",") if x.strip()
    ]
    model, toks = load_texts(args)
    rep = kv_quant(model, toks, bits, intact, **options(args, "key_mode", "group", "sink_positions", "errors", "batch_size"))
    practice_header(rep, toks)
    mode = (
        "keys and values per token and KV head over head_dim"
        if rep.key_mode == "token"
        else f"keys per channel over groups of {rep.group} tokens (KIVI), values per token"
    )
    print(f"quant   asymmetric min-max, torch.round; {mode}; keys after RoPE, before GQA; the first s tokens intact")
    print()
    print(f"mean next-token loss by bits (rows) and intact first tokens (columns); full precision {rep.full_loss:.4f}")
    print(rep.table().to_string(float_format=lambda x: f"{x:.4f}"))
    if rep.qerr_bits:
        s = rep.sink_positions
        print()
        print(f"relative quantization error ||x'-x||/||x||, mean over layers, at the first {s} position(s) (sink) and the rest")
        for i, b in enumerate(rep.qerr_bits):
            e = rep.qerr[i].mean(0)
            print(f"  {b}-bit  keys: sink {e[0, 0]:.4f}  rest {e[0, 1]:.4f}   values: sink {e[1, 0]:.4f}  rest {e[1, 1]:.4f}")
    footer(args, rep, t0)
    return 0
