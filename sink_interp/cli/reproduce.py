"""``sink-interp reproduce``: paired experiments and the table of the paper's findings (plan -> run one -> tabulate)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ._common import add_choice, fmt_table, parse_set


def add_parser(sub: Any) -> None:
    r = sub.add_parser(
        "reproduce",
        help="run paired experiments and tabulate the paper's findings (plan -> run one -> tabulate)",
        description="Train the runs the findings need and write the table. The same work in steps, for a SLURM array: "
        "--plan-only, then --run-one INDEX for each run (e.g. $SLURM_ARRAY_TASK_ID), then --tabulate.",
    )
    r.add_argument("--finding", default=None, help="a finding name, several joined by commas, or 'all' (default; see --list)")
    r.add_argument(
        "--scale", default=None, choices=["cpu", "gpu"], help="cpu (default): BB task in minutes; gpu: the paper's recipe"
    )
    r.add_argument(
        "--out",
        default=None,
        help="directory for runs/ and the table (reproduce.json, reproduce.md): new, empty or an earlier one",
    )
    r.add_argument("--steps", type=int, default=None, help="override every run's steps (smoke tests)")
    r.add_argument(
        "--seeds",
        default=None,
        metavar="S,S,...",
        help="seeds of every arm, e.g. 0 (default: each finding's; three at cpu scale)",
    )
    r.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a TrainConfig field of every run (repeatable; smoke tests), e.g. --set d_model=32",
    )
    r.add_argument("--device", default="cpu")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--list", action="store_true", help="list the findings and exit")
    r.add_argument("--jobs", type=int, default=1, help="runs trained in parallel local processes, one thread each (default 1)")
    add_choice(
        r,
        "--executor",
        ["local", "submitit", "ray"],
        "what runs the list: local processes (default), submitit (one SLURM array; pip install 'sink_interp[slurm]') "
        "or ray (pip install 'sink_interp[ray]')",
    )
    r.add_argument(
        "--executor-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the executor (repeatable): submitit's update_parameters (slurm_partition=gpu, timeout_min=120, "
        "gpus_per_node=1) or ray's .options (num_cpus=1, num_gpus=1)",
    )
    step = r.add_mutually_exclusive_group()
    step.add_argument("--plan-only", action="store_true", help="write DIR/plan.json and list the runs; train nothing")
    step.add_argument(
        "--run-one",
        type=int,
        default=None,
        metavar="INDEX",
        help="train run INDEX of DIR/plan.json (resumes; a finished run is kept)",
    )
    step.add_argument("--tabulate", action="store_true", help="write the table from the finished runs of DIR/plan.json")
    r.add_argument(
        "--partial",
        action="store_true",
        help="with --tabulate: tabulate the findings whose runs are all finished and list the others as pending "
        "(a sweep still running)",
    )
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=run)


def _parse_seeds(text: str | None) -> list[int] | None:
    """``--seeds 0,1,2`` -> ``[0, 1, 2]`` (None: each finding's own seeds)."""
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--seeds takes whole numbers separated by commas, e.g. 0,1,2; got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from ..training.reproduce import FINDINGS, plan, reproduce, run_one, tabulate

    if args.list:
        print(fmt_table([[f.name, f.claim] for f in FINDINGS.values()], ["finding", "paper"]))
        return 0
    if not args.out:
        raise ValueError("--out DIR is required: a new or empty folder, or an earlier reproduce output")
    finding = "all" if args.finding in (None, "all") else [x.strip() for x in args.finding.split(",") if x.strip()]
    scale = args.scale or "cpu"
    over = parse_set(args.set)
    seeds = _parse_seeds(args.seeds)
    if args.partial and not args.tabulate:
        raise ValueError("--partial goes with --tabulate (it tabulates the finished findings of DIR/plan.json)")
    if args.run_one is not None or args.tabulate:
        flag = "--run-one" if args.run_one is not None else "--tabulate"
        given = [
            n
            for n, v in (("--finding", args.finding), ("--scale", args.scale), ("--steps", args.steps), ("--seeds", args.seeds))
            if v is not None
        ]
        given += ["--set"] if args.set else []
        given += [n for n, bad in (("--executor", args.executor != "local"), ("--jobs", args.jobs != 1)) if bad]
        if given:
            raise ValueError(f"{flag} reads the runs from DIR/plan.json; fix: drop {', '.join(given)} (give them to --plan-only)")
        if args.tabulate:
            table = tabulate(args.out, partial=args.partial)
            print(table.to_markdown())
            print(f"wrote {args.out}/reproduce.json and {args.out}/reproduce.md")
            return 0
        t0 = time.time()
        d = run_one(args.run_one, args.out, device=args.device, threads=args.threads, progress=not args.quiet)
        print(f"run {args.run_one}: {args.out}/{d} finished ({time.time() - t0:.0f}s)")
        return 0
    if args.plan_only:
        p = plan(finding, scale=scale, steps=args.steps, overrides=over or None, seeds=seeds, out=args.out)
        used = [", ".join(s.labels[:2]) + (f" +{len(s.labels) - 2} more" if len(s.labels) > 2 else "") for s in p]
        print(fmt_table([[s.index, u, s.dir] for s, u in zip(p, used)], ["index", "used by", "folder"]))
        print(f"wrote {args.out}/plan.json: {len(p)} runs. Next, one per index (e.g. a SLURM array, --array=0-{len(p) - 1}):")
        print(f"  sink-interp reproduce --out {args.out} --run-one $SLURM_ARRAY_TASK_ID")
        print(f"then: sink-interp reproduce --out {args.out} --tabulate")
        return 0
    table = reproduce(
        finding,
        scale=scale,
        out=args.out,
        steps=args.steps,
        overrides=over or None,
        seeds=seeds,
        device=args.device,
        threads=args.threads,
        jobs=args.jobs,
        progress=not args.quiet,
        executor=args.executor,
        executor_options=parse_set(args.executor_opt) or None,
    )
    print(table.to_markdown())
    print(f"wrote {args.out}/reproduce.json and {args.out}/reproduce.md")
    return 0
