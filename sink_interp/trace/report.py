"""The trace's results: one record per link (numbers with a one-line doc each) and :class:`TraceReport`.

Example:
    >>> from sink_interp.trace.report import SpikeLink
    >>> SpikeLink.docs()["ratio"]
    '|top_value| / median: how many medians the spike is'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd

from .._internal.provenance import Provenance
from .._internal.report import (
    ModelRun,
    Provenanced,
    Report,
    delegated,
    register_record,
    summary_head,
    summary_tail,
)
from ..massive import MassiveReport
from .story import explain_text, story_text

LINKS = ("spike", "writer", "gated_mlp", "norm", "wk", "qk_norm", "rope", "manifold")


def _doc(text: str) -> Any:
    return field(metadata={"doc": text})


@register_record
@dataclass(frozen=True)
class Link:
    """Base of the link records: numbers with a one-line doc each (``fields(...).metadata['doc']``)."""

    @classmethod
    def docs(cls) -> dict[str, str]:
        """Field name -> one-line doc saying how to read the number."""
        return {f.name: f.metadata.get("doc", "") for f in fields(cls)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def numbers(self) -> dict[str, Any]:
        """The scalar numbers (lists and arrays left out)."""
        return {
            k: v
            for k, v in self.to_dict().items()
            if isinstance(v, (int, float, bool, str, np.integer, np.floating)) or v is None
        }


@register_record
@dataclass(frozen=True)
class SpikeLink(Link):
    layer: int = _doc("block whose attention norm the spike enters (the traced layer)")
    pos: int = _doc("sink position (0 = first token)")
    dims: list = _doc("spike dims at the sink: flagged massive in >= half the samples, else the largest mean |x|")
    massive: bool = _doc("True when the spike dims pass the Sun et al. thresholds (|x| > abs and >= ratio x median)")
    values: list = _doc("mean x[sink, dim] over samples for each spike dim, before the norm")
    top_value: float = _doc("values[0]: the spike's mean size in its main dim")
    median: float = _doc("mean over samples of the median |x| of this layer's hidden state")
    ratio: float = _doc("|top_value| / median: how many medians the spike is")
    other_abs: float = _doc("mean |x| in the main spike dim at the other positions (small: the spike is at the sink only)")
    h_norm_ratio: float = _doc("||h_sink|| / mean ||h|| at the other positions (residual peak: >> 1)")


@register_record
@dataclass(frozen=True)
class WriterLink(Link):
    layer: int = _doc("block where the largest massive activation over all layers is read (hook_resid_pre)")
    pos: int = _doc("its position")
    dim: int = _doc("its residual dim")
    spike: float = _doc("mean over samples of x[pos, dim] entering that block")
    writer_layer: int = _doc("block whose attention or MLP output adds most to (pos, dim), in the spike's direction")
    writer_component: str = _doc("'attn' or 'mlp'")
    writer_value: float = _doc("mean over samples of that component's output at (pos, dim)")
    writer_share: float = _doc("writer_value / spike: the part of the spike that one component writes")
    runner_up: str = _doc("the second-largest writer, as 'layer.component'")
    runner_up_value: float = _doc("its mean output at (pos, dim)")
    embed: float = _doc("mean embedding (hook_resid_pre of block 0) at (pos, dim)")
    attn: list = _doc("per block: mean attention output at (pos, dim)")
    mlp: list = _doc("per block: mean MLP output at (pos, dim)")
    local_pos: int = _doc("the traced layer's spike coordinate: position")
    local_dim: int = _doc("the traced layer's spike coordinate: dim")
    local_writer: str = _doc(
        "largest writer of the traced layer's spike among earlier blocks ('embed' if none), as 'layer.component'"
    )
    local_value: float = _doc("its mean output at the traced layer's spike coordinate")


@register_record
@dataclass(frozen=True)
class GatedMLPLink(Link):
    layer: int = _doc("block whose MLP writes most of the spike (largest contribution among MLPs)")
    pos: int = _doc("the spike's position")
    dim: int = _doc("the spike dim, whose output row defines the quadratic form")
    act_fn: str = _doc("the MLP's activation, taken as act(z) ~ z for large inputs")
    eigvals: list = _doc("largest eigenvalues (by |lambda|) of S = sym(W_gate diag(W_out[:, dim]) W_in^T)")
    top_share: float = _doc("|lambda_1| / sum |lambda|: near 1 = the spectrum is dominated by one eigenvalue")
    top_energy_share: float = _doc("lambda_1^2 / sum lambda^2: the top eigenvalue's share of the matrix's squared Frobenius norm")
    eig_ratio: float = _doc("|lambda_1| / |lambda_2|")
    cos_sink: float = _doc("mean |cos(u_1, x_sink)|: top eigenvector vs the MLP input (norm output) at the spike position")
    cos_other: float = _doc("mean |cos(u_1, x_t)| at the other positions (baseline)")
    predicted: float = _doc("mean x^T S x at the spike position: the quadratic form's estimate of the write")
    predicted_rank1: float = _doc("mean lambda_1 (u_1 . x)^2: the top eigenvalue's estimate alone")
    actual: float = _doc("mean actual MLP output at (pos, dim)")


@register_record
@dataclass(frozen=True)
class NormLink(Link):
    kind: str = _doc("the norm: RMSNorm or LayerNorm")
    scale_sink: float = _doc("mean hook_scale (the norm's divisor: RMS or std) at the sink")
    scale_other: float = _doc("mean hook_scale at the other positions")
    scale_ratio: float = _doc("scale_sink / scale_other: how much harder the norm shrinks the sink")
    cos_sink: float = _doc("mean pairwise cosine across samples of the sink's normalised input: ~1 = near-constant")
    cos_other: float = _doc("the same at the other positions (baseline)")
    share_sink: float = _doc("share of the sink's squared normalised input in the spike dims: ~1 = sparse")
    share_other: float = _doc("the same share at the other positions (baseline)")
    n_dims_90: float = _doc("dims needed to hold 90% of the sink's squared normalised input (mean over samples)")
    normalized: list = _doc("mean normalised sink input in each spike dim (one dominant dim under RMSNorm: ~ +-sqrt(d_model))")
    gain: list = _doc("norm gain g in each spike dim")
    gain_mean_abs: float = _doc("mean |g| over all dims (compare with gain)")
    out: list = _doc("mean norm output g*n (+ bias) at the sink in each spike dim: what W_Q/W_K/W_V see")


@register_record
@dataclass(frozen=True)
class KeyLink(Link):
    head: int = _doc("traced query head")
    kv_head: int = _doc("its KV head (GQA: head // (n_heads // n_kv_heads))")
    k_sink_norm: float = _doc("mean ||k_sink|| as W_K projects it (before QK-norm and RoPE)")
    k_other_norm: float = _doc("mean ||k_j|| as W_K projects it, at the other positions")
    k_sink_cos: float = _doc("mean pairwise cosine of k_sink across samples: ~1 = the sink key is near-constant")
    input: str = _doc("what W_K reads: the attention norm's output g*n, or the raw residual where no norm precedes attention")
    share_spike_dims: float = _doc("share of the sink key made by the spike dims: sum_d <n_d g_d W_K[d], k> / ||k||^2")
    cos_spike_dims: float = _doc("cosine between the spike dims' contribution and the whole sink key")
    share_bias: float = _doc("share of the sink key made by biases (norm bias through W_K, plus b_K)")
    top_dims: list = _doc("residual dims with the largest share of the sink key")
    top_shares: list = _doc("their shares (all dims' shares plus share_bias add up to 1)")
    n_dims_90: int = _doc("dims, largest share first, that make 90% of the dims' total share of the sink key")
    q_share_spike_dims: float = _doc(
        "share of the queries (t > sink) made by the spike dims: small = queries come from other dims"
    )
    q_top_dims: list = _doc("residual dims with the largest share of the queries")
    q_top_shares: list = _doc("their shares")
    q_n_dims_90: int = _doc("dims that make 90% of the dims' total share of the queries")
    reconstruction_error: float = _doc(
        "self-check: max |sum of contributions + bias - hook_k| / max |k|; trace_sink refuses the link above the "
        "tolerance of the weights' dtype (1e-4 in float32), so a report holds at most that"
    )


@register_record
@dataclass(frozen=True)
class QKNormLink(Link):
    kind: str = _doc("per-head (Qwen3, Gemma-3: each head's key normalised alone) or all-heads (OLMo-2: over all heads at once)")
    kv_head: int = _doc("KV head analysed")
    k_sink_norm_before: float = _doc("mean ||k_sink|| of the key projection, before the k-norm")
    k_other_norm_before: float = _doc("mean ||k_j|| before the k-norm at the other positions")
    k_sink_norm_after: float = _doc("mean ||k_sink|| after the k-norm (before RoPE)")
    k_other_norm_after: float = _doc("mean ||k_j|| after the k-norm")
    norm_ratio_before: float = _doc("k_sink_norm_before / k_other_norm_before")
    norm_ratio_after: float = _doc("k_sink_norm_after / k_other_norm_after: ~1 = the norm erased the size difference")
    scale_sink: float = _doc("the k-norm's divisor (RMS) at the sink")
    scale_other: float = _doc("the k-norm's divisor at the other positions")
    cos_before_after: float = _doc("mean cos(k_sink before, k_sink after the k-norm): < 1 where the gain turns the key")
    gain_mean_abs: float = _doc("mean |gain| of the k-norm (the effective gain, 1 + w for Gemma-3)")


@register_record
@dataclass(frozen=True)
class RopeLink(Link):
    head: int = _doc("traced head; the lists below have one entry per head of the layer")
    positional: str = _doc("positional scheme: rope (keys and queries rotated), learned, alibi or nope (no rotation)")
    cos_sink: list = _doc("mean cos(q_t, k_sink) after RoPE over samples and queries t > sink")
    cos_other: list = _doc("mean cos(q_t, k_j) after RoPE over causal pairs j <= t, j != sink")
    cos_sink_pre: list = _doc("mean cos(q_t, k_sink) before RoPE (after QK-norm where the model has it)")
    cos_other_pre: list = _doc("mean cos(q_t, k_j) before RoPE")
    q_norm: list = _doc("mean ||q_t|| after RoPE (t > sink)")
    k_sink_norm: list = _doc("mean ||k_sink|| after RoPE")
    k_other_norm: list = _doc("mean ||k_j|| after RoPE, j != sink")
    dot_sink: list = _doc("mean q_t . k_sink (unscaled logit)")
    dot_other: list = _doc("mean q_t . k_j")
    angle_part: list = _doc("q_norm * k_sink_norm * (cos_sink - cos_other): the logit gap the angle explains")
    norm_part: list = _doc("q_norm * cos_other * (k_sink_norm - k_other_norm): the logit gap the key norms explain")
    alpha: list = _doc("mean sink score alpha at the sink position per head (Gu et al.)")


@register_record
@dataclass(frozen=True)
class ManifoldLink(Link):
    kv_head: int = _doc("KV head whose keys and values are analysed (after RoPE)")
    sink_pc_share: list = _doc("energy share of each principal component of the sink keys (uncentred PCA over samples)")
    sink_dim90: int = _doc("components the sink keys need for 90% of their energy: their subspace's dimension")
    other_dim90: int = _doc("components the other keys need for 90% of their energy")
    angle: float = _doc("degrees between the mean sink key and the other keys' 90% subspace (90 = orthogonal)")
    angle_per_sample: float = _doc("mean over samples of the angle between each sink key and that subspace")
    sink_spread: float = _doc("mean ||k_sink - mean k_sink|| / ||mean k_sink||: ~0 = the sink keys are one point")
    cos_mean_other: float = _doc("cosine between the mean sink key and the mean of the other keys")
    separation: float = _doc("mean sink key minus mean other key along the PC1 of all keys, in the others' std")
    value_sink_dim90: int = _doc("components the sink values need for 90% of their energy")
    value_other_dim90: int = _doc("components the other values need for 90% of their energy")
    value_angle: float = _doc("degrees between the mean sink value and the other values' 90% subspace")
    value_norm_ratio: float = _doc("||v_sink|| / mean ||v_j|| (j != sink) for this KV head: << 1 = value drain")


@dataclass(frozen=True, eq=False, repr=False)
class TraceReport(Provenanced, ModelRun, Report):
    """Every link of the sink mechanism at one (layer, head), with the massive-activation report it builds on.

    ``links`` maps link names (``spike, writer, gated_mlp, norm, wk, rope, manifold``)
    to records whose fields are documented numbers (``report.explain()``);
    ``skipped`` maps links that could not be traced to the reason.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, trace_sink
        >>> rep = trace_sink(tiny_model(), torch.randint(4, 128, (4, 12)), layer=1, head=0, progress=False)
        >>> rep.layer, rep.head, rep.links["spike"].pos
        (1, 0, 0)
    """

    layer: int
    head: int
    kv_head: int
    sink_pos: int
    links: dict[str, Link]
    skipped: dict[str, str]
    massive: MassiveReport
    provenance: Provenance
    key_pca: dict[str, np.ndarray] = field(default_factory=dict)

    n = delegated("massive", "n")
    length = delegated("massive", "length")

    def __getattr__(self, name: str) -> Any:
        links = self.__dict__.get("links", {})
        if name in links:
            return links[name]
        raise AttributeError(name)

    def writer(self) -> dict[str, Any] | None:
        """``{layer, component, value}`` of the block output writing most of the largest massive activation."""
        w = self.links.get("writer")
        if w is None:
            return None
        return {"layer": w.writer_layer, "component": w.writer_component, "value": w.writer_value}

    def to_frame(self) -> pd.DataFrame:
        """One row per scalar number: link, name, value, and the doc saying how to read it.

        Per-head lists of the rope link are given for the traced head.
        """
        rows = []
        for lname, link in self.links.items():
            docs = link.docs()
            for key, value in link.to_dict().items():
                if lname == "rope" and isinstance(value, list) and len(value) == self.model_info.get("n_heads"):
                    value = value[self.head]
                elif isinstance(value, list):
                    continue
                rows.append({"link": lname, "name": key, "value": value, "doc": docs[key]})
        return pd.DataFrame(rows, columns=["link", "name", "value", "doc"])

    def explain(self) -> str:
        """Every number of every link with its one-line doc."""
        return explain_text(self)

    def story(self) -> str:
        """The chain in words, from the spike to the sink key."""
        return story_text(self)

    def summary(self) -> dict[str, Any]:
        """Provenance, the issue's JSON keys (``massive``, ``value_norm_ratio``, ``writer``) and every link."""
        return {
            **summary_head(self, "n", "length", "dtype", "device", "layer", "head", "kv_head", "sink_pos"),
            "abs_threshold": self.massive.abs_threshold,
            "ratio_threshold": self.massive.ratio_threshold,
            "massive": self.massive.massive_list(),
            "value_norm_ratio": [float(x) for x in self.massive.value_norm_ratio()],
            "writer": self.writer(),
            "links": {k: v.to_dict() for k, v in self.links.items()},
            "docs": {k: v.docs() for k, v in self.links.items()},
            "skipped": self.skipped,
            "massive_report": self.massive.summary(),
            **summary_tail(self),
        }

    def __repr__(self) -> str:
        w = self.writer()
        ws = f", writer={w['layer']}.{w['component']}" if w else ""
        return (
            f"TraceReport(model={self.model!r}, layer={self.layer}, head={self.head}, sink_pos={self.sink_pos}, n={self.n}{ws})"
        )
