"""The trace's forward passes: what is kept of each hook, summed over samples.

:class:`TraceReducer` is the main pass (the traced layer's tensors and every block's
outputs at the spike positions); :func:`collect_trace` runs it. :class:`GatedMLPReducer`
is the gated-MLP link's own pass. The link functions of :mod:`sink_interp.trace.links`
read the reducers' sums.

Example:
    >>> import torch
    >>> from sink_interp import tiny_model
    >>> from sink_interp.trace.reducers import collect_trace
    >>> r = collect_trace(tiny_model(), torch.randint(4, 128, (3, 8)), layer=1, head=0, links={"norm"})
    >>> tuple(r.n_sink.shape), r.n, r.T
    ((3, 64), 3, 8)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from .._internal import hooknames
from .._internal.probe import ProbeSet
from .._internal.weights import attn_weights
from ..architecture import describe_attention
from ..capture import Reducer, run_reducers
from .report import LINKS


class TraceReducer(Reducer):
    """Pass 2: the traced layer's tensors, and every block's outputs at the spike positions.

    Everything that depends on the spike dims is kept per dim (sums over samples and
    positions), so the dims can be chosen after the pass. ``links`` says which links'
    tensors to keep; ``coord_pos`` is the position of the largest massive activation
    (the writer link's coordinate).
    """

    shardable = True
    rows = ("x_sink", "scale", "n_sink", "out_sink", "k_sink_pre", "k_share", "k_share_bias", "keys", "values")
    sums = (
        "w_resid",
        "w_attn",
        "w_mlp",
        "other_abs_sum",
        "n_other",
        "unit_sum",
        "share_other_sum",
        "k_other_norm_sum",
        "q_share_sum",
        "q_bias_sum",
        "q_count",
        "rope",
        "rope_counts",
        "qkn",
    )

    def __init__(self, model: Any, layer: int, head: int, sink: int, coord_pos: int, links: set[str]):
        self.layer, self.head, self.sink, self.coord_pos, self.links = layer, head, sink, coord_pos, links
        cfg = model.cfg
        spec = self.spec = describe_attention(model)
        la = self.la = spec.layer(layer)
        self.L, self.H, self.G, self.D = spec.n_layers, la.n_heads, la.n_kv_heads, int(cfg.d_model)
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

    def end_batch(self) -> None:
        self._flush()

    def local_state(self) -> tuple[float, set[str]]:
        return self.recon_err, self.seen

    def merge(self, states: list[Any]) -> None:
        self.recon_err = max(st[0] for st in states)
        self.seen = set().union(*(st[1] for st in states))

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
            if sc.dim() == 4:  # heads-first [b, G, T, 1], or [b, T, G, 1] where the norm runs before the transpose (Cohere)
                sc = sc[:, :, g, 0] if sc.shape[1] == self.T and sc.shape[2] != self.T else sc[:, g, :, 0]
            else:
                sc = sc[..., 0]
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

    shardable = True
    rows = ("cos_sink", "pred", "pred1", "actual")
    sums = ("cos_other_sum", "cos_other_count")

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


def collect_trace(
    model: Any,
    tokens: Tensor | ProbeSet,
    layer: int,
    head: int,
    *,
    sink_pos: int = 0,
    coord_pos: int | None = None,
    links: Iterable[str] | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> TraceReducer:
    """Run the trace's main pass on ``tokens`` (checked ``[n, length]`` ids) and return the filled :class:`TraceReducer`.

    ``coord_pos`` is the position of the largest massive activation, whose writers the
    writer link reads (default: ``sink_pos``); ``links`` says which links' tensors to keep
    (default: all of :data:`~sink_interp.trace.LINKS`). Raises if a hook the pass needs never fired.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> r = collect_trace(tiny_model(), torch.randint(4, 128, (3, 8)), layer=0, head=1, links={"rope"})
        >>> r.rope_counts["sink"]  # 3 samples x 7 queries after the sink
        21
    """
    links = set(LINKS if links is None else links)
    r = TraceReducer(model, layer, head, sink_pos, sink_pos if coord_pos is None else coord_pos, links)
    run_reducers(model, tokens, [r], batch_size=batch_size, progress=progress, desc=f"trace layer {layer}")
    r.result()
    missing = [nm for nm in r.hook_names(model) if nm not in r.seen]
    if missing:
        raise RuntimeError(f"hooks {missing[:4]} never fired; this architecture is not supported by trace_sink yet")
    return r
