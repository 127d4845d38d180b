"""What every ``sink-interp`` command shares: the argument groups and their checks, loading the model and the
probes, the printed tables, writing ``--json``, and running a command (output checks, one-line errors, torchrun ranks).

A command module (``measure.py``, ...) has ``add_parser(sub)``, which declares its arguments, and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Iterator, NoReturn, Sequence

if TYPE_CHECKING:
    from .._internal.probe import ProbeSet


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the argument and the fix, then where the help is), not the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def add_model_args(p: argparse.ArgumentParser) -> None:
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


def add_data_args(p: argparse.ArgumentParser, n: int | None, length: int, data: str = "natural", concat: bool = False) -> None:
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


def add_command(sub: Any, name: str, help: str, *, n: int | None, length: int, **data: Any) -> argparse.ArgumentParser:
    """The subparser of a command that runs a model on a probe set: the model arguments, then the data arguments."""
    p = sub.add_parser(name, help=help)
    add_model_args(p)
    add_data_args(p, n=n, length=length, **data)
    return p


def add_text_command(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    """The subparser of kv, quant and outliers: the model arguments, then ``--length`` 512, ``--n`` 4, ``--data``,
    ``--bos``, ``--batch-size`` 1 and the outputs."""
    p = sub.add_parser(name, help=help)
    add_model_args(p)
    p.add_argument("--length", type=int, default=512, help="tokens per text (default 512)")
    p.add_argument("--n", type=int, default=4, help="number of texts (default 4)")
    p.add_argument("--data", default=None, help="JSONL file with text/source/title (default: the shipped natural corpus)")
    p.add_argument("--bos", action="store_true", help="put the tokenizer's BOS token first (default: no BOS)")
    p.add_argument("--batch-size", type=int, default=1, help="texts per forward pass (default 1)")
    add_output_args(p, quiet_help="no progress bars")
    return p


def add_output_args(
    p: argparse.ArgumentParser, json_help: str = "write the report as JSON", quiet_help: str = "no progress bar"
) -> None:
    """``--json OUT`` and ``--quiet``, the last two arguments of most commands."""
    p.add_argument("--json", default=None, metavar="OUT", help=json_help)
    p.add_argument("--quiet", action="store_true", help=quiet_help)


def add_choice(p: argparse.ArgumentParser, flag: str, choices: Sequence[str], help: str) -> None:
    """An option whose default is the first of its ``choices``."""
    p.add_argument(flag, default=choices[0], choices=list(choices), help=help)


def placement(args: argparse.Namespace) -> dict[str, Any]:
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


def load(args: argparse.Namespace) -> Any:
    """The ``--model`` with its device, dtype and placement (the threads were set by :func:`run_command`)."""
    from .. import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype, progress=not args.quiet, **placement(args))


def default_n(length: int) -> int:
    """Samples when --n is not given: 100 short probes, about 8k tokens in all for long ones."""
    return int(max(1, min(100, 8192 // max(1, length))))


def probe(model: Any, args: argparse.Namespace, n: int | None = None) -> ProbeSet:
    """The probe set of ``--data``, ``--n`` (or ``n``), ``--length``, ``--bos``, ``--seed`` and ``--concat``.

    Without ``--n``: :func:`default_n`. ``--concat`` unset: on for text longer than 512 tokens; a command
    without ``--concat`` never joins passages.
    """
    from .. import probe_tokens

    n = n if n is not None else args.n if args.n is not None else default_n(args.length)
    text = args.data not in ("random", "repeat")
    concat = getattr(args, "concat", False)
    concat = concat if concat is not None else (text and args.length > 512)
    return probe_tokens(model, args.data, n=n, length=args.length, bos=args.bos, seed=args.seed, concat=bool(concat and text))


def analyse(args: argparse.Namespace, analysis: Any, *names: str) -> tuple[Any, ProbeSet, Any, float, float]:
    """Load the model (:func:`load`) and the probe set (:func:`probe`), then run ``analysis(model, tokens, **keywords)``
    with the arguments ``names`` (:func:`options`): the model, the probe set, the report, and the seconds the model took
    to load and the analysis to run (measure, long, massive, trace)."""
    t0 = time.time()
    model = load(args)
    t_load = time.time() - t0
    tokens = probe(model, args)
    t1 = time.time()
    report = analysis(model, tokens, **options(args, *names))
    return model, tokens, report, t_load, time.time() - t1


def options(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The arguments ``names`` as keywords of an analysis, and ``progress``: a bar unless ``--quiet``."""
    return {**{name: getattr(args, name) for name in names}, "progress": not args.quiet}


def load_texts(args: argparse.Namespace) -> tuple[Any, ProbeSet]:
    """The model (:func:`load`) and ``--n`` texts of ``--length`` tokens from the ``--data`` file or the shipped
    corpus (stream, kv, quant, outliers)."""
    from ..streaming import long_tokens

    model = load(args)
    return model, long_tokens(model, length=args.length, n=args.n, bos=args.bos, path=args.data)


def number(kind: type, low: float | None = None, high: float | None = None, *, open_low: bool = False) -> Any:
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


def data_source(text: str) -> str:
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
        number(int, 1),
    ),
    "length": number(int, 2),
    **dict.fromkeys(["fit_steps", "sinks", "sample", "sink_pos", "move_to", "layer", "head"], number(int, 0)),
    "eps": number(float, 0.0, 1.0, open_low=True),
    **dict.fromkeys(["fit_lr", "abs_threshold", "ratio_threshold"], number(float, 0.0, open_low=True)),
    "data": data_source,
}


def check_arguments(sp: argparse.ArgumentParser) -> None:
    """``--debug`` on a subcommand, and the checks of :data:`ARGUMENT_CHECKS` as its arguments' types."""
    sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of an error")
    for action in sp._actions:  # checked as parsed: a wrong value fails in milliseconds, before torch loads
        if action.dest in ARGUMENT_CHECKS and action.type in (int, float, None):
            action.type = ARGUMENT_CHECKS[action.dest]


def ints(text: str, flag: str) -> list[int]:
    """``"8,4,3,2"`` -> ``[8, 4, 3, 2]``; ``flag`` names the argument in the error."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: write comma-separated integers, e.g. 8,4,3,2") from None


def parse_set(items: list[str]) -> dict[str, Any]:
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


def peak_rss_mb() -> float:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except Exception:  # pragma: no cover - not POSIX
        return float("nan")


def fmt_table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [[str(h) for h in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def bar(pct: float, width: int = 30) -> str:
    filled = int(round(width * max(0.0, min(100.0, pct)) / 100.0))
    return "#" * filled + "." * (width - filled)


def versions(rep: Any) -> str:
    """``"versions: torch 2.x, ..."``: the report's package versions, for a command's last line."""
    return "versions: " + ", ".join(f"{k} {v}" for k, v in rep.versions.items())


def write_json(args: argparse.Namespace, rep: Any) -> None:
    """With ``--json OUT``: the report written there, and a line that says so."""
    if args.json:
        rep.to_json(args.json)
        print(f"wrote {args.json}")


#: the facts of ``model_info`` a command's model line may add (:func:`header`)
_FACTS = {
    "kv": "{n_kv_heads} KV heads",
    "d_model": "d_model {d_model}",
    "normalization": "{normalization}",
    "positional": "{positional} positions",
}


def header(rep: Any, *facts: str, info: dict[str, Any] | None = None) -> None:
    """The model and data lines of a report: ``model   NAME  (L layers x H heads, <facts>, dtype, device)`` (``facts``:
    keys of :data:`_FACTS`), then ``data    SOURCE  n=N length=T BOS=yes|no`` and the lines the probe skipped
    when ``info`` says so."""
    mi = rep.model_info
    parts = [f"{mi['n_layers']} layers x {mi['n_heads']} heads", *(_FACTS[f].format(**mi) for f in facts)]
    print(f"model   {rep.model}  ({', '.join(parts)}, {rep.dtype}, {rep.device})")
    skipped = f", {info['skipped']} shorter lines skipped" if info and info.get("skipped") else ""
    print(f"data    {rep.data}  n={rep.n} length={rep.length} BOS={'yes' if rep.bos else 'no'}{skipped}")


def corrupt_line(args: argparse.Namespace, rep: Any) -> str:
    """The model, data and ``--corrupt`` line of patch and circuit."""
    return (
        f"model   {args.model}; data {rep.data} n={rep.n} length={rep.length} BOS={'yes' if rep.bos else 'no'}; "
        f"corrupt {args.corrupt}"
    )


def method_line(report: Any) -> str:
    """How a :class:`~sink_interp.SinkReport` was computed (measure, long)."""
    if report.method != "lse":
        why = report.why_not_lse
        return "pattern (hook_pattern of every layer, reduced as computed)" + (f"; not lse: {why}" if why else "")
    lse = report.engine
    if lse is not None and lse.engine == "fused":
        return f"lse, fused attention ({', '.join(lse.kernel)}; row LSE from {', '.join(lse.lse)}), no T x T map"
    return f"lse through the bridge's hooks (not fused: {lse.why_not_fused if lse else '?'}), no T x T map kept"


def massive_table(rep: Any, h_norm: bool = False) -> str:
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
    return fmt_table(rows, head)


def footer(args: argparse.Namespace, rep: Any, t0: float) -> None:
    """A blank line, the time since ``t0`` and the versions, then the ``--json`` file (stream, kv, quant, outliers)."""
    print()
    print(f"total {time.time() - t0:.0f}s; " + versions(rep))
    write_json(args, rep)


def long_data_line(rep: Any, documents: list[str], more: bool) -> str:
    """``data    N texts of T tokens (...)``: the first four documents, then `` ...`` when ``more``."""
    return (
        f"data    {rep.n} texts of {rep.length} tokens ({rep.data}; BOS={'yes' if rep.bos else 'no'}): "
        + ", ".join(documents[:4])
        + (" ..." if more else "")
    )


def practice_header(rep: Any, toks: Any) -> None:
    """The model and data lines of kv, quant and outliers."""
    mi = rep.model_info
    print(f"model   {rep.model}  ({mi['n_layers']} layers, {mi['dtype']}, {mi['device']})")
    docs = toks.info.get("documents", [])
    print(long_data_line(rep, docs, more=len(docs) > 4))


# ---- running a command: output checks, threads, torchrun ranks, one-line errors


def user_error(e: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or None for a bug (which keeps its traceback)."""
    import torch

    from .._internal.distributed import PeerStopped
    from .._internal.errors import MissingDependencyError

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


def one_line_warnings() -> None:
    """Warnings as one line on stderr (no source line), like errors."""
    import warnings

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        print(f"sink-interp: warning: {message}", file=sys.stderr)

    warnings.showwarning = show


def check_outputs(args: argparse.Namespace) -> None:
    """Output files are checked before any model is loaded: a folder or an unwritable place fails now, not after the work.

    An output is never one of the inputs: the ``--data`` file, or a file inside the ``--model`` folder
    (``--offload-folder`` neither). Before, ``measure --data mydata.jsonl --json mydata.jsonl`` overwrote the data.
    """
    from pathlib import Path

    from .._internal.files import same_file
    from .._internal.provenance import check_writable

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


def _set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None) is not None:
        import torch

        from .._internal.errors import check_positive_int

        torch.set_num_threads(check_positive_int(args.threads, "threads"))


def _torchrun() -> bool:
    from .._internal.distributed import launched_by_torchrun

    return launched_by_torchrun()


#: commands that shard their samples over the ranks when launched by torchrun
SHARDED_COMMANDS = ("measure", "massive", "trace", "ablate", "long", "patch", "kv", "quant", "outliers")


@contextlib.contextmanager
def _ranks(args: argparse.Namespace) -> Iterator[None]:
    """Under ``torchrun``: shard over the ranks (:func:`sink_interp.distributed`); only rank 0 prints and shows progress."""
    from .._internal import distributed as dist

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


def run_command(args: argparse.Namespace, debug: bool) -> int:
    """Run the parsed command: user errors and Ctrl-C give one line on stderr (exit 2 and 130); a torchrun rank
    leaves with ``os._exit(2)`` after its error line."""
    try:
        check_outputs(args)
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
        msg = user_error(e)
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
