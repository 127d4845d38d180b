"""How long each finding's runs took: a markdown table from a reproduce output's plan and its runs' ``timing.jsonl``.

    python scripts/row_times.py docs/results/reproduce

Per finding: its distinct runs (a run shared by several findings counts in each), how many are finished,
their training steps, and the wall time they took (each run's ``timing.jsonl``: the clock restarts when a
run resumes, so a run's time is the sum of its segments; steps redone after a kill are not counted).
The times are wall clock at one thread on whatever else the machine ran: compare rows of one sweep, and
read them as upper bounds of the quiet-machine cost (``benchmarks/time_reproduce.py`` measures that).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_seconds(run_dir: Path) -> float:
    """Wall seconds of one run: the last ``wall_s`` of every segment (the clock starts again on resume)."""
    path = run_dir / "timing.jsonl"
    if not path.is_file():
        return 0.0
    total, last = 0.0, 0.0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        wall = float(json.loads(line)["wall_s"])
        if wall < last:  # a new segment: the run resumed from its checkpoint
            total += last
        last = wall
    return total + last


def rows(root: Path) -> list[dict]:
    sys.path.insert(0, str(ROOT))
    from sink_interp.training.reproduce.runner import Plan, _done

    plan = Plan.read(root)
    out = []
    for name in plan.findings:
        specs = plan.runs_of(name)
        done = [s for s in specs if _done(root / s.dir, s)]
        seconds = sum(run_seconds(root / s.dir) for s in done)
        seeds = sorted({seed for by_seed in plan.arms(name).values() for seed in by_seed})
        out.append(
            {
                "finding": name,
                "seeds": len(seeds),
                "runs": len(specs),
                "finished": len(done),
                "steps": sum(s.config.steps for s in specs),
                "minutes": seconds / 60,
            }
        )
    return out


def markdown(table: list[dict]) -> str:
    lines = [
        "| finding | seeds | runs | finished | steps | wall time of the finished runs (min) |",
        "|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(f"| `{r['finding']}` | {r['seeds']} | {r['runs']} | {r['finished']} | {r['steps']:,} | {r['minutes']:.0f} |")
    runs = sum(r["runs"] for r in table)
    lines.append(f"\n{len(table)} findings, {runs} runs counted per finding (a shared run in each finding that uses it).")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="a reproduce output (holds plan.json and runs/), e.g. docs/results/reproduce")
    a = ap.parse_args()
    if not (a.root / "plan.json").is_file():
        raise SystemExit(f"{a.root} holds no plan.json: give the folder of `sink-interp reproduce --out`")
    print(markdown(rows(a.root)), end="")


if __name__ == "__main__":
    main()
