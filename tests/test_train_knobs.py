"""The knobs added for the paper's remaining tables (issue 17), each against a hand-written reference.

Random-token data (official ``random_data.py``), the K bias with d_a learnable
dims, the learned MLP kernel (official ``model_attn_kernel.py``), relative
positions (official ``model_relpos.py``: the bucket index as a fixed bias) and
T5's learned bucketed bias; tiny runs that resume bit for bit; trained models
measured by ``measure_sinks`` against the same references; config round trips
and the fingerprints of older runs.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sink_interp import load_model, measure_sinks
from sink_interp.tasks import BigramBackcopy, Sampler
from sink_interp.training import TrainConfig, build_model, preset, train
from sink_interp.training.config import LATER_FIELDS
from sink_interp.training.knobs import relative_buckets
from sink_interp.training.loop import _check_resume, make_sampler, make_task
from sink_interp.training.model import lab_of

from .test_train import hand_mask, tiny

T = 12


def peaked_lab(seq_len=T, scale=3.0, **over):
    """A lab with large random q/k weights (peaked attention) and knob parameters moved off their init."""
    cfg = tiny(seq_len=seq_len, **over)
    task = BigramBackcopy(n_vocab=cfg.bb_vocab, source="random", seq_len=cfg.seq_len)
    lab = build_model(cfg, task.d_vocab, task.tokenizer())
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in lab.named_parameters():
            if "sink_knobs" in n:
                p.add_(torch.randn_like(p) * 0.5)
            if "q_proj" in n or "k_proj" in n:
                p.mul_(scale)
    tokens = torch.randint(4, task.d_vocab, (3, cfg.seq_len))
    return lab, tokens


def run_cache(model, tokens):
    with torch.no_grad():
        return model.run_with_cache(tokens)


# --------------------------------------------------------------------------- independent references


def bucket_ref(n, n_buckets=32, max_distance=128):
    """T5's causal bucket of a distance ``n >= 0``, in plain Python (Raffel et al.; HF ``_relative_position_bucket``)."""
    max_exact = n_buckets // 2
    if n < max_exact:
        return n
    v = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact) * (n_buckets - max_exact))
    return min(v, n_buckets - 1)


def official_relative_bias(T, num_buckets=32, max_distance=128):
    """``GPTrelpos.build_attention_bias`` of the official ``model_relpos.py`` (positional_embedding='relative'), verbatim."""
    position = torch.arange(T)
    relative_position = position[None, :] - position[:, None]
    relative_position = relative_position.to(torch.bfloat16)
    relative_buckets = 0
    relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    relative_position_if_large = max_exact + (
        torch.log(relative_position / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).to(torch.long)
    relative_position_if_large = torch.min(
        relative_position_if_large, torch.full_like(relative_position_if_large, num_buckets - 1)
    )
    relative_buckets += torch.where(is_small, relative_position, relative_position_if_large)
    return relative_buckets.float()


def ref_pattern(cfg, params, cache, layer):
    """The attention weights of ``layer`` from the cached q, k and the knob parameters, by the papers' formulas."""
    q = cache[f"blocks.{layer}.attn.hook_rot_q"].float()  # [b, T, H, d] after RoPE (identity on the NoPE base)
    k = cache[f"blocks.{layer}.attn.hook_rot_k"].float()
    H, d, n = cfg.n_heads, cfg.d_head, q.shape[1]
    k = k.repeat_interleave(H // k.shape[2], dim=2)
    mask = hand_mask(n)
    if cfg.kernel == "mlp":  # official: q, k = W2 relu(W1 .) after RoPE; A = phi(q) phi(k)^T / sqrt(d) [/ max(|sum|, 1)]
        w1, w2 = params.kernel_w1[layer].detach(), params.kernel_w2[layer].detach()
        phi = lambda x: torch.relu(x @ w1.T) @ w2.T  # noqa: E731
        s = torch.einsum("bqhd,bkhd->bhqk", phi(q), phi(k)) / math.sqrt(d)
        A = torch.where(mask, s, torch.zeros(()))
        if cfg.resolved_attn_norm == "max1":
            A = A / A.sum(-1, keepdim=True).abs().clamp(min=1)
        return A
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
    if cfg.pos == "relative":
        s = s + official_relative_bias(n, cfg.rel_buckets, cfg.rel_max_distance)
    if cfg.pos == "t5":
        table = params.rel_bias.detach()  # [buckets, H]
        b = torch.tensor([[bucket_ref(max(t - j, 0), cfg.rel_buckets, cfg.rel_max_distance) for j in range(n)] for t in range(n)])
        s = s + table[b].permute(2, 0, 1)
    s = s.masked_fill(~mask, float("-inf"))
    if cfg.k_bias:  # official model_kv_bias.py: an extra key k* every query sees; d_a dims learned, the rest 0
        kb = params.k_bias[layer].detach()
        kstar = torch.zeros(kb.shape[0], d)
        kstar[:, : kb.shape[-1]] = kb
        sstar = torch.einsum("bqhd,hd->bhq", q, kstar.expand(H, d))[..., None] / math.sqrt(d)
        return torch.softmax(torch.cat([sstar, s], -1), -1)[..., 1:]
    return torch.softmax(s, -1)


def alpha_ref(A, score):
    """Gu et al.'s alpha_k from a pattern: softmax as is, abs-proxy ``|A| / (sum |A| + 1e-8)`` for the linear/MLP kernels."""
    if score == "abs-proxy":
        A = A.abs() / (A.abs().sum(-1, keepdim=True) + 1e-8)
    n = A.shape[-1]
    return A.sum(-2) / torch.arange(n, 0, -1).float()


KNOBS = {
    "k_bias_da": dict(k_bias=True, v_bias="zero", k_bias_dims=3),
    "mlp_nonorm": dict(kernel="mlp", attn_norm="none"),
    "mlp_norm": dict(kernel="mlp", attn_norm="max1"),
    "relative": dict(pos="relative", rel_buckets=8, rel_max_distance=10),
    "t5": dict(pos="t5", rel_buckets=8, rel_max_distance=10),
    "t5_gqa": dict(pos="t5", n_heads=4, n_kv_heads=2),
    "mlp_gqa": dict(kernel="mlp", attn_norm="max1", n_heads=4, n_kv_heads=2),
}


# --------------------------------------------------------------------------- attention equals the reference


@pytest.mark.parametrize("name", list(KNOBS))
def test_knob_attention_matches_the_reference(name):
    lab, tokens = peaked_lab(**KNOBS[name])
    _, cache = run_cache(lab.bridge, tokens)
    peak = 0.0
    for layer in range(lab.cfg.n_layers):
        ref = ref_pattern(lab.cfg, lab.params, cache, layer)
        got = cache[f"blocks.{layer}.attn.hook_pattern"]
        torch.testing.assert_close(got, ref, atol=2e-5, rtol=2e-4)
        v = cache[f"blocks.{layer}.attn.hook_v"]
        v = v.repeat_interleave(lab.cfg.n_heads // v.shape[2], dim=2)
        z_ref = torch.einsum("bhqk,bkhd->bqhd", ref, v)  # v* = 0 for the K bias
        torch.testing.assert_close(cache[f"blocks.{layer}.attn.hook_z"], z_ref, atol=2e-4, rtol=2e-4)
        peak = max(peak, float(ref[..., 1:, :].abs().amax(-1).mean()))
    if lab.cfg.kernel == "softmax":
        assert peak > 0.5  # large weights: the rows are peaked, so the reference tests something


def test_relative_buckets_match_t5_and_the_official_code():
    n = 300
    ref = torch.tensor([[bucket_ref(max(t - j, 0)) for j in range(n)] for t in range(n)])
    got = relative_buckets(n, 32, 128)
    assert torch.equal(got, ref)
    try:  # Hugging Face's T5 as a second reference
        from transformers.models.t5.modeling_t5 import T5Attention

        pos = torch.arange(n)
        hf = T5Attention._relative_position_bucket(
            pos[None, :] - pos[:, None], bidirectional=False, num_buckets=32, max_distance=128
        )
        assert torch.equal(got, hf)
    except ImportError:  # pragma: no cover
        pass
    # the official relative PE computes the buckets in bfloat16, which moves a few edges: reproduced exactly
    assert torch.equal(relative_buckets(n, 32, 128, bf16=True).float(), official_relative_bias(n))
    assert set(got[:, 0].tolist()) == set(range(32))  # every bucket is used by a long enough row


def test_k_bias_dims_learns_only_d_a_dims():
    lab, tokens = peaked_lab(k_bias=True, v_bias="zero", k_bias_dims=2)
    assert tuple(lab.params.k_bias.shape) == (2, 1, 2)  # [layers, shared, d_a]
    logits = lab.bridge(tokens, return_type="logits")
    logits.sum().backward()
    assert lab.params.k_bias.grad is not None and lab.params.k_bias.grad.abs().sum() > 0
    # d_a = d_head is the full K bias: the same config and fingerprint
    full = tiny(k_bias=True, v_bias="zero", k_bias_dims=16)
    assert full.k_bias_dims is None and full == tiny(k_bias=True, v_bias="zero")


# --------------------------------------------------------------------------- random-token data


def test_random_tokens_overwrite_the_span_uniformly():
    task = BigramBackcopy(n_vocab=12, source="random", seq_len=T)
    plain = Sampler(task, seed=5).sample(64).tokens
    s = Sampler(task, seed=5, random_token_pos=2, random_token_count=3)
    rnd = s.sample(64).tokens
    keep = torch.ones(T, dtype=torch.bool)
    keep[1:4] = False
    assert torch.equal(rnd[:, keep], plain[:, keep])  # the sequences outside the span are the task's own
    assert not torch.equal(rnd[:, 1:4], plain[:, 1:4])
    many = torch.cat([s.sample(500).tokens[:, 1:4] for _ in range(8)]).flatten()  # 12,000 draws
    counts = np.bincount(many.numpy(), minlength=task.d_vocab)
    assert len(counts) == task.d_vocab and counts.min() > 0  # every id, specials included, as random_data.py
    expected = many.numel() / task.d_vocab
    assert np.abs(counts - expected).max() < 6 * math.sqrt(expected)
    whole = Sampler(task, seed=5, random_token_pos=1, random_token_count=T).sample(4).tokens  # the whole sequence
    assert whole.shape == (4, T)
    with pytest.raises(ValueError, match="do not fit"):
        Sampler(task, random_token_pos=T, random_token_count=2)


def test_random_tokens_in_training_data_but_not_in_the_probe():
    cfg = tiny(random_token_pos=1, random_token_count=2)
    task = make_task(cfg)
    tr = make_sampler(cfg, task, seed=1).sample(200).tokens
    assert (tr[:, 0] != 1).any()  # BB's BOS at position 1 is replaced by random ids
    probe = make_sampler(cfg, task, seed=2, split="val", random_token_pos=None).sample(8).tokens
    assert (probe[:, 0] == 1).all()


# --------------------------------------------------------------------------- runs: resume bit for bit, measured after


RUN_KNOBS = {
    "random": dict(random_token_pos=1, random_token_count=2),
    "k_bias_da": KNOBS["k_bias_da"],
    "mlp_norm": KNOBS["mlp_norm"],
    "t5": KNOBS["t5"],
    "relative": KNOBS["relative"],
}


@pytest.mark.parametrize("name", list(RUN_KNOBS))
def test_knob_run_resumes_bit_for_bit_and_is_measured(tmp_path, name):
    cfg = tiny(steps=4, eval_every=2, ckpt_every=2, **RUN_KNOBS[name])
    full = train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "part", progress=False, stop_at=3)  # killed after step 3; last checkpoint: step 2
    resumed = train(cfg, tmp_path / "part", progress=False)
    assert resumed.resumed_from == 2 and resumed.metrics == full.metrics
    assert (tmp_path / "full" / "metrics.jsonl").read_bytes() == (tmp_path / "part" / "metrics.jsonl").read_bytes()
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(math.isfinite(m["val_loss"]) for m in full.metrics)

    # the trained model, loaded by the library, is measured right: alpha from the reference pattern
    model = load_model(full.model_dir)
    lab = lab_of(model)
    assert lab.cfg == cfg
    tokens = torch.randint(4, 16, (2, T))
    rep = measure_sinks(model, tokens, progress=False)
    assert rep.score == cfg.metric_score
    _, cache = run_cache(model, tokens)
    for layer in range(cfg.n_layers):
        ref = alpha_ref(ref_pattern(cfg, lab.params, cache, layer), cfg.metric_score)
        np.testing.assert_allclose(rep.alpha[:, layer], ref.numpy(), atol=1e-5, rtol=1e-4)


def test_lse_and_streaming_refuse_by_name():
    from sink_interp import StreamingWindow, intervene

    lab, tokens = peaked_lab(**KNOBS["t5"])
    with pytest.raises(Exception, match="T5 relative bias"):  # the knob, by name
        measure_sinks(lab.bridge, tokens, progress=False, method="lse")
    with pytest.raises(ValueError, match="t5 position buckets"):
        with intervene(lab.bridge, StreamingWindow(4, 1, rope_positions="cache")):
            pass
    lab, tokens = peaked_lab(**KNOBS["mlp_norm"])
    with pytest.raises(ValueError, match="abs-proxy.*method=.pattern."):  # the MLP kernel is read through |A|
        measure_sinks(lab.bridge, tokens, progress=False, method="lse")


# --------------------------------------------------------------------------- config


def test_new_fields_round_trip_and_keep_old_fingerprints():
    # the fingerprints of runs made before these knobs existed (they name reproduce's run directories)
    assert TrainConfig().fingerprint() == "e5e684d1ebad47ca"
    assert preset("bb-kbias").fingerprint() == "93ae6857a0f69511"
    for over in [*KNOBS.values(), RUN_KNOBS["random"]]:
        c = tiny(**over)
        assert TrainConfig.from_dict(json.loads(c.to_json())) == c
        assert TrainConfig.from_dict(c.to_dict()).fingerprint() == c.fingerprint() != tiny().fingerprint()
    # a run stored before the knobs existed resumes: its config reads them at their defaults
    old = {k: v for k, v in tiny().to_dict().items() if k not in LATER_FIELDS}
    _check_resume(old, tiny(), 2, extend=False, out=None)
    with pytest.raises(ValueError, match="different config"):
        _check_resume(old, tiny(pos="t5"), 2, extend=False, out=None)


@pytest.mark.parametrize(
    "over,field",
    [
        (dict(random_token_pos=0), "random_token_pos"),
        (dict(random_token_pos=T), "random_token_count"),  # fits: 1 position
        (dict(random_token_pos=T - 1, random_token_count=3), "random_token_count"),
        (dict(random_token_count=2), "random_token_count"),
        (dict(random_token_pos=1, sink_token=True), "random_token_pos"),
        (dict(random_token_pos=2, random_token_count=2, fixed_token_pos=3), "fixed_token_pos"),
        (dict(k_bias_dims=2), "k_bias_dims"),
        (dict(k_bias=True, v_bias="zero", k_bias_dims=17), "k_bias_dims"),
        (dict(k_bias=True, v_bias="zero", k_bias_dims=0), "k_bias_dims"),
        (dict(rel_buckets=16), "rel_buckets"),
        (dict(pos="t5", rel_buckets=1), "rel_buckets"),
        (dict(pos="t5", rel_max_distance=16), "rel_max_distance"),
        (dict(kernel="mlp", attn_norm="sum"), "attn_norm"),
        (dict(kernel="mlp", k_bias=True), "kernel"),
        (dict(pos="relpos"), "pos"),
    ],
)
def test_new_knob_validation_names_the_field(over, field):
    if over == dict(random_token_pos=T):
        assert tiny(**over).random_token_count == 1
        return
    with pytest.raises(ValueError, match=field) as e:
        tiny(**over)
    assert "\n" not in str(e.value)
