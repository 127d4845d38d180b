"""trace_sink: a spike planted by hand must be found link by link; numbers against formulas and HF modules."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sink_interp import massive_activations, trace_sink
from sink_interp._internal import hooknames
from sink_interp.capture import attach_hooks, hook_snapshot
from sink_interp.cli import main
from sink_interp.trace import LINKS
from sink_interp.trace.maths import angle_to, cum_dims, dims_for, energy_shares, mean_pairwise_cos, subspace
from sink_interp.trace.reducers import TraceReducer

from .conftest import ARCHS
from .reference_trace import (
    angle_deg,
    capture,
    config_numbers,
    decoder_layers,
    hidden_states,
    is_gpt,
    mean_pairwise_cos_loop,
    norm_scale,
    qkv,
    rotated_qk,
)
from .test_massive import SPIKE_DIM, planted, spiked_tokens


def _ln1(hf, layer):
    lay = decoder_layers(hf)[layer]
    return lay.ln_1 if is_gpt(hf) else lay.input_layernorm


def _wk_rows(hf, layer, g, d_head):
    """W_K of KV head g as [D, d] from the HF weights (Linear: out x in; GPT Conv1D: in x out)."""
    lay = decoder_layers(hf)[layer]
    cfg = config_numbers(hf)
    if is_gpt(hf):
        W = lay.attn.c_attn.weight  # GPT-2 Conv1D [D, 3D]; BigCode Linear [D + 2d, D]
        if W.shape[0] == cfg["D"] and W.shape[1] != cfg["D"]:
            cols = W[:, cfg["D"] + g * d_head : cfg["D"] + (g + 1) * d_head]
            return cols.detach().double()
        return W[cfg["D"] + g * d_head : cfg["D"] + (g + 1) * d_head].T.detach().double()
    return lay.self_attn.k_proj.weight[g * d_head : (g + 1) * d_head].T.detach().double()


@pytest.mark.parametrize("name", ARCHS)
def test_planted_embedding_spike_is_traced_to_the_sink_key(name):
    """A +500 in embedding dim 17 of the first token: spike, norm, key and writer, against HF + formulas."""
    model, hf = planted(name)
    tokens = spiked_tokens(n=8, T=16)
    layer, head = 1, 1
    before = hook_snapshot(model)
    with torch.no_grad():
        logits_before = model(tokens)
    rep = trace_sink(model, tokens, layer=layer, head=head, progress=False)
    assert hook_snapshot(model) == before
    with torch.no_grad():
        assert torch.equal(model(tokens), logits_before)
    cfg = config_numbers(hf)
    D, d_head, H, G = cfg["D"], cfg["d"], cfg["H"], cfg["G"]
    g = head // (H // G)
    hs = hidden_states(hf, tokens)  # [n, L, T, D]
    x = hs[:, layer]  # entering the traced block

    # spike: found at the sink, in the planted dim, with the HF value
    sp = rep.links["spike"]
    assert sp.dims == [SPIKE_DIM] and sp.massive and sp.pos == 0
    assert sp.top_value == pytest.approx(float(x[:, 0, SPIKE_DIM].mean()), rel=1e-5)
    assert rep.massive.global_max()["pos"] == 0 and rep.massive.global_max()["dim"] == SPIKE_DIM
    assert sp.other_abs == pytest.approx(float(x[:, 1:, SPIKE_DIM].abs().mean()), rel=1e-4)

    # norm: the scale by its formula, the normalised spike ~ sqrt(D), sparse and near-constant
    ln = _ln1(hf, layer)
    layernorm = isinstance(ln, torch.nn.LayerNorm)
    scale = norm_scale(x, layernorm, float(ln.eps) if hasattr(ln, "eps") else float(ln.variance_epsilon))
    nl = rep.links["norm"]
    assert nl.kind == ("LayerNorm" if layernorm else "RMSNorm")
    assert nl.scale_sink == pytest.approx(float(scale[:, 0].mean()), rel=1e-4)
    assert nl.scale_other == pytest.approx(float(scale[:, 1:].mean()), rel=1e-4)
    assert nl.scale_ratio > 10
    centred = x - x.mean(-1, keepdim=True) if layernorm else x
    normed = (centred.double() / scale[..., None])[:, 0]  # [n, D] normalised sink input
    assert nl.normalized[0] == pytest.approx(float(normed[:, SPIKE_DIM].mean()), rel=1e-4)
    assert abs(nl.normalized[0]) == pytest.approx(math.sqrt(D), rel=0.02)  # one dim holds the whole norm
    share = (normed[:, SPIKE_DIM] ** 2 / (normed**2).sum(-1)).mean()
    # RMSNorm: ~1; LayerNorm centres the spike, leaving -x/D in every other dim: share ~ (D - 1) / D
    assert nl.share_sink == pytest.approx(float(share), rel=1e-5) and nl.share_sink > (D - 1) / D - 0.01
    assert nl.cos_sink == pytest.approx(mean_pairwise_cos_loop(normed.numpy()), abs=1e-6) and nl.cos_sink > 0.99
    normed_all = centred.double() / scale[..., None]  # [n, T, D]
    ref_other = np.mean([mean_pairwise_cos_loop(normed_all[:, t].numpy()) for t in range(1, x.shape[1])])
    assert nl.cos_other == pytest.approx(ref_other, abs=1e-6) and nl.cos_other < nl.cos_sink - 0.3
    assert nl.gain[0] == pytest.approx(float(ln.weight[SPIKE_DIM].detach()), rel=1e-6)

    # W_K: the key at the sink is the spike dim's row of g * W_K, scaled by the normalised spike
    _, k, _, _ = qkv(hf, tokens, layer)
    k_sink = k[:, 0, g].double()  # [n, d] from HF's own projection
    WK = _wk_rows(hf, layer, g, d_head)
    spike_part = normed[:, SPIKE_DIM, None] * float(ln.weight[SPIKE_DIM].detach()) * WK[SPIKE_DIM][None, :]
    cos = ((spike_part * k_sink).sum(-1) / (spike_part.norm(dim=-1) * k_sink.norm(dim=-1))).mean()
    kl = rep.links["wk"]
    assert kl.kv_head == g
    assert kl.cos_spike_dims == pytest.approx(float(cos), abs=1e-5) and kl.cos_spike_dims > 0.98
    share_k = ((spike_part * k_sink).sum(-1) / (k_sink**2).sum(-1)).mean()
    assert kl.share_spike_dims == pytest.approx(float(share_k), abs=1e-5) and kl.share_spike_dims > 0.95
    assert kl.top_dims[0] == SPIKE_DIM
    assert kl.k_sink_norm == pytest.approx(float(k_sink.norm(dim=-1).mean()), rel=1e-5)
    assert kl.k_sink_cos == pytest.approx(mean_pairwise_cos_loop(k_sink.numpy()), abs=1e-6)
    assert kl.reconstruction_error < 1e-4

    # writer: nothing in the blocks writes it, the embedding carries it
    assert rep.links["writer"].local_writer == "embed"
    assert rep.links["writer"].local_value == pytest.approx(float(hs[:, 0, 0, SPIKE_DIM].mean()), rel=1e-5)


@pytest.mark.parametrize(
    "name, sink",
    [("tiny-gqa", 0), ("tiny-gqa", 3), ("tiny-mqa", 0), ("tiny-layernorm-rope", 0), ("tiny-nope", 0), ("tiny-learned", 2)],
)
def test_rope_link_cosines_and_dots_match_the_formula(tiny_models, name, sink):
    model, hf = tiny_models(name)
    tokens = torch.randint(4, 128, (5, 12), generator=torch.Generator().manual_seed(11))
    layer = 1
    rep = trace_sink(model, tokens, layer=layer, head=0, sink_pos=sink, links=["rope"], progress=False)
    ro = rep.links["rope"]
    cfg = config_numbers(hf)
    H, G = cfg["H"], cfg["G"]
    q, k = rotated_qk(hf, tokens, layer)  # RoPE applied by its formula, or no rotation
    qp, kp, _, _ = qkv(hf, tokens, layer)
    T = tokens.shape[1]

    def cosines(qq, kk):
        kk = kk.double().repeat_interleave(H // G, dim=2)
        qq = qq.double()
        c = torch.einsum("bthd,bjhd->bhtj", qq / qq.norm(dim=-1, keepdim=True), kk / kk.norm(dim=-1, keepdim=True))
        dots = torch.einsum("bthd,bjhd->bhtj", qq, kk)
        to_sink = c[:, :, sink + 1 :, sink].mean((0, 2))  # queries t > sink
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool))  # causal pairs j <= t
        mask[:, sink] = False  # other keys only
        mask[: sink + 1] = False  # queries that see the sink
        other = (c * mask).sum((0, 2, 3)) / (mask.sum() * c.shape[0])
        return to_sink, other, dots[:, :, sink + 1 :, sink].mean((0, 2)), (dots * mask).sum((0, 2, 3)) / (mask.sum() * c.shape[0])

    cs, co, ds, do = cosines(q, k)
    np.testing.assert_allclose(ro.cos_sink, cs.numpy(), atol=1e-5)
    np.testing.assert_allclose(ro.cos_other, co.numpy(), atol=1e-5)
    np.testing.assert_allclose(ro.dot_sink, ds.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ro.dot_other, do.numpy(), rtol=1e-4, atol=1e-6)
    cs_pre, co_pre, _, _ = cosines(qp, kp)
    np.testing.assert_allclose(ro.cos_sink_pre, cs_pre.numpy(), atol=1e-5)
    np.testing.assert_allclose(ro.cos_other_pre, co_pre.numpy(), atol=1e-5)
    if not cfg["rope"]:
        np.testing.assert_allclose(ro.cos_sink, ro.cos_sink_pre, atol=1e-6)
    # the split of the logit gap is exactly the formula in the docs
    qn, ksn, kon = map(np.asarray, (ro.q_norm, ro.k_sink_norm, ro.k_other_norm))
    np.testing.assert_allclose(ro.angle_part, qn * ksn * (np.asarray(ro.cos_sink) - np.asarray(ro.cos_other)), rtol=1e-9)
    np.testing.assert_allclose(ro.norm_part, qn * np.asarray(ro.cos_other) * (ksn - kon), rtol=1e-9)
    np.testing.assert_allclose(ro.q_norm, q.norm(dim=-1)[:, sink + 1 :].mean((0, 1)).numpy(), rtol=1e-5)


def test_manifold_pca_against_svd_and_angles_by_formula(tiny_models):
    model, hf = tiny_models("tiny-gqa")
    tokens = torch.randint(4, 128, (12, 10), generator=torch.Generator().manual_seed(4))
    layer, head = 1, 3
    rep = trace_sink(model, tokens, layer=layer, head=head, links=["manifold"], progress=False)
    mf = rep.links["manifold"]
    cfg = config_numbers(hf)
    g = head // (cfg["H"] // cfg["G"])
    _, k = rotated_qk(hf, tokens, layer)
    ks = k[:, 0, g].numpy()
    ko = k[:, 1:, g].reshape(-1, cfg["d"]).numpy()
    s = np.linalg.svd(ks, compute_uv=False)
    energy = s**2 / (s**2).sum()
    np.testing.assert_allclose(mf.sink_pc_share, energy[:5], atol=1e-6)
    assert mf.sink_dim90 == int(np.searchsorted(np.cumsum(energy), 0.9 - 1e-12) + 1)
    _, so, vt = np.linalg.svd(ko, full_matrices=False)
    eo = so**2 / (so**2).sum()
    r = int(np.searchsorted(np.cumsum(eo), 0.9 - 1e-12) + 1)
    assert mf.other_dim90 == r
    assert mf.angle == pytest.approx(angle_deg(ks.mean(0), vt[:r].T), abs=1e-4)
    _, _, v, _ = qkv(hf, tokens, layer)
    vn = v[:, :, g].norm(dim=-1)
    assert mf.value_norm_ratio == pytest.approx(float(vn[:, 0].mean() / vn[:, 1:].mean()), rel=1e-5)
    assert rep.key_pca["sink"].shape == (12, 2)


def test_small_maths_against_numpy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    assert mean_pairwise_cos(x) == pytest.approx(mean_pairwise_cos_loop(x.numpy()), abs=1e-12)
    s = np.linalg.svd(x.numpy(), compute_uv=False)
    np.testing.assert_allclose(energy_shares(x).numpy(), s**2 / (s**2).sum(), rtol=1e-10)
    sh = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    assert dims_for(sh, 0.9) == 3 and dims_for(sh, 0.5) == 1 and dims_for(sh, 0.8) == 2
    assert cum_dims(np.array([0.05, 0.6, -0.2, 0.55])) == 2  # 0.6 + 0.55 >= 0.9 * 1.0
    basis = subspace(x, 0.9)
    v = torch.randn(5, generator=g, dtype=torch.float64)
    assert float(angle_to(v, basis)) == pytest.approx(angle_deg(v.numpy(), basis.numpy()), abs=1e-9)
    assert float(angle_to(basis[:, 0], basis)) == pytest.approx(0.0, abs=1e-5)


def test_writer_and_gated_mlp_when_an_mlp_writes_the_spike():
    """A +300 written by block 0's MLP at (pos 0, dim 5): the writer is (0, mlp), against HF forward hooks."""
    model, hf = planted("tiny-gqa", size=0.0)
    dim, size = 5, 300.0

    def add(x, hook):
        x = x.clone()
        x[:, 0, dim] += size
        return x

    def hf_add(module, args, out):
        out = out.clone()
        out[:, 0, dim] += size
        return out

    tokens = torch.randint(4, 128, (6, 12), generator=torch.Generator().manual_seed(8))
    with attach_hooks(model, [(hooknames.mlp_out(0), add)]):
        rep = trace_sink(model, tokens, layer=1, head=0, progress=False)
    lays = decoder_layers(hf)
    handle = lays[0].mlp.register_forward_hook(hf_add)
    try:
        with capture(
            {f"{i}.{c}": getattr(l, m) for i, l in enumerate(lays) for c, m in (("attn", "self_attn"), ("mlp", "mlp"))}
        ) as got:
            hs = hidden_states(hf, tokens)
    finally:
        handle.remove()
    w = rep.links["writer"]
    assert (w.layer, w.pos, w.dim) == (1, 0, dim)
    assert (w.writer_layer, w.writer_component) == (0, "mlp")
    assert w.writer_value == pytest.approx(float(got["0.mlp"][0][:, 0, dim].mean()), rel=1e-5)
    np.testing.assert_allclose(w.attn, [float(got[f"{i}.attn"][0][:, 0, dim].mean()) for i in range(2)], rtol=1e-4, atol=1e-6)
    assert w.spike == pytest.approx(float(hs[:, 1, 0, dim].mean()), rel=1e-5)
    assert rep.writer() == {"layer": 0, "component": "mlp", "value": w.writer_value}
    gm = rep.links["gated_mlp"]
    assert gm.layer == 0 and gm.dim == dim
    assert gm.actual == pytest.approx(w.writer_value, rel=1e-6)


def test_gated_mlp_quadratic_form_against_the_weights():
    """S = sym(W_gate diag(W_out[:, d]) W_in^T), rebuilt here from HF's gate/up/down, on an MLP given a rank-one writer.

    Gate and up rows j0 read residual dim 17 (4 x e_17) and down writes 50 x their product into dim 17: with the
    embedding spike, the MLP input at the first token is ~ 8 e_17, SiLU(32) ~ 32, and block 0's MLP writes
    ~ 50 * 32 * 32 into (pos 0, dim 17). The top eigenvector of S is e_17.
    """
    model, hf = planted("tiny-gqa")
    j0 = 3
    u = torch.zeros(64)
    u[SPIKE_DIM] = 1.0
    with torch.no_grad():
        for m in (model.blocks[0].mlp.original_component, decoder_layers(hf)[0].mlp):
            m.gate_proj.weight[j0] = 4.0 * u
            m.up_proj.weight[j0] = 4.0 * u
            m.down_proj.weight[SPIKE_DIM, j0] = 50.0
    tokens = spiked_tokens(n=6, T=12)
    rep = trace_sink(model, tokens, layer=1, head=0, progress=False)
    assert rep.writer()["layer"] == 0 and rep.writer()["component"] == "mlp"
    gm = rep.links["gated_mlp"]
    assert (gm.layer, gm.pos, gm.dim) == (0, 0, SPIKE_DIM)
    mlp = decoder_layers(hf)[0].mlp
    Wg = mlp.gate_proj.weight.detach().double().T  # [D, d_mlp]
    Wi = mlp.up_proj.weight.detach().double().T
    Wo = mlp.down_proj.weight.detach().double().T  # [d_mlp, D]
    M = Wg @ torch.diag(Wo[:, gm.dim]) @ Wi.T
    S = 0.5 * (M + M.T)
    ev, evec = np.linalg.eigh(S.numpy())
    order = np.argsort(-np.abs(ev))
    ev, evec = ev[order], evec[:, order]
    np.testing.assert_allclose(gm.eigvals, ev[:5], rtol=1e-6, atol=1e-9)
    assert gm.top_share == pytest.approx(abs(ev[0]) / np.abs(ev).sum(), rel=1e-6)
    assert gm.eig_ratio == pytest.approx(abs(ev[0]) / abs(ev[1]), rel=1e-6)
    assert abs(evec[SPIKE_DIM, 0]) > 0.999  # the planted direction
    with capture({"in": decoder_layers(hf)[0].post_attention_layernorm, "out": mlp}) as got, torch.no_grad():
        hf(tokens)
    xin = got["in"][0].double()  # [n, T, D]
    xs = xin[:, 0]
    pred = torch.stack([xi @ S @ xi for xi in xs]).mean()
    direct = (((xs @ Wg) * (xs @ Wi)) @ Wo[:, gm.dim]).mean()  # sum_j W_out[j,d] (W_gate x)_j (W_in x)_j
    assert gm.predicted == pytest.approx(float(pred), rel=1e-5)
    assert gm.predicted == pytest.approx(float(direct), rel=1e-5)
    assert gm.actual == pytest.approx(float(got["out"][0][:, 0, gm.dim].mean()), rel=1e-5)
    assert gm.predicted == pytest.approx(gm.actual, rel=0.05)  # SiLU(z) ~ z holds at z ~ 32
    u1 = torch.from_numpy(evec[:, 0])
    cos = (xin @ u1).abs() / xin.norm(dim=-1)
    assert gm.cos_sink == pytest.approx(float(cos[:, 0].mean()), rel=1e-5) and gm.cos_sink > 0.99
    assert gm.cos_other == pytest.approx(float(cos[:, 1:].mean()), rel=1e-5) and gm.cos_other < 0.5
    assert gm.top_share > 0.5 and gm.eig_ratio > 10


def test_default_head_is_the_strongest_sink_head(tiny_models):
    model, _ = tiny_models("tiny-mha")
    tokens = torch.randint(4, 128, (4, 12), generator=torch.Generator().manual_seed(1))
    mrep = massive_activations(model, tokens, progress=False)
    alpha = mrep.sink_report.alpha[..., 0].mean(axis=0)
    rep = trace_sink(model, tokens, massive=mrep, links=["spike"], progress=False)
    assert (rep.layer, rep.head) == tuple(int(i) for i in np.unravel_index(alpha.argmax(), alpha.shape))
    rep1 = trace_sink(model, tokens, layer=0, massive=mrep, links=["spike"], progress=False)
    assert rep1.layer == 0 and rep1.head == int(alpha[0].argmax())


def test_every_number_has_a_doc_and_the_json_has_the_issue_keys(tmp_path, tiny_models):
    model, _ = tiny_models("tiny-gqa")
    rep = trace_sink(model, torch.randint(4, 128, (4, 12)), progress=False)
    df = rep.to_frame()
    assert (df["doc"].str.len() > 10).all()
    assert set(df["link"]) == set(LINKS) - {"qk_norm"} and "no QK-norm" in rep.skipped["qk_norm"]
    for link in rep.links.values():
        assert all(len(doc) > 10 for doc in link.docs().values())
    d = json.loads(rep.to_json(tmp_path / "t.json"))
    assert json.loads((tmp_path / "t.json").read_text()) == d
    assert len(d["massive"]) == 2 and set(d["massive"][0]) == {"layer", "max", "pos", "dim"}
    assert len(d["value_norm_ratio"]) == 2
    assert set(d["writer"]) == {"layer", "component", "value"} and d["writer"]["component"] in ("attn", "mlp")
    text = rep.story()
    for part in ("1. Spike", "2. Writer", "3. Norm", "4. W_K", "5. RoPE", "6. Manifold"):
        assert part in text
    assert "all numbers" in rep._repr_html_() and "TraceReport" in repr(rep)


def test_layernorm_gpt_model_skips_only_the_gated_link(tiny_models):
    model, _ = tiny_models("tiny-learned")
    rep = trace_sink(model, torch.randint(4, 128, (4, 12)), progress=False)
    assert "gated_mlp" in rep.skipped and "not gated" in rep.skipped["gated_mlp"]
    assert set(rep.links) == set(LINKS) - {"gated_mlp", "qk_norm"}
    assert rep.links["rope"].positional == "learned"


@pytest.mark.parametrize(
    "kwargs, n, match",
    [
        ({"layer": 2}, 4, r"layer=2 is out of range: the model has layers 0\.\.1"),
        ({"layer": -1}, 4, "layer=-1"),
        ({"head": 4}, 4, r"head=4 is out of range: the model has heads 0\.\.3"),
        ({"sink_pos": 9}, 4, "sink_pos=9"),
        ({"links": ["spike", "nope"]}, 4, "unknown"),
        ({}, 2, r"at least 3 samples.*n=2.*fix"),
    ],
)
def test_errors_name_the_fix(tiny_models, kwargs, n, match):
    model, _ = tiny_models("tiny-gqa")
    with pytest.raises(ValueError, match=match):
        trace_sink(model, torch.randint(4, 128, (n, 10)), progress=False, **kwargs)


def test_too_few_samples_is_fine_without_the_manifold(tiny_models):
    model, _ = tiny_models("tiny-gqa")
    rep = trace_sink(model, torch.randint(4, 128, (2, 10)), links=["spike", "norm", "wk"], progress=False)
    assert set(rep.links) == {"spike", "norm", "wk"}


def test_hooks_are_removed_after_an_exception(tiny_models, monkeypatch):
    model, _ = tiny_models("tiny-gqa")
    before = hook_snapshot(model)

    def boom(self, name, tensor):
        raise RuntimeError("boom")

    monkeypatch.setattr(TraceReducer, "update", boom)
    with pytest.raises(RuntimeError, match="boom"):
        trace_sink(model, torch.randint(4, 128, (4, 10)), layer=0, head=0, progress=False)
    assert hook_snapshot(model) == before


def test_cli_trace_prints_the_story_and_writes_json(tmp_path, capsys):
    out = tmp_path / "trace.json"
    code = main(["trace", "--model", "tiny-gqa", "--data", "random", "--n", "5", "--length", "12", "--json", str(out), "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    for part in ("1. Spike", "2. Writer", "3. Norm", "4. W_K", "5. RoPE", "6. Manifold", "value_norm_ratio"):
        assert part in text
    d = json.loads(out.read_text())
    assert len(d["massive"]) == 2 and len(d["value_norm_ratio"]) == 2 and d["writer"]["component"] in ("attn", "mlp")
    assert d["n"] == 5 and d["length"] == 12 and d["bos"] is False


def test_cli_trace_error_exits_2(capsys):
    assert (
        main(["trace", "--model", "tiny-gqa", "--data", "random", "--n", "4", "--length", "10", "--layer", "7", "--quiet"]) == 2
    )
    assert "layer=7 is out of range" in capsys.readouterr().err
