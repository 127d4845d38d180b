"""``patch_heads`` is finite-or-fail like every analysis: the metric's type, shape and finiteness are checked on
both baselines and on every patched run, indices are whole numbers (never truncated), and
``patch_sink(..., "bos")`` refuses tokens it cannot show to start with BOS.

Each hostile metric below is NaN (or the wrong type) on exactly one run, counted by the metric itself, so
the test knows which run the message must name.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sink_interp as si
from sink_interp import NonFiniteError, patch_heads, patch_sink, probe_tokens
from sink_interp.capture import hook_snapshot


@pytest.fixture(scope="module")
def model():
    m = si.tiny_model()
    m(torch.randint(4, 128, (1, 4)))  # the bridge adds its own hooks once
    return m


def _pair():
    clean = torch.randint(4, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    return clean, clean.flip(0)


def nan_on_call(k: int):
    """A metric (one logit, mean over samples) that is NaN on its ``k``-th call only."""
    calls = []

    def metric(logits):
        calls.append(1)
        v = logits[:, -2, 0].float().mean()
        return v * float("nan") if len(calls) == k else v

    return metric


@pytest.mark.parametrize(
    "call, direction, where",
    [
        (1, "noise", "the clean input (unpatched)"),  # the clean=nan: before, 0 of 8 values finite
        (2, "noise", "the corrupted input (unpatched)"),
        (1, "denoise", "the corrupted input (unpatched)"),
        (3, "noise", "the clean input with layer 0 head 0's z patched"),  # calls: base, source, then patched runs
        (6, "noise", "the clean input with layer 0 head 3's z patched"),
        (10, "noise", "the clean input with layer 1 head 3's z patched"),
    ],
)
def test_a_nan_metric_on_any_run_raises_naming_the_run(model, call, direction, where):
    clean, corr = _pair()
    before = hook_snapshot(model)
    with pytest.raises(NonFiniteError) as e:
        patch_heads(model, clean, corr, nan_on_call(call), direction=direction, batch_size=1, progress=False)
    msg = str(e.value)
    assert msg.startswith(f"the metric is nan on {where}:") and "\n" not in msg and "fix: " in msg, msg
    assert hook_snapshot(model) == before


def test_the_same_metric_without_nan_gives_finite_values(model):
    clean, corr = _pair()
    rep = patch_heads(model, clean, corr, nan_on_call(10**6), batch_size=1, progress=False)
    assert np.isfinite(rep.values).all() and np.isfinite([rep.clean, rep.corrupted]).all()


def test_a_non_finite_attribution_raises(model):
    clean, corr = _pair()

    def grad_nan(logits):  # finite value, NaN gradient: sqrt at 0
        return torch.sqrt(logits[:, -2, 0].float().mean() * 0.0)

    with pytest.raises(NonFiniteError, match=r"^the attribution estimate is NaN/Inf for 8 patched heads"):
        patch_heads(model, clean, corr, grad_nan, method="attribution", progress=False)


@pytest.mark.parametrize(
    "metric, kw, want",
    [
        (lambda lo: 0.5, {}, "metric must return a scalar tensor; it returned a float (0.5) on the clean input (unpatched)"),
        (lambda lo: "x", {}, "metric must return a scalar tensor; it returned a str ('x') on the clean input (unpatched)"),
        (lambda lo: lo.argmax(-1).sum(), {}, "metric must return a float tensor, got torch.int64 on the clean input"),
        (
            lambda lo: lo[:, -2, :2].mean(0),
            {},
            "metric must return one number (a scalar tensor), got shape (2,) on the clean input",
        ),
        (0.5, {}, "metric must be a function of the logits or one of ('logit_diff', 'logprob', 'kl'), got float"),
        ("accuracy", {}, "metric must be a function of the logits or one of ('logit_diff', 'logprob', 'kl'), got 'accuracy'"),
        (lambda lo: lo[:, -2, 0].mean().detach(), {"method": "attribution"}, "method='attribution' needs the metric's gradient"),
        ("logprob", {"metric_from": 0.5}, "metric_from must be a whole number in [0, 6]"),
        ("logprob", {"metric_from": True}, "metric_from must be a whole number in [0, 6]"),
        ("logprob", {"layers": [1.7]}, "layers must hold whole numbers (indices), got [1.7]"),  # before: layer 1
        ("logprob", {"heads": [0.5]}, "heads must hold whole numbers (indices), got [0.5]"),  # before: head 0
        ("logprob", {"positions": [1.5]}, "positions must hold whole numbers (indices), got [1.5]"),  # before: position 1
        ("logprob", {"positions": 1.5}, "positions must hold whole numbers (indices), got 1.5"),
        ("logprob", {"layers": [True]}, "layers must hold whole numbers (indices), got [True]"),  # before: layer 1
        ("logprob", {"layers": "01"}, "layers must hold whole numbers (indices), got '01'"),
    ],
)
def test_a_wrong_metric_or_index_is_one_line(model, metric, kw, want):
    clean, corr = _pair()
    with pytest.raises(ValueError) as e:
        patch_heads(model, clean, corr, metric, progress=False, **kw)
    assert str(e.value).startswith(want) and "\n" not in str(e.value), str(e.value)


def test_numpy_integers_are_indices(model):
    clean, corr = _pair()
    rep = patch_heads(model, clean, corr, "logprob", layers=[np.int64(1)], positions=np.int64(3), progress=False)
    assert rep.layers == (1,) and rep.positions == (3,)


# --------------------------------------------------------------------------- patch_sink(..., "bos")


def test_patch_sink_bos_refuses_tokens_without_bos(model):
    with pytest.raises(ValueError, match=r"^corrupt='bos' needs tokens that start with BOS \(id 1\)"):
        patch_sink(model, torch.randint(4, 128, (2, 8)), "bos", progress=False)
    with pytest.raises(ValueError, match=r"^corrupt='bos' removes the BOS token, but these tokens were made without BOS"):
        patch_sink(model, probe_tokens(model, "random", n=2, length=8, bos=False), "bos", progress=False)
    assert patch_sink(model, probe_tokens(model, "random", n=2, length=8, bos=True), "bos", progress=False).recipe == "bos"


def test_patch_sink_bos_on_a_model_that_names_no_bos(tmp_path):
    """A checkpoint with no tokenizer and no bos_token_id: before, the recipe ran on tokens that carry no BOS."""
    from sink_interp.models import tiny_hf_model

    hf = tiny_hf_model()
    hf.config.bos_token_id = None
    hf.save_pretrained(str(tmp_path / "ckpt"))  # no tokenizer files
    m = si.load_model(str(tmp_path / "ckpt"), device="cpu")
    assert m.tokenizer is None
    toks = torch.randint(4, 128, (2, 8))
    with pytest.raises(ValueError, match=r"^corrupt='bos' removes the BOS token, but this model names no BOS id"):
        patch_sink(m, toks, "bos", progress=False)
    assert patch_sink(m, toks, "first-token", progress=False).recipe == "first-token"
