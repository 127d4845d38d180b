"""Cost of patch_heads against a plain hook loop, on the same model, inputs and metric, in one run.

    python benchmarks/bench_patch.py [--model smollm2-135m] [--n 4] [--length 32] [--threads 1] [--layers 0-29]

Cases (every head of the chosen layers, ``what="z"``, noising: run clean, write in the corrupted head output):
  loop         run_with_hooks once per head, replacing blocks.{l}.attn.hook_z[:, :, h] with the corrupted
               run's value (the corrupted cache is taken once per layer): the baseline
  exact        patch_heads(method="exact")
  attribution  patch_heads(method="attribution")

Printed: each case's wall time, ``exact / loop`` and ``attribution / exact``, and the largest difference between
the loop's and the exact sweep's metric values. Targets (issue 15): exact <= 0.6x the loop, attribution <= 0.15x
exact. On a shared machine the times move with the other jobs: the ratios, measured in the same run, less so.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--layers", default=None, help="e.g. 0-3,29 (default: every layer)")
    args = p.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from sink_interp import load_model, patch_heads, probe_tokens
    from sink_interp._internal import hooknames
    from sink_interp.cli.patch import parse_layers

    model = load_model(args.model, device="cpu")
    toks = probe_tokens(model, "natural", n=2 * args.n, length=args.length)
    clean, corrupted = toks[: args.n], toks[args.n :]
    L, H = int(model.cfg.n_layers), int(model.cfg.n_heads)
    layers = parse_layers(args.layers) or list(range(L))
    tgt = clean[:, 1:]

    def metric(logits: torch.Tensor) -> torch.Tensor:  # mean log-prob of the clean next tokens
        lp = torch.log_softmax(logits[:, :-1].float(), -1)
        return lp.gather(-1, tgt[..., None]).mean()

    with torch.no_grad():
        model(clean)  # warm-up: the bridge's lazy hooks, the allocator
    patch_heads(model, clean, corrupted, metric, layers=[L - 1], heads=[0], progress=False)

    t = time.perf_counter()
    loop = np.full((L, H), np.nan)
    with torch.no_grad():
        for layer in layers:
            name = hooknames.z(layer)
            _, cache = model.run_with_cache(corrupted, names_filter=lambda n, name=name: n == name)
            src = cache[name]
            for h in range(H):

                def hook(x, hook, h=h, src=src):
                    x = x.clone()
                    x[:, :, h] = src[:, :, h]
                    return x

                loop[layer, h] = float(metric(model.run_with_hooks(clean, fwd_hooks=[(name, hook)])))
    t_loop = time.perf_counter() - t

    t = time.perf_counter()
    exact = patch_heads(model, clean, corrupted, metric, layers=layers, progress=False)
    t_exact = time.perf_counter() - t

    t = time.perf_counter()
    att = patch_heads(model, clean, corrupted, metric, layers=layers, method="attribution", progress=False)
    t_att = time.perf_counter() - t

    diff = float(np.nanmax(np.abs(exact.values - loop)))
    ag = exact.agreement(att)
    print(
        f"model {args.model}, {args.n} x {args.length} tokens, {len(layers)} layers x {H} heads = {len(layers) * H} heads, "
        f"{args.threads} thread(s); blocks below the patched layer skipped: {exact.started_at_layer}"
    )
    print(f"{'case':<13}{'time s':>9}{'ratio':>22}")
    print(f"{'loop':<13}{t_loop:>9.2f}{'1.00x loop':>22}")
    print(f"{'exact':<13}{t_exact:>9.2f}{f'{t_exact / t_loop:.3f}x loop':>22}")
    print(f"{'attribution':<13}{t_att:>9.2f}{f'{t_att / t_exact:.3f}x exact':>22}")
    print(f"max |exact - loop| = {diff:.2e} (target <= 1e-4)")
    print(f"attribution vs exact: Spearman {ag['spearman']:.3f}, missed {len(ag['missed'])} of {ag['n_heads']} heads")
    print("targets: exact <= 0.6x loop, attribution <= 0.15x exact")


if __name__ == "__main__":
    main()
