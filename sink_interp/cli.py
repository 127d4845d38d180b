"""The ``sink-interp`` command.

sink-interp measure --model smollm2-135m --data natural --n 100 --length 64 --eps 0.3 [--bos] [--json OUT]
sink-interp ablate  --model smollm2-135m --data natural --n 32 --length 64 [--fit-steps 40] [--json OUT]
sink-interp stream  --model smollm2-135m --sinks 4 --window 256 [--length 1536 --n 8] [--json OUT]
sink-interp kv | quant | outliers --model smollm2-135m --length 512 --n 4 [--json OUT]   # sinks in practice
sink-interp measure --length 8192            # long inputs: method auto -> lse, passages joined
sink-interp long --length 8192 --buckets 8   # Sink_k by query bucket and by key position
sink-interp train --preset bb-softmax [--steps N] [--set key=value ...] --out DIR
sink-interp reproduce [--finding NAME|all] [--scale cpu|gpu] --out DIR [--jobs N | --executor submitit|ray]
sink-interp reproduce --out DIR --plan-only | --run-one INDEX | --tabulate   # the same in steps (SLURM arrays)
sink-interp report --model smollm2-135m [--data natural] --out report.html
sink-interp trace --model smollm2-135m --data natural --n 20 --length 64 [--layer L --head H] [--json OUT]
sink-interp patch --model smollm2-135m --data natural --n 4 --length 32 --corrupt bos|first-token|shuffle \
                  --what z|k-sink|v-sink|... --method exact|attribution|atp*|ig|verified|both [--metric logprob] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Iterator, NoReturn, Sequence

if TYPE_CHECKING:
    from ._internal.probe import ProbeSet


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="model name (default: the offline smollm2-135m), HF id or local dir")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    p.add_argument(
        "--device-map", default=None, help="let accelerate place the model: auto, balanced, sequential (not with --device)"
    )
    p.add_argument("--max-memory", default=None, help="budget per device for --device-map, e.g. 0=20GiB,cpu=250MB")
    p.add_argument("--offload-folder", default=None, help="folder for weights --device-map offloads to disk")
    p.add_argument("--revision", default=None, help="branch, tag or commit of a hub model, e.g. step3000 (Pythia checkpoints)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's); on a shared, busy machine 1 is often fastest",
    )


def _placement(args: argparse.Namespace) -> dict[str, Any]:
    """load_model's placement keywords from --device-map, --max-memory, --offload-folder and --revision."""
    out: dict[str, Any] = {}
    if getattr(args, "device_map", None):
        out["device_map"] = args.device_map
    if getattr(args, "max_memory", None):
        budget: dict[Any, str] = {}
        for part in args.max_memory.split(","):
            dev, sep, size = part.partition("=")
            if not sep or not dev.strip() or not size.strip():
                raise ValueError(f"--max-memory {args.max_memory!r}: write DEVICE=SIZE pairs, e.g. 0=20GiB,cpu=250MB")
            dev = dev.strip()
            budget[int(dev) if dev.isdigit() else dev] = size.strip()
        out["max_memory"] = budget
    if getattr(args, "offload_folder", None):
        out["offload_folder"] = args.offload_folder
    if getattr(args, "revision", None):
        out["revision"] = args.revision
    return out


def _add_data_args(p: argparse.ArgumentParser, n: int | None, length: int, data: str = "natural", concat: bool = False) -> None:
    p.add_argument(
        "--data",
        default=data,
        help=f'natural | natural-concat | random | repeat | FILE.jsonl (a "text" field per line); default {data}',
    )
    p.add_argument(
        "--n",
        type=int,
        default=n,
        help="number of samples (default: " + (str(n) if n else "100, fewer for long inputs: about 8k tokens in all") + ")",
    )
    p.add_argument("--length", type=int, default=length, help=f"tokens per sample, BOS included (default {length})")
    if concat:
        p.add_argument(
            "--concat",
            default=None,
            action=argparse.BooleanOptionalAction,
            help="join text passages into long rows (default: on for --length > 512)",
        )
    p.add_argument("--bos", action="store_true", help="put the tokenizer's BOS token first (default: no BOS)")
    p.add_argument("--seed", type=int, default=0, help="seed for random/repeat probes")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the argument and the fix, then where the help is), not the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sink-interp", description="Find, explain and switch off attention sinks.")
    sub = parser.add_subparsers(dest="command", required=True)

    m = sub.add_parser("measure", help="measure Sink_k (Gu et al.) for every layer and head")
    _add_model_args(m)
    _add_data_args(m, n=None, length=64, concat=True)
    m.add_argument("--eps", type=float, default=0.3, help="sink threshold in (0, 1) (default 0.3)")
    m.add_argument("--batch-size", type=int, default=None, help="samples per forward pass")
    m.add_argument(
        "--method",
        default="auto",
        choices=["auto", "pattern", "lse"],
        help="pattern: reduce hook_pattern; lse: blockwise from q, k and the row log-sum-exp (no T x T map); "
        "auto (default): lse from length 512 or when the maps would not fit",
    )
    m.add_argument(
        "--keep",
        default="alpha",
        choices=["alpha", "summary"],
        help="alpha (default): every sample's scores; summary: counts over a fixed eps grid and fixed-point sums "
        "(memory independent of --n; --eps must be on the grid 0.05, 0.10, ..., 0.95)",
    )
    m.add_argument("--top", type=int, default=10, help="how many top sink heads to print")
    m.add_argument("--json", default=None, metavar="OUT", help="write the report as JSON")
    m.add_argument("--quiet", action="store_true", help="no progress bar")
    m.set_defaults(func=cmd_measure)

    from .training.config import PRESETS

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
    t.set_defaults(func=cmd_train)

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
    r.add_argument(
        "--executor",
        default="local",
        choices=["local", "submitit", "ray"],
        help="what runs the list: local processes (default), submitit (one SLURM array; pip install 'sink_interp[slurm]') "
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
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_reproduce)

    a = sub.add_parser("ablate", help="standard battery of interventions on the sink: effect on loss, KL and Sink_1")
    _add_model_args(a)
    _add_data_args(a, n=32, length=64)
    a.add_argument("--eps", type=float, default=0.3, help="sink threshold; sink heads have mean alpha_1 > eps (default 0.3)")
    a.add_argument("--fit-steps", type=int, default=40, help="Adam steps for the fitted K bias (0: skip fitting)")
    a.add_argument("--fit-n", type=int, default=64, help="training samples for the K bias, taken after the evaluation samples")
    a.add_argument("--fit-lr", type=float, default=0.1, help="learning rate of the K bias (default 0.1)")
    a.add_argument("--fit-batch", type=int, default=8, help="samples per step of the K-bias fit (default 8)")
    a.add_argument("--no-kernels", action="store_true", help="skip the attention-kernel swaps")
    a.add_argument("--batch-size", type=int, default=None, help="samples per forward pass")
    a.add_argument("--json", default=None, metavar="OUT", help="write the effect report (and the fit) as JSON")
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    a.set_defaults(func=cmd_ablate)

    pt = sub.add_parser(
        "patch", help="patch every head between an input and its corrupted partner (BOS removed, sink moved, another sample)"
    )
    _add_model_args(pt)
    _add_data_args(pt, n=4, length=32, concat=True)
    pt.add_argument(
        "--corrupt",
        default="bos",
        choices=["bos", "first-token", "shuffle"],
        help="bos: the same text without BOS (needs --bos; default); first-token: the first token moved to --move-to; "
        "shuffle: another sample",
    )
    pt.add_argument(
        "--what",
        default="z",
        choices=["z", "q", "k", "v", "pattern", "k-sink", "v-sink", "pattern-sink"],
        help="the activation patched per head (default z; k-sink/v-sink: key/value at position 0)",
    )
    pt.add_argument(
        "--method",
        default="exact",
        choices=["exact", "attribution", "atp*", "ig", "fast", "verified", "both"],
        help="default exact; fast: AtP, then the best-screened 10%% of heads patched exactly; verified: until the top 5 "
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
    pt.add_argument("--json", default=None, metavar="OUT", help="write the report as JSON")
    pt.add_argument("--quiet", action="store_true", help="no progress bar")
    pt.set_defaults(func=cmd_patch)

    ci = sub.add_parser("circuit", help="the sink circuit: heads, MLPs and residual paths that make a metric differ")
    _add_model_args(ci)
    _add_data_args(ci, n=2, length=16, concat=True)
    ci.add_argument("--corrupt", default="bos", choices=["bos", "first-token", "shuffle"], help="as for patch (default bos)")
    ci.add_argument("--move-to", type=int, default=1, help="--corrupt first-token: where the first token goes (default 1)")
    ci.add_argument(
        "--massive", default=None, metavar="LAYER,DIM", help="metric: |residual| leaving block LAYER at --position, dim DIM"
    )
    ci.add_argument("--position", type=int, default=0, help="--massive: the token position (default 0)")
    ci.add_argument("--alpha", default=None, metavar="LAYER,HEAD", help="metric: alpha_1 (sink score) of that head")
    ci.add_argument("--scores", default="ig", choices=["ig", "attribution", "exact"], help="edge scores (default ig)")
    ci.add_argument("--steps", type=int, default=4, help="integrated-gradient steps (default 4)")
    ci.add_argument("--keep", type=float, default=0.8, help="fraction of the effect the circuit keeps (default 0.8)")
    ci.add_argument("--direction", default="noise", choices=["noise", "denoise"], help="default noise")
    ci.add_argument("--top", type=int, default=15, help="edges listed (default 15)")
    ci.add_argument("--json", default=None, metavar="OUT", help="write the report as JSON")
    ci.add_argument("--html", default=None, metavar="OUT", help="write the graph as a standalone offline HTML page")
    ci.add_argument("--quiet", action="store_true", help="no progress bar")
    ci.set_defaults(func=cmd_circuit)

    st = sub.add_parser("stream", help="StreamingLLM: sinks + window vs window only vs full attention, perplexity by position")
    _add_model_args(st)
    st.add_argument("--sinks", type=int, default=4, help="first tokens kept (default 4)")
    st.add_argument("--window", type=int, default=256, help="recent tokens kept, the query included (default 256)")
    st.add_argument("--length", type=int, default=1536, help="tokens per text (default 1536)")
    st.add_argument("--n", type=int, default=8, help="number of texts (default 8)")
    st.add_argument("--bucket", type=int, default=None, help="position bucket width (default: the window)")
    st.add_argument("--data", default=None, help="JSONL file with text/source/title (default: the shipped natural corpus)")
    st.add_argument("--bos", action="store_true", help="put the tokenizer's BOS token first (default: no BOS)")
    st.add_argument("--json", default=None, metavar="OUT", help="write the report as JSON")
    st.add_argument("--quiet", action="store_true", help="no progress bars")
    st.set_defaults(func=cmd_stream)

    lc = sub.add_parser(
        "long", help="sinks at long context: Sink_k by query bucket and by key position (blockwise, no T x T map)"
    )
    _add_model_args(lc)
    _add_data_args(lc, n=1, length=8192, data="natural-concat", concat=True)
    lc.add_argument("--eps", type=float, default=0.3, help="sink threshold in (0, 1) (default 0.3)")
    lc.add_argument("--buckets", type=int, default=8, help="number of equal query buckets (default 8)")
    lc.add_argument("--batch-size", type=int, default=None, help="samples per forward pass")
    lc.add_argument("--top", type=int, default=10, help="how many key positions to list")
    lc.add_argument("--json", default=None, metavar="OUT", help="write the report as JSON")
    lc.add_argument("--quiet", action="store_true", help="no progress bar")
    lc.set_defaults(func=cmd_long)

    r = sub.add_parser(
        "report", help="write one standalone offline HTML page: sink map, top heads, attention, massive activations"
    )
    _add_model_args(r)
    _add_data_args(r, n=100, length=64)
    r.add_argument("--eps", type=float, default=0.3, help="sink threshold in (0, 1) (default 0.3)")
    r.add_argument("--out", default="report.html", help="HTML file to write (default report.html)")
    r.add_argument("--sample", type=int, default=0, help="which input's attention to show (default 0)")
    r.add_argument("--n-detail", type=int, default=16, help="inputs used for massive activations and keys (default 16)")
    r.add_argument(
        "--attention-layers", type=int, default=3, help="layers of the top sink heads that get attention widgets (default 3)"
    )
    r.add_argument("--batch-size", type=int, default=None, help="samples per forward pass")
    r.add_argument(
        "--no-interventions",
        dest="interventions",
        action="store_false",
        help="skip the intervention battery (its slowest section; the page says it was skipped)",
    )
    r.add_argument("--no-trace", dest="trace", action="store_false", help="skip the trace chain (the page says it was skipped)")
    r.add_argument("--quiet", action="store_true", help="no progress bars or phase lines")
    r.set_defaults(func=cmd_report)

    mv = sub.add_parser("massive", help="massive activations (Sun et al.) per block, norms at the sink, the extreme-token triple")
    _add_model_args(mv)
    _add_data_args(mv, n=20, length=64)
    mv.add_argument("--abs-threshold", type=float, default=100.0, help="massive activation: |x| above this (default 100)")
    mv.add_argument(
        "--ratio-threshold", type=float, default=1000.0, help="massive activation: at least this many medians (default 1000)"
    )
    mv.add_argument("--top-k", type=int, default=5, help="largest |x| entries kept per sample and layer (default 5)")
    mv.add_argument("--batch-size", type=int, default=None, help="samples per forward pass")
    mv.add_argument("--json", default=None, metavar="OUT", help="write the report as JSON")
    mv.add_argument("--quiet", action="store_true", help="no progress bar")
    mv.set_defaults(func=cmd_massive)

    t = sub.add_parser("trace", help="trace the sink mechanism: spike, writer, norm, W_K, RoPE, key manifold")
    _add_model_args(t)
    _add_data_args(t, n=20, length=64)
    t.add_argument("--layer", type=int, default=None, help="layer to trace (default: the strongest sink head's)")
    t.add_argument("--head", type=int, default=None, help="head to trace (default: the strongest sink head)")
    t.add_argument("--sink-pos", type=int, default=0, help="sink position, 0 = first token (default 0)")
    t.add_argument("--abs-threshold", type=float, default=100.0, help="massive activation: |x| above this (default 100)")
    t.add_argument(
        "--ratio-threshold", type=float, default=1000.0, help="massive activation: at least this many medians (default 1000)"
    )
    t.add_argument("--batch-size", type=int, default=None, help="samples per forward pass")
    t.add_argument("--explain", action="store_true", help="also print every number with its one-line doc")
    t.add_argument("--json", default=None, metavar="OUT", help="write the report as JSON")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_trace)
    from .cli_practice import register as _register_practice  # kv, quant, outliers (sinks in practice)

    _register_practice(sub, _add_model_args, _placement)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    for sp in sub.choices.values():
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of an error")
        for action in sp._actions:  # checked as parsed: a wrong value fails in milliseconds, before torch loads
            if action.dest in ARGUMENT_CHECKS and action.type in (int, float, None):
                action.type = ARGUMENT_CHECKS[action.dest]
    return parser


def _number(kind: type, low: float | None = None, high: float | None = None, *, open_low: bool = False) -> Any:
    """An argparse type: a ``kind`` number within [low, high] (or (low, high] with ``open_low``)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        too_low = low is not None and (value <= low if open_low else value < low)
        if too_low or (high is not None and value >= high):
            bound = ("> " if open_low else ">= ") + f"{low:g}" if low is not None else ""
            if high is not None:
                bound = f"between {low:g} and {high:g} (exclusive)" if open_low else f"{bound} and < {high:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _data_source(text: str) -> str:
    """``--data``: a named probe source or an existing file."""
    from pathlib import Path

    if text in DATA_SOURCES or Path(text).is_file():
        return text
    raise argparse.ArgumentTypeError(
        f'no such file {text!r}; use {" | ".join(DATA_SOURCES)} or a .jsonl file with a "text" field'
    )


#: the probe sources --data names (anything else is a file)
DATA_SOURCES = ("natural", "natural-concat", "random", "repeat")

#: argument -> its check, applied to every subcommand that has it
ARGUMENT_CHECKS: dict[str, Any] = {
    **dict.fromkeys(
        ["n", "batch_size", "threads", "jobs", "top", "buckets", "n_detail", "attention_layers", "fit_n", "fit_batch"]
        + ["top_k", "window", "steps", "bucket"],
        _number(int, 1),
    ),
    "length": _number(int, 2),
    **dict.fromkeys(["fit_steps", "sinks", "sample", "sink_pos", "move_to", "layer", "head"], _number(int, 0)),
    "eps": _number(float, 0.0, 1.0, open_low=True),
    **dict.fromkeys(["fit_lr", "abs_threshold", "ratio_threshold"], _number(float, 0.0, open_low=True)),
    "data": _data_source,
}


def _set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None) is not None:
        import torch

        from ._internal.errors import check_positive_int

        torch.set_num_threads(check_positive_int(args.threads, "threads"))


def default_n(length: int) -> int:
    """Samples when --n is not given: 100 short probes, about 8k tokens in all for long ones."""
    return int(max(1, min(100, 8192 // max(1, length))))


def _probe(model: Any, args: argparse.Namespace) -> ProbeSet:
    from . import probe_tokens

    n = args.n if args.n is not None else default_n(args.length)
    text = args.data not in ("random", "repeat")
    concat = args.concat if args.concat is not None else (text and args.length > 512)
    return probe_tokens(model, args.data, n=n, length=args.length, bos=args.bos, seed=args.seed, concat=bool(concat and text))


def _peak_rss_mb() -> float:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except Exception:  # pragma: no cover - not POSIX
        return float("nan")


def _fmt_table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [[str(h) for h in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _bar(pct: float, width: int = 30) -> str:
    filled = int(round(width * max(0.0, min(100.0, pct)) / 100.0))
    return "#" * filled + "." * (width - filled)


def cmd_measure(args: argparse.Namespace) -> int:
    from . import load_model, measure_sinks
    from ._internal.errors import check_eps

    check_eps(args.eps)
    t0 = time.time()
    model = load_model(args.model, device=args.device, dtype=args.dtype, progress=not args.quiet, **_placement(args))
    t_load = time.time() - t0
    tokens = _probe(model, args)
    info = tokens.info
    t1 = time.time()
    report = measure_sinks(
        model, tokens, eps=args.eps, batch_size=args.batch_size, progress=not args.quiet, method=args.method, keep=args.keep
    )
    t_measure = time.time() - t1
    if args.keep == "summary":
        return _print_summary(report, args, t_load, t_measure)

    mi = report.model_info
    print(
        f"model   {report.model}  ({mi['n_layers']} layers x {mi['n_heads']} heads, {mi['n_kv_heads']} KV heads, {report.dtype}, {report.device})"
    )
    skipped = f", {info['skipped']} shorter lines skipped" if info.get("skipped") else ""
    print(f"data    {report.data}  n={report.n} length={report.length} BOS={'yes' if report.bos else 'no'}{skipped}")
    print(f"metric  alpha_k = mean_(t>=k) A[t,k]; sink head when alpha_k > eps={report.eps}; score={report.score}")
    print(f"method  {_method_line(report)}")
    print()
    print(f"Sink_1 = {report.rate(1):.2f}%   (mean alpha_1 = {report.alpha[..., 0].mean():.3f})")
    sweep = ", ".join(f"eps {e}: {report.rate(1, e):.1f}%" for e in (0.1, 0.2, 0.3, 0.5, 0.8))
    print(f"         {sweep}")
    sec = report.secondary_sinks()
    if sec:
        rates = report.rates()
        print("other sink positions (k: Sink_k): " + ", ".join(f"{k}: {rates[k - 1]:.1f}%" for k in sec[:10]))
    last = report.rates()[-1]
    print(f"(Sink_T at the last position, k={report.length}, is {last:.1f}% but averages a single query: not evidence of a sink)")
    print()
    print("Sink_1 per layer")
    lr = report.layer_rates(1)
    print(_fmt_table([[layer, f"{r:6.2f}%", _bar(r)] for layer, r in zip(report.layers, lr)], ["layer", "Sink_1", ""]))
    print()
    print(f"top {args.top} sink heads (by mean alpha_1)")
    top = report.head_table().head(args.top)
    print(
        _fmt_table(
            [
                [int(r.layer), int(r.head), int(r.kv_head), f"{r.mean_alpha_1:.3f}", f"{r.sink_rate_1:.1f}%"]
                for r in top.itertuples()
            ],
            ["layer", "head", "kv_head", "mean alpha_1", "sink in % of samples"],
        )
    )
    print()
    print(
        f"load {t_load:.1f}s, measure {t_measure:.1f}s, peak RSS {_peak_rss_mb():.0f} MB; versions: "
        + ", ".join(f"{k} {v}" for k, v in report.versions.items())
    )
    if args.json:
        report.to_json(args.json)
        print(f"wrote {args.json}")
    return 0


def _print_summary(report: Any, args: argparse.Namespace, t_load: float, t_measure: float) -> int:
    """``measure --keep summary``: the rates and top heads a :class:`~sink_interp.SinkSummary` answers."""
    print(f"model   {report.model}  ({report.dtype}, {report.device}); data {report.data}  n={report.n} length={report.length}")
    print(f"method  {_method_line(report)}; keep=summary (counts over eps {report.eps_grid[0]}..{report.eps_grid[-1]})")
    sweep = ", ".join(f"eps {e}: {report.rate(1, e):.1f}%" for e in (0.1, 0.2, 0.3, 0.5, 0.8))
    print(f"Sink_1 = {report.rate(1):.2f}%   {sweep}")
    lr = report.layer_rates(1)
    print(_fmt_table([[layer, f"{r:6.2f}%", _bar(r)] for layer, r in zip(report.layers, lr)], ["layer", "Sink_1", ""]))
    top = report.head_table().head(args.top)
    rows = [[int(r.layer), int(r.head), f"{r.mean_alpha_1:.3f}", f"{r.sink_rate_1:.1f}%"] for r in top.itertuples()]
    print(_fmt_table(rows, ["layer", "head", "mean alpha_1", "sink in % of samples"]))
    print(f"load {t_load:.1f}s, measure {t_measure:.1f}s, peak RSS {_peak_rss_mb():.0f} MB")
    if args.json:
        report.to_json(args.json)
        print(f"wrote {args.json}")
    return 0


def _parse_set(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs: VALUE read as JSON (``3e-3``, ``true``, ``null``, ``[0.9,0.95]``), else kept as text.

    Types and values are checked by :class:`sink_interp.training.TrainConfig`.
    """
    import json

    words = {"true": True, "false": False, "none": None, "null": None}
    out: dict[str, Any] = {}
    for item in items:
        k, eq, v = item.partition("=")
        if not eq or not k.strip():
            raise ValueError(f"--set expects KEY=VALUE (e.g. --set lr=3e-3), got {item!r}")
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = words[v.strip().lower()] if v.strip().lower() in words else v  # Python-style True/None too
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from .training import preset, preset_table, train

    if args.list:
        print(_fmt_table([[p["name"], p["description"]] for p in preset_table()], ["preset", "description"]))
        return 0
    if not args.out:
        raise ValueError("--out DIR is required: a new or empty folder, or an earlier run of the same config to resume")
    over = _parse_set(args.set)
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
        _fmt_table(
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


def _parse_seeds(text: str | None) -> list[int] | None:
    """``--seeds 0,1,2`` -> ``[0, 1, 2]`` (None: each finding's own seeds)."""
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--seeds takes whole numbers separated by commas, e.g. 0,1,2; got {text!r}") from None


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .training.reproduce import FINDINGS, plan, reproduce, run_one, tabulate

    if args.list:
        print(_fmt_table([[f.name, f.claim] for f in FINDINGS.values()], ["finding", "paper"]))
        return 0
    if not args.out:
        raise ValueError("--out DIR is required: a new or empty folder, or an earlier reproduce output")
    finding = "all" if args.finding in (None, "all") else [x.strip() for x in args.finding.split(",") if x.strip()]
    scale = args.scale or "cpu"
    over = _parse_set(args.set)
    seeds = _parse_seeds(args.seeds)
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
            table = tabulate(args.out)
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
        print(_fmt_table([[s.index, u, s.dir] for s, u in zip(p, used)], ["index", "used by", "folder"]))
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
        executor_options=_parse_set(args.executor_opt) or None,
    )
    print(table.to_markdown())
    print(f"wrote {args.out}/reproduce.json and {args.out}/reproduce.md")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    """The standard battery (:func:`sink_interp.battery.standard_battery`) on one model."""
    from . import ProbeSet, compare, load_model, probe_tokens
    from ._internal.errors import check_eps, check_positive_int
    from .battery import GROUPS, standard_battery

    check_eps(args.eps)
    check_positive_int(args.n, "--n")
    check_positive_int(args.fit_steps, "--fit-steps", minimum=0)
    t0 = time.time()
    model = load_model(args.model, device=args.device, dtype=args.dtype, progress=not args.quiet, **_placement(args))
    n_train = check_positive_int(args.fit_n, "--fit-n", minimum=0)
    allt = probe_tokens(model, args.data, n=args.n + n_train, length=args.length, bos=args.bos, seed=args.seed)
    info = allt.info
    ev = allt.rows(slice(0, args.n))  # the evaluation rows, labelled as such in the reports
    ev = ProbeSet(ev.tokens, {**ev.info, "role": "evaluation"})
    tr = allt[args.n :]  # the training rows: a plain tensor (only the grafts are fitted on them)
    print(
        f"model   {args.model}; data {info['source']} n={args.n} (+{len(tr)} training samples for the bias) "
        f"length={args.length} BOS={'yes' if args.bos else 'no'}"
    )
    battery = standard_battery(
        model,
        ev,
        train_tokens=tr if len(tr) else None,
        eps=args.eps,
        fit_steps=args.fit_steps,
        fit_lr=args.fit_lr,
        fit_batch=args.fit_batch,
        batch_size=args.batch_size,
        progress=not args.quiet,
        log=print,
    )
    groups = [g for g in GROUPS if not (args.no_kernels and g == "kernels")]
    eff = compare(model, ev, battery.items(*groups), eps=args.eps, batch_size=args.batch_size, progress=not args.quiet)
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
    print(f"total {time.time() - t0:.0f}s; versions: " + ", ".join(f"{k} {v}" for k, v in eff.versions.items()))
    if args.json:
        from ._internal.provenance import dumps, write_atomic

        d = eff.to_dict()  # the summary and the report's fields: sink_interp.load_report reads it back
        d["battery"] = battery.facts()
        d["loss_by_position"] = eff.loss_by_position().to_dict(orient="records")
        d["argv"] = list(sys.argv[1:])
        write_atomic(args.json, dumps(d))
        print(f"wrote {args.json}")
    return 0


def _parse_layers(text: str | None) -> list[int] | None:
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


def cmd_circuit(args: argparse.Namespace) -> int:
    """The sink circuit between the probe inputs and their corrupted partners (:func:`sink_interp.circuits.sink_circuit`)."""
    from . import load_model
    from .circuits import CircuitSettings, alpha_metric, massive_metric, sink_circuit
    from .patching import corrupt_tokens, named_metric

    if args.corrupt == "bos" and not args.bos:
        raise ValueError("--corrupt bos compares the input with BOS and the same text without it; fix: add --bos")
    t0 = time.time()
    model = load_model(args.model, device=args.device, dtype=args.dtype, progress=not args.quiet, **_placement(args))
    tokens = _probe(model, args)
    corrupted = corrupt_tokens(model, tokens, args.corrupt, move_to=args.move_to)
    if args.massive:
        layer, dim = (int(x) for x in args.massive.split(","))
        metric: Any = massive_metric(layer, dim, args.position)
    elif args.alpha:
        layer, head = (int(x) for x in args.alpha.split(","))
        metric = alpha_metric(model, layer, head)
    else:
        metric = named_metric("logprob", tokens.tokens, corrupted, None, start=1 if args.corrupt == "bos" else 0)  # type: ignore[arg-type]
    settings = CircuitSettings(scores=args.scores, steps=args.steps, keep=args.keep, direction=args.direction)
    rep = sink_circuit(model, tokens, corrupted, metric, settings, progress=not args.quiet)
    print(
        f"model   {args.model}; data {rep.data} n={rep.n} length={rep.length} BOS={'yes' if rep.bos else 'no'}; corrupt {args.corrupt}"
    )
    print(
        f"metric  {rep.metric}: clean {rep.clean:.4f}, corrupted {rep.corrupted:.4f}; {len(rep.scores)} edges scored ({rep.mode})"
    )
    print()
    print(rep.edges().head(args.top).to_string(index=False, float_format=lambda x: f"{x:+.4f}"))
    print()
    print("faithfulness by exact patching (best k edges patched):")
    print("  " + ", ".join(f"{k}: {f:.3f}" for k, f in zip(rep.curve_sizes, rep.curve)))
    if rep.size:
        print(f"circuit {rep.size} edges keep >= {rep.keep:.0%}; nodes: {' '.join(rep.circuit_nodes())}")
    else:
        print(f"no point of the curve keeps {rep.keep:.0%} of the effect")
    secs = ", ".join(f"{k} {v:.1f}s" for k, v in rep.seconds.items())
    print(f"total {time.time() - t0:.0f}s ({secs})")
    if args.json:
        rep.to_json(args.json)
        print(f"wrote {args.json}")
    if args.html:
        from .views import view_for

        view_for(rep).save(args.html)
        print(f"wrote {args.html}")
    return 0


def cmd_patch(args: argparse.Namespace) -> int:
    """Patch every head between the probe inputs and their corrupted partners (:func:`sink_interp.patching.patch_sink`)."""
    from . import load_model
    from ._internal.errors import check_positive_int
    from .patching import patch_sink

    check_positive_int(args.n, "--n")
    if args.corrupt == "bos" and not args.bos:
        raise ValueError("--corrupt bos patches from the input with BOS into the same text without it; fix: add --bos")
    t0 = time.time()
    model = load_model(args.model, device=args.device, dtype=args.dtype, progress=not args.quiet, **_placement(args))
    tokens = _probe(model, args)
    kw: dict[str, Any] = {"progress": not args.quiet, "layers": _parse_layers(args.layers), "batch_size": args.batch_size}
    if args.direction:
        kw["direction"] = args.direction
    rep = patch_sink(
        model, tokens, args.corrupt, what=args.what, method=args.method, metric=args.metric, move_to=args.move_to, **kw
    )
    base = "corrupted" if rep.direction == "denoise" else "clean"
    print(
        f"model   {args.model}; data {rep.data} n={rep.n} length={rep.length} BOS={'yes' if rep.bos else 'no'}; "
        f"corrupt {args.corrupt}"
    )
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
    print(f"total {time.time() - t0:.0f}s ({secs}); versions: " + ", ".join(f"{k} {v}" for k, v in rep.versions.items()))
    if args.json:
        rep.to_json(args.json)
        print(f"wrote {args.json}")
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    from . import load_model
    from .streaming import long_tokens, streaming_ppl

    t0 = time.time()
    model = load_model(args.model, device=args.device, dtype=args.dtype, progress=not args.quiet, **_placement(args))
    toks = long_tokens(model, length=args.length, n=args.n, bos=args.bos, path=args.data)
    rep = streaming_ppl(model, toks, n_sinks=args.sinks, window=args.window, bucket=args.bucket, progress=not args.quiet)
    mi = rep.model_info
    print(f"model   {rep.model}  ({mi['n_layers']} layers, positions: {rep.positional}, {mi['dtype']}, {mi['device']})")
    print(
        f"data    {rep.n} texts of {rep.length} tokens ({rep.data}; BOS={'yes' if rep.bos else 'no'}): "
        + ", ".join(toks.info["documents"][:4])
        + (" ..." if rep.n > 4 else "")
    )
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
    print()
    print(f"total {time.time() - t0:.0f}s; versions: " + ", ".join(f"{k} {v}" for k, v in rep.versions.items()))
    if args.json:
        rep.to_json(args.json)
        print(f"wrote {args.json}")
    return 0


def _method_line(report: Any) -> str:
    if report.method != "lse":
        why = report.why_not_lse
        return "pattern (hook_pattern of every layer, reduced as computed)" + (f"; not lse: {why}" if why else "")
    lse = report.engine
    if lse is not None and lse.engine == "fused":
        return f"lse, fused attention ({', '.join(lse.kernel)}; row LSE from {', '.join(lse.lse)}), no T x T map"
    return f"lse through the bridge's hooks (not fused: {lse.why_not_fused if lse else '?'}), no T x T map kept"


def cmd_long(args: argparse.Namespace) -> int:
    from . import load_model
    from ._internal.errors import check_eps
    from .longctx import long_context_sinks

    check_eps(args.eps)
    t0 = time.time()
    model = load_model(args.model, device=args.device, dtype=args.dtype, progress=not args.quiet, **_placement(args))
    t_load = time.time() - t0
    tokens = _probe(model, args)
    t1 = time.time()
    rep = long_context_sinks(
        model, tokens, eps=args.eps, buckets=args.buckets, batch_size=args.batch_size, progress=not args.quiet
    )
    t_measure = time.time() - t1
    r = rep.sink_report
    mi = r.model_info
    print(
        f"model   {r.model}  ({mi['n_layers']} layers x {mi['n_heads']} heads, {mi['n_kv_heads']} KV heads, {r.dtype}, {r.device})"
    )
    print(f"data    {r.data}  n={r.n} length={r.length} BOS={'yes' if r.bos else 'no'}")
    print(f"method  {_method_line(r)}")
    print()
    print(f"Sink_1 over all queries = {r.rate(1):.2f}%  (mean alpha_1 = {r.alpha[..., 0].mean():.3f}, eps={r.eps})")
    print()
    print("Sink_1 by query position (does the first-token sink hold far from it?)")
    rates, mean = rep.bucket_rates(1), rep.bucket_mean_alpha(1)
    print(
        _fmt_table(
            [
                [f"{a + 1}-{b}", f"{rates[i]:6.2f}%", f"{mean[i]:.3f}", _bar(rates[i])]
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
    print(_fmt_table(rows, ["k", "Sink_k", "mean alpha_k", "queries", "reliable", "token"]))
    sec = rep.secondary_sinks()
    print()
    print("secondary sinks (k > 1, Sink_k >= 1%, >= 64 queries): " + (", ".join(str(k) for k in sec[:20]) if sec else "none"))
    print()
    print(f"load {t_load:.1f}s, measure {t_measure:.1f}s, peak RSS {_peak_rss_mb():.0f} MB")
    if args.json:
        rep.to_json(args.json)
        print(f"wrote {args.json}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from . import load_model, probe_tokens
    from ._internal.errors import check_eps, check_positive_int
    from .pages import build_report

    check_eps(args.eps)
    check_positive_int(args.n_detail, "--n-detail")
    check_positive_int(args.attention_layers, "--attention-layers")
    t0 = time.time()
    if not args.quiet:
        print(f"report: loading {args.model} and {args.n} x {args.length} {args.data} tokens", file=sys.stderr, flush=True)
    model = load_model(args.model, device=args.device, dtype=args.dtype, progress=not args.quiet, **_placement(args))
    tokens = probe_tokens(model, args.data, n=args.n, length=args.length, bos=args.bos, seed=args.seed)
    t_load = time.time() - t0
    skipped = [f"--no-{k}" for k in ("interventions", "trace") if not getattr(args, k)]
    command = " ".join(
        [
            "sink-interp report",
            *(
                f"--{k.replace('_', '-')} {v}"
                for k, v in vars(args).items()
                if k not in ("func", "command", "quiet", "interventions", "trace") and v not in (None, False)
            ),
            *skipped,
        ]
    )
    page = build_report(
        model,
        tokens,
        eps=args.eps,
        sample=args.sample,
        n_detail=args.n_detail,
        attention_layers=args.attention_layers,
        batch_size=args.batch_size,
        progress=not args.quiet,
        command=command.replace("--bos True", "--bos"),
        trace=args.trace,
        interventions=args.interventions,
    )
    path = page.save(args.out)
    size = os.path.getsize(path) / 1e6
    tm = page.meta["timings"]
    print(f"wrote {path} ({size:.1f} MB, {page.n_widgets} CircuitsVis widgets, bundle inlined once; opens offline)")
    print(f"load {t_load:.1f}s, " + ", ".join(f"{k} {v:.1f}s" for k, v in tm.items()))
    return 0


def _massive_table(rep: Any, h_norm: bool = False) -> str:
    """Per block: largest |x| entering it with its position and dim, ratio to the median, massive or not, norm ratios."""
    rows = [
        [
            int(r.layer),
            f"{r.max:,.1f}" if r.max >= 10 else f"{r.max:.3g}",
            int(r.pos),
            int(r.dim),
            f"{r.ratio:,.0f}",
            "yes" if r.massive else "",
            *([f"{r.h_norm_ratio_0:.2f}"] if h_norm else []),
            f"{r.value_norm_ratio:.3f}",
        ]
        for r in rep.to_frame().itertuples()
    ]
    head = ["layer", "max |x|", "pos", "dim", "x median", "massive", *(["||h_0||/mean"] if h_norm else []), "value_norm_ratio"]
    return _fmt_table(rows, head)


def cmd_massive(args: argparse.Namespace) -> int:
    from . import load_model, massive_activations, probe_tokens

    t0 = time.time()
    model = load_model(args.model, device=args.device, dtype=args.dtype, progress=not args.quiet, **_placement(args))
    t_load = time.time() - t0
    tokens = probe_tokens(model, args.data, n=args.n, length=args.length, bos=args.bos, seed=args.seed)
    t1 = time.time()
    rep = massive_activations(
        model,
        tokens,
        abs_threshold=args.abs_threshold,
        ratio_threshold=args.ratio_threshold,
        top_k=args.top_k,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    t_run = time.time() - t1
    mi = rep.model_info
    print(
        f"model   {rep.model}  ({mi['n_layers']} layers x {mi['n_heads']} heads, d_model {mi['d_model']}, {rep.dtype}, {rep.device})"
    )
    print(f"data    {rep.data}  n={rep.n} length={rep.length} BOS={'yes' if rep.bos else 'no'}")
    print(f"massive: |x| > {rep.abs_threshold:g} and > {rep.ratio_threshold:g} x the median |x| (Sun et al.)")
    print()
    print(_massive_table(rep, h_norm=True))
    triple = rep.extreme_triple()
    parts = [
        f"{role} at position {v['pos']} ({v['layers']}/{v['of']} layers)" for role, v in triple.items() if isinstance(v, dict)
    ]
    if parts:
        print()
        print("extreme tokens: " + "; ".join(parts) + ("; they coincide" if triple.get("coincide") else ""))
    print()
    print(f"load {t_load:.1f}s, massive {t_run:.1f}s")
    if args.json:
        rep.to_json(args.json)
        print(f"wrote {args.json}")
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from . import load_model, probe_tokens, trace_sink

    t0 = time.time()
    model = load_model(args.model, device=args.device, dtype=args.dtype, progress=not args.quiet, **_placement(args))
    t_load = time.time() - t0
    tokens = probe_tokens(model, args.data, n=args.n, length=args.length, bos=args.bos, seed=args.seed)
    info = tokens.info
    t1 = time.time()
    rep = trace_sink(
        model,
        tokens,
        layer=args.layer,
        head=args.head,
        sink_pos=args.sink_pos,
        abs_threshold=args.abs_threshold,
        ratio_threshold=args.ratio_threshold,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    t_trace = time.time() - t1
    mi = rep.model_info
    m = rep.massive
    print(
        f"model   {rep.model}  ({mi['n_layers']} layers x {mi['n_heads']} heads, {mi['n_kv_heads']} KV heads, d_model {mi['d_model']}, "
        f"{mi['normalization']}, {mi['positional']} positions, {rep.dtype}, {rep.device})"
    )
    skipped = f", {info['skipped']} shorter lines skipped" if info.get("skipped") else ""
    print(f"data    {rep.data}  n={rep.n} length={rep.length} BOS={'yes' if rep.bos else 'no'}{skipped}")
    print()
    print(rep.story())
    print()
    print("per block: largest |x| entering it (hook_resid_pre), and ||v|| at position 0 over the mean at positions >= 1")
    print(_massive_table(m))
    if args.explain:
        print()
        print(rep.explain())
    print()
    print(f"load {t_load:.1f}s, trace {t_trace:.1f}s; versions: " + ", ".join(f"{k} {v}" for k, v in rep.versions.items()))
    if args.json:
        rep.to_json(args.json)
        print(f"wrote {args.json}")
    return 0


def _user_error(e: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or None for a bug (which keeps its traceback)."""
    import torch

    from ._internal.distributed import PeerStopped
    from ._internal.errors import MissingDependencyError

    if isinstance(e, PeerStopped):  # another rank failed: its own line says why
        return str(e)
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(e, RuntimeError) and any(s in str(e) for s in ("out of memory", "can't allocate memory", "not enough memory"))
    ):
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return (
            f"out of memory ({first}); fix: a smaller --batch-size or --length, --method lse (no T x T maps) "
            "for measure/long, or a device with more memory"
        )
    if isinstance(
        e, (ValueError, FileNotFoundError, KeyError, OSError, NotImplementedError, FloatingPointError, MissingDependencyError)
    ):
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        return str(msg) or type(e).__name__
    return None


def _one_line_warnings() -> None:
    """Warnings as one line on stderr (no source line), like errors."""
    import warnings

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        print(f"sink-interp: warning: {message}", file=sys.stderr)

    warnings.showwarning = show


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors and Ctrl-C give one line on stderr (exit 2 and 130), ``--debug`` shows tracebacks."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a wrong argument (2, one line on stderr, before anything heavy loads)
        return int(e.code or 0)
    debug = bool(getattr(args, "debug", False)) or os.environ.get("SINK_INTERP_DEBUG", "") not in ("", "0")
    import warnings

    with warnings.catch_warnings():
        if not debug:
            _one_line_warnings()
        return _run(args, debug)


def _check_outputs(args: argparse.Namespace) -> None:
    """Output files are checked before any model is loaded: a folder or an unwritable place fails now, not after the work.

    An output is never one of the inputs: the ``--data`` file, or a file inside the ``--model`` folder
    (``--offload-folder`` neither). Before, ``measure --data mydata.jsonl --json mydata.jsonl`` overwrote the data.
    """
    from pathlib import Path

    from ._internal.files import same_file
    from ._internal.provenance import check_writable

    outputs = [("--json", args.json)] if getattr(args, "json", None) else []
    if args.command == "report":
        outputs.append(("--out", args.out))
    data = getattr(args, "data", None)
    model = Path(str(getattr(args, "model", "") or "")).expanduser()
    model_dir = model if str(model) not in ("", ".") and model.is_dir() else None
    for flag, out in outputs:
        check_writable(out, flag)
        if data and data not in DATA_SOURCES and same_file(out, data):
            raise ValueError(
                f"{flag} {out!r} is the --data file: writing there would overwrite your data; fix: give {flag} another path"
            )
        if model_dir is not None and _within(Path(out).expanduser(), model_dir):
            raise ValueError(
                f"{flag} {out!r} is inside the --model folder {str(model_dir)!r}: writing there could overwrite the checkpoint; "
                f"fix: give {flag} a path outside it"
            )
    offload = getattr(args, "offload_folder", None)
    if (
        offload
        and model_dir is not None
        and (_within(Path(offload).expanduser(), model_dir) or _within(model_dir, Path(offload).expanduser()))
    ):
        raise ValueError(
            f"--offload-folder {offload!r} overlaps the --model folder {str(model_dir)!r}: offloaded weights would be written "
            "among the checkpoint's files; fix: give --offload-folder a folder of its own"
        )


def _within(path: Any, folder: Any) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (links resolved)."""
    return path.resolve().is_relative_to(folder.resolve())


def _torchrun() -> bool:
    from ._internal.distributed import launched_by_torchrun

    return launched_by_torchrun()


#: commands that shard their samples over the ranks when launched by torchrun
SHARDED_COMMANDS = ("measure", "massive", "trace", "ablate", "long", "patch", "kv", "quant", "outliers")


@contextlib.contextmanager
def _ranks(args: argparse.Namespace) -> Iterator[None]:
    """Under ``torchrun``: shard over the ranks (:func:`sink_interp.distributed`); only rank 0 prints and shows progress."""
    from ._internal import distributed as dist

    if args.command not in SHARDED_COMMANDS or not dist.launched_by_torchrun():
        yield
        return
    with dist.distributed():
        if dist.is_main():
            yield
            return
        if hasattr(args, "quiet"):
            args.quiet = True
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            yield


def _run(args: argparse.Namespace, debug: bool) -> int:
    try:
        _check_outputs(args)
        _set_threads(args)
        with _ranks(args):
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        resume = " (run the same command again to resume)" if args.command in ("train", "reproduce") else ""
        print(f"\nsink-interp {args.command}: interrupted{resume}", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - sorted into user errors (one line) and bugs (traceback)
        msg = _user_error(e)
        if msg is None or debug:
            raise
        rank = os.environ.get("RANK", "0") if args.command in SHARDED_COMMANDS and _torchrun() else None
        if rank is not None and not msg.startswith("rank "):  # under torchrun every rank prints its own line
            msg = f"rank {rank}: {msg}"
        print(f"sink-interp {args.command}: error: {msg}", file=sys.stderr)
        if rank is not None:  # a torchrun rank: leave now, the line said, before gloo's threads can abort the exit
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
