"""Cost of measure_sinks against a plain TransformerBridge forward over the same tokens.

    python benchmarks/bench_measure.py [--model smollm2-135m] [--n 100] [--length 64] [--repeats 3]

Each case runs in its own subprocess: load the model, warm up, reset the
process's peak-RSS counter (Linux ``/proc/self/clear_refs``), then run the
case ``--repeats`` times. Printed: median wall time, peak RSS above the loaded
model, and both as ratios against the plain forward measured in the same run.

Cases:
  forward        model(batch) for every batch (logits computed), no hooks: the baseline
  measure_sinks  measure_sinks(model, tokens) with the same batch size
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_case(case: str, model_name: str, n: int, length: int, repeats: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from sink_interp import load_model, measure_sinks, probe_tokens
    from sink_interp.capture import auto_batch_size

    model = load_model(model_name, device="cpu")
    tokens = probe_tokens(model, "natural", n=n, length=length)
    bs = auto_batch_size(model, length)
    with torch.no_grad():
        model(tokens[:2])  # warm-up: lazy hooks, allocator
    measure_sinks(model, tokens[:2], progress=False)

    def forward() -> None:
        with torch.no_grad():
            for i in range(0, n, bs):
                model(tokens[i : i + bs])

    def measure() -> None:
        measure_sinks(model, tokens, batch_size=bs, progress=False)

    fn = {"forward": forward, "measure_sinks": measure}[case]
    base_kb = _rss_kb("VmRSS")
    can_reset = _reset_peak()
    times = []
    peak_kb = None
    for i in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if i == 0:
            peak_kb = _rss_kb("VmHWM") if can_reset else None
    return {
        "case": case,
        "seconds": statistics.median(times),
        "times": times,
        "peak_above_model_mb": None if peak_kb is None else (peak_kb - base_kb) / 1024,
        "model_rss_mb": base_kb / 1024,
        "batch_size": bs,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.model, args.n, args.length, args.repeats, args.threads)))
        return
    results = {}
    for case in ("forward", "measure_sinks"):
        cmd = [
            sys.executable,
            __file__,
            "--case",
            case,
            "--model",
            args.model,
            "--n",
            str(args.n),
            "--length",
            str(args.length),
            "--repeats",
            str(args.repeats),
            "--threads",
            str(args.threads),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[case] = json.loads(out)
    base = results["forward"]
    print(
        f"model {args.model}, {args.n} x {args.length} tokens, batch {base['batch_size']}, {args.threads} threads, "
        f"median of {args.repeats}; model RSS {base['model_rss_mb']:.0f} MB"
    )
    print(f"{'case':<15}{'time s':>9}{'time ratio':>12}{'peak MB':>10}{'peak ratio':>12}")
    for case, r in results.items():
        tr = r["seconds"] / base["seconds"]
        pk = r["peak_above_model_mb"]
        pr = "n/a" if pk is None or not base["peak_above_model_mb"] else f"{pk / base['peak_above_model_mb']:.2f}x"
        print(f"{case:<15}{r['seconds']:>9.2f}{tr:>11.2f}x{(pk or float('nan')):>10.0f}{pr:>12}")
    print("targets: measure_sinks time <= 1.3x and peak memory <= 1.3x the plain forward")


if __name__ == "__main__":
    main()
