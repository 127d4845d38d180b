"""``sink-interp patch``: patch every head between an input and its corrupted partner."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ._common import add_choice, add_command, add_output_args, corrupt_line, load, options, probe, versions, write_json

#: the command's line in ``sink-interp --help``
HELP = "patch every head between an input and its corrupted partner (BOS removed, sink moved, another sample)"


def add_parser(sub: Any) -> None:
    pt = add_command(sub, "patch", HELP, n=4, length=32, concat=True)
    add_choice(
        pt,
        "--corrupt",
        ["bos", "first-token", "shuffle"],
        "bos: the same text without BOS (needs --bos; default); first-token: the first token moved to --move-to; "
        "shuffle: another sample",
    )
    add_choice(
        pt,
        "--what",
        ["z", "q", "k", "v", "pattern", "k-sink", "v-sink", "pattern-sink"],
        "the activation patched per head (default z; k-sink/v-sink: key/value at position 0)",
    )
    add_choice(
        pt,
        "--method",
        ["exact", "attribution", "atp*", "ig", "fast", "verified", "both"],
        "default exact; fast: AtP, then the best-screened 10%% of heads patched exactly; verified: until the top 5 "
        "are certain; ig: integrated gradients",
    )
    pt.add_argument("--metric", default="logprob", choices=["logprob", "kl", "logit_diff"], help="default logprob")
    pt.add_argument(
        "--direction", default=None, choices=["noise", "denoise"], help="default: the recipe's (bos, first-token: denoise)"
    )
    pt.add_argument("--move-to", type=int, default=1, help="--corrupt first-token: where the first token goes (default 1)")
    pt.add_argument("--layers", default=None, help="layers to patch, e.g. 0-3,7 (default all)")
    pt.add_argument("--top", type=int, default=10, help="heads listed (default 10)")
    pt.add_argument("--batch-size", type=int, default=None, help="patched heads per forward")
    add_output_args(pt)
    pt.set_defaults(func=run)


def parse_layers(text: str | None) -> list[int] | None:
    """``"0-3,7"`` -> ``[0, 1, 2, 3, 7]``."""
    if text is None:
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            a, _, b = part.strip().partition("-")
            out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    except ValueError:
        raise ValueError(f"--layers must look like 0-3,7, got {text!r}") from None
    return out


def run(args: argparse.Namespace) -> int:
    """Patch every head between the probe inputs and their corrupted partners (:func:`sink_interp.patching.patch_sink`)."""
    from .._internal.errors import check_positive_int
    from ..patching import patch_sink

    check_positive_int(args.n, "--n")
    if args.corrupt == "bos" and not args.bos:
        raise ValueError("--corrupt bos patches from the input with BOS into the same text without it; fix: add --bos")
    t0 = time.time()
    model = load(args)
    tokens = probe(model, args)
    kw = options(args, "what", "method", "metric", "move_to", "batch_size")
    if args.direction:
        kw["direction"] = args.direction
    rep = patch_sink(model, tokens, args.corrupt, layers=parse_layers(args.layers), **kw)
    base = "corrupted" if rep.direction == "denoise" else "clean"
    print(corrupt_line(args, rep))
    print(
        f"patch   {rep.what} of each head ({rep.method}, {rep.direction}: the {base} run gets the other input's activation); "
        f"metric {rep.metric}: clean {rep.clean:.4f}, corrupted {rep.corrupted:.4f}"
    )
    print("normalised = (patched - base) / (other - base): 1 = the head alone carries the whole difference")
    print()
    cols = [c for c in ("layer", "head", "metric", "effect", "normalised", "kv_metric", "estimate") if c in rep.to_frame()]
    print(rep.top(args.top)[cols].to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    if rep.estimate.size and rep.method == "both":
        ag = rep.agreement()
        print()
        print(f"attribution vs exact: Spearman {ag['spearman']:.3f} over {ag['n_heads']} heads; missed {len(ag['missed'])}")
        for layer, head, e, est in ag["missed"][:5]:
            print(f"  missed L{layer}H{head}: exact effect {e:+.4f}, estimate {est:+.4f}")
    print()
    secs = ", ".join(f"{k} {v:.1f}s" for k, v in rep.seconds.items())
    print(f"total {time.time() - t0:.0f}s ({secs}); " + versions(rep))
    write_json(args, rep)
    return 0
