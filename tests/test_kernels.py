"""The pure kernel functions against formulas written here, torch's own attention, and edge cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sink_interp.kernels import (
    KERNELS,
    attention,
    causal_mask,
    kernel_fn,
    softmax_attention,
    visible_mask,
)


def data(b=2, h=3, t=6, m=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, h, t, t, generator=g) * 2
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    e = torch.randn(b, h, t, m, generator=g)
    return x, mask, e


def by_hand(name, x, mask, e, **kw):
    """The formulas of the kernels' docstring, over the visible keys followed by the virtual keys."""
    xx = torch.cat([x, e], -1) if e is not None else x
    vis = torch.cat([mask.expand_as(x), torch.ones_like(e, dtype=torch.bool)], -1) if e is not None else mask.expand_as(x)
    if name == "softmax":
        w = torch.exp(xx) * vis
        w = w / w.sum(-1, keepdim=True)
    elif name == "softmax1":
        w = torch.exp(xx) * vis
        w = w / (1 + w.sum(-1, keepdim=True))
    elif name == "scaled":
        w = torch.exp(xx) * vis
        w = kw["alpha"] * w / w.sum(-1, keepdim=True)
    elif name == "pnorm":
        w = torch.exp(xx) * vis
        w = w / ((w ** kw["p"]).sum(-1, keepdim=True)) ** (1 / kw["p"])
    elif name == "sigmoid":
        b = -math.log(x.shape[-1]) if kw.get("bias") == "-log n" else kw.get("bias", 0.0)
        w = 1 / (1 + torch.exp(-(xx + b))) * vis
        if kw.get("normalise"):
            w = w / w.sum(-1, keepdim=True)
    elif name == "elu1":
        w = torch.where(xx > 0, xx + 1, torch.exp(xx)) * vis
        if kw.get("normalise"):
            w = w / w.sum(-1, keepdim=True)
    elif name == "softpick":
        d = (torch.exp(xx) - 1) * vis
        w = torch.relu(d) / (d.abs().sum(-1, keepdim=True) + kw.get("eps", 0.0))
    elif name == "linear":
        w = xx * vis
        if kw.get("normalise", True):
            w = w / torch.clamp(w.sum(-1, keepdim=True).abs(), min=1)
    else:
        raise AssertionError(name)
    k = x.shape[-1]
    return (w[..., :k], w[..., k:]) if e is not None else (w, None)


CASES = [
    ("softmax", {}),
    ("softmax1", {}),
    ("scaled", {"alpha": 0.3}),
    ("pnorm", {"p": 3.0}),
    ("sigmoid", {}),
    ("sigmoid", {"bias": "-log n", "normalise": True}),
    ("sigmoid", {"bias": 0.7}),
    ("elu1", {}),
    ("elu1", {"normalise": True}),
    ("softpick", {"eps": 1e-20}),
    ("linear", {"normalise": True}),
    ("linear", {"normalise": False}),
]


@pytest.mark.parametrize("with_extra", [False, True])
@pytest.mark.parametrize("name,kw", CASES)
def test_kernel_equals_its_formula(name, kw, with_extra):
    x, mask, e = data()
    e = e if with_extra else None
    got, got_e = kernel_fn(name, **kw)(x, mask, e)
    want, want_e = by_hand(name, x.double(), mask, None if e is None else e.double(), **kw)
    assert torch.allclose(got.double(), want, atol=1e-6, rtol=1e-5)
    if with_extra:
        assert torch.allclose(got_e.double(), want_e, atol=1e-6, rtol=1e-5)
    assert (got[..., ~mask] == 0).all()


def test_softmax_equals_torch_and_the_bridge_convention():
    x, mask, _ = data()
    masked = x.masked_fill(~mask, torch.finfo(x.dtype).min)  # how the bridge hands scores over
    got, _ = softmax_attention(masked)  # mask inferred from the sentinel
    assert torch.equal(got, torch.softmax(masked, -1, dtype=torch.float32))
    assert torch.equal(visible_mask(masked), mask.expand_as(x))


def test_softmax_with_virtual_keys_is_the_concatenated_softmax():
    x, mask, e = data()
    A, Ae = kernel_fn("softmax")(x, mask, e)
    full = torch.softmax(torch.cat([x.masked_fill(~mask, float("-inf")), e], -1), -1)
    assert torch.allclose(torch.cat([A, Ae], -1), full, atol=1e-6)


def test_absent_virtual_keys_and_empty_rows_are_zero_with_finite_gradients():
    x, mask, e = data(t=5)
    x = x.clone().requires_grad_(True)
    e = e.clone()
    e[:, 1] = float("-inf")  # head 1 has no virtual key
    mask = mask.clone()
    mask[0, 0] = False  # row 0 sees nothing
    for name, kw in CASES:
        A, Ae = kernel_fn(name, **kw)(x, mask, e)
        assert (Ae[:, 1] == 0).all(), name
        assert torch.isfinite(A).all() and torch.isfinite(Ae).all(), name
        (g,) = torch.autograd.grad((A.sum() + Ae[:, 0].sum()), [x])
        assert torch.isfinite(g).all(), name
    A, _ = kernel_fn("softmax")(x, mask, None)
    assert (A[:, :, 0] == 0).all()


def test_softpick_is_stable_for_large_scores():
    x = torch.tensor([[500.0, 499.0, -3.0]])
    A, _ = kernel_fn("softpick")(x, torch.ones(1, 3, dtype=torch.bool))
    # ReLU(e^x - 1) / sum |e^x - 1| with e^500 overflowing float32 directly; stable form gives e / (e + 1) split
    assert torch.isfinite(A).all()
    assert torch.allclose(A, torch.tensor([[1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1)), 0.0]]), atol=1e-6)


def test_attention_matches_torch_sdpa_with_gqa():
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(2, 6, 7, 8, generator=g), torch.randn(2, 2, 7, 8, generator=g), torch.randn(2, 2, 7, 8, generator=g)
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), is_causal=True)
    assert torch.allclose(attention(q, k, v), ref, atol=1e-6)


def test_attention_with_key_value_bias_and_sink_logit():
    g = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(1, 4, 5, 8, generator=g), torch.randn(1, 2, 5, 8, generator=g), torch.randn(1, 2, 5, 8, generator=g)
    ks, vs, s = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g), torch.randn(4, generator=g)
    K, V = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    scale = 8**-0.5
    scores = (q @ K.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf"))
    s_star = torch.einsum("bhtd,hd->bht", q, ks)[..., None] * scale
    sink = s.reshape(1, 4, 1, 1).expand(1, 4, 5, 1)
    A = torch.softmax(torch.cat([s_star, sink, scores], -1), -1)
    want = A[..., :1] * vs[None, :, None, :] + A[..., 2:] @ V
    got = attention(q, k, v, k_bias=ks, v_bias=vs, sink_logit=s)
    assert torch.allclose(got, want, atol=1e-6)
    # shared k* ([d]) and no v* (K bias only)
    got = attention(q, k, v, k_bias=ks[0])
    s_star = torch.einsum("bhtd,d->bht", q, ks[0])[..., None] * scale
    A = torch.softmax(torch.cat([s_star, scores], -1), -1)
    assert torch.allclose(got, A[..., 1:] @ V, atol=1e-6)


def test_attention_with_a_feature_map_is_linear_attention():
    g = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(1, 2, 6, 4, generator=g), torch.randn(1, 2, 6, 4, generator=g), torch.randn(1, 2, 6, 4, generator=g)
    phi = lambda t: F.elu(t) + 1  # noqa: E731
    got = attention(q, k, v, "linear", feature_map=phi, normalise=True)
    s = (phi(q) @ phi(k).transpose(-1, -2)) / 2.0
    s = s * torch.ones(6, 6).tril()
    z = s / torch.clamp(s.sum(-1, keepdim=True).abs(), min=1)
    assert torch.allclose(got, z @ v, atol=1e-6)


def test_causal_mask_with_window_and_sinks():
    m = causal_mask(6, window=2, n_sinks=1)
    want = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 0, 1, 1, 0, 0],
            [1, 0, 0, 1, 1, 0],
            [1, 0, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(m, want)
    assert torch.equal(causal_mask(2, 5), torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool))


def test_kernel_errors_name_the_fix():
    with pytest.raises(ValueError, match="unknown attention kernel"):
        kernel_fn("nope")
    with pytest.raises(ValueError, match="unexpected"):
        kernel_fn("sigmoid", alpha=1)
    with pytest.raises(ValueError, match="alpha"):
        kernel_fn("scaled", alpha=0)(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="-log n"):
        kernel_fn("sigmoid", bias="log")(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="multiple"):
        attention(torch.zeros(1, 3, 2, 4), torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 2, 4))
    assert set(KERNELS) >= {"softmax", "softmax1", "scaled", "pnorm", "sigmoid", "elu1", "softpick", "linear"}
    assert kernel_fn("softmax-plus-one").kernel_name == "softmax1"


@pytest.mark.parametrize("normalise", [None, "sum", "length"])
def test_relu_kernel_equals_guo_et_al(normalise):
    """Guo et al.'s ReLU attention (the training knob kernel="relu"), written out: ReLU over visible keys,
    then / (sum + 1e-8) or / number of visible keys."""
    x, mask, _ = data()
    A, Ae = kernel_fn("relu", normalise=normalise)(x, mask)
    ref = torch.zeros_like(x)
    for t in range(x.shape[-1]):
        r = F.relu(x[..., t, : t + 1])
        if normalise == "sum":
            r = r / (r.sum(-1, keepdim=True) + 1e-8)
        elif normalise == "length":
            r = r / (t + 1)
        ref[..., t, : t + 1] = r
    torch.testing.assert_close(A, ref)
    assert Ae is None
    with pytest.raises(ValueError, match="no virtual keys"):
        kernel_fn("relu")(x, mask, torch.zeros(*x.shape[:-1], 1))
