"""Estimate the CPU time of every reproduce finding from short timed runs (one thread).

Each distinct run of ``plan("all")`` trains ``--steps`` steps (evaluations at
step 0 and at the end only); the base config also trains ``2 x --steps`` steps
and ``--steps`` steps with one more evaluation, which gives the fixed cost
(model build, two evaluations, saving), the cost of one evaluation and the
per-step cost. A run's estimate is
``fixed + steps x per_step(config) + (evaluations - 2) x eval``, summed per
finding (a shared run counted in every finding that uses it, once in the total).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/time_reproduce.py --out /tmp/timing
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from sink_interp.training import train
from sink_interp.training.reproduce import plan


def timed(cfg, steps: int, eval_every: int) -> float:
    c = cfg.replace(steps=steps, eval_every=eval_every, ckpt_every=steps, warmup=min(cfg.warmup, steps // 2))
    t = time.perf_counter()
    train(c, tempfile.mkdtemp(prefix="time-"), progress=False, threads=1)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="timing")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    p = plan("all")
    n = a.steps
    base = p[0].config
    timed(base, 2, 2)  # warm-up: imports, first allocations
    t1 = min(timed(base, n, n) for _ in range(2))
    t2 = min(timed(base, 2 * n, 2 * n) for _ in range(2))
    t3 = min(timed(base, n, n // 2) for _ in range(2))
    per_step = max((t2 - t1) / n, 1e-6)
    fixed = max(t1 - n * per_step, 0.0)
    ev = max(t3 - t1, 0.0)
    runs = []
    for s in p:
        t = t1 if s.index == 0 else timed(s.config, n, n)
        ps = max((t - fixed) / n, 1e-6)
        c = s.config
        evals = c.steps // c.eval_every + 1
        est = fixed + c.steps * ps + max(evals - 2, 0) * ev
        runs.append(
            {
                "index": s.index,
                "dir": s.dir,
                "labels": list(s.labels),
                "steps": c.steps,
                "t_short_s": round(t, 2),
                "per_step_s": round(ps, 4),
                "estimate_s": round(est, 1),
            }
        )
        print(f"{s.index:3d} {s.dir:60s} {t:6.1f}s short, est {est / 60:6.1f} min", flush=True)
    by_finding: dict[str, float] = {}
    for r in runs:
        for lab in r["labels"]:
            f = lab.split("/")[0]
            by_finding[f] = by_finding.get(f, 0.0) + r["estimate_s"]
    total = sum(r["estimate_s"] for r in runs)
    res = {
        "steps": n,
        "fixed_s": round(fixed, 2),
        "eval_s": round(ev, 2),
        "base_per_step_s": round(per_step, 4),
        "runs": runs,
        "by_finding_s": {k: round(v, 1) for k, v in by_finding.items()},
        "total_s": round(total, 1),
    }
    (out / "timing.json").write_text(json.dumps(res, indent=1))
    print(
        f"total {total / 3600:.2f} h over {len(runs)} runs (fixed {fixed:.1f}s, eval {ev:.2f}s, base step {per_step * 1000:.1f} ms)"
    )


if __name__ == "__main__":
    main()
