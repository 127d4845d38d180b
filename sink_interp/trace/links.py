"""One function per link of the chain: each turns the sums of a trace pass into a link record.

Every function but :func:`gated_mlp_link` reads a :class:`~sink_interp.trace.reducers.TraceReducer`
filled by :func:`~sink_interp.trace.reducers.collect_trace` (the gated-MLP link runs its own pass
on the writer's MLP), so each link can be computed, and tested, alone:

=============  ==========================================  =====================
link           function                                    record
=============  ==========================================  =====================
spike          :func:`spike_link` (dims: :func:`spike_dims`)  :class:`SpikeLink`
writer         :func:`writer_link`                         :class:`WriterLink`
gated_mlp      :func:`gated_mlp_link`                      :class:`GatedMLPLink`
norm           :func:`norm_link`                           :class:`NormLink`
wk             :func:`wk_link`                             :class:`KeyLink`
qk_norm        :func:`qk_norm_link`                        :class:`QKNormLink`
rope           :func:`rope_link`                           :class:`RopeLink`
manifold       :func:`manifold_link`                       :class:`ManifoldLink`
=============  ==========================================  =====================

Example (one pass over the probe feeds every link but the gated MLP's and QK-norm's, which have their own):
    >>> import torch
    >>> from sink_interp import tiny_model, massive_activations
    >>> from sink_interp.trace.reducers import collect_trace
    >>> m, x = tiny_model(), torch.randint(4, 128, (4, 12))
    >>> mr = massive_activations(m, x, progress=False)
    >>> links = {"spike", "writer", "norm", "wk", "rope", "manifold"}
    >>> r = collect_trace(m, x, layer=1, head=0, coord_pos=mr.global_max()["pos"], links=links)
    >>> dims, massive = spike_dims(r, mr, n_dims=2)
    >>> len(dims), massive, spike_link(r, mr, [5], False).dims
    (2, False, [5])
    >>> writer_link(r, mr, dim0=3).writer_component in ("attn", "mlp")
    True
    >>> nl, kl, ro = norm_link(r, [7, 8]), wk_link(r, [0]), rope_link(r)
    >>> nl.kind, len(nl.gain), 0 <= nl.share_sink <= 1
    ('RMSNorm', 2, True)
    >>> kl.kv_head, kl.reconstruction_error < 1e-5, ro.positional, len(ro.cos_sink)
    (0, True, 'rope', 4)
    >>> ml, pca = manifold_link(r)
    >>> 0 <= ml.angle <= 90, pca["sink"].shape
    (True, (4, 2))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._internal import hooknames
from .._internal.weights import mlp_weights
from ..architecture import describe_attention
from ..capture import run_reducers
from ..massive import MassiveReport
from .maths import angle_to, cum_dims, dims_for, energy_shares, mean_pairwise_cos, subspace
from .reducers import GatedMLPReducer, TraceReducer
from .report import GatedMLPLink, KeyLink, ManifoldLink, NormLink, QKNormLink, RopeLink, SpikeLink, WriterLink

MIN_PCA_SAMPLES = 3


def _other(r: TraceReducer) -> tuple[Tensor, int]:
    """Mask of the positions other than the sink, and how many (sample, position) pairs they make."""
    other = torch.ones(r.T, dtype=torch.bool)
    other[r.sink] = False
    return other, max(r.n * (r.T - 1), 1)


# --------------------------------------------------------------------------- spike


def spike_dims(r: TraceReducer, massive: MassiveReport, n_dims: int = 1) -> tuple[list[int], bool]:
    """The spike dims at the traced layer's sink, and whether they are massive.

    The dims flagged massive at ``(r.layer, r.sink)`` in at least half the samples; where none
    is, the ``n_dims`` dims of largest mean ``|x|`` at the sink (or the global maximum's dim when
    the pass kept no layer tensors).

    Example: the module docstring's, which computes every link from one pass.
    """
    dims = massive.massive_dims(r.layer, r.sink)
    is_massive = bool(dims)
    if not dims:
        if r.want_layer:
            dims = [int(d) for d in r.x_sink.abs().mean(0).topk(min(n_dims, r.D)).indices]
        else:
            dims = [massive.global_max()["dim"]]
    return dims, is_massive


def spike_link(r: TraceReducer, massive: MassiveReport, dims: Sequence[int], is_massive: bool) -> SpikeLink:
    """The spike: the residual entering ``r.layer`` at the sink, in the spike ``dims``, against the layer's median.

    Example: the module docstring's, which computes every link from one pass.
    """
    layer, sink_pos = r.layer, r.sink
    _, n_other = _other(r)
    vals = r.x_sink[:, dims].mean(0)
    med = float(massive.median[:, layer].mean())
    h = massive.h_norm[:, layer]
    return SpikeLink(
        layer=layer,
        pos=sink_pos,
        dims=list(dims),
        massive=is_massive,
        values=[float(v) for v in vals],
        top_value=float(vals[0]),
        median=med,
        ratio=float(abs(vals[0]) / max(med, 1e-30)),
        other_abs=float(r.other_abs_sum[dims[0]] / n_other),
        h_norm_ratio=float(h[:, sink_pos].mean() / max(np.delete(h, sink_pos, axis=1).mean(), 1e-30)),
    )


# --------------------------------------------------------------------------- writer and gated MLP


def writer_link(r: TraceReducer, massive: MassiveReport, dim0: int) -> WriterLink:
    """Mean contribution of every block output to the global maximum's coordinate and to the traced spike's.

    ``dim0`` is the traced layer's main spike dim (at ``r.sink``); the pass must have been
    collected with ``coord_pos`` at the global maximum's position (``massive.global_max()["pos"]``).

    Example: the module docstring's, which computes every link from one pass.
    """
    layer, sink, n = r.layer, r.sink, r.n
    gm = massive.global_max()
    p, d, lstar = gm["pos"], gm["dim"], gm["layer"]
    resid, attn_all, mlp_all = r.w_resid[1] / n, r.w_attn[1] / n, r.w_mlp[1] / n  # [L, D] at the coordinate's position
    spike = float(resid[lstar, d])
    sign = 1.0 if spike >= 0 else -1.0
    attn, mlp = attn_all[:, d], mlp_all[:, d]
    cands = [(float(sign * attn[i]), i, "attn", float(attn[i])) for i in range(r.L)]
    cands += [(float(sign * mlp[i]), i, "mlp", float(mlp[i])) for i in range(r.L)]
    cands.sort(key=lambda c: -c[0])
    best, second = cands[0], cands[1]
    # the traced layer's spike (sink, dim0): its largest writer among the embedding and earlier blocks
    lres, la, lm = r.w_resid[0] / n, r.w_attn[0] / n, r.w_mlp[0] / n
    lsign = 1.0 if float(lres[layer, dim0]) >= 0 else -1.0
    embed_local = float(lres[0, dim0])
    lc = [(lsign * embed_local, "embed", embed_local)]
    lc += [(float(lsign * la[i, dim0]), f"{i}.attn", float(la[i, dim0])) for i in range(layer)]
    lc += [(float(lsign * lm[i, dim0]), f"{i}.mlp", float(lm[i, dim0])) for i in range(layer)]
    lc.sort(key=lambda c: -c[0])
    return WriterLink(
        layer=lstar,
        pos=p,
        dim=d,
        spike=spike,
        writer_layer=best[1],
        writer_component=best[2],
        writer_value=best[3],
        writer_share=float(best[3] / spike) if spike != 0 else float("nan"),
        runner_up=f"{second[1]}.{second[2]}",
        runner_up_value=second[3],
        embed=float(resid[0, d]),
        attn=[float(v) for v in attn],
        mlp=[float(v) for v in mlp],
        local_pos=sink,
        local_dim=dim0,
        local_writer=lc[0][1],
        local_value=lc[0][2],
    )


def gated_mlp_link(
    model: Any, tokens: Tensor, w: WriterLink, batch_size: int | None = None, progress: bool = False
) -> tuple[GatedMLPLink | None, str]:
    """The writer MLP as a quadratic form ``x^T S x``: its spectrum, and how well it predicts the write.

    The MLP is the one that writes most of the spike in ``w`` (a :class:`WriterLink`); runs one
    pass over ``tokens``. Returns ``(link, "")``, or ``(None, reason)`` where the MLP is not a
    plain gated MLP (mixture of experts, not gated, no input hook).

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> from sink_interp.trace.report import WriterLink
        >>> w = WriterLink(0, 0, 3, 1.0, 0, "mlp", 1.0, 1.0, "0.attn", 0.0, 0.0, [0.0, 0.0], [1.0, 0.0], 0, 3, "0.mlp", 1.0)
        >>> gl, why = gated_mlp_link(tiny_model(), torch.randint(4, 128, (4, 12)), w)
        >>> gl.layer, gl.dim, why
        (0, 3, '')
    """
    sign = 1.0 if w.spike >= 0 else -1.0
    mlp = np.asarray(w.mlp)
    lw = int(np.argmax(sign * mlp))
    if describe_attention(model).moe:
        return None, (
            f"the MLP of block {lw} is a mixture of experts: the write is a router-weighted sum of experts' quadratic forms, "
            "which changes with the token's routing; the writer link still names the block"
        )
    wts = mlp_weights(model, lw)
    if not wts["gated"]:
        return None, (
            f"the MLP of block {lw} is not gated (act_fn={wts['act_fn'] or 'unknown'}): the quadratic-form reading "
            "act(W_gate x) * (W_in x) ~ (W_gate x)(W_in x) needs a gated MLP (SwiGLU/GeGLU)"
        )
    if hooknames.mlp_in(lw) not in model.hook_dict:
        return None, f"block {lw} exposes no MLP input hook ({hooknames.mlp_in(lw)})"
    d, p = w.dim, w.pos
    Wg, Wi, Wo = wts["W_gate"].double(), wts["W_in"].double(), wts["W_out"].double()
    M = (Wg * Wo[:, d][None, :]) @ Wi.T
    S = 0.5 * (M + M.T)
    evals, evecs = torch.linalg.eigh(S)
    order = torch.argsort(evals.abs(), descending=True)
    evals, evecs = evals[order], evecs[:, order]
    red = GatedMLPReducer(lw, p, d, S, evecs[:, 0], float(evals[0]))
    run_reducers(model, tokens, [red], batch_size=batch_size, progress=progress, desc=f"gated MLP {lw}")
    absum = float(evals.abs().sum())
    return (
        GatedMLPLink(
            layer=lw,
            pos=p,
            dim=d,
            act_fn=wts["act_fn"],
            eigvals=[float(v) for v in evals[:5]],
            top_share=float(evals[0].abs() / max(absum, 1e-300)),
            top_energy_share=float(evals[0] ** 2 / (evals**2).sum().clamp_min(1e-300)),
            eig_ratio=float(evals[0].abs() / evals[1].abs().clamp_min(1e-300)) if len(evals) > 1 else float("inf"),
            cos_sink=float(red.cos_sink.mean()),
            cos_other=float(red.cos_other_sum / max(red.cos_other_count, 1)),
            predicted=float(red.pred.mean()),
            predicted_rank1=float(red.pred1.mean()),
            actual=float(red.actual.mean()),
        ),
        "",
    )


# --------------------------------------------------------------------------- norm, W_K, k-norm


def norm_link(r: TraceReducer, dims: Sequence[int]) -> NormLink:
    """The attention norm at the sink: its divisor, and how constant and sparse it leaves the sink in the spike ``dims``.

    Example: the module docstring's, which computes every link from one pass.
    """
    spec, n, sink_pos = r.spec, r.n, r.sink
    other, n_other = _other(r)
    sq = r.n_sink**2
    share_sink = (sq[:, dims].sum(-1) / sq.sum(-1).clamp_min(1e-30)).mean()
    n90 = np.mean([cum_dims(row.numpy()) for row in sq])
    s2 = (r.unit_sum**2).sum(-1)  # [T]: ||sum of the samples' unit vectors||^2 per position
    pair_cos = (s2 - n) / (n * (n - 1)) if n > 1 else torch.full_like(s2, float("nan"))
    gain = r.gain.double()
    sc = r.scale
    return NormLink(
        kind=("RMSNorm" if spec.norm == "rms" else "LayerNorm") + (" (gain 1 + w)" if spec.gain_offset else ""),
        scale_sink=float(sc[:, sink_pos].mean()),
        scale_other=float(sc[:, other].mean()),
        scale_ratio=float(sc[:, sink_pos].mean() / sc[:, other].mean().clamp_min(1e-30)),
        cos_sink=float(pair_cos[sink_pos]),
        cos_other=float(pair_cos[other].mean()),
        share_sink=float(share_sink),
        share_other=float(r.share_other_sum[dims].sum() / n_other),
        n_dims_90=float(n90),
        normalized=[float(v) for v in r.n_sink[:, dims].mean(0)],
        gain=[float(gain[d]) for d in dims],
        gain_mean_abs=float(gain.abs().mean()),
        out=[float(v) for v in r.out_sink[:, dims].mean(0)],
    )


def wk_link(r: TraceReducer, dims: Sequence[int]) -> KeyLink:
    """``g ⊙ W_K``: the sink key split into each residual dim's share, and the spike ``dims``' share of keys and queries.

    Example: the module docstring's, which computes every link from one pass.
    """
    head, kv_head = r.head, r.g
    _, n_other = _other(r)
    share = r.k_share.mean(0).numpy()
    order = np.argsort(-share)[:5]
    qshare = (r.q_share_sum / max(r.q_count, 1)).numpy()
    qorder = np.argsort(-qshare)[:5]
    WK = r.w["W_K"][kv_head].double()
    vec = (r.n_sink[:, dims] * r.gain.double()[dims]) @ WK[dims]  # the spike dims' contribution to k_sink
    k = r.k_sink_pre
    spike_cos = ((vec * k).sum(-1) / (vec.norm(dim=-1) * k.norm(dim=-1)).clamp_min(1e-30)).mean()
    return KeyLink(
        head=head,
        kv_head=kv_head,
        input="g * n (attention norm output)" if r.spec.pre_norm else "residual (no norm before attention)",
        k_sink_norm=float(k.norm(dim=-1).mean()),
        k_other_norm=float(r.k_other_norm_sum / n_other),
        k_sink_cos=mean_pairwise_cos(k),
        share_spike_dims=float(r.k_share[:, dims].sum(-1).mean()),
        cos_spike_dims=float(spike_cos),
        share_bias=float(r.k_share_bias.mean()),
        top_dims=[int(d) for d in order],
        top_shares=[float(share[d]) for d in order],
        n_dims_90=cum_dims(share),
        q_share_spike_dims=float(qshare[dims].sum()),
        q_top_dims=[int(d) for d in qorder],
        q_top_shares=[float(qshare[d]) for d in qorder],
        q_n_dims_90=cum_dims(qshare),
        reconstruction_error=float(r.recon_err),
    )


def qk_norm_link(model: Any, r: TraceReducer) -> QKNormLink:
    """The key norm (QK-norm): the sink key's and the other keys' lengths before and after it.

    Only for layers with QK-norm (``describe_attention(model).layer(r.layer).qk_norm``).

    Example:
        >>> import torch
        >>> from sink_interp import load_model
        >>> from sink_interp.trace.reducers import collect_trace
        >>> from sink_interp.models import tiny_checkpoint
        >>> m = load_model(str(tiny_checkpoint("qwen3")), device="cpu")
        >>> r = collect_trace(m, torch.randint(4, 128, (4, 12)), layer=0, head=0, links={"qk_norm"})
        >>> qk_norm_link(m, r).kind
        'per-head'
    """
    n = r.n
    _, n_other = _other(r)
    q = r.qkn
    gw, _ = r.spec.norm_gain(model, r.layer, "attn.k_norm")
    gmean = float("nan") if gw is None else float(gw.abs().mean())
    sb, ob, sa, oa = q["sb"] / n, q["ob"] / n_other, q["sa"] / n, q["oa"] / n_other
    return QKNormLink(
        kind=str(r.la.qk_norm),
        kv_head=r.g,
        k_sink_norm_before=sb,
        k_other_norm_before=ob,
        k_sink_norm_after=sa,
        k_other_norm_after=oa,
        norm_ratio_before=sb / max(ob, 1e-30),
        norm_ratio_after=sa / max(oa, 1e-30),
        scale_sink=q["ss"] / n,
        scale_other=q["os"] / n_other,
        cos_before_after=q["cos"] / n,
        gain_mean_abs=gmean,
    )


# --------------------------------------------------------------------------- RoPE and the key manifold


def rope_link(r: TraceReducer, alpha: Sequence[float] | np.ndarray | None = None) -> RopeLink:
    """Queries against the sink key and the other keys, after and before RoPE, per head of ``r.layer``.

    ``alpha`` is the mean sink score per head of the layer, recorded as is (nan where not given).

    Example: the module docstring's, which computes every link from one pass.
    """
    n, H = r.n, r.H
    rr, c = r.rope, r.rope_counts
    cs, co = rr["cs"] / c["sink"], rr["co"] / max(c["other"], 1)
    qn, ksn, kon = rr["qn"] / c["sink"], rr["ksn"] / n, rr["kon"] / max(c["k_other"], 1)
    alpha = alpha if alpha is not None else np.full(H, np.nan)
    lst = lambda t: [float(v) for v in t]
    return RopeLink(
        head=r.head,
        positional=r.spec.positional,
        cos_sink=lst(cs),
        cos_other=lst(co),
        cos_sink_pre=lst(rr["cs_pre"] / c["sink"]),
        cos_other_pre=lst(rr["co_pre"] / max(c["other"], 1)),
        q_norm=lst(qn),
        k_sink_norm=lst(ksn),
        k_other_norm=lst(kon),
        dot_sink=lst(rr["ds"] / c["sink"]),
        dot_other=lst(rr["do"] / max(c["other"], 1)),
        angle_part=lst(qn * ksn * (cs - co)),
        norm_part=lst(qn * co * (ksn - kon)),
        alpha=[float(v) for v in alpha],
    )


def manifold_link(r: TraceReducer) -> tuple[ManifoldLink, dict[str, np.ndarray]]:
    """The sink keys' subspace against the other keys' (after RoPE), and the value drain, for KV head ``r.g``.

    Returns the link and the keys projected on the first two principal components of all
    keys (``{"sink": [n, 2], "other": [m, 2]}``, at most 4096 other keys), for the view.
    Needs at least :data:`MIN_PCA_SAMPLES` samples.

    Example: the module docstring's, which computes every link from one pass.
    """
    sink = r.sink
    _, T, d = r.keys.shape
    other = torch.ones(T, dtype=torch.bool)
    other[sink] = False

    def analyse(x: Tensor) -> tuple[Tensor, int, int, float, float, Tensor]:
        xs = x[:, sink]  # [n, d]
        xo = x[:, other].reshape(-1, d)
        sh = energy_shares(xs)
        basis = subspace(xo)
        ang = float(angle_to(xs.mean(0), basis))
        ang_s = float(angle_to(xs, basis).mean())
        return sh, dims_for(sh), basis.shape[1], ang, ang_s, xo

    sh, sd, od, ang, ang_s, ko = analyse(r.keys)
    ks = r.keys[:, sink]
    mean_s = ks.mean(0)
    spread = float((ks - mean_s).norm(dim=-1).mean() / mean_s.norm().clamp_min(1e-300))
    allk = torch.cat([ks, ko])
    mu = allk.mean(0)
    _, _, vh = torch.linalg.svd(allk - mu, full_matrices=False)
    pcs = vh[:2].T  # [d, 2]
    ps, po = (ks - mu) @ pcs, (ko - mu) @ pcs
    sep = float((ps[:, 0].mean() - po[:, 0].mean()) / po[:, 0].std().clamp_min(1e-300))
    mo = ko.mean(0)
    cos_mo = float(mean_s @ mo / (mean_s.norm() * mo.norm()).clamp_min(1e-300))
    _, vsd, vod, vang, _, _ = analyse(r.values)
    vn = r.values.norm(dim=-1)
    vnr = float(vn[:, sink].mean() / vn[:, other].mean().clamp_min(1e-300))
    link = ManifoldLink(
        kv_head=r.g,
        sink_pc_share=[float(v) for v in sh[:5]],
        sink_dim90=sd,
        other_dim90=od,
        angle=ang,
        angle_per_sample=ang_s,
        sink_spread=spread,
        cos_mean_other=cos_mo,
        separation=abs(sep),
        value_sink_dim90=vsd,
        value_other_dim90=vod,
        value_angle=vang,
        value_norm_ratio=vnr,
    )
    keep = min(len(po), 4096)
    return link, {"sink": ps.numpy(), "other": po[:keep].numpy()}
