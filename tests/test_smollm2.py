"""Integration on the offline SmolLM2: the library against an independent HF eager computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sink_interp import measure_sinks, probe_tokens
from sink_interp.capture import hook_snapshot
from sink_interp.data import natural_path

from .reference import hf_attentions, official_alpha, official_rates

pytestmark = pytest.mark.smollm2


def _user_jsonl(tmp_path, n):
    """A user file in the official format, built from texts the test picks (not the library's first lines)."""
    lines = natural_path().read_text().splitlines()[::-1][: n + 5]
    texts = [json.loads(x)["text"] for x in lines]
    f = tmp_path / "probe_valid_natural.jsonl"
    f.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    return f, texts


@pytest.mark.parametrize("bos", [False, True])
def test_user_jsonl_agrees_with_hf_eager_official_formula(smollm2, smollm2_hf, tmp_path, bos):
    n, T = 24, 64
    f, texts = _user_jsonl(tmp_path, n)
    tokens = probe_tokens(smollm2, f, n=n, length=T, bos=bos)
    # independent tokenisation, as the official script does it (tokenizer, truncate)
    tok = smollm2.tokenizer
    ref_rows = []
    for t in texts:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        ids = ([tok.bos_token_id] if bos else []) + ids
        if len(ids) >= T:
            ref_rows.append(ids[:T])
    ref_tokens = torch.tensor(ref_rows[:n])
    assert torch.equal(tokens.tokens, ref_tokens)
    before = hook_snapshot(smollm2)
    report = measure_sinks(smollm2, tokens, eps=0.3, progress=False)
    assert hook_snapshot(smollm2) == before
    alpha = official_alpha(hf_attentions(smollm2_hf, ref_tokens))
    np.testing.assert_allclose(report.alpha, alpha.numpy(), atol=2e-5)
    ref_rate = official_rates(alpha, 0.3)[0].item()
    assert abs(report.rate(1) - ref_rate) < 0.1
    ref_layers = (alpha[..., 0] > 0.3).float().mean(dim=(0, 2)) * 100
    assert np.abs(report.layer_rates(1) - ref_layers.numpy()).max() < 0.1
    assert report.bos is bos


def test_repeated_tokens_without_bos_give_exactly_zero(smollm2):
    tokens = probe_tokens(smollm2, "repeat", n=20, length=64, bos=False)
    report = measure_sinks(smollm2, tokens, progress=False)
    assert report.rate(1) == 0.0
    assert f"{report.rate(1):.2f}" == "0.00"


def test_natural_text_without_bos_has_a_strong_first_token_sink(smollm2):
    report = measure_sinks(smollm2, probe_tokens(smollm2, "natural", n=20, length=64), progress=False)
    assert report.rate(1) > 50.0
    assert report.bos is False and report.data == "natural"


def test_lse_fused_equals_hf_eager_official_formula_on_concatenated_text(smollm2, smollm2_hf):
    """The fused lse engine on SmolLM2 (GQA 9/3, RoPE) against HF eager output_attentions, at T = 160."""
    tokens = probe_tokens(smollm2, "natural-concat", n=1, length=160)
    before = hook_snapshot(smollm2)
    report = measure_sinks(smollm2, tokens, method="lse", progress=False)
    assert hook_snapshot(smollm2) == before
    assert report.method == "lse" and report.engine.engine == "fused"
    alpha = official_alpha(hf_attentions(smollm2_hf, tokens.tokens, batch_size=1))
    np.testing.assert_allclose(report.alpha, alpha.numpy(), atol=2e-5)
    pattern = measure_sinks(smollm2, tokens, method="pattern", progress=False)
    np.testing.assert_allclose(report.alpha, pattern.alpha, atol=1e-5)
