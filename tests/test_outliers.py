"""Activation outliers with prefixed sinks: statistics against run_with_cache, the quantized linear inputs against the
formula, the prefix kept in full precision and out of the scales, the PrefixQuant recipe against a brute-force count."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from sink_interp import load_report, tiny_model
from sink_interp.outliers import _quant_hook, activation_outliers, find_prefix, linear_inputs
from sink_interp.quant import fake_quant


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_statistics_equal_run_with_cache(model, tmp_path):
    x = torch.randint(4, 128, (3, 10), generator=torch.Generator().manual_seed(0))
    pre = [1, 7]
    rep = activation_outliers(model, x, prefix=pre, bits=(8,), top=2, batch_size=2, progress=False)
    for c, p in ((0, 0), (1, 2)):
        xx = torch.cat([torch.tensor(pre)[None].expand(3, -1), x], 1) if p else x
        with torch.no_grad():
            logits, cache = model.run_with_cache(xx, names_filter=lambda n: n.endswith("hook_resid_post"))
        for layer in range(2):
            a = cache[f"blocks.{layer}.hook_resid_post"].abs()
            body = a[:, p:]
            np.testing.assert_allclose(rep.max_abs[c, layer], body.amax(-1).mean(0).numpy(), rtol=1e-5)
            np.testing.assert_allclose(rep.median_abs[c, layer], body.median(-1).values.mean(0).numpy(), rtol=1e-5)
            np.testing.assert_allclose(rep.ratio[c, layer], (body.amax(-1) / body.median(-1).values).mean(0).numpy(), rtol=1e-5)
            assert rep.top_dims[c, layer, 4, 0] == int(body.mean(0)[4].argmax())
            if p:
                np.testing.assert_allclose(rep.prefix_max[layer], a[:, :p].amax(-1).mean(0).numpy(), rtol=1e-5)
        lp = torch.log_softmax(logits[:, p:-1], -1)
        own = -lp.gather(-1, xx[:, p + 1 :, None])[..., 0].mean()
        assert rep.loss[c, 0] == pytest.approx(float(own), abs=1e-5)  # the text's tokens 1..T-1 in both conditions
    back = load_report(str(tmp_path / "o.json") if rep.to_json(str(tmp_path / "o.json")) else "")
    assert type(back).__name__ == "OutlierReport" and back.summary() == rep.summary()
    assert rep.loss_frame().shape == (2, 3) and len(rep.layer_frame()) == 4 and "OutlierReport" in repr(rep)


def test_quant_hook_keeps_prefix_and_uses_the_formula():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 5, generator=g)
    x[:, 0, 0] = 100.0  # an outlier in the prefix: it must not set the text's scale
    per_tensor = _quant_hook(1, 4, "tensor")(x, None)
    assert torch.equal(per_tensor[:, :1], x[:, :1])
    torch.testing.assert_close(per_tensor[:, 1:], fake_quant(x[:, 1:], 4, dim=(1, 2)))
    mn, mx = x[0, 1:].min(), x[0, 1:].max()  # one scale for the whole text of sample 0
    levels = torch.unique(torch.round((per_tensor[0, 1:] - mn) / ((mx - mn) / 15)))
    assert len(levels) <= 16
    per_token = _quant_hook(0, 2, "token")(x, None)
    for t in range(6):
        torch.testing.assert_close(per_token[1, t], fake_quant(x[1, t][None], 2)[0])
    four = torch.randn(1, 3, 2, 4, generator=g)  # attn.o's input is [b, s, H, d]: per token over H and d
    torch.testing.assert_close(_quant_hook(0, 3, "token")(four, None), fake_quant(four, 3, dim=(2, 3)))


def test_quantized_loss_changes_and_high_bits_approach_fp(model):
    x = torch.randint(4, 128, (2, 12), generator=torch.Generator().manual_seed(2))
    rep = activation_outliers(model, x, prefix=None, bits=(15, 2), progress=False)
    lf = rep.loss_frame()
    assert lf.loc["no prefix", "per-token int15"] == pytest.approx(lf.loc["no prefix", "fp"], abs=1e-4)
    assert abs(lf.loc["no prefix", "per-tensor int2"] - lf.loc["no prefix", "fp"]) > 1e-4
    assert len(linear_inputs(model)) == 2 * 7


def test_find_prefix_equals_brute_force(model):
    x = torch.randint(4, 128, (4, 9), generator=torch.Generator().manual_seed(3))
    ratio = 4.0
    got = find_prefix(model, x, k=3, ratio=ratio, batch_size=3)
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_resid_post"))
    hit = torch.zeros(x.shape, dtype=torch.bool)
    for layer in range(2):
        a = cache[f"blocks.{layer}.hook_resid_post"].abs()
        hit |= a.amax(-1) / a.median(-1).values > ratio
    counts = Counter()
    for row in range(4):
        counts.update({int(t) for t in x[row, 1:][hit[row, 1:]]})
    expected = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    assert got["ids"] == [i for i, _ in expected] and got["counts"] == [c for _, c in expected]


def test_errors(model):
    x = torch.randint(4, 128, (1, 8))
    with pytest.raises(ValueError, match="prefix must be"):
        activation_outliers(model, x, prefix="auto", progress=False)
    with pytest.raises(ValueError, match="token ids in 0..127"):
        activation_outliers(model, x, prefix=[500], progress=False)
    with pytest.raises(ValueError, match="granularities"):
        activation_outliers(model, x, prefix=None, granularities=("channel",), progress=False)
    with pytest.raises(ValueError, match="found no token"):
        activation_outliers(model, x, prefix="prefixquant", ratio=1e9, bos_first=False, progress=False)
