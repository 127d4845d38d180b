"""``sink-interp ablate``: the standard battery of interventions on the sink (effect on loss, KL and Sink_1)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ._common import add_command, add_output_args, load, options, probe, versions

#: the command's line in ``sink-interp --help``
HELP = "standard battery of interventions on the sink: effect on loss, KL and Sink_1"


def add_parser(sub: Any) -> None:
    a = add_command(sub, "ablate", HELP, n=32, length=64)
    a.add_argument("--eps", type=float, default=0.3, help="sink threshold; sink heads have mean alpha_1 > eps (default 0.3)")
    a.add_argument("--fit-steps", type=int, default=40, help="Adam steps for the fitted K bias (0: skip fitting)")
    a.add_argument("--fit-n", type=int, default=64, help="training samples for the K bias, taken after the evaluation samples")
    a.add_argument("--fit-lr", type=float, default=0.1, help="learning rate of the K bias (default 0.1)")
    a.add_argument("--fit-batch", type=int, default=8, help="samples per step of the K-bias fit (default 8)")
    a.add_argument("--no-kernels", action="store_true", help="skip the attention-kernel swaps")
    a.add_argument("--batch-size", type=int, default=None, help="samples per forward pass")
    add_output_args(a, "write the effect report (and the fit) as JSON", "no progress bars")
    a.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The standard battery (:func:`sink_interp.battery.standard_battery`) on one model."""
    from .. import ProbeSet, compare
    from .._internal.errors import check_eps, check_positive_int
    from ..battery import GROUPS, standard_battery

    check_eps(args.eps)
    check_positive_int(args.n, "--n")
    check_positive_int(args.fit_steps, "--fit-steps", minimum=0)
    t0 = time.time()
    model = load(args)
    n_train = check_positive_int(args.fit_n, "--fit-n", minimum=0)
    allt = probe(model, args, n=args.n + n_train)
    info = allt.info
    ev = allt.rows(slice(0, args.n))  # the evaluation rows, labelled as such in the reports
    ev = ProbeSet(ev.tokens, {**ev.info, "role": "evaluation"})
    tr = allt[args.n :]  # the training rows: a plain tensor (only the grafts are fitted on them)
    print(
        f"model   {args.model}; data {info['source']} n={args.n} (+{len(tr)} training samples for the bias) "
        f"length={args.length} BOS={'yes' if args.bos else 'no'}"
    )
    fit = options(args, "eps", "fit_steps", "fit_lr", "fit_batch", "batch_size")
    battery = standard_battery(model, ev, train_tokens=tr if len(tr) else None, log=print, **fit)
    groups = [g for g in GROUPS if not (args.no_kernels and g == "kernels")]
    eff = compare(model, ev, battery.items(*groups), **options(args, "eps", "batch_size"))
    mi = eff.model_info
    print(f"        {mi['n_layers']} layers x {mi['n_heads']} heads ({mi['n_kv_heads']} KV heads), {eff.dtype}, {eff.device}")
    print()
    print("loss: next-token cross-entropy (nats); kl: KL(clean || intervened) per position; top1: arg-max unchanged;")
    print(f"Sink_1/Sink_2: % of (sample, layer, head) with alpha_k > {eff.eps} after the intervention; sink_mass: 1 - row sum")
    print("keys masked/zeroed for queries after the key (the sink's own query keeps it)")
    print()
    print(eff.table())
    df = eff.to_frame().set_index("label")
    if "zero value, sink heads" in df.index:
        z, mk = df.loc["zero value, sink heads", "delta_loss"], df.loc["mask key, sink heads", "delta_loss"]
        print()
        print(
            f"sink heads: zeroing the sink's value costs {z:+.3f} nats, masking its key {mk:+.3f} nats"
            + (f" (zero/mask = {z / mk:.2f})" if mk else "")
        )
        fitted = [lab for lab in df.index if "fitted K bias" in lab]
        grafted = [lab for lab in df.index if "mean sink" in lab]
        for lab in grafted + fitted:
            rec = (mk - df.loc[lab, "delta_loss"]) / mk if mk else float("nan")
            print(f"{lab}: {df.loc[lab, 'delta_loss']:+.3f} nats, recovers {100 * rec:.1f}% of the masking loss")
    print()
    print(f"total {time.time() - t0:.0f}s; " + versions(eff))
    if args.json:
        from .._internal.provenance import dumps, write_atomic

        d = eff.to_dict()  # the summary and the report's fields: sink_interp.load_report reads it back
        d["battery"] = battery.facts()
        d["loss_by_position"] = eff.loss_by_position().to_dict(orient="records")
        d["argv"] = list(sys.argv[1:])
        write_atomic(args.json, dumps(d))
        print(f"wrote {args.json}")
    return 0
