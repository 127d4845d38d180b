"""Composition of interventions: nested ``intervene`` / ``masked`` blocks give exactly one flat call.

Rule under test (module docstring of :mod:`sink_interp.interventions`): inside
``with intervene(m, a): with intervene(m, b):`` the model runs as
``intervene(m, a, b)``; a ``masked`` block, inside or outside, is the mask of
stage 1; the same object twice is a ``ValueError`` in both forms. The model is a
tiny GQA model with RoPE whose q and k weights are scaled up so attention is
peaked (not near-uniform, where many edits would hardly change the logits), and
the hand-written references run its independent Hugging Face copy (same,
equally scaled weights) with formulas written here (``tests/test_interventions``'s
harness).
"""

from __future__ import annotations

import math

import pytest
import torch

from sink_interp import (
    AblateDims,
    AttentionKernel,
    AttentionMask,
    Calibrate,
    KVBias,
    MaskKey,
    ScaleAttention,
    SinkLogit,
    StreamingWindow,
    ZeroValue,
    intervene,
)
from sink_interp.capture import attach_hooks, hook_snapshot
from sink_interp.interventions import active_interventions, mask_hooks, masked
from sink_interp.models import tiny_hf_model, tiny_model

from .test_interventions import causal, hf_attention, streaming_ref

SCALE = 10.0  # q and k weights times 10: scores times 100, the largest weight of a row ~0.6 instead of ~0.16


@pytest.fixture(scope="module")
def peaked():
    bridge, hf = tiny_model("gqa"), tiny_hf_model("gqa")
    with torch.no_grad():
        for layer in range(int(bridge.cfg.n_layers)):
            for name in ("q", "k"):
                getattr(bridge.blocks[layer].attn, name).original_component.weight.mul_(SCALE)
                getattr(hf.model.layers[layer].self_attn, f"{name}_proj").weight.mul_(SCALE)
        x = torch.randint(4, 100, (1, 4))
        bridge(x)
        bridge.run_with_cache(x)  # the bridge adds a few hooks of its own once, lazily: snapshots come after
    return bridge, hf


def tokens(T=10, n=2, seed=0):
    return torch.randint(4, 128, (n, T), generator=torch.Generator().manual_seed(seed))


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# one small instance per type; slot 0 is the first (outer) one, slot 1 the second (inner): they differ so that
# a pair of the same type is two different edits
MAKERS = {
    "ZeroValue": lambda i: ZeroValue(positions=[i]),
    "MaskKey": lambda i: MaskKey(positions=[i], heads=[0, 1, 3] if i else None),
    "MaskKey-no-renorm": lambda i: MaskKey(renormalise=False, positions=[i]),
    "ScaleAttention": lambda i: ScaleAttention(0.3 + 0.4 * i, positions=[i, 2], renormalise=bool(i)),
    "Calibrate": lambda i: Calibrate(tau=0.1, beta=0.4 - 0.2 * i),
    "AblateDims": lambda i: AblateDims([3 + i, 17, 40], positions=[i], mode="mean" if i else "zero"),
    "KVBias": lambda i: KVBias(
        value=True,
        k={0: _randn(4, 16, seed=10 + i) * 2, 1: _randn(4, 16, seed=20 + i) * 2},
        v={0: _randn(4, 16, seed=30 + i), 1: _randn(4, 16, seed=40 + i)},
    ),
    "SinkLogit": lambda i: SinkLogit(logits={0: _randn(4, seed=50 + i) + 1, 1: _randn(4, seed=60 + i) + 1}),
    "AttentionKernel": lambda i: (
        AttentionKernel("softpick", heads=[2, 3]) if i else AttentionKernel("sigmoid", bias="-log n", heads=[0, 1])
    ),
    "StreamingWindow": lambda i: StreamingWindow(3, n_sinks=2) if i else StreamingWindow(4, n_sinks=1),
}
PAIRS = [(a, b) for a in MAKERS for b in MAKERS]


def run(model, x, *ivs):
    with torch.no_grad(), intervene(model, *ivs):
        return model(x)


def run_nested(model, x, outer, inner):
    with torch.no_grad(), intervene(model, *outer):
        with intervene(model, *inner):
            return model(x)


# --------------------------------------------------------------------------- nested == flat, every ordered pair


_ALONE: dict[tuple[str, int], torch.Tensor] = {}


def alone(model, x, kind, slot):
    if (kind, slot) not in _ALONE:
        _ALONE[kind, slot] = run(model, x, MAKERS[kind](slot))
    return _ALONE[kind, slot]


@pytest.mark.parametrize("a,b", PAIRS, ids=[f"{a}>{b}" for a, b in PAIRS])
def test_nested_equals_flat_for_every_ordered_pair(peaked, a, b):
    bridge, _ = peaked
    x = tokens(seed=1)
    ia, ib = MAKERS[a](0), MAKERS[b](1)
    flat = run(bridge, x, ia, ib)
    nested = run_nested(bridge, x, [ia], [ib])
    assert torch.equal(nested, flat), (nested - flat).abs().max()
    # neither intervention is lost: the composition is neither one alone
    assert (flat - alone(bridge, x, a, 0)).abs().max() > 1e-4
    assert (flat - alone(bridge, x, b, 1)).abs().max() > 1e-4


def test_three_levels_equal_one_call(peaked):
    bridge, _ = peaked
    x = tokens(seed=2)
    ivs = [
        KVBias(value=True, k={1: torch.ones(16)}, v={1: torch.ones(16)}),
        MaskKey(),
        AttentionKernel("softmax1", heads=[1]),
        ZeroValue(positions=[1]),
        Calibrate(),
    ]
    flat, first_three = run(bridge, x, *ivs), run(bridge, x, *ivs[:3])
    with torch.no_grad(), intervene(bridge, ivs[0]), intervene(bridge, ivs[1], ivs[2]):
        assert [type(iv).__name__ for iv in active_interventions(bridge)] == ["KVBias", "MaskKey", "AttentionKernel"]
        with intervene(bridge, [ivs[3], [ivs[4]]]):
            assert torch.equal(bridge(x), flat)
        assert torch.equal(bridge(x), first_three)
    assert active_interventions(bridge) == []


def test_nested_gradients_equal_flat_gradients(peaked):
    bridge, _ = peaked
    x = tokens(T=8, seed=3)
    mask, kv = MaskKey(), KVBias(value=True)

    def grads(nested):
        if nested:
            with intervene(bridge, mask), intervene(bridge, kv):
                loss = bridge(x).logsumexp(-1).mean()
        else:
            with intervene(bridge, mask, kv):
                loss = bridge(x).logsumexp(-1).mean()
        return torch.autograd.grad(loss, list(kv.parameters()))

    for g, h in zip(grads(True), grads(False)):
        assert torch.equal(g, h) and g.abs().sum() > 0


# --------------------------------------------------------------------------- against hand-written compositions


def run_ref(hf, x, fn):
    with torch.no_grad(), hf_attention(hf, fn):
        return hf(x).logits


def visible(tq, T, hide_first=False, window=None, sinks=0):
    vis = causal(tq, T)
    j, t = torch.arange(T)[None, :], tq[:, None]
    if window is not None:
        vis = vis & ((t - j < window) | (j < sinks))
    if hide_first:
        vis = vis & ~((j == 0) & (t > 0))
    return vis


def biased(q, k, v, scale, vis, kstar, vstar):
    """softmax([q k*, q K^T] * scale) [v*; V] over the visible keys; returns (z, pattern without the virtual key)."""
    b, H, _, d = q.shape
    s = ((q @ k.transpose(-1, -2)) * scale).masked_fill(~vis, float("-inf"))
    s_star = torch.einsum("bhtd,hd->bht", q, kstar.expand(H, d))[..., None] * scale
    A = torch.softmax(torch.cat([s_star, s], -1), -1)
    vv = torch.cat([vstar.expand(H, d)[None, :, None, :].expand(b, H, 1, d), v], dim=2)
    return A @ vv, A[..., 1:]


def kv_pair():
    ks = {0: _randn(4, 16, seed=70) * 2, 1: _randn(4, 16, seed=71) * 2}
    vs = {0: _randn(4, 16, seed=72), 1: _randn(4, 16, seed=73)}
    return ks, vs


def ref_kvbias_then_mask(ks, vs):
    def fn(layer, q, k, v, scale, tq, hf):
        return biased(q, k, v, scale, visible(tq, k.shape[2], hide_first=True), ks[layer], vs[layer])

    return fn


def ref_sigmoid_zero_value(layer, q, k, v, scale, tq, hf):
    s = (q @ k.transpose(-1, -2)) * scale
    vis = causal(tq, k.shape[2]).expand_as(s)
    A = torch.where(vis, torch.sigmoid(s - math.log(s.shape[-1])), torch.zeros_like(s))
    A0 = A.masked_fill((torch.arange(k.shape[2])[None, :] == 0) & (tq[:, None] > 0), 0.0)  # v_0 = 0 for t > 0
    return A0 @ v, A


def ref_sink_logit_then_scale(logits, beta):
    def fn(layer, q, k, v, scale, tq, hf):
        b, H, Tq, _ = q.shape
        s = ((q @ k.transpose(-1, -2)) * scale).masked_fill(~causal(tq, k.shape[2]), float("-inf"))
        col = logits[layer].reshape(1, H, 1, 1).expand(b, H, Tq, 1)
        A = torch.softmax(torch.cat([col, s], -1), -1)[..., 1:]
        A = torch.where((torch.arange(k.shape[2])[None, :] == 0) & (tq[:, None] > 0), beta * A, A)
        return A @ v, A

    return fn


def ref_streaming_then_mask_no_renorm(layer, q, k, v, scale, tq, hf):
    _, A = streaming_ref(1, 4, True)(layer, q, k, v, scale, tq, hf)
    A = A.masked_fill((torch.arange(k.shape[2])[None, :] == 0) & (tq[:, None] > 0), 0.0)
    return A @ v, A


def ref_window_mask_kvbias(ks, vs):
    def fn(layer, q, k, v, scale, tq, hf):
        return biased(q, k, v, scale, visible(tq, k.shape[2], window=4, sinks=1), ks[layer], vs[layer])

    return fn


def test_kvbias_outside_mask_key_inside_is_the_concatenated_softmax_without_the_sink(peaked):
    """The issue's case: this gave a third result, neither alone nor both."""
    bridge, hf = peaked
    x = tokens(seed=4)
    ks, vs = kv_pair()
    want = run_ref(hf, x, ref_kvbias_then_mask(ks, vs))
    for outer, inner in (([KVBias(value=True, k=ks, v=vs)], [MaskKey()]), ([MaskKey()], [KVBias(value=True, k=ks, v=vs)])):
        got = run_nested(bridge, x, outer, inner)
        assert torch.allclose(got, want, atol=2e-5), (got - want).abs().max()


def test_kernel_and_zero_value_in_either_order(peaked):
    bridge, hf = peaked
    x = tokens(seed=5)
    want = run_ref(hf, x, ref_sigmoid_zero_value)
    kern, zero = AttentionKernel("sigmoid", bias="-log n"), ZeroValue()
    for outer, inner in (([kern], [zero]), ([zero], [kern])):
        got = run_nested(bridge, x, outer, inner)
        assert torch.allclose(got, want, atol=2e-5), (got - want).abs().max()


def test_sink_logit_then_scale_attention(peaked):
    bridge, hf = peaked
    x = tokens(seed=6)
    logits = {0: _randn(4, seed=80) + 1, 1: _randn(4, seed=81) + 1}
    want = run_ref(hf, x, ref_sink_logit_then_scale(logits, 0.25))
    got = run_nested(bridge, x, [SinkLogit(logits=logits)], [ScaleAttention(0.25)])
    assert torch.allclose(got, want, atol=2e-5), (got - want).abs().max()


def test_streaming_window_then_mask_key_without_renormalising(peaked):
    bridge, hf = peaked
    x = tokens(T=12, seed=7)
    want = run_ref(hf, x, ref_streaming_then_mask_no_renorm)
    got = run_nested(bridge, x, [StreamingWindow(4, n_sinks=1)], [MaskKey(renormalise=False)])
    assert torch.allclose(got, want, atol=2e-5), (got - want).abs().max()


def test_masked_and_kvbias_nest_either_way(peaked):
    bridge, hf = peaked
    x = tokens(T=12, seed=8)
    ks, vs = kv_pair()
    mask = AttentionMask(window=4, n_sinks=1)
    want = run_ref(hf, x, ref_window_mask_kvbias(ks, vs))
    kv = KVBias(value=True, k=ks, v=vs)
    with torch.no_grad():
        with masked(bridge, mask), intervene(bridge, kv):
            a = bridge(x)
        with intervene(bridge, kv), masked(bridge, mask):
            b = bridge(x)
    assert torch.equal(a, b)
    assert torch.allclose(a, want, atol=2e-5), (a - want).abs().max()


# --------------------------------------------------------------------------- masked() with every type


MASKS = {"window": AttentionMask(window=4, n_sinks=1), "prefix": AttentionMask(prefix=4)}


@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("kind", list(MAKERS))
def test_masked_composes_with_every_type_in_either_order(peaked, kind, mask_name):
    bridge, _ = peaked
    x = tokens(T=10, seed=9)
    # StreamingWindow(4, n_sinks=1) would be the window mask itself: take the other instance
    iv, mask = MAKERS[kind](1 if kind == "StreamingWindow" else 0), MASKS[mask_name]
    with torch.no_grad():
        with masked(bridge, mask):
            only_mask = bridge(x)
            with intervene(bridge, iv):
                mask_outside = bridge(x)
            assert torch.equal(bridge(x), only_mask)  # the mask alone again
        with intervene(bridge, iv):
            only_iv = bridge(x)
            with masked(bridge, mask):
                mask_inside = bridge(x)
            assert torch.equal(bridge(x), only_iv)
    assert torch.equal(mask_outside, mask_inside)
    assert (mask_outside - only_mask).abs().max() > 1e-4
    if (kind, mask_name) != ("StreamingWindow", "prefix"):  # the window is causal: it hides the prefix's later keys again
        assert (mask_outside - only_iv).abs().max() > 1e-4


def test_masked_blocks_nest_only_with_the_same_mask(peaked):
    bridge, _ = peaked
    x = tokens(seed=10)
    mask = AttentionMask(window=3)
    with torch.no_grad():
        with masked(bridge, mask, layers=[0]):
            one = bridge(x)
        with masked(bridge, mask):
            both = bridge(x)
        with masked(bridge, mask, layers=[0]), masked(bridge, mask, layers=[1]):  # layers add up
            assert torch.equal(bridge(x), both)
        with masked(bridge, mask, layers=[0]):
            with pytest.raises(ValueError, match="different masks"):
                with masked(bridge, AttentionMask(prefix=3)):
                    pass
            assert torch.equal(bridge(x), one)
            with masked(bridge, None):  # causal: nothing to do
                assert torch.equal(bridge(x), one)


def test_raw_mask_hooks_are_refused_rather_than_mixed(peaked):
    bridge, _ = peaked
    before = hook_snapshot(bridge)
    with intervene(bridge, MaskKey()):
        with pytest.raises(ValueError, match="masked"):
            mask_hooks(bridge, AttentionMask(window=3))
    with attach_hooks(bridge, mask_hooks(bridge, AttentionMask(window=3))):
        with pytest.raises(ValueError, match="masked"):
            with intervene(bridge, MaskKey()):
                pass
    assert hook_snapshot(bridge) == before


# --------------------------------------------------------------------------- the same object twice


def test_the_same_object_twice_is_refused_in_both_forms(peaked):
    bridge, _ = peaked
    x = tokens(seed=11)
    zero, kv = ZeroValue(), KVBias()
    before, clean = hook_snapshot(bridge), run(bridge, x)
    for args in ((zero, zero), ([zero], (zero,)), (kv, MaskKey(), [kv])):
        with pytest.raises(ValueError, match="given twice"):
            with intervene(bridge, *args):
                pass
    with torch.no_grad(), intervene(bridge, kv, MaskKey()):
        outer = bridge(x)
        with pytest.raises(ValueError, match="given twice"):
            with intervene(bridge, ZeroValue(positions=[1]), kv):
                pass
        assert torch.equal(bridge(x), outer)  # the failed inner block changed nothing
    # two objects with the same settings are two edits, flat or nested
    assert torch.equal(run(bridge, x, ZeroValue(), ZeroValue()), run_nested(bridge, x, [ZeroValue()], [ZeroValue()]))
    assert not torch.allclose(run(bridge, x, ZeroValue(), ZeroValue()), run(bridge, x, ZeroValue()))
    assert torch.equal(run(bridge, x), clean) and hook_snapshot(bridge) == before


def test_two_kernels_on_one_head_are_refused_in_both_forms(peaked):
    bridge, _ = peaked
    with pytest.raises(ValueError, match="disjoint"):
        with intervene(bridge, AttentionKernel("sigmoid"), AttentionKernel("softpick", heads=[0])):
            pass
    with intervene(bridge, AttentionKernel("sigmoid")):
        with pytest.raises(ValueError, match="disjoint"):
            with intervene(bridge, AttentionKernel("softpick", heads=[0])):
                pass


def test_an_object_active_on_another_model_is_refused(peaked):
    bridge, _ = peaked
    other = tiny_model("gqa")
    mask = MaskKey()
    with intervene(bridge, mask):
        with pytest.raises(ValueError, match="another model"):
            with intervene(other, mask):
                pass


# --------------------------------------------------------------------------- restoration


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Boom(Exception):
    pass


@pytest.mark.parametrize("where", ["inner body", "inner hook", "inner entry", "outer body"])
def test_exceptions_restore_the_outer_block_then_the_clean_model(peaked, where):
    bridge, _ = peaked
    x = tokens(seed=12)
    ks, vs = kv_pair()
    outer_ivs = [AttentionKernel("sigmoid", heads=[0, 2]), KVBias(value=True, k=ks, v=vs)]
    hooks, params = hook_snapshot(bridge), state(bridge)
    with torch.no_grad():
        clean = bridge(x)
        want_outer = run(bridge, x, *outer_ivs)
        with pytest.raises((Boom, ValueError)):
            with intervene(bridge, *outer_ivs):
                inside_outer = hook_snapshot(bridge)
                if where == "inner body":
                    with pytest.raises(Boom):
                        with intervene(bridge, MaskKey(), AblateDims([3])):
                            bridge(x)
                            raise Boom
                elif where == "inner hook":  # raised by an intervention mid-forward
                    with pytest.raises(ValueError, match="outside a sequence"):
                        with intervene(bridge, MaskKey(), ZeroValue(positions=[50])):
                            bridge(x)
                elif where == "inner entry":  # a bad scope: refused before anything changes
                    with pytest.raises(ValueError, match="layers"):
                        with intervene(bridge, MaskKey(), ZeroValue(layers=[7])):
                            pass
                else:
                    with intervene(bridge, MaskKey()):
                        bridge(x)
                assert hook_snapshot(bridge) == inside_outer  # exactly the outer block's hooks
                assert torch.equal(bridge(x), want_outer)
                raise Boom
        assert torch.equal(bridge(x), clean)
    assert hook_snapshot(bridge) == hooks
    assert all(torch.equal(v, params[k]) for k, v in state(bridge).items())
    assert active_interventions(bridge) == []


def test_a_key_hidden_by_an_earlier_score_edit_stays_hidden_under_streaming(peaked):
    """StreamingWindow re-scores the sink keys (RoPE at cache positions); a sink key masked before stays masked."""
    bridge, _ = peaked
    x = tokens(T=12, seed=13)
    name = "blocks.1.attn.hook_pattern"
    for ivs in ([MaskKey(), StreamingWindow(4, n_sinks=2)], [StreamingWindow(4, n_sinks=2), MaskKey()]):
        with torch.no_grad(), intervene(bridge, ivs[0]), intervene(bridge, ivs[1]):
            _, cache = bridge.run_with_cache(x, names_filter=name)
        p = cache[name]
        assert p[:, :, 1:, 0].abs().max() == 0  # key 0 hidden from every later query, also once the cache is full
        assert p[:, :, 6:, 1].min() > 0  # sink 1 still seen by the late queries


# --------------------------------------------------------------------------- families whose attention runs inside HF

REBUILT_KINDS = ["ZeroValue", "MaskKey", "KVBias", "SinkLogit", "AttentionKernel", "Calibrate"]


@pytest.fixture(scope="module", params=["opt", "gptj"])
def rebuilt(request, tmp_path_factory):
    """OPT and GPT-J: the bridge hands attention to Hugging Face, so interventions rebuild it at ``hook_z``."""
    from sink_interp import load_model
    from sink_interp.architecture import describe_attention
    from sink_interp.models import tiny_checkpoint

    model = load_model(str(tiny_checkpoint(request.param, tmp_path_factory.mktemp(request.param))))
    assert not describe_attention(model).layer(0).scores_hookable
    return model


def make_rebuilt(model, kind, i):
    H, d = int(model.cfg.n_heads), int(model.cfg.d_head)
    if kind == "KVBias":
        return KVBias(value=True, k={0: _randn(H, d, seed=10 + i) * 2}, v={0: _randn(H, d, seed=30 + i)})
    if kind == "SinkLogit":
        return SinkLogit(logits={0: _randn(H, seed=50 + i) + 1, 1: _randn(H, seed=60 + i)})
    if kind == "AttentionKernel":
        return AttentionKernel("softpick", heads=[1]) if i else AttentionKernel("sigmoid", bias="-log n", heads=[0])
    return MAKERS[kind](i)


@pytest.mark.parametrize("a,b", [(a, b) for a in REBUILT_KINDS for b in REBUILT_KINDS], ids=lambda v: str(v))
def test_nested_equals_flat_where_attention_is_rebuilt(rebuilt, a, b):
    x = torch.randint(4, int(rebuilt.cfg.d_vocab), (2, 10), generator=torch.Generator().manual_seed(3))
    ia, ib = make_rebuilt(rebuilt, a, 0), make_rebuilt(rebuilt, b, 1)
    flat = run(rebuilt, x, ia, ib)
    nested = run_nested(rebuilt, x, [ia], [ib])
    assert torch.equal(nested, flat), (nested - flat).abs().max()
    assert (flat - run(rebuilt, x, make_rebuilt(rebuilt, a, 0))).abs().max() > 1e-5
    assert (flat - run(rebuilt, x, make_rebuilt(rebuilt, b, 1))).abs().max() > 1e-5
