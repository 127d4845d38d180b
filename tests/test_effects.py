"""compare / scan_heads / fit_bias against numbers computed here from the logits and patterns."""

from __future__ import annotations

import json

import pytest
import torch

from sink_interp import EffectReport, KVBias, MaskKey, ZeroValue, compare, fit_bias, intervene, measure_sinks, scan_heads
from sink_interp._internal import hooknames as hn
from sink_interp.capture import hook_snapshot
from sink_interp.fit import FitSettings


def toks(n=5, T=10, seed=0):
    return torch.randint(4, 128, (n, T), generator=torch.Generator().manual_seed(seed))


def ce(logits, x):
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)).item()


def test_compare_matches_losses_kl_and_sink_scores_computed_by_hand(tiny_models):
    model, _ = tiny_models("tiny-gqa")
    x = toks()
    k = torch.randn(4, model.cfg.d_head, generator=torch.Generator().manual_seed(1)) * 3
    bias = KVBias(k={0: k, 1: k})
    rep = compare(model, x, {"mask": MaskKey(), "mask+bias": [MaskKey(), bias]}, batch_size=2, progress=False)
    with torch.no_grad():
        clean = model(x)
        with intervene(model, MaskKey()):
            masked = model(x)
        with intervene(model, MaskKey(), bias):
            _, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_pattern"))
    assert rep.clean.loss == pytest.approx(ce(clean, x), abs=1e-5)
    assert rep["mask"].loss == pytest.approx(ce(masked, x), abs=1e-5)
    assert rep["mask"].delta_loss == pytest.approx(ce(masked, x) - ce(clean, x), abs=1e-5)
    p, q = clean[:, :-1].log_softmax(-1), masked[:, :-1].log_softmax(-1)
    kl = (p.exp() * (p - q)).sum(-1).mean().item()
    assert rep["mask"].kl == pytest.approx(kl, abs=1e-6)
    assert rep["mask"].top1 == pytest.approx((p.argmax(-1) == q.argmax(-1)).float().mean().item())
    # Sink_1 of the clean model is measure_sinks' number
    assert rep.clean.sink_rate_1 == pytest.approx(measure_sinks(model, x, progress=False).rate(1))
    # sink mass with a key bias: mean over (sample, layer, head, query) of 1 - row sum of the pattern
    pats = torch.stack([cache[hn.pattern(layer)] for layer in range(2)], 1)  # [n, L, H, T, T]
    assert rep["mask+bias"].sink_mass == pytest.approx((1 - pats.sum(-1)).mean().item(), abs=1e-5)
    proxy = pats / pats.sum(-1, keepdim=True)
    alpha1 = proxy[..., 0].sum(-1) / x.shape[1]
    assert rep["mask+bias"].mean_alpha_1 == pytest.approx(alpha1.mean().item(), abs=1e-5)
    assert rep["mask+bias"].score.startswith("proxy")
    lp = rep.loss_by_position(buckets=(1, 4))
    assert list(lp.columns) == ["label", "0", "1-3", "4-8"]
    nll = torch.nn.functional.cross_entropy(clean[:, :-1].transpose(1, 2), x[:, 1:], reduction="none")
    assert lp.iloc[0]["1-3"] == pytest.approx(nll[:, 1:4].mean().item(), abs=1e-5)


def test_effect_report_exports(tiny_models, tmp_path):
    model, _ = tiny_models("tiny-gqa")
    rep = compare(model, toks(n=2), [ZeroValue(), MaskKey()], progress=False)
    assert isinstance(rep, EffectReport)
    df = rep.to_frame()
    assert df["label"].tolist()[0] == "clean" and len(df) == 3
    assert {"loss", "delta_loss", "kl", "top1", "sink_rate_1", "mean_alpha_1", "sink_rate_2", "sink_mass"} <= set(df.columns)
    out = tmp_path / "eff.json"
    rep.to_json(str(out))
    d = json.loads(out.read_text())
    assert d["model"].startswith("tiny-gqa") and len(d["effects"]) == 3 and "versions" in d and d["n"] == 2
    assert "ZeroValue" in rep._repr_html_() and "clean" in rep.table()
    with pytest.raises(KeyError, match="labels"):
        rep["nope"]
    with pytest.raises(ValueError, match="unique"):
        compare(model, toks(n=2), [MaskKey(), MaskKey()], progress=False)


def test_scan_heads_equals_single_interventions(tiny_models):
    model, _ = tiny_models("tiny-mqa")
    x = toks(n=3)
    rep = scan_heads(model, x, ZeroValue, layers=[1], progress=False)
    df = rep.to_frame().dropna(subset=["layer"])
    assert df[["layer", "head"]].astype(int).values.tolist() == [[1, h] for h in range(4)]
    one = compare(model, x, {"x": ZeroValue(layers=[1], heads=[2])}, progress=False)
    assert rep["L1H2"].loss == pytest.approx(one["x"].loss, abs=1e-6)


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["k", "kv", "logit"])
def test_fit_bias_learns_and_leaves_the_model_untouched(tiny_models, kind):
    model, _ = tiny_models("tiny-gqa")
    x = toks(n=8, T=12, seed=2)
    before, flags, hooks = state(model), [p.requires_grad for p in model.parameters()], hook_snapshot(model)
    with torch.no_grad():
        ref = model(x)
    rep = fit_bias(model, x, FitSettings(kind=kind, steps=25, lr=0.05, batch_size=4), progress=False)
    assert all(torch.equal(v, before[k]) for k, v in state(model).items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert hook_snapshot(model) == hooks
    with torch.no_grad():
        assert torch.equal(model(x), ref)
    assert len(rep.history) == 25
    assert any(p.abs().sum() > 0 for p in rep.bias.parameters())
    # the fitted bias lowers the training loss of the masked model (evaluated on the training tokens here)
    assert rep.loss_fitted < rep.loss_masked
    assert rep.recovered == pytest.approx((rep.loss_masked - rep.loss_fitted) / (rep.loss_masked - rep.loss_clean))
    assert "recovered" in rep.summary() and rep.to_frame()["label"].tolist() == [
        "clean",
        "sink masked",
        "sink masked + fitted bias",
    ]


def test_grafting_the_mean_sink_key_and_value(tiny_models):
    """init='sink', steps=0: k* and v* are the mean first-token key and value. With a single sample and
    the key masked everywhere, k* = k_0 and v* = v_0 reproduce the clean model exactly."""
    model, _ = tiny_models("tiny-gqa")
    x = toks(n=1, T=9, seed=3)
    rep = fit_bias(model, x, FitSettings(kind="kv", init="sink", steps=0), progress=False)
    assert rep.loss_fitted == pytest.approx(rep.loss_clean, abs=1e-5)
    assert rep.recovered == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="kind"):
        FitSettings(kind="q")
    with pytest.raises(ValueError, match="init"):
        FitSettings(kind="logit", init="sink")


def test_fit_settings_refuse_in_one_line_naming_the_field(tiny_models):
    """FitSettings checks its fields when made; fit_bias takes nothing else (the old keywords are gone)."""
    for bad, field in (
        (dict(kind="q"), "kind"),
        (dict(init="mean"), "init"),
        (dict(steps=-1), "steps"),
        (dict(batch_size=0), "batch_size"),
        (dict(lr=0), "lr"),
    ):
        with pytest.raises(ValueError, match=f"^{field} must be") as e:
            FitSettings(**bad)
        assert "\n" not in str(e.value)
    model, _ = tiny_models("tiny-gqa")
    with pytest.raises(ValueError, match=r"settings must be a FitSettings, got str; fix: fit_bias\(model, tokens, FitSettings"):
        fit_bias(model, toks(n=2, T=8, seed=5), "k")
    with pytest.raises(TypeError):
        fit_bias(model, toks(n=2, T=8, seed=5), steps=3)  # type: ignore[call-arg]


def test_fit_bias_counts_the_parameters_it_trains(tiny_models):
    """A per-head key bias for head 1 of layer 0 only: the layer's k* has a row per head, one row trains."""
    model, _ = tiny_models("tiny-gqa")
    x = toks(n=4, T=10, seed=4)
    rep = fit_bias(
        model, x, FitSettings(kind="k", heads={0: [1]}, steps=3, lr=0.05, batch_size=2), progress=False, evaluate=False
    )
    d_head = model.cfg.d_head
    assert rep.settings["n_params"] == sum(p.numel() for p in rep.bias.parameters())
    assert rep.settings["n_params_trained"] == d_head
