"""Each link of the trace computed alone (collect_trace + one link function), against formulas written here on the HF model.

The references use plain forward hooks on the Hugging Face copy with the same weights
(:mod:`tests.reference_trace`), not sink_interp's hooks, reducers or :func:`trace_sink`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sink_interp import load_model, massive_activations
from sink_interp.trace import WriterLink
from sink_interp.trace.links import gated_mlp_link, norm_link, qk_norm_link, spike_dims, spike_link, wk_link
from sink_interp.trace.reducers import collect_trace

from .reference_trace import capture, config_numbers, decoder_layers, hidden_states, is_gpt, mean_pairwise_cos_loop, norm_scale


def _tokens(n: int = 6, T: int = 12, seed: int = 3) -> torch.Tensor:
    return torch.randint(4, 100, (n, T), generator=torch.Generator().manual_seed(seed))


def _dims_for_90(shares: np.ndarray) -> int:
    """Entries, largest first, until their running sum reaches 90% of the total."""
    s = np.sort(shares)[::-1]
    return int(np.argmax(np.cumsum(s) >= 0.9 * s.sum() - 1e-12) + 1)


def test_spike_link_alone_against_the_hf_hidden_states(tiny_models):
    model, hf = tiny_models("tiny-gqa")
    x = _tokens()
    layer = 1
    massive = massive_activations(model, x, progress=False)
    r = collect_trace(model, x, layer=layer, head=0, links={"spike"})
    assert not r.want_writer and not r.want_norm  # the pass keeps only what the link reads
    h = hidden_states(hf, x)[:, layer].double()  # [n, T, D] entering the traced block
    # no dim is massive in a random tiny model: the dims are those of largest mean |x| at the sink
    dims, is_massive = spike_dims(r, massive, n_dims=3)
    assert not is_massive
    assert dims == [int(d) for d in np.argsort(-h[:, 0].abs().mean(0).numpy())[:3]]
    sp = spike_link(r, massive, dims, is_massive)
    assert (sp.layer, sp.pos, sp.dims) == (layer, 0, dims)
    np.testing.assert_allclose(sp.values, h[:, 0, dims].mean(0).numpy(), rtol=1e-5, atol=1e-7)
    median = np.mean([np.median(h[i].abs().numpy()) for i in range(len(h))])
    assert sp.median == pytest.approx(median, rel=1e-5)
    assert sp.ratio == pytest.approx(abs(sp.values[0]) / median, rel=1e-5)
    assert sp.other_abs == pytest.approx(float(h[:, 1:, dims[0]].abs().mean()), rel=1e-5)
    norms = h.norm(dim=-1)
    assert sp.h_norm_ratio == pytest.approx(float(norms[:, 0].mean() / norms[:, 1:].mean()), rel=1e-5)


@pytest.mark.parametrize("name", ["tiny-gqa", "tiny-layernorm-rope"])
def test_norm_link_alone_against_the_hf_norm(tiny_models, name):
    model, hf = tiny_models(name)
    x = _tokens(n=7, T=10, seed=5)
    layer, dims = 1, [3, 40]
    r = collect_trace(model, x, layer=layer, head=1, links={"norm"})
    nl = norm_link(r, dims)
    lay = decoder_layers(hf)[layer]
    ln = lay.ln_1 if is_gpt(hf) else lay.input_layernorm
    layernorm = isinstance(ln, torch.nn.LayerNorm)
    h = hidden_states(hf, x)[:, layer].double()
    scale = norm_scale(h, layernorm, config_numbers(hf)["eps"])  # [n, T]
    normed = (h - h.mean(-1, keepdim=True) if layernorm else h) / scale[..., None]  # [n, T, D]
    w = ln.weight.detach().double()
    out = normed * w + (ln.bias.detach().double() if getattr(ln, "bias", None) is not None else 0.0)

    assert nl.kind == ("LayerNorm" if layernorm else "RMSNorm")
    assert nl.scale_sink == pytest.approx(float(scale[:, 0].mean()), rel=1e-5)
    assert nl.scale_other == pytest.approx(float(scale[:, 1:].mean()), rel=1e-5)
    sq = normed**2
    share = sq[..., dims].sum(-1) / sq.sum(-1)  # [n, T]
    assert nl.share_sink == pytest.approx(float(share[:, 0].mean()), rel=1e-5)
    assert nl.share_other == pytest.approx(float(share[:, 1:].mean()), rel=1e-5)
    assert nl.n_dims_90 == pytest.approx(np.mean([_dims_for_90(row) for row in sq[:, 0].numpy()]))
    assert nl.cos_sink == pytest.approx(mean_pairwise_cos_loop(normed[:, 0].numpy()), abs=1e-6)
    others = [mean_pairwise_cos_loop(normed[:, t].numpy()) for t in range(1, x.shape[1])]
    assert nl.cos_other == pytest.approx(float(np.mean(others)), abs=1e-6)
    np.testing.assert_allclose(nl.normalized, normed[:, 0, dims].mean(0).numpy(), rtol=1e-5)
    np.testing.assert_allclose(nl.gain, w[dims].numpy(), rtol=1e-7)
    assert nl.gain_mean_abs == pytest.approx(float(w.abs().mean()), rel=1e-7)
    np.testing.assert_allclose(nl.out, out[:, 0, dims].mean(0).numpy(), rtol=1e-5)


def test_wk_link_alone_against_the_hf_projections(tiny_models):
    """Each residual dim's share of the sink key, <(g n)_i W_K[i], k> / ||k||^2, from HF's norm output and k_proj."""
    model, hf = tiny_models("tiny-gqa")
    x = _tokens(n=5, T=9, seed=7)
    layer, head, dims = 1, 3, [11, 2]
    r = collect_trace(model, x, layer=layer, head=head, links={"wk"})
    kl = wk_link(r, dims)
    cfg = config_numbers(hf)
    d, g = cfg["d"], head // (cfg["H"] // cfg["G"])
    a = decoder_layers(hf)[layer].self_attn
    with capture({"ln": decoder_layers(hf)[layer].input_layernorm, "q": a.q_proj, "k": a.k_proj}) as got, torch.no_grad():
        hf(x)
    u = got["ln"][0].double()  # [n, T, D]: g * n, what W_K reads
    n, T = x.shape
    k = got["k"][0].reshape(n, T, -1, d)[:, :, g].double()  # [n, T, d]
    q = got["q"][0].reshape(n, T, -1, d)[:, :, head].double()
    WK = a.k_proj.weight[g * d : (g + 1) * d].T.detach().double()  # [D, d]
    WQ = a.q_proj.weight[head * d : (head + 1) * d].T.detach().double()
    ks = k[:, 0]
    shares = (u[:, 0] * (ks @ WK.T) / (ks**2).sum(-1, keepdim=True)).mean(0).numpy()  # [D]
    qs = q[:, 1:]
    qshares = (u[:, 1:] * (qs @ WQ.T) / (qs**2).sum(-1, keepdim=True)).mean((0, 1)).numpy()

    assert (kl.head, kl.kv_head) == (head, g)
    assert kl.k_sink_norm == pytest.approx(float(ks.norm(dim=-1).mean()), rel=1e-5)
    assert kl.k_other_norm == pytest.approx(float(k[:, 1:].norm(dim=-1).mean()), rel=1e-5)
    assert kl.k_sink_cos == pytest.approx(mean_pairwise_cos_loop(ks.numpy()), abs=1e-6)
    assert kl.share_spike_dims == pytest.approx(float(shares[dims].sum()), abs=1e-6)
    spike = u[:, 0, dims] @ WK[dims]
    cos = ((spike * ks).sum(-1) / (spike.norm(dim=-1) * ks.norm(dim=-1))).mean()
    assert kl.cos_spike_dims == pytest.approx(float(cos), abs=1e-6)
    assert kl.share_bias == 0.0 and shares.sum() == pytest.approx(1.0, abs=1e-5)  # no biases: the dims make the whole key
    assert kl.top_dims == [int(i) for i in np.argsort(-shares)[:5]]
    np.testing.assert_allclose(kl.top_shares, shares[kl.top_dims], atol=1e-6)
    assert kl.n_dims_90 == _dims_for_90(shares)
    assert kl.q_share_spike_dims == pytest.approx(float(qshares[dims].sum()), abs=1e-6)
    assert kl.q_top_dims == [int(i) for i in np.argsort(-qshares)[:5]]
    assert kl.q_n_dims_90 == _dims_for_90(qshares)
    assert kl.reconstruction_error < 1e-5


def test_gated_mlp_link_alone_against_the_hf_mlp(tiny_models):
    """x^T S x written as sum_j (W_gate x)_j (W_up x)_j W_down[dim, j], on HF's MLP input, against the link's prediction."""
    model, hf = tiny_models("tiny-gqa")
    x = _tokens(n=5, T=10, seed=9)
    block, dim, pos = 0, 5, 2
    writer = WriterLink(
        layer=1, pos=pos, dim=dim, spike=1.0, writer_layer=block, writer_component="mlp", writer_value=1.0, writer_share=1.0,
        runner_up="0.attn", runner_up_value=0.0, embed=0.0, attn=[0.0, 0.0], mlp=[1.0, -2.0],
        local_pos=0, local_dim=dim, local_writer="0.mlp", local_value=1.0,
    )  # fmt: skip
    gl, why = gated_mlp_link(model, x, writer)
    assert why == "" and (gl.layer, gl.pos, gl.dim, gl.act_fn) == (block, pos, dim, "silu")
    lay = decoder_layers(hf)[block]
    with capture({"in": lay.post_attention_layernorm, "out": lay.mlp}) as got, torch.no_grad():
        hf(x)
    xin, out = got["in"][0].double(), got["out"][0].double()  # [n, T, D]
    G, U = lay.mlp.gate_proj.weight.detach().double(), lay.mlp.up_proj.weight.detach().double()  # [d_mlp, D]
    down = lay.mlp.down_proj.weight.detach().double()[dim]  # [d_mlp]
    xs = xin[:, pos]
    assert gl.predicted == pytest.approx(float(((xs @ G.T) * (xs @ U.T) * down).sum(-1).mean()), rel=1e-5)
    assert gl.actual == pytest.approx(float(out[:, pos, dim].mean()), rel=1e-5)
    S = 0.5 * (G.T @ torch.diag(down) @ U + U.T @ torch.diag(down) @ G)
    lam, vec = np.linalg.eigh(S.numpy())
    order = np.argsort(-np.abs(lam))
    lam, u1 = lam[order], vec[:, order[0]]
    np.testing.assert_allclose(gl.eigvals, lam[:5], rtol=1e-8, atol=1e-12)
    assert gl.top_share == pytest.approx(abs(lam[0]) / np.abs(lam).sum(), rel=1e-8)
    assert gl.eig_ratio == pytest.approx(abs(lam[0]) / abs(lam[1]), rel=1e-8)
    c = np.abs(xin.numpy() @ u1) / np.linalg.norm(xin.numpy(), axis=-1)  # [n, T]
    assert gl.cos_sink == pytest.approx(float(c[:, pos].mean()), rel=1e-5)
    assert gl.cos_other == pytest.approx(float(np.delete(c, pos, axis=1).mean()), rel=1e-5)
    assert gl.predicted_rank1 == pytest.approx(float((lam[0] * (xs.numpy() @ u1) ** 2).mean()), rel=1e-5)


def test_qk_norm_link_alone_against_the_hf_k_norm(tmp_path):
    """Qwen3's per-head k-norm: key lengths before and after it and its RMS divisor, from HF's k_proj and k_norm."""
    from transformers import AutoModelForCausalLM

    from sink_interp.models import tiny_checkpoint

    path = tiny_checkpoint("qwen3", tmp_path / "qwen3")
    model = load_model(str(path), device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager").eval()
    x = _tokens(n=4, T=8, seed=2)
    layer, head = 1, 2
    r = collect_trace(model, x, layer=layer, head=head, links={"qk_norm"})
    qn = qk_norm_link(model, r)
    cfg = config_numbers(hf)
    d, g = cfg["d"], head // (cfg["H"] // cfg["G"])
    a = decoder_layers(hf)[layer].self_attn
    with capture({"k": a.k_proj, "kn": a.k_norm}) as got, torch.no_grad():
        hf(x)
    n, T = x.shape
    before = got["k"][0].reshape(n, T, -1, d)[:, :, g].double()
    after = got["kn"][0].reshape(n, T, -1, d)[:, :, g].double()
    scale = ((before**2).mean(-1) + a.k_norm.variance_epsilon).sqrt()

    assert (qn.kind, qn.kv_head) == ("per-head", g)
    assert qn.k_sink_norm_before == pytest.approx(float(before[:, 0].norm(dim=-1).mean()), rel=1e-5)
    assert qn.k_other_norm_before == pytest.approx(float(before[:, 1:].norm(dim=-1).mean()), rel=1e-5)
    assert qn.k_sink_norm_after == pytest.approx(float(after[:, 0].norm(dim=-1).mean()), rel=1e-5)
    assert qn.k_other_norm_after == pytest.approx(float(after[:, 1:].norm(dim=-1).mean()), rel=1e-5)
    assert qn.norm_ratio_after == pytest.approx(qn.k_sink_norm_after / qn.k_other_norm_after, rel=1e-12)
    assert qn.scale_sink == pytest.approx(float(scale[:, 0].mean()), rel=1e-4)
    assert qn.scale_other == pytest.approx(float(scale[:, 1:].mean()), rel=1e-4)
    cos = torch.nn.functional.cosine_similarity(before[:, 0], after[:, 0], dim=-1).mean()
    assert qn.cos_before_after == pytest.approx(float(cos), abs=1e-6)
    assert qn.gain_mean_abs == pytest.approx(float(a.k_norm.weight.detach().abs().mean()), rel=1e-6)
