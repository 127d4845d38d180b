"""Sink circuits: the components and the residual-stream paths between them that make a metric differ between two
inputs, scored by edge attribution with integrated gradients, checked by exact path patching, and pruned.

The graph (one cohesive engine, so one module of a little over 800 lines: the nodes, the replica runs that patch
edges, the gradients that score them and the pruning share the same batch layout and hooks, and are tested together):

* **nodes**: the embeddings ``emb``, every attention head ``A{l}.{h}``, every MLP ``M{l}``, and the ``metric``;
* **edges**: the direct paths through the residual stream from a node to a later node's input. A head has three
  inputs, ``q``, ``k`` and ``v`` (the residual its query, key and value are computed from; on grouped-query models the
  key and value an edge reaches are the ones that query head reads); an MLP one, ``in``; the metric one, ``in``.
  Node ``u`` writes ``out_u`` to the residual (a head: ``z_h @ W_O[h]``; an MLP: its output; ``emb``: the embeddings).
* **patching an edge set** ``S`` (:func:`path_patch`): the run of the base input in which every input ``d`` reads, in
  place of the residual, ``resid + sum over (u -> d) in S of (out_u(other run) - out_u(this run))``: the edges in ``S``
  carry the other input's value, all others this run's; every node downstream is recomputed. With every edge patched
  the run is the other input's run; with none, the base run. One edge patched is exact path patching.
* **edge scores** (``CircuitSettings.scores``): ``"ig"`` (EAP-IG, Hanna et al. 2024: ``(out_u(other) - out_u(base))
  . mean gradient of the metric at d's input``, the gradient averaged over ``steps`` runs on the line between the two
  inputs' token embeddings), ``"attribution"`` (EAP: the gradient at the base run), or ``"exact"`` (each edge path
  patched alone: ``metric(S = {e}) - metric(base)``; one forward per edge, for small models or few edges).
* **pruning**: edges ranked by ``|score|``; the faithfulness curve is ``(metric(S_k) - base) / (other - base)`` with
  the ``k`` best edges patched, each point one exact patched run; the circuit is the smallest ``k`` on the curve whose
  faithfulness reaches ``keep``.

Every input's separate residual is run as a replica of the batch (rows ``r * n .. (r + 1) * n``): replica ``r`` carries
one input's residual through the layer and hands the main replica only what that input feeds (a head's query, its
key through recomputed scores, its value through ``A_h (v' - v)``, the MLP's output). The same machinery takes the
gradients (every input its own replica), so scores and patching agree by construction; the tests check both against
an independent path-patching loop. Pre-norm models with sequential attention then MLP blocks, attention scores
computed from hooks (the families ``patch_heads(what="k")`` supports).

Example:
    >>> import torch
    >>> from sink_interp import tiny_model
    >>> from sink_interp.circuits import CircuitSettings, sink_circuit
    >>> m = tiny_model()
    >>> clean = torch.randint(4, 128, (2, 6), generator=torch.Generator().manual_seed(0))
    >>> rep = sink_circuit(m, clean, clean.flip(0), lambda lo: lo[:, -1, 5].mean(), CircuitSettings(steps=2), progress=False)
    >>> " ".join(rep.edges().columns[:4]), rep.curve_sizes[-1] == len(rep.scores)
    ('src dst kind score', True)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ._internal import hooknames
from ._internal.errors import check_positive_int
from ._internal.provenance import Provenance
from ._internal.report import FieldError, ModelRun, Patched, Provenanced, Report, summary_head, summary_tail
from ._internal.weights import attn_out_weights
from .architecture import check_model_tokens, describe_attention, verify_attention
from .attribution import forward_capture, metric_value
from .capture import attach_hooks, model_device
from .provenance import provenance

SCORES = ("ig", "attribution", "exact")
DIRECTIONS = ("noise", "denoise")


@dataclass(frozen=True)
class CircuitMetric:
    """What a circuit explains: ``fn`` of the logits ``[n, T, V]`` (``layer=None``) or of the residual leaving block
    ``layer`` ``[n, T, D]`` (then the graph stops at that block). A scalar tensor, computed with torch operations.

    Example:
        >>> CircuitMetric(lambda x: x[:, 0, 5].mean(), layer=3, name="x[0, 5]").layer
        3
    """

    fn: Callable[[Tensor], Tensor]
    layer: int | None = None
    name: str = "metric"


def massive_metric(layer: int, dim: int, position: int = 0) -> CircuitMetric:
    """The massive activation's size: the residual leaving block ``layer`` at ``position``, dimension ``dim``, as a mean
    over the samples of its absolute value.

    Example:
        >>> massive_metric(11, 507).name
        'massive L11 pos 0 dim 507'
    """

    def fn(x: Tensor) -> Tensor:
        return x[:, position, dim].float().abs().mean()

    return CircuitMetric(fn, layer=int(layer), name=f"massive L{layer} pos {position} dim {dim}")


def alpha_metric(model: Any, layer: int, head: int, key: int = 0) -> CircuitMetric:
    """The sink score ``alpha_{key+1}`` of head ``head`` in block ``layer`` (the mean over samples and over queries
    ``t >= key`` of its attention to ``key``), computed from the residual entering that block (norm, ``W_Q``/``W_K``,
    RoPE and softmax as the model does them): the graph is everything below the head.

    Example:
        >>> from sink_interp import tiny_model
        >>> alpha_metric(tiny_model(), 1, 0).name
        'alpha_1 L1H0'
    """
    from ._internal.weights import attn_weights

    spec = describe_attention(model)
    if not 1 <= layer < spec.n_layers:
        raise ValueError(f"alpha_metric needs a head above block 0 (the graph is what comes before it); got layer {layer}")
    if not 0 <= head < spec.n_heads:
        raise ValueError(f"head must lie in [0, {spec.n_heads}), got {head}")
    la = spec.layer(layer)
    norm = str(getattr(model.cfg, "normalization_type", "") or "")
    if la.qk_norm or norm not in ("RMS", "LN"):
        raise ValueError(
            f"alpha_metric recomputes the head's pattern from the residual and supports RMSNorm/LayerNorm without QK-norm; "
            f"this model has normalization {norm!r}{' and QK-norm' if la.qk_norm else ''}; fix: a logits metric or massive_metric"
        )
    w = attn_weights(model, layer)
    gain, bias = spec.norm_gain(model, layer, "ln1")
    eps = float(model.cfg.eps)
    g = la.kv_head(head)

    def fn(x: Tensor) -> Tensor:
        x = x.float()
        if norm == "LN":
            x = x - x.mean(-1, keepdim=True)
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        if gain is not None:
            y = y * gain.to(y.device)
        if bias is not None:
            y = y + bias.to(y.device)
        q = y @ w["W_Q"][head].to(y.device)  # type: ignore[index]
        k = y @ w["W_K"][g].to(y.device)  # type: ignore[index]
        if w["b_Q"] is not None:
            q = q + w["b_Q"][head].to(y.device)
        if w["b_K"] is not None:
            k = k + w["b_K"][g].to(y.device)
        qf, kf = q[:, :, None], k[:, :, None]  # [n, T, 1, d], before the rotary embedding
        if la.rotary is not None:
            qf, kf = la.rotary.apply(qf), la.rotary.apply(kf)
        A = la.pattern(qf.transpose(1, 2), kf.transpose(1, 2))[:, 0]  # [n, T, T]
        return A[:, key:, key].mean()

    return CircuitMetric(fn, layer=layer - 1, name=f"alpha_{key + 1} L{layer}H{head}")


@dataclass(frozen=True)
class CircuitSettings:
    """The knobs of :func:`sink_circuit` (one object).

    Args:
        scores: ``"ig"`` (default), ``"attribution"`` or ``"exact"`` (see the module).
        steps: integrated-gradient steps.
        direction: ``"noise"`` (default): run clean, edges carry the corrupted input's values; ``"denoise"``: the reverse.
        keep: the fraction of the effect the pruned circuit keeps (default 0.8).
        sizes: the circuit sizes (edges) on the faithfulness curve (default 1, 2, 4, ... and all edges).
        batch: edges path patched per forward in ``scores="exact"`` (each a replica of the batch).

    Example:
        >>> CircuitSettings(keep=0.9).scores
        'ig'
    """

    scores: str = "ig"
    steps: int = 4
    direction: str = "noise"
    keep: float = 0.8
    sizes: tuple[int, ...] | None = None
    batch: int = 8

    def __post_init__(self) -> None:
        if self.scores not in SCORES:
            raise ValueError(f"scores must be one of {SCORES}, got {self.scores!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be 'noise' or 'denoise', got {self.direction!r}")
        check_positive_int(self.steps, "steps")
        check_positive_int(self.batch, "batch")
        if isinstance(self.keep, bool) or not isinstance(self.keep, (int, float)) or not 0 < self.keep <= 1:
            raise ValueError(f"keep must be a fraction in (0, 1], got {self.keep!r}")


# --------------------------------------------------------------------------- the graph


def _node_layer(node: str) -> tuple[int, int]:
    """(layer, order within the layer) for sorting: emb first, heads, then the MLP, the metric last."""
    if node == "emb":
        return (-1, 0)
    if node == "metric":
        return (10**6, 0)
    if node.startswith("A"):
        l_, h = node[1:].split(".")
        return (int(l_), int(h))
    return (int(node[1:]), 10**5)


class _Graph:
    """Nodes, inputs and edges of a model up to block ``top`` (the metric reads the residual leaving it)."""

    def __init__(self, n_layers: int, n_heads: int, top: int) -> None:
        self.top, self.H = top, n_heads
        heads = [[f"A{l_}.{h}" for h in range(n_heads)] for l_ in range(top + 1)]
        self.nodes = ["emb"] + [x for l_ in range(top + 1) for x in heads[l_] + [f"M{l_}"]] + ["metric"]
        self.inputs: list[tuple[str, str, int]] = []  # (node, kind, layer)
        for l_ in range(top + 1):
            self.inputs += [(f"A{l_}.{h}", kind, l_) for h in range(n_heads) for kind in ("q", "k", "v")]
            self.inputs.append((f"M{l_}", "in", l_))
        self.inputs.append(("metric", "in", top + 1))
        self.edges: list[tuple[str, str, str]] = []
        for node, kind, l_ in self.inputs:
            ups = ["emb"]
            for j in range(min(l_, top + 1)):
                ups += heads[j] + [f"M{j}"]
            if node.startswith("M"):
                ups += heads[l_]
            self.edges += [(u, node, kind) for u in ups]


# --------------------------------------------------------------------------- the engine


class _Stop(Exception):
    """Raised by the metric's hook when the metric reads a residual below the last block: the rest is not needed."""


class _Engine:
    def __init__(self, model: Any, base_t: Tensor, src_t: Tensor, metric: CircuitMetric) -> None:
        self.model, self.metric = model, metric
        self.spec = describe_attention(model)
        L = self.spec.n_layers
        self.L, self.H, self.G = L, self.spec.n_heads, self.spec.n_kv_heads
        self.top = L - 1 if metric.layer is None else metric.layer
        self.graph = _Graph(L, self.H, self.top)
        self.base_t, self.src_t = base_t, src_t
        self.n, self.T = base_t.shape
        self.W_O = [attn_out_weights(model, l_).to(model_device(model)) for l_ in range(self.top + 1)]
        self.base_out, self.base_value = self._outputs(base_t)
        self.src_out, self.src_value = self._outputs(src_t)

    # ------------------------------------------------------------ plain runs
    def _metric_of(self, logits: Tensor, resid: Tensor | None) -> Tensor:
        return self.metric.fn(logits if self.metric.layer is None else resid)  # type: ignore[arg-type]

    def _outputs(self, tokens: Tensor) -> tuple[dict[str, Tensor], float]:
        """Every node's output ``[n, T, D]`` on one unpatched run, and the metric's value."""
        names = [hooknames.resid_pre(0), hooknames.resid_post(self.top)]
        for l_ in range(self.top + 1):
            names += [hooknames.z(l_), hooknames.mlp_out(l_)]
        logits, got = forward_capture(self.model, tokens, names)
        out = {"emb": got[hooknames.resid_pre(0)].float()}
        for l_ in range(self.top + 1):
            heads = torch.einsum("btsd,sdD->btsD", got[hooknames.z(l_)].float(), self.W_O[l_].float())
            for h in range(self.H):
                out[f"A{l_}.{h}"] = heads[:, :, h]
            out[f"M{l_}"] = got[hooknames.mlp_out(l_)].float()
        with torch.no_grad():
            v = metric_value(self._metric_of(logits, got[hooknames.resid_post(self.top)]), "an unpatched run")
        return out, v

    # ------------------------------------------------------------ the replicated run
    def run(
        self,
        patched: Sequence[dict[tuple[str, str], list[str]]],
        *,
        grad: bool = False,
        steps: int = 0,
    ) -> tuple[list[float], dict[tuple[str, str], Tensor] | None]:
        """Metric values of the base run with each edge set of ``patched`` (``{(node, kind): [upstream nodes]}``)
        patched, one set per group of replicas; or (``grad``, one empty set) the gradient of the metric at every input,
        averaged over ``steps`` runs on the embedding line (0: at the base run)."""
        n, T = self.n, self.T
        spec, graph = self.spec, self.graph
        S_ = max(steps, 1) if grad else 1
        # replicas: per edge set, a main replica and one per input that reads something patched (all inputs in grad)
        groups = []
        for pset in patched:
            by_layer: dict[int, list[tuple[str, str]]] = {}
            for node, kind, l_ in graph.inputs:
                if node == "metric":
                    continue
                if grad or pset.get((node, kind)):
                    by_layer.setdefault(l_, []).append((node, kind))
            width = 1 + max((len(v) for v in by_layer.values()), default=0)
            groups.append((pset, by_layer, width))
        starts = np.cumsum([0] + [w for _, _, w in groups])
        R = int(starts[-1])
        rows = S_ * R * n
        mains = [int(s) for s in starts[:-1]]
        # live state of the run, per group: the main replica's outputs so far
        cur: list[dict[str, Tensor]] = [{} for _ in groups]
        xs: dict[tuple[str, str], Tensor] = {}
        metric_in: list[Tensor] = []

        def view(x: Tensor) -> Tensor:
            return x.view(S_, R, n, *x.shape[1:])

        def flat(x5: Tensor) -> Tensor:
            return x5.reshape(rows, *x5.shape[3:])

        def delta(gi: int, pset: dict, key: tuple[str, str]) -> Tensor | None:
            ups = pset.get(key) or []
            if not ups:
                return None
            return sum(self.src_out[u] - cur[gi][u] for u in ups)  # type: ignore[return-value]

        def shifted(gi: int, pset: dict, m: Tensor, key: tuple[str, str]) -> Tensor:
            """``m`` moved by group ``gi``'s delta at input ``key``; kept in ``xs`` for the gradient pass."""
            d = delta(gi, pset, key)
            xd = m + 0 if d is None else m + d.to(m.dtype)
            if grad:
                xs[key] = xd
            return xd

        def replicas(x: Tensor) -> tuple[Tensor, list[Tensor]]:
            """``x`` as [S, R, n, ...] and as its list of R replicas (the hooks replace some and stack them back)."""
            x5 = view(x)
            return x5, [x5[:, i] for i in range(R)]

        hooks: list[tuple[str, Any]] = []
        if grad and steps:
            _, emb_cache = forward_capture(self.model, self.src_t, [hooknames.EMBED])
            e_src = emb_cache[hooknames.EMBED]
            alphas = (torch.arange(S_, dtype=torch.float32) + 0.5) / S_

            def mix(x: Tensor, hook: Any) -> Tensor:
                a = alphas.to(x.device, x.dtype)[:, None, None, None, None]
                x5 = view(x)
                return flat(x5 + a * (e_src.to(x.dtype)[None, None] - x5))

            hooks.append((hooknames.EMBED, mix))

        def pre(l_: int) -> Any:
            def hook(x: Tensor, hook: Any) -> Tensor:
                x5 = view(x)
                parts = []
                for gi, (pset, by_layer, width) in enumerate(groups):
                    m = x5[:, mains[gi]]
                    if l_ == 0:
                        cur[gi]["emb"] = m[0].float() if not grad else m.float()
                    reps = [m]
                    ins = by_layer.get(l_, [])
                    for r in range(1, width):
                        if r - 1 < len(ins) and not ins[r - 1][0].startswith("M"):
                            reps.append(shifted(gi, pset, m, ins[r - 1]))
                        else:
                            reps.append(m)
                    parts.append(torch.stack(reps, 1))
                return flat(torch.cat(parts, 1))

            return hook

        def replica_of(gi: int, l_: int, key: tuple[str, str]) -> int | None:
            ins = groups[gi][1].get(l_, [])
            return mains[gi] + 1 + ins.index(key) if key in ins else None

        live: dict[str, Tensor] = {}

        def keep(name: str) -> Any:
            def hook(x: Tensor, hook: Any) -> Tensor:
                live[name] = x
                return x

            return hook

        def patched_heads(gi: int, l_: int, inp: str) -> Iterator[tuple[int, int]]:
            """(head, replica) of each head of layer ``l_`` whose input ``inp`` group ``gi`` reads from another replica."""
            for h in range(self.H):
                r = replica_of(gi, l_, (f"A{l_}.{h}", inp))
                if r is not None:
                    yield h, r

        def q_edit(l_: int) -> Any:
            def hook(x: Tensor, hook: Any) -> Tensor:
                x5, out = replicas(x)
                for gi in range(len(groups)):
                    m = mains[gi]
                    for h, r in patched_heads(gi, l_, "q"):
                        new = out[m].clone()
                        new[..., h, :] = x5[:, r, ..., h, :]
                        out[m] = new
                y = flat(torch.stack(out, 1))
                live["q"] = y
                return y

            return hook

        def scores_edit(l_: int) -> Any:
            la = spec.layer(l_)
            vis = la.mask().dense(T, device=self.base_t.device)

            def hook(x: Tensor, hook: Any) -> Tensor:
                x5, out = replicas(x)  # x5: [S, R, n, H, T, T]
                q5, k5 = view(live["q"]), view(live["k"])
                for gi in range(len(groups)):
                    m = mains[gi]
                    for h, r in patched_heads(gi, l_, "k"):
                        g = la.kv_head(h)
                        qf = la.final(q5[:, m].reshape(S_ * n, T, self.H, -1))[:, :, h : h + 1]
                        kf = la.final(k5[:, r].reshape(S_ * n, T, self.G, -1))[:, :, g : g + 1]
                        s = la.logits(qf.transpose(1, 2), kf.transpose(1, 2), check=False)[:, 0].view(S_, n, T, T)
                        new = out[m].clone()
                        new[:, :, h] = torch.where(vis, s.to(x.dtype), out[m][:, :, h])
                        out[m] = new
                return flat(torch.stack(out, 1))

            return hook

        def z_edit(l_: int) -> Any:
            la = spec.layer(l_)

            def hook(x: Tensor, hook: Any) -> Tensor:
                x5, out = replicas(x)
                v5, A5 = view(live["v"]), view(live["pattern"])
                for gi in range(len(groups)):
                    m = mains[gi]
                    for h, r in patched_heads(gi, l_, "v"):
                        g = la.kv_head(h)
                        dv = (v5[:, r, :, :, g] - v5[:, m, :, :, g]).to(x.dtype)  # [S, n, T, d]
                        new = out[m].clone()
                        new[..., h, :] = out[m][..., h, :] + torch.einsum("snqk,snkd->snqd", A5[:, m, :, h].to(x.dtype), dv)
                        out[m] = new
                    if not grad:  # the heads' outputs now, for later inputs' deltas
                        heads = torch.einsum("btsd,sdD->btsD", out[m][0].float(), self.W_O[l_].float())
                        for h in range(self.H):
                            cur[gi][f"A{l_}.{h}"] = heads[:, :, h]
                return flat(torch.stack(out, 1))

            return hook

        def mid_edit(l_: int) -> Any:
            def hook(x: Tensor, hook: Any) -> Tensor:
                _, out = replicas(x)
                for gi, (pset, _, _) in enumerate(groups):
                    r = replica_of(gi, l_, (f"M{l_}", "in"))
                    if r is None:
                        continue
                    out[r] = shifted(gi, pset, out[mains[gi]], (f"M{l_}", "in"))
                return flat(torch.stack(out, 1))

            return hook

        def mlp_edit(l_: int) -> Any:
            def hook(x: Tensor, hook: Any) -> Tensor:
                x5, out = replicas(x)
                for gi in range(len(groups)):
                    r = replica_of(gi, l_, (f"M{l_}", "in"))
                    if r is not None:
                        out[mains[gi]] = x5[:, r]
                    if not grad:
                        cur[gi][f"M{l_}"] = out[mains[gi]][0].float()
                return flat(torch.stack(out, 1))

            return hook

        def final(x: Tensor, hook: Any) -> Tensor:
            _, out = replicas(x)
            for gi, (pset, _, _) in enumerate(groups):
                xd = shifted(gi, pset, out[mains[gi]], ("metric", "in"))
                metric_in.append(xd)
                out[mains[gi]] = xd
            if self.metric.layer is not None:
                raise _Stop
            return flat(torch.stack(out, 1))

        for l_ in range(self.top + 1):
            la = spec.layer(l_)
            hooks += [
                (hooknames.resid_pre(l_), pre(l_)),
                (la.q_hook, q_edit(l_)),
                (la.k_hook, keep("k")),
                (hooknames.v(l_), keep("v")),
                (hooknames.attn_scores(l_), scores_edit(l_)),
                (hooknames.pattern(l_), keep("pattern")),
                (hooknames.z(l_), z_edit(l_)),
                (hooknames.resid_mid(l_), mid_edit(l_)),
                (hooknames.mlp_out(l_), mlp_edit(l_)),
            ]
        hooks.append((hooknames.resid_post(self.top), final))
        tokens = self.base_t.repeat(S_ * R, 1)
        ctx = torch.enable_grad() if grad else torch.no_grad()
        logits = None
        with ctx, attach_hooks(self.model, hooks):
            try:
                logits = self.model(tokens, return_type="logits")
            except _Stop:
                pass
        values: list[Tensor] = []
        for gi in range(len(groups)):
            if self.metric.layer is None:
                lo = view(logits)[:, mains[gi]]  # type: ignore[arg-type]
                v = sum(self.metric.fn(lo[s]) for s in range(S_)) / S_
            else:
                xm = metric_in[gi]
                v = sum(self.metric.fn(xm[s]) for s in range(S_)) / S_
            values.append(v)  # type: ignore[arg-type]
        out_v = [metric_value(v, "a patched run") for v in values]
        if not grad:
            return out_v, None
        keys = list(xs)
        gs = torch.autograd.grad(values[0], [xs[k] for k in keys], allow_unused=True)
        return out_v, {k: (torch.zeros_like(xs[k]) if g is None else g.detach()).float().sum(0) for k, g in zip(keys, gs)}

    # ------------------------------------------------------------ scores
    def attribution_scores(self, steps: int) -> np.ndarray:
        _, grads = self.run([{}], grad=True, steps=steps)
        assert grads is not None
        delta = {u: self.src_out[u] - self.base_out[u] for u in self.graph.nodes if u != "metric"}
        return np.array([float((delta[u] * grads[(d, kind)]).sum()) for u, d, kind in self.graph.edges])

    def patched_values(self, sets: Sequence[dict[tuple[str, str], list[str]]], batch: int) -> list[float]:
        out: list[float] = []
        for i in range(0, len(sets), batch):
            out += self.run(sets[i : i + batch])[0]
        return out


def _edge_set(edges: Sequence[tuple[str, str, str]]) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for u, d, kind in edges:
        out.setdefault((d, kind), []).append(u)
    return out


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True, eq=False, repr=False)
class CircuitReport(Patched, Provenanced, ModelRun, Report):
    """A scored graph of nodes and residual-stream edges, its faithfulness curve and its pruned circuit.

    ``edge_src`` / ``edge_dst`` / ``edge_kind`` / ``scores``: every edge and its score (the estimated, or exact,
    change of the metric when that edge alone is patched); ``exact``: exact path-patching scores where computed (NaN
    elsewhere); ``curve_sizes`` / ``curve``: faithfulness with the best ``k`` edges patched; ``size``: the pruned
    circuit's edges (0 when no point of the curve reaches ``keep``).

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> m = tiny_model()
        >>> x = torch.randint(4, 128, (2, 6), generator=torch.Generator().manual_seed(0))
        >>> rep = sink_circuit(m, x, x.flip(0), lambda lo: lo[:, -1, 5].mean(), progress=False)
        >>> {"circuit_edges", "circuit_nodes", "faithfulness"} <= set(rep.summary())
        True
    """

    nodes: tuple[str, ...]
    edge_src: tuple[str, ...]
    edge_dst: tuple[str, ...]
    edge_kind: tuple[str, ...]
    scores: np.ndarray
    exact: np.ndarray
    curve_sizes: tuple[int, ...]
    curve: np.ndarray
    size: int
    keep: float
    clean: float
    corrupted: float
    metric: str
    metric_layer: int
    direction: str
    mode: str
    steps: int
    seconds: dict[str, float]
    provenance: Provenance
    n: int
    length: int
    extra: dict[str, Any] = field(default_factory=dict)

    _nan_fields = ("exact",)

    def _check(self) -> None:
        E = len(self.edge_src)
        for name in ("edge_dst", "edge_kind"):
            if len(getattr(self, name)) != E:
                raise FieldError(name, f"has {len(getattr(self, name))} entries, edge_src {E}")
        for name in ("scores", "exact"):
            if getattr(self, name).shape != (E,):
                raise FieldError(name, f"has shape {getattr(self, name).shape}, want ({E},)")
        if len(self.curve_sizes) != len(self.curve):
            raise FieldError("curve", f"has {len(self.curve)} points, curve_sizes {len(self.curve_sizes)}")
        if not 0 <= self.size <= E:
            raise FieldError("size", f"is {self.size}, outside [0, {E}]")

    def edges(self) -> pd.DataFrame:
        """Every edge: ``src``, ``dst``, ``kind``, ``score``, ``exact``, ranked by ``|score|``."""
        df = pd.DataFrame(
            {"src": self.edge_src, "dst": self.edge_dst, "kind": self.edge_kind, "score": self.scores, "exact": self.exact}
        )
        return df.reindex(df["score"].abs().sort_values(ascending=False, kind="stable").index).reset_index(drop=True)

    def circuit(self) -> pd.DataFrame:
        """The pruned circuit's edges (the ``size`` best)."""
        return self.edges().head(self.size)

    def circuit_nodes(self) -> list[str]:
        """The nodes the pruned circuit's edges touch, in layer order."""
        df = self.circuit()
        return sorted(set(df["src"]) | set(df["dst"]), key=_node_layer)

    def faithfulness(self) -> pd.DataFrame:
        """The curve: ``edges`` patched (the best by ``|score|``) and the ``faithfulness`` exact patching gives."""
        return pd.DataFrame({"edges": list(self.curve_sizes), "faithfulness": np.asarray(self.curve, float)})

    def summary(self) -> dict[str, Any]:
        top = self.edges().head(10)
        return {
            **summary_head(self, "n", "length", "metric", "direction"),
            "scores": self.mode + (f" ({self.steps} steps)" if self.mode == "ig" else ""),
            "clean": self.clean,
            "corrupted": self.corrupted,
            "n_edges": len(self.scores),
            "keep": self.keep,
            "circuit_edges": self.size,
            "circuit_nodes": self.circuit_nodes(),
            "faithfulness": [[int(k), float(f)] for k, f in zip(self.curve_sizes, self.curve)],
            "top_edges": [
                {"edge": f"{r.src}->{r.dst}.{r.kind}", "score": float(r.score)}
                | ({"exact": float(r.exact)} if math.isfinite(r.exact) else {})
                for r in top.itertuples()
            ],
            "seconds": self.seconds,
            "dtype": self.dtype,
            "device": self.device,
            **summary_tail(self),
        }

    def __repr__(self) -> str:
        return (
            f"CircuitReport(model={self.model!r}, metric={self.metric!r}, {len(self.scores)} edges, circuit {self.size} "
            f"edges on {len(self.circuit_nodes())} nodes)"
        )


# --------------------------------------------------------------------------- the analysis


def _metric(metric: CircuitMetric | Callable[[Tensor], Tensor], L: int) -> CircuitMetric:
    if isinstance(metric, CircuitMetric):
        if metric.layer is not None and not 0 <= metric.layer < L:
            raise ValueError(f"the metric's layer must lie in [0, {L}), got {metric.layer}")
        return metric
    if callable(metric):
        return CircuitMetric(metric, None, getattr(metric, "__name__", "metric"))
    raise ValueError(
        f"metric must be a function of the logits or a CircuitMetric (e.g. massive_metric(11, 507)), got {type(metric).__name__}"
    )


def _default_sizes(E: int) -> list[int]:
    out, k = [], 1
    while k < E:
        out.append(k)
        k *= 2
    return out + [E]


def _tokens(model: Any, clean: Any, corrupted: Any) -> tuple[Tensor, Tensor]:
    clean_t = check_model_tokens(model, clean, min_length=2, name="clean")
    corr_t = check_model_tokens(model, corrupted, min_length=2, name="corrupted")
    if clean_t.shape != corr_t.shape:
        raise ValueError(
            f"corrupted has shape {tuple(corr_t.shape)}, clean {tuple(clean_t.shape)}; fix: pair rows of equal length"
        )
    dev = model_device(model)
    return clean_t.to(dev), corr_t.to(dev)


def _engine(model: Any, clean: Any, corrupted: Any, metric: Any, direction: str) -> tuple[_Engine, Tensor]:
    clean_t, corr_t = _tokens(model, clean, corrupted)
    if getattr(model.cfg, "parallel_attn_mlp", False):
        raise ValueError(
            "sink circuits need blocks that run attention, then the MLP on its output; this model runs them in parallel"
        )
    m = _metric(metric, int(model.cfg.n_layers))
    spec = describe_attention(model)
    top = spec.n_layers - 1 if m.layer is None else m.layer
    bad = [l_ for l_ in range(top + 1) if not spec.layer(l_).scores_hookable]
    if bad:
        raise ValueError(
            f"sink circuits recompute attention scores, which layers {bad} of this {spec.family} model compute inside Hugging Face; fix: a supported family (see docs/support.md)"
        )
    verify_attention(model, list(range(top + 1)), "sink circuits")
    base_t, src_t = (clean_t, corr_t) if direction == "noise" else (corr_t, clean_t)
    return _Engine(model, base_t, src_t, m), clean_t


def path_patch(
    model: Any,
    clean: Any,
    corrupted: Any,
    metric: CircuitMetric | Callable[[Tensor], Tensor],
    edges: Sequence[tuple[str, str, str]],
    *,
    direction: str = "noise",
) -> float:
    """The metric of the base run (clean for ``"noise"``) with the edges ``(src, dst, kind)`` patched together (see the
    module): each edge carries the other input's value of its source node into its destination's input.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> m = tiny_model()
        >>> x = torch.randint(4, 128, (2, 6), generator=torch.Generator().manual_seed(0))
        >>> fn = lambda lo: lo[:, -1, 5].mean()
        >>> round(path_patch(m, x, x.flip(0), fn, []) - float(fn(m(x))), 5)
        0.0
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'noise' or 'denoise', got {direction!r}")
    eng, _ = _engine(model, clean, corrupted, metric, direction)
    known = set(eng.graph.edges)
    for e in edges:
        if tuple(e) not in known:
            raise ValueError(f"{e!r} is not an edge of this model's graph; fix: take edges from CircuitReport.edges()")
    return eng.run([_edge_set([tuple(e) for e in edges])])[0][0]  # type: ignore[misc]


def sink_circuit(
    model: Any,
    clean: Any,
    corrupted: Any,
    metric: CircuitMetric | Callable[[Tensor], Tensor],
    settings: CircuitSettings | None = None,
    *,
    progress: bool = True,
) -> CircuitReport:
    """Score every edge of the model's graph for ``metric`` between ``clean`` and ``corrupted``, and prune it.

    Args:
        model: a TransformerBridge (pre-norm, attention then MLP in each block).
        clean: ``[n, T]`` token ids (or a ProbeSet); row ``i`` pairs with row ``i`` of ``corrupted``.
        corrupted: ``[n, T]`` token ids of the same shape.
        metric: a function of the logits (a scalar tensor), or a :class:`CircuitMetric` such as
            :func:`massive_metric` (the residual leaving a block: the graph stops there).
        settings: :class:`CircuitSettings` (scores, steps, direction, keep, curve sizes).
        progress: a progress bar over the faithfulness curve's patched runs.

    Returns:
        :class:`CircuitReport`: every edge's score, the faithfulness curve by exact patching, the pruned circuit.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> m = tiny_model()
        >>> x = torch.randint(4, 128, (2, 6), generator=torch.Generator().manual_seed(0))
        >>> y = torch.randint(4, 128, (2, 6), generator=torch.Generator().manual_seed(1))
        >>> rep = sink_circuit(m, x, y, massive_metric(1, 3), CircuitSettings(steps=2), progress=False)
        >>> rep.metric, "M1" in rep.nodes, round(float(rep.curve[-1]), 4)
        ('massive L1 pos 0 dim 3', True, 1.0)
    """
    s = settings or CircuitSettings()
    if not isinstance(s, CircuitSettings):
        raise ValueError(f"settings must be a CircuitSettings, got {type(s).__name__}")
    t0 = time.perf_counter()
    eng, clean_t = _engine(model, clean, corrupted, metric, s.direction)
    seconds = {"baselines": time.perf_counter() - t0}
    edges = eng.graph.edges
    t0 = time.perf_counter()
    if s.scores == "exact":
        vals = eng.patched_values([_edge_set([e]) for e in edges], s.batch)
        scores = np.array(vals) - eng.base_value
        exact = scores.copy()
    else:
        scores = eng.attribution_scores(s.steps if s.scores == "ig" else 0)
        exact = np.full(len(edges), np.nan)
    seconds["scores"] = time.perf_counter() - t0
    if not np.isfinite(scores).all():
        from ._internal.errors import NonFiniteError

        raise NonFiniteError("edge scores hold NaN/Inf; fix: check the metric and the model")
    order = np.argsort(-np.abs(scores), kind="stable")
    E = len(edges)
    sizes = sorted({min(int(k), E) for k in (s.sizes or _default_sizes(E)) if int(k) > 0})
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    span = eng.src_value - eng.base_value
    curve = []
    for k in tqdm(sizes, desc="circuit", disable=not progress, leave=False):
        v = eng.run([_edge_set([edges[i] for i in order[:k]])])[0][0]
        curve.append((v - eng.base_value) / span if span != 0 else float("nan"))
    seconds["faithfulness"] = time.perf_counter() - t0
    reached = [k for k, f in zip(sizes, curve) if math.isfinite(f) and f >= s.keep]
    size = reached[0] if reached else 0
    m = eng.metric
    clean_v, corr_v = (eng.base_value, eng.src_value) if s.direction == "noise" else (eng.src_value, eng.base_value)
    return CircuitReport(
        nodes=tuple(eng.graph.nodes),
        edge_src=tuple(e[0] for e in edges),
        edge_dst=tuple(e[1] for e in edges),
        edge_kind=tuple(e[2] for e in edges),
        scores=scores.astype(np.float64),
        exact=exact.astype(np.float64),
        curve_sizes=tuple(sizes),
        curve=np.asarray(curve, dtype=np.float64),
        size=int(size),
        keep=float(s.keep),
        clean=float(clean_v),
        corrupted=float(corr_v),
        metric=m.name,
        metric_layer=-1 if m.layer is None else int(m.layer),
        direction=s.direction,
        mode=s.scores,
        steps=s.steps if s.scores == "ig" else 0,
        seconds=seconds,
        n=int(clean_t.shape[0]),
        length=int(clean_t.shape[1]),
        provenance=provenance(model, clean),  # a ProbeSet says what the clean input is
    )


__all__ = ["CircuitMetric", "CircuitReport", "CircuitSettings", "alpha_metric", "massive_metric", "path_patch", "sink_circuit"]
