"""The sink metric against independent references: HF eager attention and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sink_interp import measure_sinks, probe_tokens
from sink_interp._internal import hooknames
from sink_interp.capture import attach_hooks
from sink_interp.metrics import sink_alpha

from .conftest import ARCHS
from .reference import hf_attentions, official_alpha, official_rates, uniform_alpha


@pytest.mark.parametrize("name", ARCHS)
def test_alpha_equals_official_formula_on_hf_eager_attention(tiny_models, name):
    model, hf = tiny_models(name)
    tokens = torch.randint(4, model.cfg.d_vocab, (6, 24), generator=torch.Generator().manual_seed(1))
    report = measure_sinks(model, tokens, eps=0.3, batch_size=4, progress=False)
    ref = official_alpha(hf_attentions(hf, tokens))
    assert report.alpha.shape == tuple(ref.shape)
    np.testing.assert_allclose(report.alpha, ref.numpy(), atol=1e-6, rtol=1e-5)
    for eps in (0.05, 0.1, 0.3):
        np.testing.assert_allclose(report.rates(eps), official_rates(ref, eps).numpy(), atol=1e-9)


@pytest.mark.parametrize("name", ["tiny-nope", "tiny-learned"])
def test_nope_repeated_tokens_give_uniform_attention_closed_form(tiny_models, name):
    """Repeated tokens without position information: every hidden state is identical, A[t, j] = 1/t."""
    model, _ = tiny_models(name)
    T = 20
    tokens = probe_tokens(model, "repeat", n=5, length=T, seed=3)
    report = measure_sinks(model, tokens, progress=False)
    expected = uniform_alpha(T).numpy()
    if name == "tiny-learned":
        # learned absolute positions break the symmetry: not uniform (the proposition needs NoPE/relative PE)
        assert np.abs(report.alpha - expected).max() > 1e-3
        return
    np.testing.assert_allclose(report.alpha, np.broadcast_to(expected, report.alpha.shape), atol=1e-6)
    # uniform 1/t attention: alpha_1 = H_T / T < 0.3, so no sink head at eps 0.3
    assert report.rate(1) == 0.0


def test_sink_alpha_hand_computed():
    A = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0.6, 0.3, 0.1]])
    # alpha_1 = (1 + .9 + .6)/3, alpha_2 = (.1 + .3)/2, alpha_3 = .1/1
    np.testing.assert_allclose(sink_alpha(A).numpy(), [2.5 / 3, 0.2, 0.1], rtol=1e-6)
    half = A * 0.5
    np.testing.assert_allclose(sink_alpha(half, "proxy").numpy(), [2.5 / 3, 0.2, 0.1], rtol=1e-5)
    signed = torch.tensor([[1.0, 0], [-0.5, 0.5]])
    np.testing.assert_allclose(sink_alpha(signed, "abs-proxy").numpy(), [0.75, 0.5], rtol=1e-5)


def test_rates_layer_rates_and_head_rates_follow_the_definition(tiny_models):
    model, _ = tiny_models("tiny-gqa")
    tokens = torch.randint(4, 128, (8, 12), generator=torch.Generator().manual_seed(0))
    r = measure_sinks(model, tokens, eps=0.2, progress=False)
    a = r.alpha
    assert r.rate(1) == pytest.approx(100 * (a[..., 0] > 0.2).mean())
    assert r.rate(3, eps=0.1) == pytest.approx(100 * (a[..., 2] > 0.1).mean())
    np.testing.assert_allclose(r.layer_rates(1), 100 * (a[..., 0] > 0.2).mean(axis=(0, 2)))
    np.testing.assert_allclose(r.head_rates(2), 100 * (a[..., 1] > 0.2).mean(axis=0))
    sweep = r.sweep([0.1, 0.2])
    assert list(sweep["sink_rate_1"]) == [r.rate(1, 0.1), r.rate(1, 0.2)]
    # strictness: a head with alpha exactly eps is not a sink head
    eps_exact = float(a[0, 0, 0, 0])
    assert (r.is_sink(eps_exact)[0, 0, 0, 0]) == np.False_
    df = r.to_frame()
    assert len(df) == a.shape[1] * a.shape[2] * a.shape[3]
    row = df[(df["layer"] == 1) & (df["head"] == 2) & (df["k"] == 4)].iloc[0]
    assert row.mean_alpha == pytest.approx(a[:, 1, 2, 3].mean())
    table = r.head_table()
    assert table.iloc[0]["mean_alpha_1"] == pytest.approx(a[..., 0].mean(axis=0).max())


def test_proxy_score_and_sink_mass_for_rows_that_do_not_sum_to_one(tiny_models):
    model, _ = tiny_models("tiny-mha")
    tokens = torch.randint(4, 128, (4, 10), generator=torch.Generator().manual_seed(2))
    clean = measure_sinks(model, tokens, progress=False)
    # a sink logit that takes 40% of every row (gpt-oss style): rows sum to 0.6
    hooks = [(hooknames.pattern(layer), lambda p, hook: p * 0.6) for layer in range(model.cfg.n_layers)]
    # apply only to the reducer's view: scale after the output is computed does not matter for the metric
    with attach_hooks(model, hooks):
        scaled = measure_sinks(model, tokens, progress=False)
    assert scaled.score.startswith("auto:proxy")
    assert set(scaled.proxy_layers) == {0, 1}
    np.testing.assert_allclose(scaled.sink_mass(), 0.4, atol=1e-5)
    np.testing.assert_allclose(clean.sink_mass(), 0.0, atol=1e-5)
    forced = None
    with attach_hooks(model, hooks):
        forced = measure_sinks(model, tokens, score="softmax", progress=False)
    # raw scores are 0.6x the clean ones only in layer 0 (later layers see a changed residual)
    np.testing.assert_allclose(forced.alpha[:, 0], 0.6 * clean.alpha[:, 0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(scaled.alpha[:, 0], clean.alpha[:, 0], rtol=1e-4, atol=1e-6)


def test_scores_are_float32_for_a_bfloat16_model():
    from sink_interp import tiny_model

    model = tiny_model(dtype="bfloat16")
    tokens = torch.randint(4, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    r = measure_sinks(model, tokens, progress=False)
    assert r.alpha.dtype == np.float32
    assert r.dtype == "bfloat16"
    assert r.score == "softmax"  # bf16 rows sum to 1 within bf16 rounding: not mistaken for a proxy


def test_layers_subset_and_report_provenance(tiny_models):
    model, _ = tiny_models("tiny-gqa")
    tokens = probe_tokens(model, "random", n=3, length=9, bos=True)
    r = measure_sinks(model, tokens, layers=[1], progress=False)
    assert r.layers == (1,) and r.alpha.shape == (3, 1, 4, 9)
    s = r.summary()
    for key in ("model", "eps", "length", "n", "bos", "sink_rates", "layer_rates", "dtype", "versions", "data"):
        assert key in s
    assert s["bos"] is True and s["data"] == "random" and s["length"] == 9 and s["n"] == 3
    assert len(s["sink_rates"]) == 9 and len(s["layer_rates"]) == 1
    assert "torch" in s["versions"] and "transformer-lens" in s["versions"]
    html = r._repr_html_()
    assert "Sink" in html and "tiny-gqa" in html


def test_sink_positions_mark_the_last_keys_unreliable(tiny_models):
    model, _ = tiny_models("tiny-gqa")
    tokens = torch.randint(4, 128, (4, 12), generator=torch.Generator().manual_seed(0))
    r = measure_sinks(model, tokens, progress=False)
    df = r.sink_positions(eps=0.05, min_rate=0.0)
    assert list(df["k"]) == list(range(1, 13))
    assert list(df["n_queries"]) == list(range(12, 0, -1))
    assert not df.iloc[-1]["reliable"] and df.iloc[0]["reliable"]
    assert all(k > 1 for k in r.secondary_sinks(eps=0.05, min_rate=0.0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(eps=0.0), "eps"),
        (dict(eps=1.0), "eps"),
        (dict(eps=-0.2), "eps"),
        (dict(eps="x"), "eps"),
        (dict(layers=[7]), "layers"),
        (dict(score="nope"), "score"),
    ],
)
def test_bad_arguments_name_the_fix(tiny_models, kwargs, match):
    model, _ = tiny_models("tiny-gqa")
    with pytest.raises(ValueError, match=match):
        measure_sinks(model, torch.randint(4, 128, (2, 8)), progress=False, **kwargs)


def test_bad_tokens_are_rejected(tiny_models):
    model, _ = tiny_models("tiny-gqa")
    with pytest.raises(ValueError, match="length"):
        measure_sinks(model, torch.randint(4, 128, (2, 1)), progress=False)
    with pytest.raises(ValueError, match="vocabulary"):
        measure_sinks(model, torch.tensor([[1, 2, 500]]), progress=False)
    with pytest.raises(ValueError, match="vocabulary"):
        measure_sinks(model, torch.tensor([[1, -2, 5]]), progress=False)
    with pytest.raises(ValueError, match="2-D"):
        measure_sinks(model, torch.tensor([1, 2, 5]), progress=False)
    with pytest.raises(ValueError, match="empty"):
        measure_sinks(model, torch.zeros(0, 5, dtype=torch.long), progress=False)
    with pytest.raises(TypeError, match="torch.Tensor"):
        measure_sinks(model, "some text", progress=False)
    with pytest.raises(ValueError, match="k must be"):
        measure_sinks(model, torch.randint(4, 128, (2, 8)), progress=False).rate(k=0)
