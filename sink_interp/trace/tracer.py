""":func:`trace_sink`: check the arguments, pick the head, run the passes, and compute each link.

Example:
    >>> import torch
    >>> from sink_interp import tiny_model
    >>> rep = trace_sink(tiny_model(), torch.randint(4, 128, (4, 12)), links=["spike", "norm"], progress=False)
    >>> list(rep.links)
    ['spike', 'norm']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from .._internal.errors import check_positive_int
from .._internal.probe import ProbeSet, probe_of
from .._internal.provenance import Provenance, versions
from ..architecture import UnsupportedAttention, attention_atol, check_model_tokens, describe_attention
from ..massive import (
    DEFAULT_ABS_THRESHOLD,
    DEFAULT_RATIO_THRESHOLD,
    MassiveReport,
    massive_activations,
)
from ..models import model_info
from .links import (
    MIN_PCA_SAMPLES,
    gated_mlp_link,
    manifold_link,
    norm_link,
    qk_norm_link,
    rope_link,
    spike_dims,
    spike_link,
    wk_link,
    writer_link,
)
from .reducers import collect_trace
from .report import LINKS, Link, TraceReport


def _check_index(value: Any, name: str, upper: int, what: str, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(
            f"{name} must be a whole number (int) in 0..{upper - 1}, got {value!r} ({type(value).__name__}); fix: {fix}"
        )
    if not 0 <= int(value) < upper:
        raise ValueError(f"{name}={value!r} is out of range: {what} 0..{upper - 1}; fix: {fix}")
    return int(value)


#: links that read the traced layer's q and k hooks (the rest read the residual stream, the norm and the MLPs)
QK_LINKS = ("wk", "qk_norm", "rope", "manifold")


def _check_qk_readable(model: Any, layer: int, links: set[str]) -> None:
    """Refuse, in one line, links that read q and k where the layer's hooks do not carry what its attention uses."""
    spec = describe_attention(model)
    la = spec.layer(layer)
    why = []
    if la.position.startswith("rope inside"):
        why.append("MLA's internal RoPE" if la.position == "rope inside MLA" else f"RoPE applied {la.position[5:]}")
    if la.kind == "unknown":
        why.extend(u for u in la.unsupported if u.startswith("attention bridge"))
    needed = [la.q_hook, la.k_hook, la.q_pre_rotary_hook, la.k_pre_rotary_hook]
    from .._internal import hooknames

    needed += [hooknames.q(layer), hooknames.k(layer), hooknames.v(layer)]
    missing = [nm for nm in dict.fromkeys(needed) if nm not in model.hook_dict]
    if missing:
        why.append("no hook " + ", ".join(missing))
    asked = [k for k in QK_LINKS if k in links]
    if why and asked:
        rest = [k for k in LINKS if k not in QK_LINKS and k in links] or [k for k in LINKS if k not in QK_LINKS]
        raise UnsupportedAttention(
            f"trace_sink: layer {layer} of this {spec.family} model uses {'; '.join(why)}, so its hooks do not carry the q and k "
            f"its attention uses and the {', '.join(asked)} link(s) cannot be traced; fix: links={rest}"
        )


def _check_key_rebuilt(model: Any, layer: int, err: float, links: set[str]) -> None:
    """Refuse the W_K link where its key, rebuilt from the norm's output and W_K, is not the model's own ``hook_k``."""
    tol = attention_atol(model)
    if err <= tol:
        return
    spec = describe_attention(model)
    la = spec.layer(layer)
    feats = list(la.multipliers)
    if la.clip_qkv is not None:
        feats.append(f"clip_qkv {la.clip_qkv:g}")
    what = (
        f" ({', '.join(feats)})" if feats else " (a step between the attention norm and W_K that the description does not know)"
    )
    rest = [k for k in LINKS if k != "wk" and k in links] or [k for k in LINKS if k != "wk"]
    raise UnsupportedAttention(
        f"trace_sink's wk link: the sink key rebuilt from the attention norm's output and W_K differs from this {spec.family} "
        f"model's own hook_k by {err:.2e} (relative; tolerance {tol:g}){what}; fix: links={rest}"
    )


def _not_applicable(model: Any, layer: int, links: set[str]) -> dict[str, str]:
    """Links the traced layer does not have, with the reason (they go to ``TraceReport.skipped``)."""
    spec = describe_attention(model)
    la = spec.layer(layer)
    out = {}
    if "norm" in links and not spec.pre_norm:
        out["norm"] = (
            f"not applicable: {spec.family} applies no norm before attention (its norms follow attention and the MLP), "
            "so W_K reads the raw residual; see the wk link" + (" and the qk_norm link" if la.qk_norm else "")
        )
    if "qk_norm" in links and la.qk_norm is None:
        out["qk_norm"] = f"not applicable: layer {layer} has no QK-norm"
    return out


def _choose_head(
    massive: MassiveReport, sink_pos: int, layer: int | None, head: int | None
) -> tuple[int, int, np.ndarray | None]:
    """``(layer, head)`` to trace (the given ones, or the strongest sink head), and the mean ``alpha`` per layer and head."""
    alpha_lh = None
    if massive.sink_report is not None:
        alpha_lh = massive.sink_report.alpha[..., sink_pos].mean(axis=0)  # [L, H]
    if layer is None or head is None:
        if alpha_lh is None:
            raise ValueError(
                "massive has no sink scores to choose the head from; fix: pass layer and head, or massive_activations(..., measure_sinks=True)"
            )
        a = alpha_lh.copy()
        if layer is not None:
            mask = np.full_like(a, -np.inf)
            mask[layer] = 0
            a = a + mask
        if head is not None:
            mask = np.full_like(a, -np.inf)
            mask[:, head] = 0
            a = a + mask
        layer, head = (int(i) for i in np.unravel_index(int(np.argmax(a)), a.shape))
    return layer, head, alpha_lh


def trace_sink(
    model: Any,
    tokens: Tensor | ProbeSet,
    layer: int | None = None,
    head: int | None = None,
    *,
    sink_pos: int = 0,
    links: Sequence[str] | None = None,
    massive: MassiveReport | None = None,
    abs_threshold: float = DEFAULT_ABS_THRESHOLD,
    ratio_threshold: float = DEFAULT_RATIO_THRESHOLD,
    n_dims: int = 1,
    batch_size: int | None = None,
    progress: bool = True,
) -> TraceReport:
    """Trace the sink at ``(layer, head)`` from the residual spike to the sink key.

    Args:
        model: a TransformerBridge (RMSNorm or LayerNorm; RoPE, learned or no positions; MHA/MQA/GQA).
        tokens: ``[n, length]`` token ids (a tensor or a :class:`~sink_interp.ProbeSet`, whose facts the report records);
            ``n >= 3`` for the manifold link's PCA.
        layer: the layer to trace. Default: the layer of the head with the largest mean
            sink score ``alpha`` at ``sink_pos`` (over all layers, or over the layers where
            ``head`` is that head when only the head is given).
        head: the head to trace. Default: the head with the largest mean ``alpha`` at
            ``sink_pos`` (within ``layer`` when the layer is given).
        sink_pos: the sink position (0 = first token).
        links: which links to trace (default all of :data:`LINKS`).
        massive: a :class:`MassiveReport` of the same tokens to reuse (else computed, with sink scores).
        abs_threshold: Sun et al.'s absolute threshold on ``|x|`` (default 100; that of
            ``massive`` when it is given).
        ratio_threshold: Sun et al.'s ratio to the hidden state's median ``|x|`` (default 1000;
            that of ``massive`` when it is given).
        n_dims: how many dims make the spike when no dim passes the thresholds at the sink.
        batch_size: samples per forward pass (default: chosen from the length).
        progress: show progress bars.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> rep = trace_sink(tiny_model(), torch.randint(4, 128, (4, 12)), progress=False)
        >>> 0 <= rep.links["norm"].share_sink <= 1
        True
    """
    spec = describe_attention(model)
    L, H = spec.n_layers, spec.n_heads
    tokens_c = check_model_tokens(model, tokens, min_length=2)
    n, T = tokens_c.shape
    links_set = set(LINKS if links is None else links)
    unknown = links_set - set(LINKS)
    if unknown:
        raise ValueError(f"links {sorted(unknown)} are unknown; choose from {list(LINKS)}")
    if not links_set:
        raise ValueError(f"links is empty; choose from {list(LINKS)}")
    if layer is not None:
        layer = _check_index(
            layer, "layer", L, "the model has layers", f"pass layer in 0..{L - 1}, or layer=None for the strongest sink head"
        )
    if head is not None:
        head = _check_index(
            head, "head", H, "the model has heads", f"pass head in 0..{H - 1}, or head=None for the strongest sink head"
        )
    sink_pos = _check_index(
        sink_pos,
        "sink_pos",
        T - 1,
        f"with length {T} the sink can sit at",
        "pick a position that at least one later query can see",
    )
    n_dims = check_positive_int(n_dims, "n_dims")
    if "manifold" in links_set and n < MIN_PCA_SAMPLES:
        raise ValueError(
            f"the manifold link runs a PCA over the sink keys of the samples and needs at least {MIN_PCA_SAMPLES} samples, got n={n}; "
            "fix: pass more samples (20 or more is better), or links without 'manifold'"
        )
    probe = probe_of(tokens)
    info = probe.info if probe is not None else None
    if massive is None:
        massive = massive_activations(
            model,
            tokens,
            abs_threshold=abs_threshold,
            ratio_threshold=ratio_threshold,
            measure_sinks=True,
            batch_size=batch_size,
            progress=progress,
        )
    elif massive.n != n or massive.length != T:
        raise ValueError(
            f"massive was computed on {massive.n} x {massive.length} tokens but tokens are {n} x {T}; fix: pass the same tokens"
        )

    layer, head, alpha_lh = _choose_head(massive, sink_pos, layer, head)
    _check_qk_readable(model, layer, links_set)
    kv_head = spec.layer(layer).kv_head(head)
    skipped: dict[str, str] = _not_applicable(model, layer, links_set)
    links_set -= set(skipped)

    gm = massive.global_max()
    r = collect_trace(
        model,
        tokens_c,
        layer,
        head,
        sink_pos=sink_pos,
        coord_pos=gm["pos"],
        links=links_set,
        batch_size=batch_size,
        progress=progress,
    )
    dims, is_massive = spike_dims(r, massive, n_dims)

    out_links: dict[str, Link] = {}
    if "spike" in links_set:
        out_links["spike"] = spike_link(r, massive, dims, is_massive)
    w_link = None
    if r.want_writer:
        w_link = writer_link(r, massive, dims[0])
        if "writer" in links_set:
            out_links["writer"] = w_link
    if "gated_mlp" in links_set:
        gl, why = gated_mlp_link(model, tokens_c, w_link, batch_size, progress)
        if gl is not None:
            out_links["gated_mlp"] = gl
        else:
            skipped["gated_mlp"] = why
    if "norm" in links_set:
        out_links["norm"] = norm_link(r, dims)
    if "wk" in links_set:
        out_links["wk"] = wk_link(r, dims)
        _check_key_rebuilt(model, layer, float(r.recon_err), links_set)
    if "qk_norm" in links_set:
        out_links["qk_norm"] = qk_norm_link(model, r)
    if "rope" in links_set:
        out_links["rope"] = rope_link(r, alpha_lh[layer] if alpha_lh is not None else None)
    key_pca: dict[str, np.ndarray] = {}
    if "manifold" in links_set:
        out_links["manifold"], key_pca = manifold_link(r)

    order = [k for k in LINKS if k in out_links]
    mi = model_info(model)
    return TraceReport(
        layer=layer,
        head=head,
        kv_head=kv_head,
        sink_pos=sink_pos,
        links={k: out_links[k] for k in order},
        skipped=skipped,
        massive=massive,
        provenance=Provenance(
            model=mi.name,
            model_info=mi.to_dict(),
            data=massive.data,
            bos=massive.bos,
            probe=info,
            versions=versions(),
            distributed=massive.distributed,  # the run its massive activations were part of
        ),
        key_pca=key_pca,
    )
