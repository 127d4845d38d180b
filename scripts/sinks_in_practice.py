#!/usr/bin/env python3
"""Write the "sinks in practice" results on the offline SmolLM2-135M to docs/results/.

Runs three ``sink-interp`` commands on the same texts (the ``n`` longest articles of the shipped corpus,
``length`` tokens each, no BOS) and keeps what each prints next to its JSON report:

    docs/results/quant-smollm2.txt / .json      sink-interp quant    (KV quantization, intact first tokens)
    docs/results/kv-smollm2.txt / .json         sink-interp kv       (eviction policies at a budget)
    docs/results/outliers-smollm2.txt / .json   sink-interp outliers (activation outliers, PrefixQuant prefix)

    python scripts/sinks_in_practice.py                 # T = 512, 2 texts, 2 threads (about 15 min on a busy 2-core CPU)
    python scripts/sinks_in_practice.py --n 4 --only quant

Each .txt ends with the command's wall time and the library versions.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--n", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default="quant,kv,outliers", help="which of quant, kv, outliers to run")
    p.add_argument("--out", default=str(ROOT / "docs" / "results"))
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from sink_interp.cli import main as cli

    common = ["--model", "smollm2-135m", "--length", str(args.length), "--n", str(args.n), "--threads", str(args.threads)]
    commands = {
        "quant": ["quant", "--bits", "8,4,3,2", "--intact", "0,1,4"],
        "kv": ["kv", "--budgets", "64,128,512", "--sinks", "4"],
        "outliers": ["outliers", "--prefix", "prefixquant", "--k-prefix", "3", "--act-bits", "8,4"],
    }
    out = Path(args.out)
    for name in [x.strip() for x in args.only.split(",") if x.strip()]:
        js = out / f"{name}-smollm2.json"
        argv = [*commands[name], *common, "--quiet", "--json", str(js.relative_to(ROOT) if js.is_relative_to(ROOT) else js)]
        buf = io.StringIO()
        t0 = time.time()
        with contextlib.redirect_stdout(buf):
            rc = cli(argv)
        text = f"$ sink-interp {' '.join(argv)}\n\n{buf.getvalue()}"
        (out / f"{name}-smollm2.txt").write_text(text, encoding="utf-8")
        print(f"{name}: exit {rc}, {time.time() - t0:.0f}s -> {out / f'{name}-smollm2.txt'}", flush=True)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
