"""patch_heads on the offline SmolLM2 (GQA: 9 query heads, 3 KV heads) against a plain run_with_hooks loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sink_interp import patch_heads, probe_tokens
from sink_interp.capture import hook_snapshot
from sink_interp.data import natural_path

pytestmark = pytest.mark.smollm2


def _unseen(model, n=3, T=24):
    """Inputs the library's probes do not use: the natural file's last lines, tokenised here."""
    lines = natural_path().read_text().splitlines()[::-1]
    rows = []
    for line in lines:
        ids = model.tokenizer(json.loads(line)["text"], add_special_tokens=False)["input_ids"]
        if len(ids) >= 2 * T:
            rows.append(ids[:T] if len(rows) % 2 == 0 else ids[T : 2 * T])
        if len(rows) == 2 * n:
            break
    t = torch.tensor(rows)
    return t[0::2], t[1::2]


def _metric(clean):
    tgt = clean[:, 1:]

    def logprob(logits):
        return torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, tgt[..., None]).mean()

    return logprob


@pytest.mark.slow
def test_z_equals_the_plain_loop_and_hooks_stay(smollm2):
    clean, corr = _unseen(smollm2)
    fn = _metric(clean)
    layers = [2, 27]
    before = hook_snapshot(smollm2)
    rep = patch_heads(smollm2, clean, corr, fn, layers=layers, progress=False)
    assert hook_snapshot(smollm2) == before and rep.started_at_layer is True
    for layer in layers:
        name = f"blocks.{layer}.attn.hook_z"
        _, cache = smollm2.run_with_cache(corr, names_filter=lambda n, name=name: n == name)
        for h in range(9):

            def hook(x, hook, h=h, src=cache[name]):
                x = x.clone()
                x[:, :, h] = src[:, :, h]
                return x

            with torch.no_grad():
                ref = float(fn(smollm2.run_with_hooks(clean, fwd_hooks=[(name, hook)])))
            assert rep.values[layer, h] == pytest.approx(ref, abs=1e-4)
    assert np.isnan(rep.values[0]).all()


def test_sink_value_per_kv_head_and_attribution(smollm2):
    toks = probe_tokens(smollm2, "natural", n=3, length=24).tokens
    corr = toks.roll(1, 0)
    fn = _metric(toks)
    rep = patch_heads(smollm2, toks, corr, fn, what="v-sink", layers=[4], method="both", progress=False)
    name = "blocks.4.attn.hook_v"
    _, cache = smollm2.run_with_cache(corr, names_filter=lambda n: n == name)
    for g in range(3):

        def hook(x, hook, g=g):
            x = x.clone()
            x[:, 0, g] = cache[name][:, 0, g]
            return x

        with torch.no_grad():
            ref = float(fn(smollm2.run_with_hooks(toks, fwd_hooks=[(name, hook)])))
        assert rep.kv_values[4, g] == pytest.approx(ref, abs=1e-4)
    assert rep.values.shape == (30, 9) and np.isfinite(rep.values[4]).all() and np.isfinite(rep.estimate[4]).all()
