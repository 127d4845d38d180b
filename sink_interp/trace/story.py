"""The trace in words: :func:`story_text` tells the chain link by link, :func:`explain_text` lists every number with its doc.

Example:
    >>> import torch
    >>> from sink_interp import tiny_model, trace_sink
    >>> rep = trace_sink(tiny_model(), torch.randint(4, 128, (4, 12)), progress=False)
    >>> story_text(rep).splitlines()[0].startswith("Traced head: layer")
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .report import TraceReport


def explain_text(rep: TraceReport) -> str:
    """Every number of every link of ``rep`` with its one-line doc, then the links not traced and why."""
    lines = []
    for r in rep.to_frame().itertuples():
        v = f"{r.value:.4g}" if isinstance(r.value, float) else str(r.value)
        lines.append(f"{r.link:>9}.{r.name:<22} {v:>12}   {r.doc}")
    for k, why in rep.skipped.items():
        lines.append(f"{k:>9}: not traced: {why}")
    return "\n".join(lines)


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def story_text(rep: TraceReport) -> str:
    """The chain of ``rep`` in words, from the spike to the sink key (one numbered paragraph per link)."""
    m = rep.massive
    mi = rep.model_info
    L = rep.links
    out: list[str] = []
    pos_word = "the first token" if rep.sink_pos == 0 else f"position {rep.sink_pos}"
    alpha = L["rope"].alpha[rep.head] if "rope" in L else None
    head_line = f"Traced head: layer {rep.layer}, head {rep.head} (KV head {rep.kv_head})"
    if alpha is not None and not math.isnan(alpha):
        head_line += f", mean alpha on {pos_word} = {alpha:.3f}"
    out.append(head_line + ".")
    out.append("")

    ml = m.is_massive()
    gm = m.global_max()
    if ml.any():
        layers = np.nonzero(ml)[0]
        coords = sorted({(int(p), int(d)) for p, d in m.layer_argmax[layers][:, 1:]})
        where = ", ".join(f"pos {p} dim {d}" for p, d in coords[:3])
        out.append(
            f"1. Spike. Massive activations (|x| > {m.abs_threshold:g} and >= {m.ratio_threshold:g}x the median) enter "
            f"{len(layers)} of {m.n_layers} blocks (layers {_ranges(layers)}), at {where}. The largest is {_fmt(gm['value'])} "
            f"entering block {gm['layer']} (pos {gm['pos']}, dim {gm['dim']}; {m.layer_ratio[gm['layer']]:,.0f}x the median |x| of {_fmt(float(m.layer_median[gm['layer']]))})."
        )
    else:
        out.append(
            f"1. Spike. No activation passes |x| > {m.abs_threshold:g} and >= {m.ratio_threshold:g}x the median; "
            f"the largest is {_fmt(gm['value'])} entering block {gm['layer']} (pos {gm['pos']}, dim {gm['dim']}, "
            f"{m.layer_ratio[gm['layer']]:,.0f}x the median)."
        )
    same = [
        l
        for l in range(m.n_layers)
        if not ml[l]
        and (int(m.layer_argmax[l, 1]), int(m.layer_argmax[l, 2])) == (gm["pos"], gm["dim"])
        and m.layer_max[l] > m.abs_threshold
    ]
    if same and ml.any():
        vals = m.layer_max[same]
        size = _fmt(float(vals.min())) if len(same) == 1 else f"{_fmt(float(vals.min()))}-{_fmt(float(vals.max()))}"
        out.append(
            f"   Below the thresholds, the same coordinate also peaks entering block{'s' if len(same) > 1 else ''} {_ranges(same)} "
            f"(|x| {size}, {'up to ' if len(same) > 1 else ''}{m.layer_ratio[same].max():,.0f} medians)."
        )
    if "spike" in L:
        s = L["spike"]
        dims = ", ".join(f"dim {d} = {_fmt(v)}" for d, v in list(zip(s.dims, s.values))[:3])
        out.append(
            f"   Entering block {rep.layer} at {pos_word}: {dims} (mean over samples; {_fmt(s.ratio)} medians"
            f"{'' if s.massive else ', not massive by the thresholds'}); the same dim elsewhere averages |x| = {_fmt(s.other_abs)}. "
            f"||h_sink|| is {_fmt(s.h_norm_ratio)}x the other tokens'{' (a residual peak)' if s.h_norm_ratio >= 2 else ''}."
        )
    if "writer" in L:
        w = L["writer"]
        comp = "MLP" if w.writer_component == "mlp" else "attention"
        out.append(
            f"2. Writer. The {comp} of block {w.writer_layer} writes {_fmt(w.writer_value)} of the {_fmt(w.spike)} at "
            f"(pos {w.pos}, dim {w.dim}) ({100 * w.writer_share:.1f}%); next is {w.runner_up} with {_fmt(w.runner_up_value)}, "
            f"the embedding gives {_fmt(w.embed)}."
        )
        if (w.local_pos, w.local_dim) != (w.pos, w.dim) or w.local_writer != f"{w.writer_layer}.{w.writer_component}":
            out.append(
                f"   The traced layer's spike (pos {w.local_pos}, dim {w.local_dim}) comes mostly from {w.local_writer} ({_fmt(w.local_value)})."
            )
    if "gated_mlp" in L:
        gml = L["gated_mlp"]
        lead = "one leading eigenvalue" if gml.eig_ratio >= 2 else "no single leading eigenvalue"
        n_eig = mi["d_model"]
        out.append(
            f"   Read as a quadratic form x^T S x on its input ({gml.act_fn}(z) ~ z), the MLP of block {gml.layer} has {lead}: "
            f"lambda_1 = {_fmt(gml.eigvals[0])} is {_fmt(gml.eig_ratio)}x |lambda_2| ({100 * gml.top_share:.0f}% of sum |lambda| over {n_eig} eigenvalues, "
            f"{100 * gml.top_energy_share:.0f}% of sum lambda^2). Its top eigenvector meets the MLP input at the spike token at |cos| = {gml.cos_sink:.2f} "
            f"(other tokens {gml.cos_other:.2f}); there x^T S x = {_fmt(gml.predicted)} and lambda_1 (u_1.x)^2 = {_fmt(gml.predicted_rank1)}, "
            f"against the actual write {_fmt(gml.actual)}."
        )
    elif "gated_mlp" in rep.skipped:
        out.append(f"   (Gated-MLP quadratic form not traced: {rep.skipped['gated_mlp']}.)")
    if "norm" in L:
        nl = L["norm"]
        d0 = L["spike"].dims[0] if "spike" in L else None
        dim_txt = f"dim {d0}" if d0 is not None else "the spike dims"
        const = "near-constant" if nl.cos_sink >= 0.9 else "not constant"
        sparse = "sparse" if nl.share_sink >= 0.5 else "not sparse"
        out.append(
            f"3. Norm. {nl.kind} divides the sink by {_fmt(nl.scale_sink)} against {_fmt(nl.scale_other)} for the other tokens "
            f"({_fmt(nl.scale_ratio)}x). The normalised sink input is {const} across samples (mean cos {nl.cos_sink:.3f}; "
            f"other positions {nl.cos_other:.3f}) and {sparse}: {dim_txt} holds {100 * nl.share_sink:.1f}% of its squared norm "
            f"(other tokens {100 * nl.share_other:.1f}%), normalised value {_fmt(nl.normalized[0])} "
            f"(sqrt(d_model) = {_fmt(math.sqrt(mi['d_model']))}). The gain there is g = {_fmt(nl.gain[0])} (mean |g| {_fmt(nl.gain_mean_abs)}), "
            f"so the norm output is {_fmt(nl.out[0])}."
        )
    if "wk" in L:
        k = L["wk"]
        sd = L["spike"].dims if "spike" in L else []
        spike_dims = (
            (f"dim {sd[0]}" if len(sd) == 1 else "the spike dims " + ", ".join(str(d) for d in sd)) if sd else "the spike dims"
        )
        tops = ", ".join(f"{d} ({100 * s:.0f}%)" for d, s in list(zip(k.top_dims, k.top_shares))[:4])
        qtops = ", ".join(f"{d} ({100 * s:.0f}%)" for d, s in list(zip(k.q_top_dims, k.q_top_shares))[:3])
        before = "before QK-norm and RoPE" if "qk_norm" in L else "before RoPE"
        through = "g * W_K" if k.input.startswith("g") else "W_K (on the raw residual: no norm precedes attention)"
        out.append(
            f"4. W_K. The sink key ({before}) has ||k|| = {_fmt(k.k_sink_norm)} (other keys {_fmt(k.k_other_norm)}) and is "
            f"{'near-constant' if k.k_sink_cos >= 0.9 else 'not constant'} "
            f"(cos {k.k_sink_cos:.3f} across samples). Through {through} {spike_dims} make{'s' if len(sd) == 1 else ''} {100 * k.share_spike_dims:.0f}% of it "
            f"(cos {k.cos_spike_dims:.2f} with the whole key); {k.n_dims_90} dims make 90%; top dims: {tops}. "
            f"Queries of head {rep.head}: {spike_dims} make{'s' if len(sd) == 1 else ''} {100 * k.q_share_spike_dims:.1f}% of them; top query dims: {qtops}."
        )
    if "qk_norm" in L:
        qn = L["qk_norm"]
        out.append(
            f"4b. QK-norm ({qn.kind}). The k-norm divides the sink key by {_fmt(qn.scale_sink)} against {_fmt(qn.scale_other)} for the "
            f"other keys: ||k_sink|| / ||k_j|| goes from {_fmt(qn.norm_ratio_before)} to {_fmt(qn.norm_ratio_after)}, so the sink key "
            f"{'keeps a size difference' if abs(math.log(max(qn.norm_ratio_after, 1e-30))) > 0.2 else 'can only stand out by direction'}; "
            f"the gain turns it by cos {qn.cos_before_after:.3f} (mean |gain| {_fmt(qn.gain_mean_abs)})."
        )
    if "rope" in L:
        ro = L["rope"]
        h = rep.head
        rot = "after RoPE" if ro.positional == "rope" else f"({ro.positional} positions: no rotation)"
        out.append(
            f"5. RoPE. Head {h}: cos(q_t, k_sink) = {ro.cos_sink[h]:.3f} against cos(q_t, k_j) = {ro.cos_other[h]:.3f} {rot} "
            f"(before rotation {ro.cos_sink_pre[h]:.3f} / {ro.cos_other_pre[h]:.3f}). The logit gap q.k_sink - q.k_j = "
            f"{_fmt(ro.dot_sink[h] - ro.dot_other[h])} splits into {_fmt(ro.angle_part[h])} from the angle and "
            f"{_fmt(ro.norm_part[h])} from the key norms (||q|| {_fmt(ro.q_norm[h])}, ||k_sink|| {_fmt(ro.k_sink_norm[h])}, ||k_j|| {_fmt(ro.k_other_norm[h])})."
        )
        hi = int(np.sum(np.asarray(ro.cos_sink) > np.asarray(ro.cos_other)))
        out.append(f"   In this layer {hi} of {len(ro.cos_sink)} heads have cos(q, k_sink) > cos(q, k_j).")
    if "manifold" in L:
        mf = L["manifold"]
        out.append(
            f"6. Manifold. The sink keys span {mf.sink_dim90} dim{'s' if mf.sink_dim90 != 1 else ''} (PC1 holds {100 * mf.sink_pc_share[0]:.1f}% "
            f"of their energy; spread {mf.sink_spread:.3f}) and lie {mf.angle:.0f} degrees from the {mf.other_dim90}-dim subspace of the "
            f"other keys (cos {mf.cos_mean_other:.2f} with their mean; {mf.separation:.1f} std apart along the keys' PC1). Values: ||v_sink|| / mean ||v|| = {mf.value_norm_ratio:.3f}"
            f"{' (a value drain)' if mf.value_norm_ratio <= 0.5 else ''}; the sink values span {mf.value_sink_dim90} dim{'s' if mf.value_sink_dim90 != 1 else ''}, {mf.value_angle:.0f} degrees "
            f"from the other values' {mf.value_other_dim90}-dim subspace."
        )
    tri = m.extreme_triple()
    if "sink" in tri:
        parts = [
            f"{role} pos {tri[role]['pos']} ({tri[role]['layers']}/{tri[role]['of']} layers)"
            for role in ("sink", "drain", "peak")
            if role in tri
        ]
        out.append("Extreme-token triple: " + ", ".join(parts) + (": the same token." if tri.get("coincide") else "."))
    vr = m.value_norm_ratio()
    out.append(
        f"value_norm_ratio (||v_0|| / mean ||v_>=1||) per layer: min {vr.min():.3f} at layer {int(vr.argmin())}, "
        f"median {np.median(vr):.3f}."
    )
    for k, why in rep.skipped.items():
        if k != "gated_mlp" and not (k == "qk_norm" and "has no QK-norm" in why):
            out.append(f"({k} not traced: {why})")
    return "\n".join(out)


def _ranges(xs: Sequence[int]) -> str:
    xs = sorted(int(x) for x in xs)
    parts, start, prev = [], None, None
    for x in xs:
        if start is None:
            start = prev = x
        elif x == prev + 1:
            prev = x
        else:
            parts.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = prev = x
    if start is not None:
        parts.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ", ".join(parts)
