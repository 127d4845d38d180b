"""Copy a reproduce output's plan and finished runs (never the models) into docs/results/reproduce/.

    python scripts/publish_reproduce.py OUT [--dest docs/results/reproduce]
    sink-interp reproduce --out docs/results/reproduce --tabulate     # the table, from what is published

``OUT`` is the folder of ``sink-interp reproduce --out OUT`` (or ``--plan-only``), finished or
not. Copied: ``plan.json`` and the reproduce marker (not ``OUT``'s table, which may be older than
the runs: the table is always tabulated from the published folder), then every run of the plan that is done
(evaluated to its last step, its measurements taken): its ``config.json``, ``metrics.jsonl``,
``timing.jsonl`` and ``measured/*.json``. The weights and checkpoints stay behind (the row's
command re-makes them). Runs already published stay; each run folder is copied beside its place
and renamed into it, so a reader never sees half a run. Run the script as runs finish, commit,
and a sweep spread over days loses nothing; tabulate from the published folder at the end (the
table's paths are relative to it).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_FILES = ("config.json", "metrics.jsonl", "timing.jsonl")
TOP_FILES = ("plan.json", "sink_interp_reproduce.json")  # never OUT's table: it may predate the runs published here


def publish(src: Path, dest: Path) -> tuple[int, int]:
    """Copy the plan and the done runs of ``src`` into ``dest``; returns (runs copied now, runs of the plan)."""
    sys.path.insert(0, str(ROOT))
    from sink_interp.training.reproduce.runner import Plan, _done

    p = Plan.read(src)
    bad = [s.dir for s in p if Path(s.dir).is_absolute() or ".." in Path(s.dir).parts]
    if bad:
        raise SystemExit(f"{src / 'plan.json'} names run folders outside the output, e.g. {bad[0]}; nothing written")
    dest.mkdir(parents=True, exist_ok=True)
    copied = 0
    for spec in p:
        d, out = src / spec.dir, dest / spec.dir
        if not _done(d, spec) or (out.is_dir() and _done(out, spec)):
            continue
        tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent if out.parent.exists() else _mk(out.parent)))
        for name in RUN_FILES:
            if (d / name).is_file():
                shutil.copy2(d / name, tmp / name)
        if (d / "measured").is_dir():
            shutil.copytree(d / "measured", tmp / "measured")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        copied += 1
    for name in TOP_FILES:
        if (src / name).is_file():
            text = (src / name).read_text(encoding="utf-8")
            tmp_file = dest / f".{name}.tmp"
            tmp_file.write_text(text, encoding="utf-8")
            tmp_file.replace(dest / name)
    return copied, len(p)


def _mk(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="the reproduce output folder (holds plan.json)")
    ap.add_argument("--dest", type=Path, default=ROOT / "docs" / "results" / "reproduce")
    a = ap.parse_args()
    copied, total = publish(a.src.expanduser(), a.dest)
    done = sum(1 for d in (a.dest / "runs").iterdir() if (d / "metrics.jsonl").is_file()) if (a.dest / "runs").is_dir() else 0
    print(f"copied {copied} finished run(s); {a.dest} now holds {done} of the plan's {total} runs")


if __name__ == "__main__":
    main()
