"""The prepared GPU check: the main analyses on one accelerator, against a Hugging Face SDPA forward, in one table.

    python benchmarks/gpu_check.py [--model smollm2-135m] [--device cuda] [--out gpu_check.json]
    python benchmarks/gpu_check.py --quick --device cpu          # the same code path in about a minute on CPU

Under 10 minutes on one GPU (SmolLM2-135M, n=8 rows of T=1024 and 4096 tokens). Rows of the table:

  hf-sdpa forward   the same checkpoint through transformers with attn_implementation="sdpa", decoder only
                    (model.model: measure_sinks needs no logits), same rows and batch size: the baseline
  measure pattern   measure_sinks(method="pattern") at fp32 and bf16: time and peak memory as ratios to the
                    baseline at the same dtype and length
  measure lse       measure_sinks(method="lse"), the same; ``check`` is max |alpha_lse - alpha_pattern|
  trace_sink        trace_sink on the natural probe (fp32): time; ``check`` names the traced head
  intervene         ZeroValue on key 0 for every head inside ``intervene``: ``check`` is the largest logit
                    change inside the block and whether the logits after it equal those before bit for bit
  patch exact/attr  patch_heads(what="z", metric="logprob", shuffle corruption) on a slice of layers: time;
                    ``check`` on the attribution row: the correlation of its values with the exact ones

Peak memory is ``torch.cuda.max_memory_allocated`` above what was allocated before the case (both models
stay loaded), so it is reported on CUDA only. Times are the median of ``--repeats`` runs after a warm-up.
The JSON (``--out``, written atomically) holds every row and the machine's facts.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable


def _sync(dev: Any) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def measure(fn: Callable[[], Any], dev: Any, repeats: int) -> tuple[Any, float, float]:
    """(result of the last call, median seconds, peak MiB above the memory held before; NaN off CUDA)."""
    import torch

    fn()  # warm-up: kernels, allocator, lazy hooks
    times, peak = [], float("nan")
    out = None
    for _ in range(repeats):
        _sync(dev)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        out = fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
        if dev.type == "cuda":
            peak = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
    return out, statistics.median(times), peak


def hf_folder(name: str) -> str:
    """The Hugging Face folder of ``name``: the offline SmolLM2 cache, a local folder, or a hub id as given."""
    if name == "smollm2-135m":
        from sink_interp.models import smollm2_checkpoint

        return str(smollm2_checkpoint(progress=False))
    return name


def fmt(x: Any) -> str:
    if isinstance(x, str):
        return x.replace("|", "/")
    if isinstance(x, float):
        return "" if math.isnan(x) else f"{x:.3g}"
    return "" if x is None else str(x)


def markdown(rows: list[dict[str, Any]], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _hf_forward(decoder: Any, toks: Any, bs: int) -> None:
    import torch

    with torch.no_grad():
        for i in range(0, toks.shape[0], bs):
            decoder(input_ids=toks[i : i + bs], use_cache=False)


def _measure_sinks(model: Any, probe: Any, bs: int, method: str) -> Any:
    from sink_interp import measure_sinks

    return measure_sinks(model, probe, batch_size=bs, method=method, progress=False)


def measure_cases(args: argparse.Namespace, dtype: str, dev: Any, folder: str, row: Callable[..., None]) -> Any:
    """The HF SDPA baseline and measure_sinks (pattern, lse) at one dtype for every length; returns the bridge."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from sink_interp import load_model, probe_tokens

    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    model = load_model(args.model, device=dev, dtype=dtype, progress=False)
    try:
        hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa", dtype=tdt)
    except TypeError:  # transformers < 4.56 names it torch_dtype
        hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa", torch_dtype=tdt)
    decoder = hf.to(dev).eval().model
    for T in args.lengths:
        probe = probe_tokens(model, args.data, n=args.n, length=T, concat=T > 512)
        bs = args.batch_size or args.n
        _, t_hf, m_hf = measure(functools.partial(_hf_forward, decoder, probe.tokens.to(dev), bs), dev, args.repeats)
        m_ratio = m_hf / m_hf if m_hf > 0 else float("nan")
        row(case="hf-sdpa forward", dtype=dtype, T=T, n=args.n, time_s=t_hf, peak_mib=m_hf, time_ratio=1.0, mem_ratio=m_ratio)
        alphas = {}
        for method in ("pattern", "lse"):
            rep, t, m = measure(functools.partial(_measure_sinks, model, probe, bs, method), dev, args.repeats)
            alphas[method] = np.asarray(rep.alpha, dtype=np.float64)
            diff = float(np.abs(alphas["lse"] - alphas["pattern"]).max()) if method == "lse" else None
            check = f"Sink_1 {rep.rate(1):.1f}%" + (
                f"; max abs(alpha_lse - alpha_pattern) {diff:.2e}" if diff is not None else ""
            )
            row(
                case=f"measure {method}",
                dtype=dtype,
                T=T,
                n=args.n,
                time_s=t,
                peak_mib=m,
                time_ratio=t / t_hf,
                mem_ratio=m / m_hf if m_hf > 0 else float("nan"),
                check=check,
                max_abs_alpha_diff=diff,
            )
    del hf, decoder
    return model


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from sink_interp import ZeroValue, intervene, load_model, patch_heads, probe_tokens, trace_sink
    from sink_interp._internal.provenance import versions
    from sink_interp.patching import corrupt_tokens

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "gpu_check: error: --device cuda but torch sees no CUDA device; fix: run on a GPU machine or --device cpu"
        )
    torch.manual_seed(0)
    folder = hf_folder(args.model)
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()

    def row(**kw: Any) -> None:
        rows.append(kw)
        print(
            f"  {kw['case']:<18} {kw.get('dtype', ''):<9} T={fmt(kw.get('T')):<5} {fmt(kw.get('time_s'))} s  {kw.get('check', '')}"
        )

    fp32_model = None
    for dtype in args.dtypes:
        model = measure_cases(args, dtype, dev, folder, row)
        if dtype == "float32":
            fp32_model = model
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    model = fp32_model if fp32_model is not None else load_model(args.model, device=dev, dtype="float32", progress=False)
    # trace_sink
    probe = probe_tokens(model, args.data, n=args.trace_n, length=args.trace_length)
    rep, t, m = measure(lambda: trace_sink(model, probe, progress=False), dev, args.repeats)
    row(
        case="trace_sink",
        dtype="float32",
        T=args.trace_length,
        n=args.trace_n,
        time_s=t,
        peak_mib=m,
        check=f"head L{rep.layer}H{rep.head}",
    )

    # one intervention round trip
    toks = probe_tokens(model, args.data, n=2, length=args.trace_length).tokens.to(dev)
    with torch.no_grad():
        before = model(toks, return_type="logits").clone()
        t0 = time.perf_counter()
        with intervene(model, ZeroValue()) as m_:
            inside = m_(toks, return_type="logits")
        _sync(dev)
        t = time.perf_counter() - t0
        after = model(toks, return_type="logits")
    changed = float((inside - before).abs().max())
    same = bool(torch.equal(before, after))
    row(
        case="intervene",
        dtype="float32",
        T=args.trace_length,
        n=2,
        time_s=t,
        check=f"inside: max abs logit change {changed:.3g}; after: {'bit-identical' if same else 'DIFFERENT'}",
        restored=same,
        max_abs_logit_change=changed,
    )

    # patch_heads, exact and attribution, on a slice of layers
    clean = probe_tokens(model, args.data, n=args.patch_n, length=args.patch_length)
    corrupted = corrupt_tokens(model, clean.tokens, "shuffle")
    layers = list(range(min(args.patch_layers, model.cfg.n_layers)))
    vals = {}
    for method in ("exact", "attribution"):

        def ph(method: str = method) -> Any:
            return patch_heads(model, clean, corrupted, "logprob", method=method, layers=layers, progress=False)

        rep, t, m = measure(ph, dev, args.repeats)
        vals[method] = np.asarray(rep.values if method == "exact" else rep.estimate, dtype=np.float64).ravel()
        check, corr = "", None
        if method == "attribution":
            ok = np.isfinite(vals["exact"]) & np.isfinite(vals["attribution"])  # the values of unpatched layers are NaN
            corr = float(np.corrcoef(vals["exact"][ok], vals["attribution"][ok])[0, 1])
            check = f"corr(attribution, exact) {corr:.3f} over {int(ok.sum())} heads"
        row(
            case=f"patch {method}",
            dtype="float32",
            T=args.patch_length,
            n=args.patch_n,
            time_s=t,
            peak_mib=m,
            check=check,
            corr_with_exact=corr,
        )

    facts = {
        "model": args.model,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "quick": args.quick,
        "repeats": args.repeats,
        "total_s": time.perf_counter() - t_start,
        "versions": versions(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    return {"facts": facts, "rows": rows}


COLS = ["case", "dtype", "T", "n", "time_s", "time_ratio", "peak_mib", "mem_ratio", "check"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m (offline) or a local Hugging Face folder")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default=None, help="write the rows and facts as JSON here (atomically)")
    p.add_argument("--quick", action="store_true", help="small sizes: n=2, T=64, one repeat (the CPU smoke test)")
    p.add_argument("--data", default="natural", help="probe source for every case (default natural)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.out is not None:
        from sink_interp._internal.provenance import check_writable

        check_writable(args.out, "--out")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    q = args.quick
    args.dtypes = ["float32", "bfloat16"]
    args.lengths = [64] if q else [1024, 4096]
    args.n = 2 if q else 8
    args.batch_size = None
    args.repeats = 1 if q else 3
    args.trace_n, args.trace_length = (4, 32) if q else (16, 256)
    args.patch_n, args.patch_length, args.patch_layers = (2, 16, 2) if q else (4, 64, 4)
    print(f"gpu_check: {args.model} on {args.device}{' (quick)' if q else ''}")
    res = run(args)
    table = markdown(res["rows"], COLS)
    f = res["facts"]
    print()
    print(table)
    print(f"\n{f['device_name']}, {f['versions'].get('torch')}, {f['total_s']:.0f} s in all")
    if args.out:
        from sink_interp._internal.provenance import dumps, write_atomic

        write_atomic(args.out, dumps({**res, "table": table}))
        print(f"wrote {args.out}")
    return res


if __name__ == "__main__":
    main()
