"""``sink-interp train``: train a small model with the paper's knobs (resumable)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ._common import fmt_table, parse_set


def add_parser(sub: Any) -> None:
    from ..training.config import PRESETS

    t = sub.add_parser("train", help="train a small model with the paper's knobs (resumable)")
    t.add_argument("--preset", default="bb-softmax", help=f"named config (default bb-softmax): {', '.join(PRESETS)}")
    t.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a TrainConfig field (repeatable), e.g. --set lr=3e-3",
    )
    t.add_argument(
        "--out",
        default=None,
        help="run directory (metrics.jsonl, checkpoint.pt, model/): a new or empty folder, "
        "or an earlier run of the same config, which is resumed",
    )
    t.add_argument(
        "--fresh", action="store_true", help="start afresh in an earlier run directory (removes only the files a run writes)"
    )
    t.add_argument(
        "--extend",
        action="store_true",
        help="continue an earlier run with another --steps (only where exact: e.g. a constant learning rate after warm-up)",
    )
    t.add_argument("--device", default="cpu", help="cpu (default; bit-identical resume) or cuda")
    t.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the machine is shared)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--list", action="store_true", help="list the presets and exit")
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training import preset, preset_table, train

    if args.list:
        print(fmt_table([[p["name"], p["description"]] for p in preset_table()], ["preset", "description"]))
        return 0
    if not args.out:
        raise ValueError("--out DIR is required: a new or empty folder, or an earlier run of the same config to resume")
    over = parse_set(args.set)
    if args.steps is not None:
        over["steps"] = args.steps
    cfg = preset(args.preset, **over)
    t0 = time.time()
    res = train(
        cfg,
        args.out,
        resume=not args.fresh,
        extend=args.extend,
        device=args.device,
        threads=args.threads,
        progress=not args.quiet,
    )
    f = res.final
    print(
        f"{cfg.name}: {res.n_params:,} parameters, {f.get('step')} steps in {time.time() - t0:.0f}s"
        + (f" (resumed from step {res.resumed_from})" if res.resumed_from else "")
    )
    print(
        fmt_table(
            [
                [
                    m["step"],
                    f"{m['val_loss']:.4f}",
                    f"{m['sink_rate_1']:.1f}%",
                    f"{m.get('sink_rate_1_by_eps', {}).get('0.1', float('nan')):.1f}%",
                    f"{m['mean_alpha_1']:.3f}",
                    f"{m['value_norm_ratio_top']:.2f}",
                    f"{m['resid_norm_ratio']:.2f}",
                ]
                for m in res.metrics
            ],
            [
                "step",
                "val_loss",
                f"Sink_1 (eps {cfg.eps})",
                "Sink_1 (0.1)",
                "mean alpha_1",
                "v-norm ratio (top head)",
                "resid-norm ratio",
            ],
        )
    )
    print(f"metrics: {args.out}/metrics.jsonl; model: {res.model_dir or '(stopped before the end)'}")
    return 0
