"""Training throughput: the same model trained through the TransformerBridge (with and without knob hooks)
vs the bare Hugging Face model.

    PYTHONPATH=. python benchmarks/bench_train.py [--threads 1] [--steps 20] [--rounds 3]

Rounds interleave the variants so that load from other processes on a shared
machine hits them alike; the table reports the median tokens/s per variant.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sink_interp.tasks import BigramBackcopy
from sink_interp.training import build_model, make_sampler, preset
from sink_interp.training.evaluate import masked_ce
from sink_interp.training.loop import make_optimizer
from sink_interp.training.model import build_hf_model

VARIANTS = {
    "hf-eager (no bridge)": ("bb-softmax", "hf"),
    "bridge, softmax (no hooks)": ("bb-softmax", "bridge"),
    "bridge, K bias (hooks)": ("bb-kbias", "bridge"),
    "bridge, sigmoid (hooks)": ("bb-sigmoid-nonorm", "bridge"),
    "bridge, post-norm (hooks)": ("bb-postnorm", "bridge"),
    "bridge, prefix LM (hooks)": ("bb-prefix", "bridge"),
}


def setup(name: str, mode: str, **over):
    cfg = preset(name, **over)
    task = BigramBackcopy(n_vocab=cfg.bb_vocab, seq_len=cfg.seq_len)
    sampler = make_sampler(cfg, task, seed=1)
    if mode == "hf":  # the bare Hugging Face model, never wrapped by a bridge
        hf, _ = build_hf_model(cfg, task.d_vocab)
        opt = torch.optim.AdamW(hf.parameters(), lr=cfg.lr)

        def fwd(x):
            return hf(input_ids=x).logits

    else:
        lab = build_model(cfg, task.d_vocab, task.tokenizer())
        opt = make_optimizer(cfg, lab)

        def fwd(x):
            return lab.bridge(x, return_type="logits")

    def step():
        b = sampler.sample(cfg.batch_size)
        ce, m = masked_ce(fwd(b.tokens), b.tokens, b.loss_mask)
        loss = (ce * m).sum() / m.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return cfg, step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runs = {k: setup(*v) for k, v in VARIANTS.items()}
    rates: dict[str, list[float]] = {k: [] for k in runs}
    for _k, (_, step) in runs.items():
        step()  # warm-up
    for _ in range(args.rounds):
        for k, (cfg, step) in runs.items():
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            dt = time.perf_counter() - t
            rates[k].append(args.steps * cfg.batch_size * cfg.seq_len / dt)
    cfg = next(iter(runs.values()))[0]
    print(
        f"threads={args.threads}, batch {cfg.batch_size} x {cfg.seq_len} tokens, {cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}"
    )
    base = statistics.median(rates["bridge, softmax (no hooks)"])
    for k, r in rates.items():
        med = statistics.median(r)
        print(f"{k:32s} {med:9.0f} tokens/s  ({med / base:.2f}x the bridge)")


if __name__ == "__main__":
    main()
