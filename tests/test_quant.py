"""KV quantization with intact sinks: the quantizer against the formula on hand-made tensors, intact positions bit for
bit, full precision equal to the model, and the loss against an independent Hugging Face implementation (the formula
applied to key_states / value_states inside HF's own attention, after RoPE and before repeat_kv)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sink_interp import intervene, load_model, load_report
from sink_interp.models import tiny_checkpoint
from sink_interp.quant import KVQuant, fake_quant, kv_quant, quantize_keys, quantize_values


def formula(x: torch.Tensor, b: int) -> torch.Tensor:
    """The issue's quantizer, written out for one group (a 1-D tensor)."""
    mn, mx = float(x.min()), float(x.max())
    scale = (mx - mn) / (2**b - 1)
    return torch.tensor([min(max(round((float(v) - mn) / scale), 0), 2**b - 1) * scale + mn for v in x])


def test_fake_quant_hand_made():
    x = torch.tensor([[0.0, 0.1, 0.5, 1.0], [-2.0, -1.0, 0.0, 6.0]])
    # 2 bits: scale 1/3 and 8/3; 0.5/(1/3) = 1.5 rounds (half to even, torch.round) to 2
    expected = torch.tensor([[0.0, 0.0, 2 / 3, 1.0], [-2.0, -2.0, -2 + 8 / 3, 6.0]])
    torch.testing.assert_close(fake_quant(x, 2), expected)
    assert torch.round(torch.tensor(1.5)) == 2 and torch.round(torch.tensor(2.5)) == 2  # torch.round: half to even
    torch.testing.assert_close(fake_quant(torch.tensor([[0.0, 2.5 / 3, 1.0]]), 2), torch.tensor([[0.0, 2 / 3, 1.0]]))
    # per row over the last dim, every bit width, random data: equals the formula element by element
    g = torch.Generator().manual_seed(0)
    y = torch.randn(6, 16, generator=g) * 3
    for b in (8, 4, 3, 2, 1):
        got = fake_quant(y, b)
        for r in range(6):
            torch.testing.assert_close(got[r], formula(y[r], b), atol=1e-5, rtol=0)
    # constant groups are returned as they are; 16 bits is no quantization at all
    c = torch.full((1, 4), 0.3)
    assert torch.equal(fake_quant(c, 4), c)
    assert fake_quant(y, 16) is y and fake_quant(y, None) is y
    # the result lies on the 2^b grid between min and max
    q = fake_quant(y, 3)
    assert all(len(torch.unique(q[r])) <= 8 for r in range(6))
    assert torch.equal(q.amin(-1), y.amin(-1)) or torch.allclose(q.amin(-1), y.amin(-1))


def test_quantize_kv_per_token_per_head_and_intact_bit_identical():
    g = torch.Generator().manual_seed(1)
    k = torch.randn(2, 7, 3, 8, generator=g) * 5
    out = quantize_values(k, 3, intact=2)
    assert torch.equal(out[:, :2], k[:, :2])  # intact first tokens: bit for bit
    for b_ in range(2):
        for t in range(2, 7):
            for h in range(3):  # one group per (token, KV head), over head_dim
                torch.testing.assert_close(out[b_, t, h], formula(k[b_, t, h], 3), atol=1e-5, rtol=0)
    lst = quantize_values(k, 3, intact=[0, 4])
    assert torch.equal(lst[:, 0], k[:, 0]) and torch.equal(lst[:, 4], k[:, 4]) and not torch.equal(lst[:, 1], k[:, 1])
    # KIVI: per channel over groups of tokens after the intact ones; the incomplete last group stays
    ch = quantize_keys(k, 2, intact=1, mode="channel", group=3)
    assert torch.equal(ch[:, :1], k[:, :1]) and torch.equal(ch[:, 7 - 0 :], k[:, 7:])
    for a in (1, 4):
        for h in range(3):
            for d in range(8):
                torch.testing.assert_close(ch[0, a : a + 3, h, d], formula(k[0, a : a + 3, h, d], 2), atol=1e-5, rtol=0)
    assert torch.equal(quantize_keys(k, 2, intact=2, mode="channel", group=3)[:, 5:], k[:, 5:])  # 2..4 done; 5, 6 residual
    with pytest.raises(ValueError, match="token' or 'channel"):
        quantize_keys(k, 2, mode="row")
    with pytest.raises(ValueError, match="bits"):
        fake_quant(k, 17)


@pytest.fixture(scope="module")
def llama():
    """A peaked tiny Llama (initializer_range 0.3) behind the bridge, and its folder for an independent HF copy."""
    path = tiny_checkpoint("llama")
    return load_model(str(path)), path


def hf_quant_loss(path, x, bits, intact):
    """Independent reference: HF's own model with the formula applied inside its eager attention function
    (key_states after RoPE, before repeat_kv, [b, G, T, d])."""
    import importlib

    from transformers import AttentionInterface, AutoConfig, AutoModelForCausalLM
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    def fq_group(t):  # per token and KV head over head_dim (the formula, written again)
        mn, mx = t.amin(-1, keepdim=True), t.amax(-1, keepdim=True)
        scale = (mx - mn) / (2**bits - 1)
        q = torch.clamp(torch.round((t - mn) / scale), 0, 2**bits - 1) * scale + mn
        q[:, :, :intact] = t[:, :, :intact]
        return q

    arch = AutoConfig.from_pretrained(str(path)).architectures[0]
    eager = importlib.import_module(AutoModelForCausalLM._model_mapping[type(AutoConfig.from_pretrained(str(path)))].__module__)
    eager_attention_forward = eager.eager_attention_forward

    def attn(module, query, key, value, attention_mask, **kw):
        return eager_attention_forward(module, query, fq_group(key), fq_group(value), attention_mask, **kw)

    AttentionInterface.register("sink_interp_test_fq", attn)
    AttentionMaskInterface.register("sink_interp_test_fq", eager_mask)  # HF's own causal (and sliding) mask, as for eager
    hf = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="sink_interp_test_fq").eval()
    assert type(hf).__name__ == arch
    with torch.no_grad():
        logits = hf(x).logits
    return float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)))


@pytest.mark.parametrize("family", ["gemma2", "gpt_neox", "qwen3"])
def test_kv_quant_other_families_equal_hf(family):
    """Soft-capped scores and a sliding window (Gemma-2), RoPE applied without hooks on part of head_dim (GPT-NeoX),
    QK-norm (Qwen3): the same quantized cache as HF's own attention."""
    path = tiny_checkpoint(family)
    model = load_model(str(path))
    x = torch.randint(4, 100, (1, 20), generator=torch.Generator().manual_seed(4))
    rep = kv_quant(model, x, bits=(3,), intact=(0, 2), errors=False, progress=False)
    kq = KVQuant(3)
    kq.bind(model)  # the quantized keys read at a hook where the bridge's own attention uses them, else the pipeline
    assert (kq.direct_layers == ()) == (family == "gpt_neox") and len(kq.direct_layers) + len(kq.layers) == 2
    for s in (0, 2):
        assert rep.loss(3, s) == pytest.approx(hf_quant_loss(path, x, 3, s), abs=1e-4), s


def test_kv_quant_equals_independent_hf_formula_and_full_precision_equals_model(llama, tmp_path):
    model, path = llama
    x = torch.randint(4, 128, (2, 24), generator=torch.Generator().manual_seed(3))
    rep = kv_quant(model, x, bits=(4, 2), intact=(0, 4), progress=False, batch_size=2)
    with torch.no_grad():
        logits = model(x)
    own = float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)))
    assert rep.full_loss == pytest.approx(own, abs=1e-6)
    for b in (4, 2):
        for s in (0, 4):
            assert rep.loss(b, s) == pytest.approx(hf_quant_loss(path, x, b, s), abs=1e-4), (b, s)
    assert rep.loss(2, 0) != pytest.approx(own, abs=1e-3)  # peaked attention: 2 bits do change the loss
    # b = 16 through the intervention: the model's own logits, bit for bit
    with torch.no_grad(), intervene(model, KVQuant(16)):
        assert torch.equal(model(x), logits)
    back = load_report(rep.to_json(str(tmp_path / "q.json")) and str(tmp_path / "q.json"))
    assert type(back).__name__ == "QuantReport" and back.summary() == rep.summary()
    assert np.array_equal(back.qerr, rep.qerr) and rep.qerr.shape == (2, 2, 2, 2)


def test_intact_positions_see_bit_identical_keys_values_and_scores(llama):
    model, _ = llama
    x = torch.randint(4, 128, (1, 12), generator=torch.Generator().manual_seed(5))
    name = "blocks.0.attn.hook_attn_scores"
    with torch.no_grad():
        _, c0 = model.run_with_cache(x, names_filter=name)
        with intervene(model, KVQuant(2, intact=3, layers=[0])):
            _, q0 = model.run_with_cache(x, names_filter=name)
    a, b = c0[name], q0[name]
    assert torch.equal(a[..., :3], b[..., :3])  # the intact keys' scores: the model's own, bit for bit
    assert not torch.equal(a[..., 3:], b[..., 3:])


def test_kv_quant_errors_and_describe(llama):
    model, _ = llama
    with pytest.raises(ValueError, match="intact"):
        KVQuant(4, intact=-1)
    with pytest.raises(ValueError, match="bits"):
        kv_quant(model, torch.randint(4, 128, (1, 8)), bits=(0,), progress=False)
    assert "4-bit" in KVQuant(4, intact=1).describe()


def test_kivi_channel_keys_pattern_by_hand(llama):
    """Key mode 'channel': query t sees key j quantized (per channel over its group of 4 tokens after the 1 intact one)
    once j's group is complete (its last token <= t), in full precision before; the pattern of layer 0 by hand."""
    model, _ = llama
    x = torch.randint(4, 128, (1, 12), generator=torch.Generator().manual_seed(6))
    names = ["blocks.0.attn.hook_rot_q", "blocks.0.attn.hook_rot_k", "blocks.0.attn.hook_pattern"]
    with torch.no_grad():
        _, clean = model.run_with_cache(x, names_filter=lambda n: n in names)
        with intervene(model, KVQuant(2, value_bits=None, intact=1, key_mode="channel", group=4, layers=[0])):
            _, got = model.run_with_cache(x, names_filter=lambda n: n in names)
    q, k = clean[names[0]][0], clean[names[1]][0]  # [T, H, d], [T, G, d]
    kq = k.clone()
    for a in (1, 5):  # groups 1-4 and 5-8; 9-11 are the residual
        for g in range(k.shape[1]):
            for d in range(k.shape[2]):
                kq[a : a + 4, g, d] = formula(k[a : a + 4, g, d], 2)
    T, H = 12, q.shape[1]
    expected = torch.zeros(H, T, T)
    for h in range(H):
        g = h // (H // k.shape[1])
        for t in range(T):
            row = []
            for j in range(t + 1):
                done = j >= 1 and (j - 1) // 4 * 4 + 4 <= t and (j - 1) // 4 * 4 + 4 <= 8
                row.append(float(q[t, h] @ (kq[j, g] if done else k[j, g])) / k.shape[-1] ** 0.5)
            expected[h, t, : t + 1] = torch.softmax(torch.tensor(row), -1)
    torch.testing.assert_close(got[names[2]][0], expected, atol=1e-5, rtol=0)
    assert not torch.allclose(clean[names[2]], got[names[2]], atol=1e-3)


def test_intact_chosen_by_sink_score(llama):
    from sink_interp import measure_sinks
    from sink_interp.quant import top_sink_positions

    model, _ = llama
    x = torch.randint(4, 128, (2, 12), generator=torch.Generator().manual_seed(8))
    score = measure_sinks(model, x, progress=False).alpha.mean(axis=(0, 1, 2))[:6]
    top = top_sink_positions(model, x, 2)
    assert top == sorted(np.argsort(-score, kind="stable")[:2].tolist())
    rep = kv_quant(model, x, bits=(2,), intact=("sinks:2", 0), errors=False, progress=False)
    assert rep.extra["intact_by_sink_score"] == {"sinks:2": top}
    by_hand = kv_quant(model, x, bits=(2,), intact=(top,), errors=False, progress=False)
    assert rep.loss(2, tuple(top)) == by_hand.loss(2, tuple(top))
    with pytest.raises(ValueError, match="sinks:K"):
        kv_quant(model, x, bits=(2,), intact=("first:2",), progress=False)
