"""The ``sink-interp kv``, ``quant`` and ``outliers`` commands (sinks in practice); :func:`register` adds them.

sink-interp kv       --model smollm2-135m --length 512 --n 4 --budgets 64,128,256,512 --sinks 4 [--json OUT]
sink-interp quant    --model smollm2-135m --length 512 --n 4 --bits 8,4,3,2 --intact 0,1,4 [--key-mode channel] [--json OUT]
sink-interp outliers --model smollm2-135m --length 512 --n 4 --prefix prefixquant|none|ID,ID,... [--json OUT]
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: write comma-separated integers, e.g. 8,4,3,2") from None


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


def _data_args(p: argparse.ArgumentParser, length: int, n: int) -> None:
    p.add_argument("--length", type=int, default=length, help=f"tokens per text (default {length})")
    p.add_argument("--n", type=int, default=n, help=f"number of texts (default {n})")
    p.add_argument("--data", default=None, help="JSONL file with text/source/title (default: the shipped natural corpus)")
    p.add_argument("--bos", action="store_true", help="put the tokenizer's BOS token first (default: no BOS)")
    p.add_argument("--batch-size", type=int, default=1, help="texts per forward pass (default 1)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def register(
    sub: Any, add_model_args: Callable[[argparse.ArgumentParser], None], placement: Callable[..., dict[str, Any]]
) -> None:
    """Add the three commands to the ``sink-interp`` subparsers ``sub`` (``add_model_args`` / ``placement``: the CLI's own)."""
    kv = sub.add_parser("kv", help="KV-cache eviction policies at a budget: window, sinks+window, FastGen, H2O; loss per policy")
    add_model_args(kv)
    _data_args(kv, 512, 4)
    kv.add_argument("--policies", default="window,sinks+window,fastgen,h2o,h2o+sinks", help="comma-separated policies")
    kv.add_argument(
        "--budgets", default="64,128,256,512", help="keys per query, or fractions of the length (default 64,128,256,512)"
    )
    kv.add_argument("--sinks", type=int, default=4, help="first tokens kept by sinks+window and h2o+sinks (default 4)")
    kv.set_defaults(func=lambda a: cmd_kv(a, placement))

    q = sub.add_parser("quant", help="KV-cache quantization with intact first tokens (IntactKV, KIVI): loss per bits")
    add_model_args(q)
    _data_args(q, 512, 4)
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
    q.set_defaults(func=lambda a: cmd_quant(a, placement))

    o = sub.add_parser("outliers", help="activation outliers per block without and with a prefix; quantized activations")
    add_model_args(o)
    _data_args(o, 512, 4)
    o.add_argument("--prefix", default="prefixquant", help="prefixquant (found on the texts), none, or token ids 1,13,28")
    o.add_argument("--k-prefix", type=int, default=3, help="tokens the PrefixQuant recipe picks (default 3)")
    o.add_argument("--ratio", type=float, default=64.0, help="outlier: max|x| / median|x| above this (default 64)")
    o.add_argument("--act-bits", default="8,4", help="activation bit widths (default 8,4)")
    o.add_argument("--positions", type=int, default=8, help="text positions printed per block (default 8)")
    o.set_defaults(func=lambda a: cmd_outliers(a, placement))


def _load(args: argparse.Namespace, placement: Callable[..., dict[str, Any]]) -> tuple[Any, Any]:
    from . import load_model
    from .streaming import long_tokens

    model = load_model(args.model, device=args.device, dtype=args.dtype, progress=not args.quiet, **placement(args))
    toks = long_tokens(model, length=args.length, n=args.n, bos=args.bos, path=args.data)
    return model, toks


def _header(rep: Any, toks: Any) -> None:
    mi = rep.model_info
    print(f"model   {rep.model}  ({mi['n_layers']} layers, {mi['dtype']}, {mi['device']})")
    docs = toks.info.get("documents", [])
    print(
        f"data    {rep.n} texts of {rep.length} tokens ({rep.data}; BOS={'yes' if rep.bos else 'no'}): "
        + ", ".join(docs[:4])
        + (" ..." if len(docs) > 4 else "")
    )


def _footer(args: argparse.Namespace, rep: Any, t0: float) -> None:
    print()
    print(f"total {time.time() - t0:.0f}s; versions: " + ", ".join(f"{k} {v}" for k, v in rep.versions.items()))
    if args.json:
        rep.to_json(args.json)
        print(f"wrote {args.json}")


def cmd_kv(args: argparse.Namespace, placement: Callable[..., dict[str, Any]]) -> int:
    from .kvcache import kv_policies

    t0 = time.time()
    pols = [p.strip() for p in args.policies.split(",") if p.strip()]
    budgets = _budgets(args.budgets)
    model, toks = _load(args, placement)
    rep = kv_policies(model, toks, pols, budgets, n_sinks=args.sinks, batch_size=args.batch_size, progress=not args.quiet)
    _header(rep, toks)
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
    pv["full"] = float(__import__("math").exp(rep.full_loss))
    print(pv.to_string(float_format=lambda x: f"{x:.2f}"))
    if "seconds" in df:
        print()
        print(
            "seconds per policy (all budgets): " + ", ".join(f"{p} {df[df.policy == p].seconds.sum():.0f}" for p in rep.policies)
        )
    _footer(args, rep, t0)
    return 0


def cmd_quant(args: argparse.Namespace, placement: Callable[..., dict[str, Any]]) -> int:
    from .quant import kv_quant

    t0 = time.time()
    bits = _ints(args.bits, "--bits")
    intact: list[Any] = [
        x.strip() if x.strip().startswith("sinks:") else _ints(x, "--intact")[0] for x in args.intact.split(",") if x.strip()
    ]
    model, toks = _load(args, placement)
    rep = kv_quant(
        model,
        toks,
        bits,
        intact,
        key_mode=args.key_mode,
        group=args.group,
        sink_positions=args.sink_positions,
        errors=args.errors,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    _header(rep, toks)
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
    _footer(args, rep, t0)
    return 0


def cmd_outliers(args: argparse.Namespace, placement: Callable[..., dict[str, Any]]) -> int:
    from .outliers import activation_outliers

    t0 = time.time()
    prefix: Any
    if args.prefix == "none":
        prefix = None
    elif args.prefix == "prefixquant":
        prefix = "prefixquant"
    else:
        prefix = _ints(args.prefix, "--prefix")
    bits = _ints(args.act_bits, "--act-bits")
    model, toks = _load(args, placement)
    rep = activation_outliers(
        model,
        toks,
        prefix,
        k_prefix=args.k_prefix,
        ratio=args.ratio,
        bits=bits,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    _header(rep, toks)
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
    _footer(args, rep, t0)
    return 0
