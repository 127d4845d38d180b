"""massive_activations against HF hidden states and formulas written here; a spike planted by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sink_interp import ProbeSet, massive_activations
from sink_interp.capture import hook_snapshot
from sink_interp.massive import exact_median
from sink_interp.models import TINY_MODELS, tiny_hf_model, tiny_model

from .conftest import ARCHS, warm
from .reference_trace import hidden_states, qkv

SPIKE_DIM = 17
SPIKE = 500.0
FIRST = list(range(4, 14))  # token ids that carry the planted spike; they only ever appear first


def planted(name: str, dim: int = SPIKE_DIM, size: float = SPIKE):
    """A fresh bridge and its HF twin, with ``size`` added to embedding dim ``dim`` of the FIRST tokens."""
    kw = TINY_MODELS[name]
    model, hf = tiny_model(**kw), tiny_hf_model(**kw)
    with torch.no_grad():
        model.embed.original_component.weight[FIRST, dim] += size
        hf.get_input_embeddings().weight[FIRST, dim] += size
    return warm(model), hf


def spiked_tokens(n: int = 8, T: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    first = torch.tensor(FIRST)[torch.randperm(len(FIRST), generator=g)[:n] % len(FIRST)]
    rest = torch.randint(14, 128, (n, T - 1), generator=g)
    return torch.cat([first[:, None], rest], dim=1)


def _ref_layer_max(hs: torch.Tensor):
    """Per layer: max |x| over (sample, pos, dim), its (sample, pos, dim), the sample's numpy median |x|."""
    a = hs.abs().numpy()  # [n, L, T, D]
    n, L, T, D = a.shape
    out = []
    for l in range(L):
        flat = a[:, l].reshape(-1)
        i = int(flat.argmax())
        s, p, d = np.unravel_index(i, (n, T, D))
        out.append((float(flat[i]), int(s), int(p), int(d), float(np.median(a[s, l]))))
    return out


@pytest.mark.parametrize("name", ARCHS)
def test_layer_maxima_medians_and_norms_match_hf(tiny_models, name):
    model, hf = tiny_models(name)
    tokens = torch.randint(4, 128, (5, 16), generator=torch.Generator().manual_seed(3))
    before = hook_snapshot(model)
    rep = massive_activations(model, tokens, batch_size=2, progress=False)
    assert hook_snapshot(model) == before
    hs = hidden_states(hf, tokens)
    ref = _ref_layer_max(hs)
    np.testing.assert_allclose(rep.layer_max, [r[0] for r in ref], rtol=1e-5)
    assert rep.layer_argmax.tolist() == [[r[1], r[2], r[3]] for r in ref]
    np.testing.assert_allclose(rep.layer_median, [r[4] for r in ref], rtol=1e-5)
    np.testing.assert_allclose(rep.layer_ratio, [r[0] / r[4] for r in ref], rtol=1e-4)
    # medians of every sample and layer, numpy's definition
    np.testing.assert_allclose(rep.median, np.median(hs.abs().numpy().reshape(5, hs.shape[1], -1), axis=-1), rtol=1e-5)
    # per-token norms: h, keys (RoPE is a rotation: the norm of the rotated key is that of k_proj's output), values
    np.testing.assert_allclose(rep.h_norm, hs.norm(dim=-1).numpy(), rtol=1e-4, atol=1e-6)
    for layer in range(hs.shape[1]):
        _, k, v, _ = qkv(hf, tokens, layer)
        np.testing.assert_allclose(rep.k_norm[:, layer], k.norm(dim=-1).transpose(1, 2).numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(rep.v_norm[:, layer], v.norm(dim=-1).transpose(1, 2).numpy(), rtol=1e-4, atol=1e-6)
        vn = v.norm(dim=-1)  # [n, T, G]
        assert rep.value_norm_ratio()[layer] == pytest.approx(float(vn[:, 0].mean() / vn[:, 1:].mean()), rel=1e-5)


def test_planted_spike_is_found_in_every_layer_with_its_dim_and_position():
    model, hf = planted("tiny-gqa")
    tokens = spiked_tokens()
    rep = massive_activations(model, tokens, progress=False)
    hs = hidden_states(hf, tokens)
    L = hs.shape[1]
    assert [m["pos"] for m in rep.massive_list()] == [0] * L
    assert [m["dim"] for m in rep.massive_list()] == [SPIKE_DIM] * L
    ref_max = hs[:, :, 0, SPIKE_DIM].abs().amax(0).numpy()
    np.testing.assert_allclose([m["max"] for m in rep.massive_list()], ref_max, rtol=1e-6)
    assert rep.layer_max.min() > 400
    assert rep.is_massive().all()
    # Sun et al. flags: the spike in every sample and layer, and nothing else
    f = rep.flags_frame()
    assert len(f) == tokens.shape[0] * L
    assert set(f["pos"]) == {0} and set(f["dim"]) == {SPIKE_DIM}
    np.testing.assert_allclose(f["ratio"], f["value"].abs() / rep.median[f["sample"], f["layer"]], rtol=1e-6)
    assert rep.recurring_dims() == [SPIKE_DIM]
    assert rep.massive_dims(1, 0) == [SPIKE_DIM]
    assert rep.top_coordinates(0, k=1)[["pos", "dim"]].values.tolist() == [[0, SPIKE_DIM]]
    # residual peak at the sink token
    tri = rep.extreme_tokens()
    assert (tri["peak_pos"] == 0).all() and (tri["peak_ratio"] > 5).all()


def test_both_sun_thresholds_are_arguments():
    model, _ = planted("tiny-mha")
    tokens = spiked_tokens(n=4)
    base = massive_activations(model, tokens, measure_sinks=False, progress=False)
    assert len(base.flags) == 4 * 2
    # the spike is ~500: an absolute threshold above it flags nothing
    assert len(massive_activations(model, tokens, abs_threshold=600, measure_sinks=False, progress=False).flags) == 0
    # the spike is ~1e4-1e5 medians: a ratio threshold above that flags nothing
    ratio = float(base.flags_frame()["ratio"].max())
    assert len(massive_activations(model, tokens, ratio_threshold=ratio * 1.01, measure_sinks=False, progress=False).flags) == 0
    # low thresholds flag more than the spike
    loose = massive_activations(model, tokens, abs_threshold=0.0, ratio_threshold=2.0, measure_sinks=False, progress=False)
    assert len(loose.flags) > len(base.flags)
    f = loose.flags_frame()
    assert (f["ratio"] >= 2.0).all()


def test_top_coordinates_are_the_exact_top_k_over_samples(tiny_models):
    model, hf = tiny_models("tiny-layernorm-rope")
    tokens = torch.randint(4, 128, (6, 12), generator=torch.Generator().manual_seed(5))
    k = 4
    rep = massive_activations(model, tokens, top_k=k, progress=False)
    a = hidden_states(hf, tokens).abs().amax(0).numpy()  # [L, T, D] max over samples
    for layer in range(a.shape[0]):
        flat = a[layer].reshape(-1)
        top = np.argsort(-flat)[:k]
        want = [[int(i // a.shape[2]), int(i % a.shape[2])] for i in top]
        got = rep.top_coordinates(layer)
        assert got[["pos", "dim"]].values.tolist() == want
        np.testing.assert_allclose(got["abs"], flat[top], rtol=1e-5)


def test_extreme_tokens_follow_their_definitions(tiny_models):
    model, hf = tiny_models("tiny-gqa")
    tokens = torch.randint(4, 128, (6, 20), generator=torch.Generator().manual_seed(2))
    rep = massive_activations(model, tokens, progress=False)
    df = rep.extreme_tokens(min_queries=8)
    hs = hidden_states(hf, tokens)
    for layer in range(hs.shape[1]):
        _, _, v, _ = qkv(hf, tokens, layer)
        vm = v.norm(dim=-1).mean(dim=(0, 2)).numpy()
        hm = hs[:, layer].norm(dim=-1).mean(0).numpy()
        row = df.iloc[layer]
        assert row.drain_pos == int(vm.argmin()) and row.peak_pos == int(hm.argmax())
        assert row.drain_ratio == pytest.approx(vm.min() / np.delete(vm, vm.argmin()).mean(), rel=1e-4)
        alpha = rep.sink_report.alpha[:, layer].mean(axis=(0, 1))
        assert row.sink_pos == int(alpha[: 20 - 8 + 1].argmax())


def test_exact_median_is_numpys():
    x = torch.rand(3, 10)
    np.testing.assert_allclose(exact_median(x).numpy(), np.median(x.numpy(), axis=-1), rtol=1e-6)
    x = torch.rand(3, 11)
    np.testing.assert_allclose(exact_median(x).numpy(), np.median(x.numpy(), axis=-1), rtol=1e-6)


def test_report_exports(tmp_path, tiny_models):
    model, _ = tiny_models("tiny-mqa")
    rep = massive_activations(model, ProbeSet.of(torch.randint(4, 128, (3, 10)), source="unit"), progress=False)
    path = tmp_path / "m.json"
    rep.to_json(path)
    d = json.loads(path.read_text())
    for key in (
        "model",
        "data",
        "bos",
        "n",
        "length",
        "dtype",
        "device",
        "abs_threshold",
        "ratio_threshold",
        "massive",
        "value_norm_ratio",
        "versions",
    ):
        assert key in d
    assert d["data"] == "unit" and len(d["massive"]) == 2 and set(d["massive"][0]) == {"layer", "max", "pos", "dim"}
    assert len(rep.to_frame()) == 2 and "<table" in rep._repr_html_()
    assert "MassiveReport" in repr(rep)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"abs_threshold": -1}, "abs_threshold"), ({"ratio_threshold": "x"}, "ratio_threshold"), ({"top_k": 0}, "top_k")],
)
def test_bad_arguments_name_the_argument(tiny_models, kwargs, match):
    model, _ = tiny_models("tiny-gqa")
    with pytest.raises(ValueError, match=match):
        massive_activations(model, torch.randint(4, 128, (2, 8)), progress=False, **kwargs)
