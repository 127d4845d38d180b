"""Interventions against independent references, and exact restoration of the model.

The reference for every intervention is the Hugging Face copy of the tiny model
(``tiny_hf_model``: same weights, its own q/k/v/RoPE code) with its attention
function replaced, through transformers' ``AttentionInterface``, by a formula
written here by hand from the definitions (sigmoid attention computed from q, k
and v; the key bias concatenated to the keys; ...). The bridge plus the
intervention hooks must give the same logits.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from transformers import AttentionInterface
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from sink_interp import (
    AblateDims,
    AttentionKernel,
    Calibrate,
    KVBias,
    MaskKey,
    ScaleAttention,
    SinkLogit,
    StreamingWindow,
    ZeroValue,
    intervene,
)
from sink_interp.capture import hook_snapshot

ROPE_ARCHS = ["tiny-mha", "tiny-mqa", "tiny-gqa"]
ALL_ARCHS = ROPE_ARCHS + ["tiny-learned", "tiny-learned-mqa"]

# --------------------------------------------------------------------------- the HF reference


_CURRENT: dict = {}


def _dispatch(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention for the HF reference: causal mask built here, formula from _CURRENT['fn']."""
    H, G = query.shape[1], key.shape[1]
    k = key.repeat_interleave(H // G, dim=1)
    v = value.repeat_interleave(H // G, dim=1)
    Tq, Tk = query.shape[2], k.shape[2]
    tq = torch.arange(Tk - Tq, Tk)  # absolute positions of the queries (decode: the last ones)
    z, A = _CURRENT["fn"](module.layer_idx, query, k, v, float(scaling), tq, _CURRENT.get("hf"))
    return z.transpose(1, 2).contiguous(), A


AttentionInterface.register("sink_interp_test_ref", _dispatch)


@contextlib.contextmanager
def hf_attention(hf, fn):
    """Run the HF model with ``fn(layer, q, k, v, scale, t_pos, hf) -> (z [b,H,T,d], A)``."""
    _CURRENT["fn"], _CURRENT["hf"] = fn, hf
    hf.set_attn_implementation("sink_interp_test_ref")
    try:
        yield hf
    finally:
        hf.set_attn_implementation("eager")
        _CURRENT.clear()


def causal(tq, Tk):
    return torch.arange(Tk)[None, :] <= tq[:, None]  # [Tq, Tk]


def softmax_ref(layer, q, k, v, scale, tq, hf):
    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~causal(tq, k.shape[2]), float("-inf"))
    A = torch.softmax(s, dim=-1)
    return A @ v, A


def heads_of(spec, layer, H):
    if spec is None:
        return list(range(H))
    if isinstance(spec, dict):
        return list(spec.get(layer, []))
    return list(spec)


def run_both(bridge, hf, tokens, interventions, fn):
    with torch.no_grad():
        with intervene(bridge, *interventions):
            got = bridge(tokens)
        with hf_attention(hf, fn):
            want = hf(tokens).logits
    return got, want


# --------------------------------------------------------------------------- hand-written references


def zero_value_ref(P, heads=None, layers=None):
    def fn(layer, q, k, v, scale, tq, hf):
        z, A = softmax_ref(layer, q, k, v, scale, tq, hf)
        if layers is not None and layer not in layers:
            return z, A
        out = torch.zeros_like(z)
        for ti, t in enumerate(tq.tolist()):  # each query reads its own copy of V with v_p = 0 in the chosen heads
            vt = v.clone()
            for p in P:
                if t > p:
                    vt[:, heads_of(heads, layer, q.shape[1]), p] = 0.0
            out[:, :, ti] = torch.einsum("bhk,bhkd->bhd", A[:, :, ti], vt)
        return out, A

    return fn


def mask_key_ref(P, renormalise=True, heads=None, layers=None):
    def fn(layer, q, k, v, scale, tq, hf):
        if layers is not None and layer not in layers:
            return softmax_ref(layer, q, k, v, scale, tq, hf)
        hs = heads_of(heads, layer, q.shape[1])
        s = (q @ k.transpose(-1, -2)) * scale
        s = s.masked_fill(~causal(tq, k.shape[2]), float("-inf"))
        drop = torch.zeros_like(s, dtype=torch.bool)
        for ti, t in enumerate(tq.tolist()):
            for p in P:
                if t > p:
                    drop[:, hs, ti, p] = True
        if renormalise:
            A = torch.softmax(s.masked_fill(drop, float("-inf")), dim=-1)
        else:
            A = torch.softmax(s, dim=-1).masked_fill(drop, 0.0)
        return A @ v, A

    return fn


def scale_ref(P, beta):
    def fn(layer, q, k, v, scale, tq, hf):
        _, A = softmax_ref(layer, q, k, v, scale, tq, hf)
        A = A.clone()
        for ti, t in enumerate(tq.tolist()):
            for p in P:
                if t > p:
                    A[:, :, ti, p] *= beta
        return A @ v, A

    return fn


def calibrate_ref(tau, beta, heads=None):
    def fn(layer, q, k, v, scale, tq, hf):
        _, A0 = softmax_ref(layer, q, k, v, scale, tq, hf)
        A = A0.clone()
        b, H, T, _ = A.shape
        for bi in range(b):
            for h in heads_of(heads, layer, H):
                alpha = [A0[bi, h, k_:, k_].sum().item() / (T - k_) for k_ in range(T)]
                S = [k_ for k_ in range(1, T) if alpha[k_] > tau]
                for t in range(T):
                    sink_mass = sum(A0[bi, h, t, j].item() for j in S)
                    rest = sum(A0[bi, h, t, j].item() for j in range(T) if j not in S)
                    for j in range(T):
                        if j in S:
                            A[bi, h, t, j] = beta * A0[bi, h, t, j]
                        elif rest > 0:
                            A[bi, h, t, j] = A0[bi, h, t, j] * (1 + (1 - beta) * sink_mass / rest)
        return A @ v, A

    return fn


def bias_ref(kstar, vstar=None, heads=None):
    """softmax([q k*, q K^T] * scale) [v*; V], k*: {layer: [H or 1, d]}, v*: same or None."""

    def fn(layer, q, k, v, scale, tq, hf):
        if layer not in kstar:
            return softmax_ref(layer, q, k, v, scale, tq, hf)
        b, H, T, d = q.shape
        ks = kstar[layer].expand(H, d)
        s = (q @ k.transpose(-1, -2)) * scale
        s = s.masked_fill(~causal(tq, k.shape[2]), float("-inf"))
        s_star = torch.einsum("bhtd,hd->bht", q, ks)[..., None] * scale
        if heads is not None:
            off = [h for h in range(H) if h not in heads]
            s_star[:, off] = float("-inf")
        A = torch.softmax(torch.cat([s_star, s], dim=-1), dim=-1)
        vs = torch.zeros(H, d) if vstar is None else vstar[layer].expand(H, d)
        vv = torch.cat([vs[None, :, None, :].expand(b, H, 1, d), v], dim=2)
        return A @ vv, A[..., 1:]

    return fn


def sink_logit_ref(logits):
    def fn(layer, q, k, v, scale, tq, hf):
        b, H, T, d = q.shape
        s = (q @ k.transpose(-1, -2)) * scale
        s = s.masked_fill(~causal(tq, k.shape[2]), float("-inf"))
        col = logits[layer].reshape(1, H, 1, 1).expand(b, H, s.shape[2], 1)
        A = torch.softmax(torch.cat([col, s], dim=-1), dim=-1)[..., 1:]
        return A @ v, A

    return fn


def kernel_ref(name, **kw):
    def fn(layer, q, k, v, scale, tq, hf):
        s = (q @ k.transpose(-1, -2)) * scale
        vis = causal(tq, k.shape[2]).expand_as(s)
        n = s.shape[-1]
        if name == "sigmoid":
            b = -math.log(n) if kw.get("bias") == "-log n" else float(kw.get("bias", 0.0))
            A = torch.where(vis, 1 / (1 + torch.exp(-(s + b))), torch.zeros_like(s))
            if kw.get("normalise"):
                A = A / A.sum(-1, keepdim=True)
        elif name == "elu1":
            A = torch.where(vis, torch.where(s > 0, s + 1, torch.exp(s)), torch.zeros_like(s))
            if kw.get("normalise"):
                A = A / A.sum(-1, keepdim=True)
        elif name == "softpick":
            e = torch.where(vis, torch.exp(s) - 1, torch.zeros_like(s))
            A = torch.clamp(e, min=0) / (e.abs().sum(-1, keepdim=True) + 1e-30)
        elif name == "softmax1":
            e = torch.where(vis, torch.exp(s), torch.zeros_like(s))
            A = e / (1 + e.sum(-1, keepdim=True))
        elif name == "scaled":
            A = kw["alpha"] * torch.softmax(s.masked_fill(~vis, float("-inf")), -1)
        elif name == "pnorm":
            e = torch.where(vis, torch.exp(s), torch.zeros_like(s))
            A = e / (e ** kw["p"]).sum(-1, keepdim=True) ** (1 / kw["p"])
        elif name == "linear":
            A = torch.where(vis, s, torch.zeros_like(s))
            A = A / torch.clamp(A.sum(-1, keepdim=True).abs(), min=1.0)
        else:
            raise AssertionError(name)
        return A @ v, A

    return fn


def streaming_ref(sinks, window, cache_positions=True):
    """Each query t sees keys j < sinks and t - window < j <= t; with cache positions, once t >= sinks + window
    the sink scores use the query rotated to cache index c = sinks + window - 1 (HF's rotary module, rotation by c - t)."""

    def fn(layer, q, k, v, scale, tq, hf):
        Tk = k.shape[2]
        j = torch.arange(Tk)[None, :]
        t = tq[:, None]
        vis = (j <= t) & ((j > t - window) | (j < sinks))
        s = (q @ k.transpose(-1, -2)) * scale
        if cache_positions:
            c = sinks + window - 1
            late = (tq >= sinks + window).nonzero().flatten()
            if len(late):
                shift = (c - tq[late])[None, :]  # rotate the (already rotated) query by c - t
                cos, sin = hf.model.rotary_emb(q, shift)
                q_late = q[:, :, late]
                qc, _ = apply_rotary_pos_emb(q_late, q_late, cos, sin)
                s_sink = (qc @ k[:, :, :sinks].transpose(-1, -2)) * scale
                s = s.clone()
                s[:, :, late, :sinks] = s_sink
        A = torch.softmax(s.masked_fill(~vis, float("-inf")), dim=-1)
        return A @ v, A

    return fn


# --------------------------------------------------------------------------- reference tests


def tokens(T=10, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, 128, (n, T), generator=g)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_reference_harness_reproduces_the_model(tiny_models, arch):
    bridge, hf = tiny_models(arch)
    got, want = run_both(bridge, hf, tokens(), [], softmax_ref)
    assert torch.allclose(got, want, atol=1e-5)


CASES = {
    "zero_value": (lambda: [ZeroValue()], lambda: zero_value_ref([0])),
    "zero_value_scoped": (
        lambda: [ZeroValue(layers=[1], heads=[0, 3], positions=[0, 2])],
        lambda: zero_value_ref([0, 2], heads=[0, 3], layers=[1]),
    ),
    "zero_value_one_head_per_layer": (
        lambda: [ZeroValue(heads={0: [1], 1: [2]})],
        lambda: zero_value_ref([0], heads={0: [1], 1: [2]}),
    ),
    "mask_renorm": (lambda: [MaskKey()], lambda: mask_key_ref([0])),
    "mask_renorm_scoped": (
        lambda: [MaskKey(heads={1: [0, 2]}, positions=[1])],
        lambda: mask_key_ref([1], heads={1: [0, 2]}, layers=[1]),
    ),
    "mask_no_renorm": (lambda: [MaskKey(renormalise=False)], lambda: mask_key_ref([0], renormalise=False)),
    "scale": (lambda: [ScaleAttention(0.3, positions=[0, 1])], lambda: scale_ref([0, 1], 0.3)),
    "calibrate": (lambda: [Calibrate(tau=0.12, beta=0.4)], lambda: calibrate_ref(0.12, 0.4)),
    "calibrate_heads": (lambda: [Calibrate(tau=0.12, beta=0.2, heads=[1])], lambda: calibrate_ref(0.12, 0.2, heads=[1])),
    "sink_logit": (
        lambda: [SinkLogit(logits={0: torch.tensor([0.5, -1.0, 2.0, 0.0]), 1: torch.tensor([1.0, 1.5, -0.5, 3.0])})],
        lambda: sink_logit_ref({0: torch.tensor([0.5, -1.0, 2.0, 0.0]), 1: torch.tensor([1.0, 1.5, -0.5, 3.0])}),
    ),
}
KERNEL_CASES = [
    ("sigmoid", {}),
    ("sigmoid", {"bias": "-log n"}),
    ("sigmoid", {"normalise": True}),
    ("sigmoid", {"bias": -1.5, "normalise": True}),
    ("elu1", {}),
    ("elu1", {"normalise": True}),
    ("softpick", {"eps": 1e-30}),
    ("softmax1", {}),
    ("scaled", {"alpha": 0.5}),
    ("pnorm", {"p": 2.0}),
    ("linear", {"normalise": True}),
]


@pytest.mark.parametrize("arch", ALL_ARCHS)
@pytest.mark.parametrize("case", list(CASES))
def test_interventions_match_hand_written_attention(tiny_models, arch, case):
    bridge, hf = tiny_models(arch)
    make_ivs, make_ref = CASES[case]
    x = tokens(T=9, seed=1)
    got, want = run_both(bridge, hf, x, make_ivs(), make_ref())
    assert torch.allclose(got, want, atol=2e-5), (got - want).abs().max()


@pytest.mark.parametrize("arch", ["tiny-gqa", "tiny-mqa", "tiny-learned"])
@pytest.mark.parametrize(
    "name,kw", KERNEL_CASES, ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw in KERNEL_CASES]
)
def test_kernels_match_hand_written_attention(tiny_models, arch, name, kw):
    bridge, hf = tiny_models(arch)
    got, want = run_both(bridge, hf, tokens(T=9, seed=2), [AttentionKernel(name, **kw)], kernel_ref(name, **kw))
    assert torch.allclose(got, want, atol=2e-5), (got - want).abs().max()


@pytest.mark.parametrize("arch", ALL_ARCHS)
@pytest.mark.parametrize("per_head", [True, False])
@pytest.mark.parametrize("value", [False, True])
def test_kv_bias_is_the_concatenated_softmax(tiny_models, arch, per_head, value):
    bridge, hf = tiny_models(arch)
    H, d = bridge.cfg.n_heads, bridge.cfg.d_head
    g = torch.Generator().manual_seed(3)
    rows = H if per_head else 1
    ks = {0: torch.randn(rows, d, generator=g) * 2, 1: torch.randn(rows, d, generator=g) * 2}
    vs = {0: torch.randn(rows, d, generator=g), 1: torch.randn(rows, d, generator=g)} if value else None
    iv = KVBias(per_head=per_head, value=value, k=ks, v=vs)
    got, want = run_both(bridge, hf, tokens(seed=4), [iv], bias_ref(ks, vs))
    assert torch.allclose(got, want, atol=2e-5), (got - want).abs().max()


def test_kv_bias_in_some_heads_with_masked_sink(tiny_models):
    """Composition: MaskKey (all heads) then a K bias in heads 1 and 2 of layer 1 only."""
    bridge, hf = tiny_models("tiny-gqa")
    d = bridge.cfg.d_head
    k1 = torch.randn(4, d, generator=torch.Generator().manual_seed(5)) * 3
    ivs = [MaskKey(), KVBias(layers=[1], heads=[1, 2], k={1: k1})]

    def fn(layer, q, k, v, scale, tq, hf_):
        if layer == 0:
            return mask_key_ref([0])(layer, q, k, v, scale, tq, hf_)
        b, H, T, dd = q.shape
        s = (q @ k.transpose(-1, -2)) * scale
        vis = causal(tq, T) & ~((torch.arange(T)[None, :] == 0) & (tq[:, None] > 0))
        s = s.masked_fill(~vis, float("-inf"))
        s_star = torch.einsum("bhtd,hd->bht", q, k1)[..., None] * scale
        s_star[:, [0, 3]] = float("-inf")
        A = torch.softmax(torch.cat([s_star, s], -1), -1)[..., 1:]
        return A @ v, A

    got, want = run_both(bridge, hf, tokens(seed=6), ivs, fn)
    assert torch.allclose(got, want, atol=2e-5)


def test_ablate_dims_matches_a_hook_on_the_hf_layers(tiny_models):
    bridge, hf = tiny_models("tiny-gqa")
    x = tokens(seed=7)
    dims = [3, 17, 40]
    for mode in ("zero", "mean"):
        handles = []

        def pre(module, args, kwargs):
            h = (kwargs.get("hidden_states") if "hidden_states" in kwargs else args[0]).clone()
            for p in (0, 2):
                if mode == "zero":  # noqa: B023
                    h[:, p, dims] = 0
                else:
                    others = [t for t in range(h.shape[1]) if t not in (0, 2)]
                    h[:, p, dims] = h[:, others][:, :, dims].mean(1)
            if "hidden_states" in kwargs:
                kwargs["hidden_states"] = h
                return args, kwargs
            return (h, *args[1:]), kwargs

        for layer in hf.model.layers:
            handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        try:
            with torch.no_grad():
                want = hf(x).logits
                with intervene(bridge, AblateDims(dims, mode=mode, positions=[0, 2])):
                    got = bridge(x)
        finally:
            for hd in handles:
                hd.remove()
        assert torch.allclose(got, want, atol=2e-5), (mode, (got - want).abs().max())


@pytest.mark.parametrize("arch", ROPE_ARCHS)
@pytest.mark.parametrize("cache_positions", [True, False])
def test_streaming_window_matches_rerotated_reference(tiny_models, arch, cache_positions):
    bridge, hf = tiny_models(arch)
    x = tokens(T=16, seed=8)
    iv = StreamingWindow(5, n_sinks=2, rope_positions="cache" if cache_positions else "original")
    got, want = run_both(bridge, hf, x, [iv], streaming_ref(2, 5, cache_positions))
    assert torch.allclose(got, want, atol=2e-5), (got - want).abs().max()
    if cache_positions:  # the re-rotation matters: original positions give other logits
        other, _ = run_both(bridge, hf, x, [StreamingWindow(5, n_sinks=2, rope_positions="original")], softmax_ref)
        assert (other - got).abs().max() > 1e-4


def test_one_pass_streaming_equals_token_by_token_decoding_with_a_kv_cache(tiny_models):
    """HF decodes one token at a time with its KV cache; its attention applies the StreamingLLM rule per step."""
    bridge, hf = tiny_models("tiny-gqa")
    x = tokens(T=14, n=1, seed=9)
    sinks, window = 2, 4
    with torch.no_grad():
        with intervene(bridge, StreamingWindow(window, sinks)):
            parallel = bridge(x)
        from transformers import DynamicCache

        cache = DynamicCache()
        steps = []
        with hf_attention(hf, streaming_ref(sinks, window, True)):
            for t in range(x.shape[1]):
                out = hf(x[:, t : t + 1], cache=cache, use_cache=True)  # the cache API (past_key_values is deprecated)
                cache = out.cache
                steps.append(out.logits[:, -1])
    sequential = torch.stack(steps, dim=1)
    assert torch.allclose(parallel, sequential, atol=2e-5), (parallel - sequential).abs().max()


def test_streaming_with_a_window_covering_everything_is_the_clean_model(tiny_models):
    bridge, _ = tiny_models("tiny-gqa")
    x = tokens(T=12)
    clean = bridge(x)
    with intervene(bridge, StreamingWindow(12, n_sinks=4)):
        assert torch.equal(bridge(x), clean)


def test_streaming_refuses_cache_positions_with_learned_positions(tiny_models):
    bridge, _ = tiny_models("tiny-learned")
    with pytest.raises(ValueError, match="positions='original'"):
        with intervene(bridge, StreamingWindow(4, n_sinks=2)):
            pass


# --------------------------------------------------------------------------- identities between interventions


def test_identities(tiny_models):
    bridge, _ = tiny_models("tiny-gqa")
    x = tokens(T=11, seed=10)
    with torch.no_grad():

        def run(*ivs):
            with intervene(bridge, *ivs):
                return bridge(x)

        clean = bridge(x)
        # zeroing the value == removing the key without renormalising
        assert torch.allclose(run(ZeroValue()), run(MaskKey(renormalise=False)), atol=1e-5)
        # scaling by 0 and renormalising == masking with renormalisation (softmax)
        assert torch.allclose(run(ScaleAttention(0.0, renormalise=True)), run(MaskKey()), atol=1e-5)
        # k* = 0, v* = 0  ==  a sink logit of 0  ==  softmax plus one
        a, b, c = run(KVBias()), run(SinkLogit()), run(AttentionKernel("softmax1"))
        assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a, c, atol=1e-6)
        # the softmax kernel recomputed from the scores is the model itself, bit for bit
        assert torch.equal(run(AttentionKernel("softmax")), clean)
        # scaling by 1 changes nothing
        assert torch.allclose(run(ScaleAttention(1.0)), clean, atol=1e-6)
        # interventions scoped to no matching head change nothing
        assert torch.allclose(run(ZeroValue(heads={0: []})), clean, atol=1e-6)


def test_kernel_on_some_heads_leaves_the_others_softmax(tiny_models):
    bridge, _ = tiny_models("tiny-mha")
    x = tokens(T=8)
    from sink_interp._internal import hooknames as hn

    with torch.no_grad():
        _, clean = bridge.run_with_cache(x, names_filter=[hn.pattern(0)])
        with intervene(bridge, AttentionKernel("sigmoid", layers=[0], heads=[1, 2])):
            _, cache = bridge.run_with_cache(x, names_filter=[hn.pattern(0)])
    p0, p1 = clean[hn.pattern(0)], cache[hn.pattern(0)]
    assert torch.allclose(p0[:, [0, 3]], p1[:, [0, 3]], atol=1e-7)
    assert not torch.allclose(p0[:, [1, 2]], p1[:, [1, 2]], atol=1e-3)


# --------------------------------------------------------------------------- exact restoration


def all_interventions(model):
    d = model.cfg.d_head
    return {
        "ZeroValue": [ZeroValue()],
        "MaskKey": [MaskKey()],
        "MaskKey-no-renorm": [MaskKey(renormalise=False)],
        "ScaleAttention": [ScaleAttention(0.5)],
        "Calibrate": [Calibrate(tau=0.1)],
        "AblateDims": [AblateDims([0, 5, 9])],
        "AblateDims-mean": [AblateDims([0, 5, 9], mode="mean")],
        "KVBias": [KVBias(k={0: torch.ones(d), 1: torch.ones(d)})],
        "KVBias-value": [KVBias(value=True, v={0: torch.ones(d), 1: torch.ones(d)})],
        "SinkLogit": [SinkLogit(init=1.0)],
        "sigmoid": [AttentionKernel("sigmoid")],
        "softpick": [AttentionKernel("softpick")],
        "StreamingWindow": [StreamingWindow(3, n_sinks=1)],
        "composed": [MaskKey(), KVBias(), ZeroValue(positions=[1]), Calibrate()],
    }


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("arch", ["tiny-gqa", "tiny-learned-mqa"])
def test_logits_change_inside_and_are_bit_identical_after(tiny_models, arch):
    bridge, _ = tiny_models(arch)
    x = tokens(T=9, seed=11)
    for name, ivs in all_interventions(bridge).items():
        if arch == "tiny-learned-mqa" and name == "StreamingWindow":
            ivs = [StreamingWindow(3, n_sinks=1, rope_positions="original")]
        hooks, params, flags = hook_snapshot(bridge), state(bridge), [p.requires_grad for p in bridge.parameters()]
        with torch.no_grad():
            clean = bridge(x)
            with intervene(bridge, *ivs):
                inside = bridge(x)
            after = bridge(x)
        assert (inside - clean).abs().max() > 1e-4, name
        assert torch.equal(after, clean), name
        assert hook_snapshot(bridge) == hooks, name
        assert same_state(state(bridge), params), name
        assert [p.requires_grad for p in bridge.parameters()] == flags, name


class Boom(Exception):
    pass


@pytest.mark.parametrize("where", ["block", "hook"])
def test_restored_after_an_exception(tiny_models, where):
    bridge, _ = tiny_models("tiny-gqa")
    x = tokens(T=9, seed=12)
    for name, ivs in all_interventions(bridge).items():
        hooks, params = hook_snapshot(bridge), state(bridge)
        with torch.no_grad():
            clean = bridge(x)
            if where == "block":
                with pytest.raises(Boom):
                    with intervene(bridge, *ivs):
                        bridge(x)
                        raise Boom(name)
            else:  # an error raised by an intervention mid-forward (position past the end)
                with pytest.raises(ValueError, match="outside a sequence"):
                    with intervene(bridge, *ivs, ZeroValue(positions=[50])):
                        bridge(x)
            assert torch.equal(bridge(x), clean), name
        assert hook_snapshot(bridge) == hooks, name
        assert same_state(state(bridge), params), name


def test_user_hooks_survive(tiny_models):
    bridge, _ = tiny_models("tiny-gqa")
    from sink_interp._internal import hooknames as hn

    seen = []
    bridge.add_hook(hn.pattern(0), lambda x, hook: seen.append(1))
    try:
        before = hook_snapshot(bridge)
        with intervene(bridge, MaskKey(), KVBias()):
            bridge(tokens())
        assert hook_snapshot(bridge) == before
        bridge(tokens())
        assert len(seen) == 2
    finally:
        bridge.reset_hooks(including_permanent=True)


# --------------------------------------------------------------------------- gradients


def test_gradients_flow_to_biases_and_through_kernels(tiny_models):
    bridge, _ = tiny_models("tiny-gqa")
    x = tokens(T=9, seed=13)
    kv, sl = KVBias(value=True), SinkLogit()
    with intervene(bridge, MaskKey(), kv):
        loss = bridge(x).logsumexp(-1).mean()
    grads = torch.autograd.grad(loss, list(kv.parameters()))
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    with intervene(bridge, sl):
        loss = bridge(x).logsumexp(-1).mean()
    (g,) = torch.autograd.grad(loss, [sl.logit(1)])
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    w = bridge.blocks[0].attn.q.original_component.weight
    for ivs in (
        [AttentionKernel("sigmoid", bias="-log n")],
        [AttentionKernel("softpick")],
        [AttentionKernel("elu1", normalise=True)],
        [AttentionKernel("linear")],
        [MaskKey(include_self=True)],  # leaves row 0 empty: must give 0, not NaN, in the backward pass too
        [Calibrate()],
        [StreamingWindow(3, n_sinks=2)],
        [ZeroValue(heads=[1])],
    ):
        with intervene(bridge, *ivs):
            loss = bridge(x).logsumexp(-1).mean()
        (g,) = torch.autograd.grad(loss, [w])
        assert torch.isfinite(g).all() and g.abs().sum() > 0, ivs
    assert w.grad is None


# --------------------------------------------------------------------------- bad input


def test_bad_scopes_are_clear_errors(tiny_models):
    bridge, _ = tiny_models("tiny-gqa")
    with pytest.raises(ValueError, match="layers"):
        with intervene(bridge, ZeroValue(layers=[5])):
            pass
    with pytest.raises(ValueError, match="heads"):
        with intervene(bridge, ZeroValue(heads=[4])):
            pass
    with pytest.raises(ValueError, match="dims"):
        with intervene(bridge, AblateDims([999])):
            pass
    with pytest.raises(ValueError, match="beta"):
        ScaleAttention(-1)
    with pytest.raises(ValueError, match="unknown attention kernel"):
        AttentionKernel("relu-magic")
    with pytest.raises(ValueError, match="unexpected"):
        AttentionKernel("softmax", alpha=2)
    with pytest.raises(ValueError, match="disjoint"):
        with intervene(bridge, AttentionKernel("sigmoid"), AttentionKernel("softpick", heads=[0])):
            bridge(tokens())
    with pytest.raises(TypeError, match="Intervention"):
        with intervene(bridge, "ZeroValue"):
            pass
    with pytest.raises(ValueError, match=r"\[d_head\]"):
        with intervene(bridge, KVBias(k={0: torch.ones(3)})):
            pass
