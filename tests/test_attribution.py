"""The attribution estimators against independent references written here: integrated gradients as a loop of
single runs on the embedding line, GradDrop as one run per layer with that block's writes detached, and the verified
mode against the exact sweep."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sink_interp import patch_heads
from sink_interp.attribution import AttributionSettings

from .test_patching import _pair, _peaked


@pytest.fixture(scope="module")
def gqa():
    return _peaked("tiny-gqa", scale=4.0, seed=1)


def _z(l):
    return f"blocks.{l}.attn.hook_z"


def _acts(model, tokens, L):
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn.hook_z"))
    return [cache[_z(l)] for l in range(L)]


def _metric(clean):
    tgt = clean[:, 1:]

    def logprob(logits):
        lp = torch.log_softmax(logits[:, :-1].float(), -1)
        return lp.gather(-1, tgt[..., None]).mean()

    return logprob


def _grad_z(model, tokens, fn, L, fwd=()):
    """d metric / d z of every layer on one run (extra forward hooks ``fwd``)."""
    kept = {}

    def keeper(name):
        def keep(x, hook):
            kept[name] = x
            return x

        return keep

    with torch.enable_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[*fwd] + [(_z(l), keeper(_z(l))) for l in range(L)])
        value = fn(logits)
        xs = [kept[_z(l)] for l in range(L)]
        gs = torch.autograd.grad(value, xs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g.detach() for x, g in zip(xs, gs)]


def test_integrated_gradients_equal_a_loop_of_runs_on_the_embedding_line(gqa):
    clean, corr = _pair(n=2, T=8, seed=21)
    L, H = gqa.cfg.n_layers, gqa.cfg.n_heads
    fn = _metric(clean)
    steps = 5
    rep = patch_heads(gqa, clean, corr, fn, method="ig", attribution=AttributionSettings(steps=steps), progress=False)
    assert rep.estimator == "ig" and rep.steps == steps and np.isnan(rep.values).all()
    # reference: steps single runs, the clean embedding moved towards the corrupted one, gradients averaged
    _, cache = gqa.run_with_cache(corr, names_filter=lambda n: n == "hook_embed")
    e_src = cache["hook_embed"]
    a_base, a_src = _acts(gqa, clean, L), _acts(gqa, corr, L)
    total = [torch.zeros_like(a) for a in a_base]
    for i in range(steps):
        alpha = (i + 0.5) / steps

        def mix(x, hook, alpha=alpha):
            return x + alpha * (e_src - x)

        for l, g in enumerate(_grad_z(gqa, clean, fn, L, fwd=[("hook_embed", mix)])):
            total[l] += g / steps
    ref = np.array([[float(((a_src[l] - a_base[l])[:, :, h] * total[l][:, :, h]).sum()) for h in range(H)] for l in range(L)])
    np.testing.assert_allclose(rep.estimate - rep.base, ref, atol=1e-5, rtol=1e-4)


def test_graddrop_equals_one_run_per_dropped_layer(gqa):
    clean, corr = _pair(n=2, T=8, seed=22)
    L, H = gqa.cfg.n_layers, gqa.cfg.n_heads
    fn = _metric(clean)
    rep = patch_heads(gqa, clean, corr, fn, method="atp*", progress=False)
    a_base, a_src = _acts(gqa, clean, L), _acts(gqa, corr, L)

    def atp(grads):
        return np.array(
            [[float(((a_src[l] - a_base[l])[:, :, h] * grads[l][:, :, h]).sum()) for h in range(H)] for l in range(L)]
        )

    plain = atp(_grad_z(gqa, clean, fn, L))
    total = np.zeros_like(plain)
    for drop in range(L):

        def cut(x, hook):  # the block's write keeps its value and loses its gradient
            return x.detach()

        fwd = [(f"blocks.{drop}.hook_attn_out", cut), (f"blocks.{drop}.hook_mlp_out", cut)]
        total += np.abs(atp(_grad_z(gqa, clean, fn, L, fwd=fwd)))
    ref = np.sign(plain) * total / (L - 1)
    np.testing.assert_allclose(rep.estimate - rep.base, ref, atol=1e-6, rtol=1e-4)


def test_verified_values_are_exact_and_the_stop_rule_holds(gqa):
    clean, corr = _pair(n=3, T=10, seed=23)
    fn = _metric(clean)
    ex = patch_heads(gqa, clean, corr, fn, progress=False)
    s = AttributionSettings(top=3, batch=2)
    rep = patch_heads(gqa, clean, corr, fn, method="verified", attribution=s, progress=False)
    done = list(rep.verified)
    assert len(done) >= 3 and len(set(done)) == len(done)
    for l_, h in done:
        assert rep.values[l_, h] == pytest.approx(ex.values[l_, h], abs=1e-6)
    others = [(l_, h) for l_ in rep.layers for h in rep.heads if (l_, h) not in done]
    assert all(np.isnan(rep.values[lh]) for lh in others)
    # the screen bounds the estimate, and no head left could beat the 3rd largest exact |effect|
    est = rep.screen
    assert np.all(est[np.isfinite(est)] >= np.abs(rep.estimate - rep.base)[np.isfinite(est)] - 1e-12)
    third = sorted((abs(rep.values[lh] - rep.base) for lh in done), reverse=True)[2]
    if others:
        assert max(est[lh] for lh in others) < third
    assert rep.summary()["verified"] == [list(v) for v in done]
    # max_verified caps the exact patches
    capped = patch_heads(
        gqa, clean, corr, fn, method="verified", attribution=AttributionSettings(top=3, max_verified=2), progress=False
    )
    assert len(capped.verified) == 2
    # fast: the first budget of the heads by screen, values exact there
    fast = patch_heads(gqa, clean, corr, fn, method="fast", attribution=AttributionSettings(top=2, budget=0.5), progress=False)
    n_heads = len(fast.layers) * len(fast.heads)
    assert len(fast.verified) == int(np.ceil(0.5 * n_heads))
    for l_, h in fast.verified:
        assert fast.values[l_, h] == pytest.approx(ex.values[l_, h], abs=1e-6)


def test_settings_are_checked(gqa):
    with pytest.raises(ValueError, match="estimator must be one of"):
        AttributionSettings(estimator="eap")
    with pytest.raises(ValueError, match="steps"):
        AttributionSettings(steps=0)
    clean, corr = _pair(n=2, T=6, seed=24)
    with pytest.raises(ValueError, match="attribution must be an AttributionSettings"):
        patch_heads(gqa, clean, corr, "logprob", method="ig", attribution={"steps": 4}, progress=False)
