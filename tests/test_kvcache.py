"""KV-cache policies: the one-pass masked evaluation equals token-by-token decoding with a Hugging Face cache from which
the policy's keys are evicted (an independent implementation of each policy, written here), every policy at full budget
equals the model, the cache simulation and its checks, windowed / soft-capped models, the report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sink_interp import intervene, load_model, load_report
from sink_interp.kvcache import (
    H2O,
    FastGen,
    KVEvict,
    MaskPolicy,
    PriorityPolicy,
    SinksWindow,
    Window,
    check_cache_mask,
    evict_by_priority,
    kv_policies,
    resolve_budget,
)
from sink_interp.models import tiny_checkpoint


@pytest.fixture(scope="module")
def llama():
    """A peaked tiny Llama (initializer_range 0.3) behind the bridge, and an independent HF copy (eager)."""
    from transformers import AutoModelForCausalLM

    path = tiny_checkpoint("llama")
    hf = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager").eval()
    return load_model(str(path)), hf


def decode_with_eviction(hf, x, budget, victim):
    """Decode ``x`` ([1, T]) one token at a time with HF's DynamicCache; before each step past the budget, evict from
    every layer and KV head the key ``victim(layer, head, positions, acc, t)`` names (acc: attention received so far,
    summed over the query heads of the KV head). Returns the per-position next-token loss."""
    from transformers import DynamicCache

    T = x.shape[1]
    cfg = hf.config
    G, H = cfg.num_key_value_heads, cfg.num_attention_heads
    L = cfg.num_hidden_layers
    cache = DynamicCache(config=cfg)
    pos = [[[] for _ in range(G)] for _ in range(L)]
    acc = [[[] for _ in range(G)] for _ in range(L)]
    nll = []
    for t in range(T):
        if t >= budget:  # the cache holds `budget` keys: make room for token t
            for layer in range(L):
                lay = cache.layers[layer]
                keep_idx = []
                for g in range(G):
                    v = victim(layer, g, pos[layer][g], acc[layer][g], t)
                    i = pos[layer][g].index(v)
                    del pos[layer][g][i], acc[layer][g][i]
                    keep_idx.append([j for j in range(lay.keys.shape[2]) if j != i])
                idx = torch.tensor(keep_idx)[None, :, :, None].expand(1, G, budget - 1, lay.keys.shape[-1])
                lay.keys = lay.keys.gather(2, idx)
                lay.values = lay.values.gather(2, idx)
        with torch.no_grad():
            out = hf(
                input_ids=x[:, t : t + 1], position_ids=torch.tensor([[t]]), cache=cache, use_cache=True, output_attentions=True
            )
        for layer in range(L):
            w = out.attentions[layer][0, :, 0]  # [H, n]
            for g in range(G):
                pos[layer][g].append(t)
                acc[layer][g].append(0.0)
                got = w[g * (H // G) : (g + 1) * (H // G)].sum(0).tolist()
                acc[layer][g] = [a + b for a, b in zip(acc[layer][g], got)]
        if t + 1 < T:
            lp = torch.log_softmax(out.logits[0, -1].float(), -1)
            nll.append(-float(lp[x[0, t + 1]]))
    return np.array(nll)


def one_pass(model, x, policy, budget):
    ev = KVEvict(policy, budget)
    ev.set_batch(x)
    with torch.no_grad(), intervene(model, ev):
        logits = model(x)
    lp = torch.log_softmax(logits[0, :-1].float(), -1)
    return -lp.gather(-1, x[0, 1:, None])[:, 0].numpy()


def static_victim(priority, protect=()):
    """Evict the lowest priority, then the oldest, among the keys other than the newest; protected keys never."""

    def victim(layer, g, positions, acc, t):
        cands = [p for p in positions if p not in protect] or list(positions)
        return min(cands, key=lambda p: (priority[p], p))

    return victim


def h2o_victim(n_sinks, recent):
    def victim(layer, g, positions, acc, t):
        cands = [(a, p) for p, a in zip(positions, acc) if p >= n_sinks and p <= t - recent]
        return min(cands, key=lambda ap: (ap[0], ap[1]))[1]  # least attention received; ties: the oldest

    return victim


T, B = 20, 7


@pytest.fixture(scope="module")
def text():
    x = torch.randint(4, 128, (1, T), generator=torch.Generator().manual_seed(11))
    x[0, [3, 9, 14]] = 5  # "punctuation"
    x[0, 0] = 1  # "BOS"
    return x


@pytest.mark.parametrize(
    "policy, victim",
    [
        (Window(), static_victim([0] * T)),
        (SinksWindow(2), static_victim([0] * T, protect=(0, 1))),
        (FastGen(special=[1], punctuation=[5]), None),
        (PriorityPolicy(lambda toks: (toks % 3).float(), name="mod3"), None),
        (H2O(0), h2o_victim(0, 3)),
        (H2O(2, recent=2), h2o_victim(2, 2)),
    ],
    ids=["window", "sinks+window", "fastgen", "priority", "h2o", "h2o+sinks"],
)
def test_one_pass_equals_decoding_with_an_evicting_hf_cache(llama, text, policy, victim):
    model, hf = llama
    x = text
    if isinstance(policy, FastGen):
        prio = [2 if int(v) == 1 else 1 if int(v) == 5 else 0 for v in x[0]]
        victim = static_victim(prio)
    elif victim is None:
        victim = static_victim([float(v % 3) for v in x[0]])
    ref = decode_with_eviction(hf, x, B, victim)
    got = one_pass(model, x, policy, B)
    np.testing.assert_allclose(got, ref, atol=2e-4)
    full = one_pass(model, x, "window", T)
    assert np.abs(got - full)[B:].max() > 1e-3  # peaked attention: the eviction does change the loss


def test_every_policy_at_full_budget_equals_the_model(llama, text):
    model, _ = llama
    rep = kv_policies(model, text, budgets=(5, 1.0), n_sinks=2, progress=False)
    with torch.no_grad():
        logits = model(text)
    own = -torch.log_softmax(logits[0, :-1], -1).gather(-1, text[0, 1:, None])[:, 0].numpy()
    np.testing.assert_allclose(rep.nll_full, own, atol=1e-6)
    for p in rep.policies:
        assert rep.loss(p, 1.0) == rep.full_loss, p  # no key evicted: the model's own numbers
        assert rep.loss(p, T) == rep.full_loss
        assert rep.loss(p, 5) != rep.full_loss
    # a user mask that keeps every key goes through the pipeline (pattern recomputed): equal to float precision
    everything = MaskPolicy(lambda toks, Bn: torch.ones(T, T).tril().bool(), name="all")
    np.testing.assert_allclose(one_pass(model, text, everything, T), own, atol=1e-5)


def test_evict_by_priority_window_and_sinks_closed_forms():
    Tn = 12
    for Bn in (1, 3, 12, 20):
        w = evict_by_priority(torch.zeros(1, Tn), Bn)[0]
        t, j = torch.arange(Tn)[:, None], torch.arange(Tn)[None]
        assert torch.equal(w, (j <= t) & (t - j < Bn))
        check_cache_mask(w[None], Bn)
    s = SinksWindow(2).static_mask(torch.zeros(1, Tn, dtype=torch.long), 5)[0]
    t, j = torch.arange(Tn)[:, None], torch.arange(Tn)[None]
    assert torch.equal(s, (j <= t) & ((t - j < 3) | (j < 2)))


def test_mask_policy_is_checked_to_be_a_cache():
    ok = MaskPolicy(lambda toks, Bn: torch.ones(6, 6).tril().bool() & (torch.arange(6)[:, None] - torch.arange(6)[None] < Bn))
    assert ok.static_mask(torch.zeros(2, 6, dtype=torch.long), 3).shape == (2, 6, 6)
    returns = torch.ones(6, 6).tril().bool()
    returns[3, 0] = False  # key 0 dropped at query 3 ...
    with pytest.raises(ValueError, match="never returns"):
        MaskPolicy(lambda toks, Bn: returns).static_mask(torch.zeros(1, 6, dtype=torch.long), 6)  # ... seen again at 4
    with pytest.raises(ValueError, match="more than the budget"):
        MaskPolicy(lambda toks, Bn: torch.ones(6, 6).tril().bool()).static_mask(torch.zeros(1, 6, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="later key"):
        MaskPolicy(lambda toks, Bn: torch.ones(6, 6).bool()).static_mask(torch.zeros(1, 6, dtype=torch.long), 6)


def test_budgets_and_errors(llama):
    model, _ = llama
    assert resolve_budget(0.25, 20) == 5 and resolve_budget(1.0, 20) == 20 and resolve_budget(3, 20) == 3
    for bad in (0, 1.5, -0.1, True, "x"):
        with pytest.raises(ValueError, match="budget"):
            resolve_budget(bad, 20)
    x = torch.randint(4, 128, (1, 10))
    with pytest.raises(ValueError, match="unknown KV policy"):
        kv_policies(model, x, policies=("lru",), progress=False)
    with pytest.raises(ValueError, match="no room"):
        kv_policies(model, x, policies=("sinks+window",), budgets=(4,), n_sinks=4, progress=False)


def test_windowed_and_soft_capped_model(tmp_path):
    """Gemma-2 (soft-capped scores, a sliding window on layer 0): every policy at full budget is the model, static policies
    run within the model's own window, H2O is refused by name."""
    model = load_model(str(tiny_checkpoint("gemma2")))
    x = torch.randint(4, 100, (1, 16), generator=torch.Generator().manual_seed(2))
    rep = kv_policies(model, x, policies=("window", "sinks+window", "fastgen"), budgets=(6, 1.0), n_sinks=1, progress=False)
    for p in rep.policies:
        assert rep.loss(p, 1.0) == rep.full_loss
    # sinks+window at 6 keys inside the model's own window of 8: the keys each query sees, intersected
    ev = KVEvict(SinksWindow(1), 6)
    ev.set_batch(x)
    with torch.no_grad(), intervene(model, ev):
        _, cache = model.run_with_cache(x, names_filter="blocks.0.attn.hook_pattern")
    seen = (cache["blocks.0.attn.hook_pattern"][0, 0] > 0).int()
    assert seen[15].tolist() == [0] * 11 + [1] * 5  # 1 sink + 5 recent; the sink (key 0) is outside the model window of 8
    assert seen[7].tolist()[:8] == [1, 0, 0, 1, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="h2o.*own sliding window"):
        kv_policies(model, x, policies=("h2o",), budgets=(6,), progress=False)


def test_report_saves_and_loads(llama, text, tmp_path):
    model, _ = llama
    rep = kv_policies(model, text, policies=("window", "sinks+window"), budgets=(0.25, 10), n_sinks=1, progress=False)
    assert rep.budgets == (5, 10)
    back = load_report(str(tmp_path / "kv.json") if rep.to_json(str(tmp_path / "kv.json")) else "")
    assert type(back).__name__ == "KVReport" and back.summary() == rep.summary()
    assert np.array_equal(back.nll, rep.nll)
    assert rep.table().shape == (2, 3) and "KVReport" in repr(rep) and "<table" in rep._repr_html_()


def test_several_sink_counts_in_one_evaluation(llama, text):
    model, _ = llama
    rep = kv_policies(model, text, ("window", "sinks+window:1", "sinks+window:4"), (8,), progress=False)
    assert rep.policies == ("window", "sinks+window:1", "sinks+window:4")
    assert rep.loss("sinks+window:4", 8) == pytest.approx(float(one_pass(model, text, SinksWindow(4), 8).mean()), abs=1e-6)
    with pytest.raises(ValueError, match="after ':'"):
        kv_policies(model, text, ("sinks+window:x",), (8,), progress=False)
