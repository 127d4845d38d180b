"""``sink-interp outliers``: activation outliers per block without and with a prefix; quantized activations.

sink-interp outliers --model smollm2-135m --length 512 --n 4 --prefix prefixquant|none|ID,ID,... [--json OUT]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from ._common import add_text_command, footer, ints, load_texts, options, practice_header

#: the command's line in ``sink-interp --help``
HELP = "activation outliers per block without and with a prefix; quantized activations"


def add_parser(sub: Any) -> None:
    o = add_text_command(sub, "outliers", HELP)
    o.add_argument("--prefix", default="prefixquant", help="prefixquant (found on the texts), none, or token ids 1,13,28")
    o.add_argument("--k-prefix", type=int, default=3, help="tokens the PrefixQuant recipe picks (default 3)")
    o.add_argument("--ratio", type=float, default=64.0, help="outlier: max|x| / median|x| above this (default 64)")
    o.add_argument("--act-bits", default="8,4", help="activation bit widths (default 8,4)")
    o.add_argument("--positions", type=int, default=8, help="text positions printed per block (default 8)")
    o.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..outliers import activation_outliers

    t0 = time.time()
    prefix: Any
    if args.prefix == "none":
        prefix = None
    elif args.prefix == "prefixquant":
        prefix = "prefixquant"
    else:
        prefix = ints(args.prefix, "--prefix")
    bits = ints(args.act_bits, "--act-bits")
    model, toks = load_texts(args)
    rep = activation_outliers(model, toks, prefix, bits=bits, **options(args, "k_prefix", "ratio", "batch_size"))
    practice_header(rep, toks)
    print(f"prefix  {list(rep.prefix)} = {list(rep.prefix_tokens)!r} ({rep.prefix_method})")
    print()
    P = min(args.positions, rep.length)
    for c, name in enumerate(rep.conditions):
        print(f"max |x| of each block's output at text positions 0..{P - 1} ({name}; mean over texts)")
        rows = {layer: rep.max_abs[c, layer, :P] for layer in range(rep.max_abs.shape[1])}
        import pandas as pd

        print(pd.DataFrame(rows, index=[f"t{t}" for t in range(P)]).T.to_string(float_format=lambda x: f"{x:.1f}"))
        print()
    sm = rep.summary()
    for c in rep.conditions:
        print(
            f"{c:<10} largest max|x| {sm['max_abs'][c]:.1f}; at text position 0: {sm['max_abs_at_text_position_0'][c]:.1f}; "
            f"from position 1 on: {sm['max_abs_from_position_1'][c]:.1f}; largest ratio to the median {sm['max_ratio'][c]:.0f}"
        )
    if rep.prefix:
        print(f"prefix positions: largest max|x| {sm['prefix_max_abs']:.1f}")
    print()
    print("loss of the text's tokens with quantized linear inputs (asymmetric min-max; prefix in full precision)")
    print(rep.loss_frame().to_string(float_format=lambda x: f"{x:.4f}"))
    footer(args, rep, t0)
    return 0
