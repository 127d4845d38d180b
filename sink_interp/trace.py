"""Trace the sink mechanism, link by link, as numbers.

The chain (Sun et al. 2024; Gu et al. 2025; Guo et al. 2024; the notes seed):

1. **spike** — a few residual dims at the sink token hold massive values;
2. **writer** — one block's MLP (or attention) writes them;
   **gated_mlp** — for a gated MLP with ``SiLU(z) ~ z``, the write is a
   quadratic form ``x^T S x`` whose spectrum is dominated by one eigenvalue;
3. **norm** — the attention norm divides the sink by a huge scale, turning it
   into a near-constant, sparse vector; the gain ``g`` weighs the spike dims;
4. **wk** — ``g ⊙ W_K`` maps those few dims into the sink key;
5. **qk_norm** — in models with QK-norm (Qwen3, Gemma-3, OLMo-2) the key
   norm rescales every key to about the same length, so the sink key must
   stand out by direction, not by size;
6. **rope** — after rotation, queries point at the sink key: a large
   ``cos(q_t, k_sink)`` against a small ``cos(q_t, k_j)``;
7. **manifold** — sink keys sit in a low-dimensional subspace at a large
   angle from the other keys; sink values are small (value drain).

Which hooks carry q and k, where the rotation happens, the norm's gain
convention (Gemma's ``1 + w``) and whether the block has a norm before
attention at all come from :func:`sink_interp.describe_attention`. Links a
model does not have are listed in ``TraceReport.skipped`` with the reason
(``norm`` in OLMo-2, which normalises after attention; ``qk_norm`` without
QK-norm; ``gated_mlp`` for non-gated or mixture-of-experts MLPs).

:func:`trace_sink` measures each link on a probe set and returns a
:class:`TraceReport`; every number of every link has a one-line doc
(``TraceReport.explain()``, ``TraceReport.to_frame()``), and
``TraceReport.story()`` tells the chain in words.

Example:
    >>> import torch
    >>> from sink_interp import tiny_model, trace_sink
    >>> rep = trace_sink(tiny_model(), torch.randint(4, 128, (4, 12)), progress=False)
    >>> sorted(rep.links), sorted(rep.skipped)
    (['gated_mlp', 'manifold', 'norm', 'rope', 'spike', 'wk', 'writer'], ['qk_norm'])
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ._internal import hooknames
from ._internal.errors import check_positive_int
from ._internal.provenance import dumps, versions, write_atomic
from ._internal.weights import attn_weights, mlp_weights
from .architecture import check_model_tokens, describe_attention
from .capture import Reducer, run_reducers
from .massive import (
    DEFAULT_ABS_THRESHOLD,
    DEFAULT_RATIO_THRESHOLD,
    MassiveReport,
    massive_activations,
)
from .models import model_info

LINKS = ("spike", "writer", "gated_mlp", "norm", "wk", "qk_norm", "rope", "manifold")
MIN_PCA_SAMPLES = 3


def _doc(text: str) -> Any:
    return field(metadata={"doc": text})


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
    reconstruction_error: float = _doc("self-check: max |sum of contributions + bias - hook_k| / max |k| (~1e-6)")


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


# --------------------------------------------------------------------------- small maths


def mean_pairwise_cos(x: Tensor) -> float:
    """Mean cosine over the n(n-1) ordered pairs of rows of ``x`` [n, d] (nan for n < 2)."""
    n = x.shape[0]
    if n < 2:
        return float("nan")
    u = x.double() / x.double().norm(dim=-1, keepdim=True).clamp_min(1e-30)
    s = u.sum(0)
    return float(((s @ s) - (u * u).sum()) / (n * (n - 1)))


def energy_shares(x: Tensor) -> Tensor:
    """Uncentred PCA: squared singular values of ``x`` [m, d] over their sum (descending)."""
    s = torch.linalg.svdvals(x.double())
    e = s**2
    return e / e.sum().clamp_min(1e-300)


def dims_for(share: Tensor, level: float = 0.9) -> int:
    """How many leading components (descending shares) reach ``level`` of the total."""
    c = torch.cumsum(share, 0) / share.sum().clamp_min(1e-300)
    return int((c < level - 1e-12).sum().item()) + 1


def subspace(x: Tensor, level: float = 0.9) -> Tensor:
    """Orthonormal basis [d, r] of the uncentred principal subspace holding ``level`` of the energy of ``x`` [m, d]."""
    _, s, vh = torch.linalg.svd(x.double(), full_matrices=False)
    e = s**2
    r = dims_for(e / e.sum().clamp_min(1e-300), level)
    return vh[:r].T


def angle_to(v: Tensor, basis: Tensor) -> Tensor:
    """Degrees between vectors ``v`` [..., d] and the span of ``basis`` [d, r]."""
    v = v.double()
    proj = (v @ basis).norm(dim=-1)
    c = (proj / v.norm(dim=-1).clamp_min(1e-300)).clamp(0, 1)
    return torch.rad2deg(torch.arccos(c))


def _cum_dims(share: np.ndarray, level: float = 0.9) -> int:
    """How many entries, largest first, add up to ``level`` of ``share.sum()`` (entries may be negative)."""
    s = np.sort(np.asarray(share, dtype=np.float64))[::-1]
    total = s.sum()
    if total <= 0:
        return len(s)
    hit = np.nonzero(np.cumsum(s) >= level * total - 1e-12)[0]
    return int(hit[0] + 1) if len(hit) else len(s)


# --------------------------------------------------------------------------- reducers


class TraceReducer(Reducer):
    """Pass 2: the traced layer's tensors, and every block's outputs at the spike positions.

    Everything that depends on the spike dims is kept per dim (sums over samples and
    positions), so the dims can be chosen after the pass.
    """

    def __init__(self, model: Any, layer: int, head: int, sink: int, coord_pos: int, links: set[str]):
        self.layer, self.head, self.sink, self.coord_pos, self.links = layer, head, sink, coord_pos, links
        cfg = model.cfg
        spec = describe_attention(model)
        la = self.la = spec.layer(layer)
        self.L, self.H, self.G, self.D = spec.n_layers, spec.n_heads, spec.n_kv_heads, int(cfg.d_model)
        self.d_head = spec.d_head
        self.group = la.group
        self.g = la.kv_head(head)
        # q and k as they meet (rotated here where the bridge fires no rotated hook), before RoPE, and as projected
        self.q_name, self.k_name = la.q_hook, la.k_hook
        self.q_pre_name, self.k_pre_name = la.q_pre_rotary_hook, la.k_pre_rotary_hook
        self.want_writer = bool(links & {"writer", "gated_mlp"})
        self.want_layer = bool(links & {"spike", "norm", "wk", "qk_norm", "rope", "manifold"})
        # the input W_K reads: the attention norm's output, or the raw residual where no norm precedes attention
        self.pre_norm = spec.pre_norm
        self.want_norm = bool(links & {"norm", "wk"}) and self.pre_norm
        self.gain, self.beta = spec.norm_gain(model, layer, "ln1") if self.want_norm else (None, None)
        if self.want_norm and self.gain is None:
            self.gain = torch.ones(self.D)
        if not self.pre_norm:
            self.gain, self.beta = torch.ones(self.D), None
        self.w = attn_weights(model, layer) if "wk" in links else None
        self.want_qk_norm = "qk_norm" in links and la.qk_norm is not None
        self.k_scale_name = hooknames.block(layer, "attn.k_norm.hook_scale")
        l = layer
        names: list[str] = []
        if self.want_writer:
            for i in range(self.L):
                names += [hooknames.resid_pre(i), hooknames.attn_out(i), hooknames.mlp_out(i)]
        layer_names: list[str] = []
        if self.want_layer:
            layer_names += [
                hooknames.resid_pre(l),
                hooknames.q(l),
                hooknames.k(l),
                hooknames.v(l),
                self.q_name,
                self.k_name,
                self.q_pre_name,
                self.k_pre_name,
            ]
        if self.want_norm:
            layer_names += [hooknames.ln1_scale(l), hooknames.ln1_normalized(l)]
        if self.want_qk_norm and self.k_scale_name in model.hook_dict:
            layer_names.append(self.k_scale_name)
        self.layer_names = set(layer_names)
        self.names = list(dict.fromkeys(names + layer_names))

    def hook_names(self, model: Any) -> list[str]:
        return self.names

    def begin(self, model: Any, n_samples: int, length: int) -> None:
        n, T, D, L, dh = n_samples, length, self.D, self.L, self.d_head
        self.n, self.T = n, T
        self.cur: dict[str, Tensor] = {}
        self.seen: set[str] = set()
        z = lambda *s: torch.zeros(*s, dtype=torch.float64)
        # writer: sums over samples of [position (sink, coordinate), layer, dim]
        self.pos2 = (self.sink, self.coord_pos)
        self.w_resid, self.w_attn, self.w_mlp = z(2, L, D), z(2, L, D), z(2, L, D)
        # traced layer
        self.x_sink = z(n, D)
        self.other_abs_sum = z(D)  # sum over samples and other positions of |x|
        self.n_other = 0
        self.scale = z(n, T)
        self.n_sink = z(n, D)
        self.unit_sum = z(T, D)
        self.share_other_sum = z(D)  # sum over samples and other positions of n_d^2 / ||n||^2
        self.out_sink = z(n, D)
        self.k_sink_pre = z(n, dh)
        self.k_other_norm_sum = 0.0
        self.k_share = z(n, D)
        self.k_share_bias = z(n)
        self.recon_err = 0.0
        self.q_share_sum = z(D)
        self.q_bias_sum, self.q_count = 0.0, 0
        self.rope = {key: z(self.H) for key in ("cs", "co", "cs_pre", "co_pre", "qn", "ksn", "kon", "ds", "do")}
        self.rope_counts = {"sink": 0, "other": 0, "k_other": 0}
        self.keys = z(n, T, dh)
        self.values = z(n, T, dh)
        self.qkn = {key: 0.0 for key in ("sb", "ob", "sa", "oa", "ss", "os", "cos")}

    def begin_batch(self, tokens: Tensor, start: int) -> None:
        self._flush()
        super().begin_batch(tokens, start)

    def update(self, name: str, tensor: Tensor) -> None:
        self.seen.add(name)
        layer = hooknames.layer_of(name)
        x = tensor.detach()
        if self.want_writer:
            pos = list(self.pos2)
            target = None
            if name == hooknames.resid_pre(layer):
                target = self.w_resid
            elif name == hooknames.attn_out(layer):
                target = self.w_attn
            elif name == hooknames.mlp_out(layer):
                target = self.w_mlp
            if target is not None:
                target[:, layer] += x[:, pos].float().cpu().double().sum(0)
        if layer == self.layer and name in self.layer_names:
            self.cur[name] = x.float().cpu()

    def _flush(self) -> None:
        cur = self.cur
        if not cur:
            return
        self.cur = {}
        l, sink, g = self.layer, self.sink, self.g
        s, T = self.batch_start, self.T
        other = torch.ones(T, dtype=torch.bool)
        other[sink] = False
        b = next(iter(cur.values())).shape[0]
        n_other = int(b * other.sum())
        x = cur.get(hooknames.resid_pre(l))
        if x is not None:
            xd = x.double()
            self.x_sink[s : s + b] = xd[:, sink]
            self.other_abs_sum += xd[:, other].abs().sum((0, 1))
            self.n_other += n_other
        if hooknames.ln1_scale(l) in cur:
            self.scale[s : s + b] = cur[hooknames.ln1_scale(l)][..., 0].double()
        nrm = cur.get(hooknames.ln1_normalized(l)) if self.pre_norm else x
        if nrm is not None and self.want_norm:
            nd = nrm.double()
            self.n_sink[s : s + b] = nd[:, sink]
            self.unit_sum += (nd / nd.norm(dim=-1, keepdim=True).clamp_min(1e-30)).sum(0)
            sq = nd[:, other] ** 2
            self.share_other_sum += (sq / sq.sum(-1, keepdim=True).clamp_min(1e-30)).sum((0, 1))
            out = nd[:, sink] * self.gain.double() + (0 if self.beta is None else self.beta.double())
            self.out_sink[s : s + b] = out
        k_pre, q_pre = cur.get(hooknames.k(l)), cur.get(hooknames.q(l))
        if k_pre is not None:
            kd = k_pre.double()
            self.k_sink_pre[s : s + b] = kd[:, sink, g]
            self.k_other_norm_sum += float(kd[:, other, g].norm(dim=-1).sum())
        if self.w is not None and nrm is not None and k_pre is not None and q_pre is not None:
            self._wk(nrm.double(), k_pre.double(), q_pre.double(), s, b)
        rq, rk = cur.get(self.q_name), cur.get(self.k_name)
        if rq is not None and rk is not None:
            rq, rk = self.la.final_qk(rq, rk)
        qr, kr = cur.get(self.q_pre_name), cur.get(self.k_pre_name)
        if qr is not None and kr is not None:
            qr, kr = self.la.pre_rotary(qr), self.la.pre_rotary(kr)
        if "rope" in self.links and rq is not None and rk is not None and qr is not None and kr is not None:
            self._rope(rq.double(), rk.double(), qr.double(), kr.double())
        if self.want_qk_norm and k_pre is not None and kr is not None:
            self._qk_norm(k_pre.double(), kr.double(), cur.get(self.k_scale_name))
        if rk is not None:
            self.keys[s : s + b] = rk[:, :, g].double()
        v = cur.get(hooknames.v(l))
        if v is not None:
            self.values[s : s + b] = v[:, :, g].double()

    def bias_k(self) -> Tensor:
        WK = self.w["W_K"][self.g].double()
        bK = self.w["b_K"][self.g].double() if self.w["b_K"] is not None else torch.zeros(WK.shape[1], dtype=torch.float64)
        return bK + (self.beta.double() @ WK if self.beta is not None else 0.0)

    def _wk(self, nd: Tensor, kd: Tensor, qd: Tensor, s: int, b: int) -> None:
        sink, g, h = self.sink, self.g, self.head
        gain = self.gain.double()
        beta = None if self.beta is None else self.beta.double()
        WK = self.w["W_K"][g].double()  # [D, d]
        bias_k = self.bias_k()
        ns = nd[:, sink]  # [b, D]
        k = kd[:, sink, g]  # [b, d]
        k2 = (k * k).sum(-1).clamp_min(1e-30)
        self.k_share[s : s + b] = ns * gain * (k @ WK.T) / k2[:, None]  # <n_i g_i W_K[i], k> / ||k||^2
        self.k_share_bias[s : s + b] = (k @ bias_k) / k2
        recon = (ns * gain) @ WK + bias_k
        self.recon_err = max(self.recon_err, float((recon - k).abs().max() / k.abs().max().clamp_min(1e-30)))
        WQ = self.w["W_Q"][h].double()
        bQ = self.w["b_Q"][h].double() if self.w["b_Q"] is not None else torch.zeros(WQ.shape[1], dtype=torch.float64)
        bias_q = bQ + (beta @ WQ if beta is not None else 0.0)
        q = qd[:, sink + 1 :, h]  # [b, t, d]
        q2 = (q * q).sum(-1).clamp_min(1e-30)
        self.q_share_sum += (nd[:, sink + 1 :] * gain * (q @ WQ.T) / q2[..., None]).sum((0, 1))
        self.q_bias_sum += float(((q @ bias_q) / q2).sum())
        self.q_count += int(q.shape[0] * q.shape[1])

    def _qk_norm(self, before: Tensor, after: Tensor, scale: Tensor | None) -> None:
        """Norms of this KV head's keys before and after the k-norm, its divisor, and the turn it gives the sink key."""
        sink, g = self.sink, self.g
        other = torch.arange(self.T) != sink
        kb, ka = before[:, :, g], after[:, :, g]  # [b, T, d]
        r = self.qkn
        r["sb"] += float(kb[:, sink].norm(dim=-1).sum())
        r["ob"] += float(kb[:, other].norm(dim=-1).sum())
        r["sa"] += float(ka[:, sink].norm(dim=-1).sum())
        r["oa"] += float(ka[:, other].norm(dim=-1).sum())
        r["cos"] += float(torch.nn.functional.cosine_similarity(kb[:, sink], ka[:, sink], dim=-1).sum())
        if scale is not None:  # per-head norms fire [b, G, T, 1]; OLMo-2's all-heads norm [b, T, 1]
            sc = scale.double()
            sc = sc[:, g, :, 0] if sc.dim() == 4 else sc[..., 0]
        elif self.la.qk_norm == "all-heads":
            sc = (before.flatten(2) ** 2).mean(-1).sqrt()
        else:
            sc = (kb**2).mean(-1).sqrt()
        r["ss"] += float(sc[:, sink].sum())
        r["os"] += float(sc[:, other].sum())

    def _rope(self, rq: Tensor, rk: Tensor, q: Tensor, k: Tensor) -> None:
        """Cosines and dots of queries t > sink with the sink key and with the other causal keys.

        Sums over keys j <= t are taken through prefix sums of the keys (linear in T, no T x T map).
        """
        sink, T = self.sink, self.T
        qsel = torch.arange(T) > sink
        r = self.rope

        def stats(qq: Tensor, kk: Tensor, unit: bool) -> tuple[Tensor, Tensor]:
            kk = kk.repeat_interleave(self.group, dim=2)  # [b, T, H, d]
            if unit:
                qq = qq / qq.norm(dim=-1, keepdim=True).clamp_min(1e-30)
                kk = kk / kk.norm(dim=-1, keepdim=True).clamp_min(1e-30)
            ks = kk[:, sink : sink + 1]  # [b, 1, H, d]
            others = kk.cumsum(1)[:, qsel] - ks  # sum over j <= t, j != sink, for t > sink
            qt = qq[:, qsel]
            return (qt * ks).sum(-1).sum((0, 1)), (qt * others).sum(-1).sum((0, 1))

        cs, co = stats(rq, rk, True)
        r["cs"] += cs
        r["co"] += co
        cs, co = stats(q, k, True)
        r["cs_pre"] += cs
        r["co_pre"] += co
        ds, do = stats(rq, rk, False)
        r["ds"] += ds
        r["do"] += do
        rk_h = rk.repeat_interleave(self.group, dim=2)
        r["qn"] += rq[:, qsel].norm(dim=-1).sum((0, 1))
        r["ksn"] += rk_h[:, sink].norm(dim=-1).sum(0)
        r["kon"] += rk_h[:, torch.arange(T) != sink].norm(dim=-1).sum((0, 1))
        b = rq.shape[0]
        t = torch.arange(T)[qsel]
        self.rope_counts["sink"] += int(b * qsel.sum())
        self.rope_counts["other"] += int(b * t.sum())  # query t (0-indexed) sees t keys besides the sink
        self.rope_counts["k_other"] += int(b * (T - 1))

    def result(self) -> None:
        self._flush()


class GatedMLPReducer(Reducer):
    """Pass 3: the writer MLP's input and output, scored against the quadratic form's top eigenvector."""

    def __init__(self, layer: int, pos: int, dim: int, S: Tensor, u1: Tensor, lam1: float):
        self.layer, self.pos, self.dim, self.S, self.u1, self.lam1 = layer, pos, dim, S, u1, lam1

    def hook_names(self, model: Any) -> list[str]:
        return [hooknames.mlp_in(self.layer), hooknames.mlp_out(self.layer)]

    def begin(self, model: Any, n_samples: int, length: int) -> None:
        z = lambda *s: torch.zeros(*s, dtype=torch.float64)
        self.cos_sink, self.pred, self.pred1, self.actual = z(n_samples), z(n_samples), z(n_samples), z(n_samples)
        self.cos_other_sum, self.cos_other_count = 0.0, 0
        self.T = length

    def update(self, name: str, tensor: Tensor) -> None:
        s = self.batch_start
        x = tensor.detach().float().cpu().double()
        b = x.shape[0]
        if name == hooknames.mlp_out(self.layer):
            self.actual[s : s + b] = x[:, self.pos, self.dim]
            return
        c = (x @ self.u1).abs() / x.norm(dim=-1).clamp_min(1e-30)  # [b, T]
        other = torch.ones(self.T, dtype=torch.bool)
        other[self.pos] = False
        self.cos_sink[s : s + b] = c[:, self.pos]
        self.cos_other_sum += float(c[:, other].sum())
        self.cos_other_count += int(b * other.sum())
        xs = x[:, self.pos]
        self.pred[s : s + b] = ((xs @ self.S) * xs).sum(-1)
        self.pred1[s : s + b] = self.lam1 * (xs @ self.u1) ** 2

    def result(self) -> None:
        return None


# --------------------------------------------------------------------------- report


@dataclass(frozen=True, eq=False, repr=False)
class TraceReport:
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
    model: str
    bos: bool | None
    data: str
    model_info: dict[str, Any]
    versions: dict[str, str]
    key_pca: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.massive.n

    @property
    def length(self) -> int:
        return self.massive.length

    @property
    def dtype(self) -> str:
        return str(self.model_info.get("dtype"))

    @property
    def device(self) -> str:
        return str(self.model_info.get("device"))

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
        lines = []
        for r in self.to_frame().itertuples():
            v = f"{r.value:.4g}" if isinstance(r.value, float) else str(r.value)
            lines.append(f"{r.link:>9}.{r.name:<22} {v:>12}   {r.doc}")
        for k, why in self.skipped.items():
            lines.append(f"{k:>9}: not traced: {why}")
        return "\n".join(lines)

    def story(self) -> str:
        """The chain in words, from the spike to the sink key."""
        return _story(self)

    def summary(self) -> dict[str, Any]:
        """Provenance, the issue's JSON keys (``massive``, ``value_norm_ratio``, ``writer``) and every link."""
        return {
            "model": self.model,
            "data": self.data,
            "bos": self.bos,
            "n": self.n,
            "length": self.length,
            "dtype": self.dtype,
            "device": self.device,
            "layer": self.layer,
            "head": self.head,
            "kv_head": self.kv_head,
            "sink_pos": self.sink_pos,
            "abs_threshold": self.massive.abs_threshold,
            "ratio_threshold": self.massive.ratio_threshold,
            "massive": self.massive.massive_list(),
            "value_norm_ratio": [float(x) for x in self.massive.value_norm_ratio()],
            "writer": self.writer(),
            "links": {k: v.to_dict() for k, v in self.links.items()},
            "docs": {k: v.docs() for k, v in self.links.items()},
            "skipped": self.skipped,
            "massive_report": self.massive.summary(),
            "model_info": self.model_info,
            "versions": self.versions,
            **({"extra": self.extra} if self.extra else {}),
        }

    def to_json(self, path: str | None = None) -> str:
        """JSON text of :meth:`summary`; written atomically to ``path`` if given."""
        text = dumps(self.summary())
        if path is not None:
            write_atomic(path, text)
        return text

    def __repr__(self) -> str:
        w = self.writer()
        ws = f", writer={w['layer']}.{w['component']}" if w else ""
        return (
            f"TraceReport(model={self.model!r}, layer={self.layer}, head={self.head}, sink_pos={self.sink_pos}, n={self.n}{ws})"
        )

    def _repr_html_(self) -> str:
        """The figure of :func:`sink_interp.views.view_for` above the table of numbers."""
        from .views import view_for

        return view_for(self)._repr_html_() + self._table_html()

    def _table_html(self) -> str:
        e = html.escape
        story = e(self.story())
        rows = "".join(
            f"<tr><td>{e(r.link)}</td><td>{e(r.name)}</td><td>{e(f'{r.value:.4g}' if isinstance(r.value, float) else str(r.value))}</td><td>{e(r.doc)}</td></tr>"
            for r in self.to_frame().itertuples()
        )
        return (
            f"<div><b>TraceReport</b> &mdash; {e(self.model)} layer {self.layer} head {self.head}"
            f"<pre style='white-space:pre-wrap'>{story}</pre>"
            f"<details><summary>all numbers</summary><table><tr><th>link</th><th>number</th><th>value</th><th>how to read it</th></tr>{rows}</table></details></div>"
        )


# --------------------------------------------------------------------------- the tracer


def _check_index(value: Any, name: str, upper: int, what: str, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= int(value) < upper:
        raise ValueError(f"{name}={value!r} is out of range: {what} 0..{upper - 1}; fix: {fix}")
    return int(value)


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


def trace_sink(
    model: Any,
    tokens: Tensor,
    layer: int | None = None,
    head: int | None = None,
    *,
    sink_pos: int = 0,
    links: Sequence[str] | None = None,
    massive: MassiveReport | None = None,
    abs_threshold: float = DEFAULT_ABS_THRESHOLD,
    ratio_threshold: float = DEFAULT_RATIO_THRESHOLD,
    n_dims: int = 1,
    bos: bool | None = None,
    data: str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> TraceReport:
    """Trace the sink at ``(layer, head)`` from the residual spike to the sink key.

    Args:
        model: a TransformerBridge (RMSNorm or LayerNorm; RoPE, learned or no positions; MHA/MQA/GQA).
        tokens: ``[n, length]`` token ids; ``n >= 3`` for the manifold link's PCA.
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
        bos: whether ``tokens`` start with BOS, recorded in the report (default: from ``probe_info``).
        data: label of the inputs recorded in the report (default: the probe source).
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
    info = getattr(tokens, "probe_info", None)
    if massive is None:
        massive = massive_activations(
            model,
            tokens,
            abs_threshold=abs_threshold,
            ratio_threshold=ratio_threshold,
            sinks=True,
            bos=bos,
            data=data,
            batch_size=batch_size,
            progress=progress,
        )
    elif massive.n != n or massive.length != T:
        raise ValueError(
            f"massive was computed on {massive.n} x {massive.length} tokens but tokens are {n} x {T}; fix: pass the same tokens"
        )

    # ---- which head
    alpha_lh = None
    if massive.sinks is not None:
        alpha_lh = massive.sinks.alpha[..., sink_pos].mean(axis=0)  # [L, H]
    if layer is None or head is None:
        if alpha_lh is None:
            raise ValueError(
                "massive has no sink scores to choose the head from; fix: pass layer and head, or massive_activations(..., sinks=True)"
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
    kv_head = spec.layer(layer).kv_head(head)
    skipped: dict[str, str] = _not_applicable(model, layer, links_set)
    links_set -= set(skipped)

    gm = massive.global_max()
    pass2 = TraceReducer(model, layer, head, sink_pos, gm["pos"], links_set)
    run_reducers(model, tokens_c, [pass2], batch_size=batch_size, progress=progress, desc=f"trace layer {layer}")
    pass2.result()
    missing = [nm for nm in pass2.hook_names(model) if nm not in pass2.seen]
    if missing:
        raise RuntimeError(f"hooks {missing[:4]} never fired; this architecture is not supported by trace_sink yet")
    r = pass2

    # ---- spike dims at the traced layer: flagged in >= half the samples, else the largest mean |x| at the sink
    dims = massive.massive_dims(layer, sink_pos)
    is_massive = bool(dims)
    if not dims:
        if pass2.want_layer:
            dims = [int(d) for d in r.x_sink.abs().mean(0).topk(min(n_dims, r.D)).indices]
        else:
            dims = [gm["dim"]]
    out_links: dict[str, Link] = {}
    other = torch.ones(T, dtype=torch.bool)
    other[sink_pos] = False
    n_other = max(n * (T - 1), 1)

    # ---- spike
    if "spike" in links_set:
        vals = r.x_sink[:, dims].mean(0)
        med = float(massive.median[:, layer].mean())
        h = massive.h_norm[:, layer]
        out_links["spike"] = SpikeLink(
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

    # ---- writer
    w_link = None
    if r.want_writer:
        w_link = _writer_link(r, massive, layer, sink_pos, dims[0], n)
        if "writer" in links_set:
            out_links["writer"] = w_link

    # ---- gated MLP
    if "gated_mlp" in links_set:
        gl, why = _gated_mlp_link(model, tokens_c, w_link, batch_size, progress)
        if gl is not None:
            out_links["gated_mlp"] = gl
        else:
            skipped["gated_mlp"] = why

    # ---- norm
    if "norm" in links_set:
        sq = r.n_sink**2
        share_sink = (sq[:, dims].sum(-1) / sq.sum(-1).clamp_min(1e-30)).mean()
        n90 = np.mean([_cum_dims(row.numpy()) for row in sq])
        s2 = (r.unit_sum**2).sum(-1)  # [T]: ||sum of the samples' unit vectors||^2 per position
        pair_cos = (s2 - n) / (n * (n - 1)) if n > 1 else torch.full_like(s2, float("nan"))
        gain = r.gain.double()
        sc = r.scale
        out_links["norm"] = NormLink(
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

    # ---- W_K
    if "wk" in links_set:
        share = r.k_share.mean(0).numpy()
        order = np.argsort(-share)[:5]
        qshare = (r.q_share_sum / max(r.q_count, 1)).numpy()
        qorder = np.argsort(-qshare)[:5]
        WK = r.w["W_K"][kv_head].double()
        vec = (r.n_sink[:, dims] * r.gain.double()[dims]) @ WK[dims]  # the spike dims' contribution to k_sink
        k = r.k_sink_pre
        spike_cos = ((vec * k).sum(-1) / (vec.norm(dim=-1) * k.norm(dim=-1)).clamp_min(1e-30)).mean()
        out_links["wk"] = KeyLink(
            head=head,
            kv_head=kv_head,
            input="g * n (attention norm output)" if spec.pre_norm else "residual (no norm before attention)",
            k_sink_norm=float(k.norm(dim=-1).mean()),
            k_other_norm=float(r.k_other_norm_sum / n_other),
            k_sink_cos=mean_pairwise_cos(k),
            share_spike_dims=float(r.k_share[:, dims].sum(-1).mean()),
            cos_spike_dims=float(spike_cos),
            share_bias=float(r.k_share_bias.mean()),
            top_dims=[int(d) for d in order],
            top_shares=[float(share[d]) for d in order],
            n_dims_90=_cum_dims(share),
            q_share_spike_dims=float(qshare[dims].sum()),
            q_top_dims=[int(d) for d in qorder],
            q_top_shares=[float(qshare[d]) for d in qorder],
            q_n_dims_90=_cum_dims(qshare),
            reconstruction_error=float(r.recon_err),
        )

    # ---- QK-norm
    if "qk_norm" in links_set:
        q = r.qkn
        gw, _ = spec.norm_gain(model, layer, "attn.k_norm")
        gmean = float("nan") if gw is None else float(gw.abs().mean())
        sb, ob, sa, oa = q["sb"] / n, q["ob"] / n_other, q["sa"] / n, q["oa"] / n_other
        out_links["qk_norm"] = QKNormLink(
            kind=str(spec.layer(layer).qk_norm),
            kv_head=kv_head,
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

    # ---- RoPE
    if "rope" in links_set:
        rr, c = r.rope, r.rope_counts
        cs, co = rr["cs"] / c["sink"], rr["co"] / max(c["other"], 1)
        qn, ksn, kon = rr["qn"] / c["sink"], rr["ksn"] / n, rr["kon"] / max(c["k_other"], 1)
        alpha = alpha_lh[layer] if alpha_lh is not None else np.full(H, np.nan)
        lst = lambda t: [float(v) for v in t]
        out_links["rope"] = RopeLink(
            head=head,
            positional=spec.positional,
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

    # ---- manifold
    key_pca: dict[str, np.ndarray] = {}
    if "manifold" in links_set:
        ml, key_pca = _manifold_link(r, kv_head, sink_pos)
        out_links["manifold"] = ml

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
        model=mi.name,
        bos=massive.bos,
        data=massive.data,
        model_info=mi.to_dict(),
        versions=versions(),
        key_pca=key_pca,
        extra={"probe": info} if isinstance(info, dict) else {},
    )


def _writer_link(r: TraceReducer, massive: MassiveReport, layer: int, sink: int, dim0: int, n: int) -> WriterLink:
    """Mean contribution of every block output to the global maximum's coordinate and to the traced spike's."""
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


def _gated_mlp_link(
    model: Any, tokens: Tensor, w: WriterLink, batch_size: int | None, progress: bool
) -> tuple[GatedMLPLink | None, str]:
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


def _manifold_link(r: TraceReducer, kv_head: int, sink: int) -> tuple[ManifoldLink, dict[str, np.ndarray]]:
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
        kv_head=kv_head,
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


# --------------------------------------------------------------------------- the story


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


def _story(rep: TraceReport) -> str:
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
