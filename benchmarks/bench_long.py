"""Sink scores at long context: time and peak memory against a plain fast forward, from one run.

    python benchmarks/bench_long.py [--model smollm2-135m] [--lengths 64 512 2048 8192]
                                    [--cases floor official pattern lse] [--threads 1] [--repeats 1] [--json OUT]

For every length T (natural text from the shipped corpus; passages joined for
T > 512; n = max(1, 2048 // T) samples, one batch) and every case, a fresh
subprocess loads the model, warms the case up on 32 tokens, resets the
process's peak-RSS counter (Linux ``/proc/self/clear_refs``), runs the case
``--repeats`` times, and reports the median wall time, the median CPU time of
the process (``time.process_time``; with one thread the better measure on a
shared, loaded machine), and the peak RSS of the first run above the loaded
model. The parent prints one table of ratios against the floor of the same T.

Cases:
  floor     the HF model (same checkpoint) with attn_implementation="sdpa", model(tokens).logits: a plain fast forward
  official  Gu et al.'s eval_sink_open_source.py, reimplemented faithfully: HF eager, per sample
            generate(max_new_tokens=1, output_attentions=True, return_dict_in_generate=True), layers and samples
            stacked with torch.cat into [n, L, H, T, T], then importance = (A / ratios).sum(-2) and
            Sink = mean(importance > eps); the .npy round trip to disk is left out (kept in memory instead)
  pattern   measure_sinks(bridge, tokens, method="pattern"): hook_pattern reduced layer by layer
  lse       measure_sinks(bridge, tokens, method="lse"): fused engine (HF twin + CPU flash kernel with LSE)
  lse-hooks measure_sinks(bridge, tokens, method="lse-hooks"): blockwise lse through the bridge's hooks
  bridge    bridge(tokens): the TransformerBridge's own forward (eager attention), no hooks

A case whose estimated peak exceeds 85 % of the free memory is skipped; its
estimated footprint is printed instead (for the official method the stacked
maps alone take n * L * H * T^2 * 4 bytes).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CASES = ("floor", "official", "pattern", "lse", "lse-hooks", "bridge")
DEFAULT_CASES = ("floor", "official", "pattern", "lse")
GB = 1024**3


def _status_kb(field: str) -> int:
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


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def n_samples(length: int) -> int:
    return max(1, 2048 // length)


# --------------------------------------------------------------------------- the cases (child process)


def _load_hf(model_name: str, attn: str):
    import torch
    from transformers import AutoModelForCausalLM

    from sink_interp.models import TINY_MODELS, smollm2_checkpoint, tiny_hf_model

    if model_name in TINY_MODELS:
        hf = tiny_hf_model(**TINY_MODELS[model_name])
        hf.config._attn_implementation = attn
        return hf.eval()
    path = str(smollm2_checkpoint()) if model_name == "smollm2-135m" else model_name
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn, dtype=torch.float32).eval()


def official_method(hf, tokens, eps: float = 0.3):
    """eval_sink_open_source.py: measure_attention_sink + compute_attention_sink, on token rows."""
    import torch

    num_layers = hf.config.num_hidden_layers
    n, T = tokens.shape

    def measure():
        attention_scores_all_sample = []
        for i in range(n):
            inputs = {"input_ids": tokens[i : i + 1], "attention_mask": torch.ones(1, T, dtype=torch.long)}
            outputs = hf.generate(
                **inputs, output_attentions=True, return_dict_in_generate=True, max_new_tokens=1, do_sample=False, pad_token_id=0
            )
            attentions = outputs["attentions"]
            assert len(attentions) == 1
            attention_scores_all_layer = []
            for layer in range(num_layers):
                attention_scores_all_layer.append(attentions[0][layer])
            attention_scores_all_layer = torch.cat(attention_scores_all_layer, dim=0)
            attention_scores_all_sample.append(attention_scores_all_layer.unsqueeze(dim=0))
        attention_scores_all_sample = torch.cat(attention_scores_all_sample, dim=0)  # (n, L, H, T, T)
        return attention_scores_all_sample.cpu().numpy()  # (np.save in the original)

    arr = measure()
    attention_scores = torch.from_numpy(arr)  # (np.load in the original)
    ns, nl, nh, t1, t2 = attention_scores.shape
    ratios = torch.arange(t1, 0, -1)[None, None, None, :].expand(ns, nl, nh, t1, t2).to(attention_scores)
    importance_scores = (attention_scores / ratios).sum(dim=-2)
    metric1 = (importance_scores > eps).to(torch.float).mean(dim=(0, 1, 2))
    return metric1 * 100


def run_case(case: str, model_name: str, tokens_path: str, repeats: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokens = torch.load(tokens_path)
    n, T = tokens.shape
    extra: dict = {}
    if case in ("floor", "official"):
        hf = _load_hf(model_name, "sdpa" if case == "floor" else "eager")
        if case == "floor":

            def fn(x):
                with torch.no_grad():
                    return hf(x).logits
        else:

            def fn(x):
                with torch.no_grad():
                    return official_method(hf, x)
    else:
        from sink_interp import load_model, measure_sinks

        bridge = load_model(model_name, device="cpu")
        if case == "bridge":

            def fn(x):
                with torch.no_grad():
                    return bridge(x)
        else:

            def fn(x):
                rep = measure_sinks(bridge, x, batch_size=n, progress=False, method=case)
                extra["Sink_1"] = rep.rate(1)
                extra["engine"] = rep.engine.engine if rep.engine else "pattern"
                return rep

    fn(tokens[:1, : min(32, T)])  # warm-up: lazy hooks, kernel registration, allocator
    gc.collect()
    base_kb = _status_kb("VmRSS")
    can_reset = _reset_peak()
    times, cpu, peak_kb = [], [], None
    for i in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(tokens)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if i == 0:
            peak_kb = _status_kb("VmHWM") if can_reset else None
        if case == "official":
            extra["Sink_1"] = float(out[0])
        del out
        gc.collect()
    return {
        "case": case,
        "length": T,
        "n": n,
        "seconds": statistics.median(times),
        "times": times,
        "cpu_seconds": statistics.median(cpu),
        "cpu_times": cpu,
        "peak_above_model_mb": None if peak_kb is None else (peak_kb - base_kb) / 1024,
        "model_rss_mb": base_kb / 1024,
        **extra,
    }


# --------------------------------------------------------------------------- estimates and the table (parent)


def estimate_bytes(case: str, cfg: dict, n: int, T: int) -> int:
    """Rough peak above the model, used only to skip cases that cannot fit."""
    L, H, d = cfg["n_layers"], cfg["n_heads"], cfg["d_model"]
    maps = 4 * H * T * T  # one layer's T x T float32 maps for one sample
    linear = 4 * T * (cfg["d_vocab"] + 40 * d) * n
    if case == "official":
        # the per-sample tensors, their torch.cat, and the last sample's attention tuple, alive together
        return (2 * n + 1) * L * maps + linear
    if case in ("pattern", "lse-hooks", "bridge"):
        return 4 * n * maps + linear  # scores, softmax, pattern, reductions of one layer (batch n): ~3.9 maps measured at T=2048
    return linear


def fmt_mb(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 512, 2048, 8192])
    p.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), choices=CASES)
    p.add_argument("--repeats", type=int, default=None, help="runs per case (default: 3 for T <= 512, else 1)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, metavar="OUT")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tokens", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.model, args.tokens, args.repeats, args.threads)))
        return

    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sink_interp import load_model, probe_tokens

    model = load_model(args.model, device="cpu")
    cfg = dict(n_layers=model.cfg.n_layers, n_heads=model.cfg.n_heads, d_model=model.cfg.d_model, d_vocab=model.cfg.d_vocab)
    tmp = tempfile.mkdtemp(prefix="bench_long_")
    token_files = {}
    for T in args.lengths:
        n = n_samples(T)
        if model.tokenizer is not None and args.model != "tiny" and not args.model.startswith("tiny-"):
            toks = probe_tokens(model, "natural", n=n, length=T, concat=T > 512)
        else:
            toks = probe_tokens(model, "random", n=n, length=T)
        token_files[T] = os.path.join(tmp, f"tokens_{T}.pt")
        torch.save(toks.tokens.clone(), token_files[T])
    del model
    gc.collect()

    started = time.time()
    load_start = os.getloadavg()
    results: dict[int, dict[str, dict]] = {}
    for T in args.lengths:
        n = n_samples(T)
        results[T] = {}
        for case in args.cases:
            need = estimate_bytes(case, cfg, n, T)
            free = _mem_available()
            if need > 0.85 * free:
                results[T][case] = {
                    "case": case,
                    "skipped": True,
                    "estimate_gb": need / GB,
                    "free_gb": free / GB,
                    "stacked_gb": n * cfg["n_layers"] * 4 * cfg["n_heads"] * T * T / GB,
                }
                print(f"T={T} {case}: skipped (needs ~{need / GB:.1f} GB, {free / GB:.1f} GB free)", file=sys.stderr, flush=True)
                continue
            repeats = args.repeats or (3 if T <= 512 else 1)
            cmd = [
                sys.executable,
                __file__,
                "--case",
                case,
                "--model",
                args.model,
                "--tokens",
                token_files[T],
                "--repeats",
                str(repeats),
                "--threads",
                str(args.threads),
            ]
            t0 = time.time()
            la0 = os.getloadavg()[0]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                results[T][case] = {"case": case, "failed": True, "error": proc.stderr.strip().splitlines()[-1:]}
                print(f"T={T} {case}: failed: {proc.stderr.strip()[-500:]}", file=sys.stderr, flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["load_avg"] = [la0, os.getloadavg()[0]]
            results[T][case] = r
            print(
                f"T={T} {case}: {r['seconds']:.2f} s (cpu {r['cpu_seconds']:.2f} s), peak +{fmt_mb(r['peak_above_model_mb'])} MB "
                f"(wall {time.time() - t0:.0f} s, load {la0:.1f})",
                file=sys.stderr,
                flush=True,
            )

    print()
    print(
        f"model {args.model}; {args.threads} thread(s); median of {args.repeats or '3 (T <= 512) / 1'} runs; n = max(1, 2048 // T) samples in one batch; "
        f"peak = max RSS of the first run above the loaded model"
    )
    print(
        f"load average (1/5/15 min) at start {load_start[0]:.1f}/{load_start[1]:.1f}/{load_start[2]:.1f}, "
        f"at end {os.getloadavg()[0]:.1f}/{os.getloadavg()[1]:.1f}/{os.getloadavg()[2]:.1f}; took {(time.time() - started) / 60:.0f} min"
    )
    header = (
        f"{'T':>6} {'n':>3}  {'case':<10}{'wall s':>9}{'x floor':>9}{'cpu s':>9}{'x floor':>9}"
        f"{'peak MB':>10}{'x floor':>9}  {'Sink_1':>7}  note"
    )
    print(header)
    print("-" * len(header))
    for T in args.lengths:
        base = results[T].get("floor", {})
        for case in args.cases:
            r = results[T].get(case, {})
            n = n_samples(T)
            if r.get("skipped"):
                print(
                    f"{T:>6} {n:>3}  {case:<10}{'skipped':>9}{'':>27}{'':>19}  {'':>7}  needs ~{r['estimate_gb']:.0f} GB "
                    f"({r['free_gb']:.0f} GB free); stacked maps alone {r['stacked_gb']:.1f} GB"
                )
                continue
            if r.get("failed") or not r:
                print(f"{T:>6} {n:>3}  {case:<10}{'failed':>10}  {r.get('error', '')}")
                continue
            tr = f"{r['seconds'] / base['seconds']:.2f}x" if base.get("seconds") else "-"
            cr = f"{r['cpu_seconds'] / base['cpu_seconds']:.2f}x" if base.get("cpu_seconds") else "-"
            pk = r["peak_above_model_mb"]
            bpk = base.get("peak_above_model_mb")
            pr = f"{pk / bpk:.2f}x" if pk is not None and bpk else "-"
            s1 = f"{r['Sink_1']:.1f}%" if "Sink_1" in r else ""
            note = r.get("engine", "") if case.startswith("lse") else ""
            print(
                f"{T:>6} {n:>3}  {case:<10}{r['seconds']:>9.2f}{tr:>9}{r['cpu_seconds']:>9.2f}{cr:>9}"
                f"{fmt_mb(pk):>10}{pr:>9}  {s1:>7}  {note}"
            )
    shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "model": args.model,
                    "threads": args.threads,
                    "repeats": args.repeats,
                    "results": results,
                    "load_start": load_start,
                    "load_end": os.getloadavg(),
                },
                f,
                indent=1,
            )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
