"""On the offline SmolLM2: 4-bit per-token KV quantization with 0 and 4 intact first tokens equals an independent Hugging
Face implementation of the formula (inside HF's own attention) to 1e-3; every KV policy at full budget is the model."""

from __future__ import annotations

import pytest
import torch

from sink_interp.kvcache import kv_policies
from sink_interp.quant import kv_quant

from .test_quant import hf_quant_loss


@pytest.fixture(scope="module")
def texts(smollm2):
    from sink_interp import long_tokens

    return long_tokens(smollm2, length=96, n=2)


@pytest.mark.slow
def test_4bit_kv_with_0_and_4_intact_equals_hf_formula(smollm2, texts):
    from sink_interp.models import smollm2_checkpoint

    rep = kv_quant(smollm2, texts, bits=(4,), intact=(0, 4), errors=False, batch_size=2, progress=False)
    x = torch.as_tensor(texts.tokens)
    for s in (0, 4):
        assert rep.loss(4, s) == pytest.approx(hf_quant_loss(smollm2_checkpoint(), x, 4, s), abs=1e-3), s


def test_every_policy_at_full_budget_is_the_model_and_sinks_help(smollm2, texts):
    rep = kv_policies(smollm2, texts[:1], budgets=(24, 1.0), n_sinks=4, progress=False)
    for p in rep.policies:
        assert rep.loss(p, 1.0) == rep.full_loss, p
    assert rep.loss("sinks+window", 24) < rep.loss("window", 24)
