"""The blockwise kernel of the sink scores: column sums of attention from q, k (and each row's LSE), no T x T map.

:func:`block_alpha` forms the scores of one block of queries against the
keys they can see as the layer's :class:`ScoreRule` says (scale, logit
soft-capping, ALiBi, learned sink logits in the normaliser), turns them into
attention weights (with a kernel's ``LSE`` when one is given, else with the
block's own row maximum and sum, which cover whole rows), and adds their
column sums into a float32 accumulator. Both engines of :mod:`sink_interp.lse`
feed it: the hooks engine there and the fused engine of :mod:`sink_interp.fused`.

Query buckets: ``query_edges=[0, e1, ..., T]`` keeps the column sums of each
query bucket apart; :func:`bucket_counts` gives the matching normalisers.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ._internal.errors import check_positive_int
from ._internal.scores import softcap
from .masks import CAUSAL, AttentionMask

#: Working memory of one block of scores (batch x heads x queries x keys float32). Small blocks stay
#: in cache: on a 2-core EPYC, ~2 MB blocks (32 queries at T = 2048, SmolLM2 shapes) ran the pass
#: ~1.5x faster than 256-query (19 MB) blocks.
BLOCK_BYTES = 2 * 2**20
_MIN_BLOCK, _MAX_BLOCK = 16, 256


def normalize_edges(query_edges: Sequence[int] | None, length: int) -> list[int]:
    """``[0, ..., length]``, strictly increasing; ``None`` -> one bucket."""
    if query_edges is None:
        return [0, length]
    edges = [int(e) for e in query_edges]
    if not edges or edges[0] != 0:
        edges = [0, *edges]
    if edges[-1] != length:
        edges = [*edges, length]
    if any(b <= a for a, b in zip(edges, edges[1:])) or edges[-1] != length:
        raise ValueError(f"query_edges must increase strictly from 0 to the length {length}, got {list(query_edges)}")
    return edges


def bucket_edges(length: int, buckets: int) -> list[int]:
    """``buckets`` equal query buckets over ``length`` positions (the last one takes the rest)."""
    buckets = check_positive_int(buckets, "buckets")
    if buckets > length:
        raise ValueError(f"buckets={buckets} exceeds the length {length}; fix: fewer buckets")
    step = length // buckets
    return [i * step for i in range(buckets)] + [length]


def bucket_counts(edges: Sequence[int], length: int) -> Float[Tensor, "bucket k"]:
    """How many queries of each bucket can see key ``k`` (``t >= k``): the per-bucket normaliser.

    With one bucket this is ``T - k + 1`` (k 1-indexed), the official normaliser.
    """
    edges = normalize_edges(edges, length)
    k = torch.arange(length, dtype=torch.float64)
    rows = []
    for a, b in zip(edges, edges[1:]):
        rows.append((b - torch.clamp(k, min=a)).clamp(min=0))
    return torch.stack(rows).to(torch.float32)


def _block_size(batch: int, heads: int, keys: int, block_bytes: int) -> int:
    q = block_bytes // max(1, 4 * batch * heads * keys)
    return int(max(_MIN_BLOCK, min(_MAX_BLOCK, q)))


@dataclass(frozen=True)
class ScoreRule:
    """How a layer turns ``q . k`` into logits, for the blockwise pass (from :class:`~sink_interp.architecture.LayerAttention`).

    ``s = softcap(scale q . k) + alibi[h, j]``; ``sink_logits[h]`` joins each row's normaliser (gpt-oss).
    """

    scale: float
    softcap: float | None = None
    alibi: Tensor | None = None  # [H, T] bias added to key j's logit
    sink_logits: Tensor | None = None  # [H] sink logits

    @property
    def linear(self) -> bool:
        """True when logits are ``scale q . k`` (a fused kernel's LSE then applies)."""
        return self.softcap is None and self.alibi is None and self.sink_logits is None


def score_rule(layer: Any, length: int, device: Any = None) -> ScoreRule:
    """The :class:`ScoreRule` of a layer description (or of a bare scale, for plain softmax attention)."""
    if isinstance(layer, ScoreRule):
        return layer
    if isinstance(layer, (int, float)):
        return ScoreRule(float(layer))
    layer.check_supported("method='lse'")
    alibi = None
    if layer.alibi is not None:
        alibi = layer.alibi_bias(torch.arange(length, device=device)).float()
    sink_logits = layer.sink_logits()
    if sink_logits is not None:
        sink_logits = sink_logits.detach().float().to(device)
    return ScoreRule(float(layer.scale), layer.softcap, alibi, sink_logits)


def block_alpha(
    q: Float[Tensor, "b H T d"],
    k: Float[Tensor, "b G T d"],
    rule: Any,
    *,
    lse: Float[Tensor, "b H T"] | None = None,
    mask: AttentionMask | None = None,
    query_edges: Sequence[int] | None = None,
    block_bytes: int = BLOCK_BYTES,
    threads: int | None = None,
    v: Float[Tensor, "b G T d"] | None = None,
) -> tuple[Float[Tensor, "b H bucket T"], Float[Tensor, "b H"]] | tuple[Tensor, Tensor, Tensor]:
    """Column sums of the attention of ``q`` over ``k``, and the mean row sum, in float32.

    Args:
        q: final queries ``[batch, heads, T, d_head]`` (after QK-norm and RoPE).
        k: final keys ``[batch, kv_heads, T, d_head]``; query head ``h`` uses KV head ``h // (heads // kv_heads)``.
        rule: how the layer forms its logits: a :class:`~sink_interp.architecture.LayerAttention`, a
            :class:`ScoreRule` or a bare scale (plain softmax of ``scale q . k``).
        lse: the row log-sum-exp of the logits, as a fused kernel returns it (plain softmax only). Without it,
            each row's maximum and sum are taken from the block (which holds whole rows).
        mask: which keys each query sees (default: causal); a layer's own window is its ``limit``.
        query_edges: query bucket edges; column sums are kept per bucket.
        block_bytes: working memory of one block of scores (per worker).
        threads: CPU workers, each taking whole blocks (default ``torch.get_num_threads()``).
        v: values ``[batch, kv_heads, T, d_head]``: also return the attention output ``[b, H, T, d]``
            (the fused engine uses this where no kernel computes the layer's attention).

    Returns:
        ``(col, row_sum)``: ``col[b, h, bucket, j] = sum over queries t of the bucket of A[t, j]``
        and ``row_sum[b, h]`` = mean over queries of ``sum_j A[t, j]`` (1 for softmax, less with sink
        logits; with a kernel's ``lse`` it checks that the kernel and these scores agree); and ``out``
        when ``v`` is given.
    """
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"q and k must be [batch, heads, T, d_head], got {tuple(q.shape)} and {tuple(k.shape)}")
    b, H, T, d = q.shape
    G = k.shape[1]
    if k.shape[0] != b or k.shape[2] != T or k.shape[3] != d or H % G:
        raise ValueError(f"k {tuple(k.shape)} does not fit q {tuple(q.shape)} (kv heads must divide heads)")
    r = H // G
    mask = CAUSAL if mask is None else mask
    edges = normalize_edges(query_edges, T)
    n_buckets = len(edges) - 1
    dev = q.device
    rule = score_rule(rule, T, dev)
    if lse is not None and not rule.linear:
        raise ValueError("a kernel's lse only applies to plain softmax logits (no soft-cap, ALiBi or sink logits)")

    qs = (q.to(torch.float32) * rule.scale).reshape(b, G, r, T, d)
    kf = k.to(torch.float32)
    with_lse = lse is not None
    if with_lse:
        # fold "- LSE_t" into the product: [scale q_t, -LSE_t] . [k_j, 1] = s[t, j] - LSE_t (saves a pass)
        qs = torch.cat([qs, -lse.to(torch.float32).reshape(b, G, r, T, 1)], dim=-1)
        kf = torch.cat([kf, torch.ones(b, G, T, 1, dtype=torch.float32, device=dev)], dim=-1)
    extras = _Extras(rule, G, r, dev, None if v is None else v.to(torch.float32))
    max_keys = max(T, mask.prefix if mask.prefix > 1 else 0)
    if mask.window is not None:
        max_keys = min(max_keys, mask.window + mask.n_sinks + _MAX_BLOCK)
    if mask.limit is not None:
        max_keys = min(max_keys, mask.limit + _MAX_BLOCK)
    bq = _block_size(b, H, max_keys, block_bytes)
    cuts = set(edges) | set(range(0, T, bq))
    if 1 < mask.prefix < T:
        cuts.add(mask.prefix)
    cuts_sorted = sorted(cuts)
    blocks = [(a, e, max(i for i, x in enumerate(edges[:-1]) if x <= a)) for a, e in zip(cuts_sorted, cuts_sorted[1:])]

    def run(part: list[tuple[int, int, int]]) -> tuple[Tensor, Tensor, Tensor | None]:
        col = torch.zeros(b, G, r, n_buckets, T, dtype=torch.float32, device=dev)
        rows = torch.zeros(b, G, r, dtype=torch.float32, device=dev)
        out = None if v is None else torch.zeros(b, G, r, T, d, dtype=torch.float32, device=dev)
        for a, e, bi in part:
            _one_block(qs, kf, a, e, bi, mask, with_lse, col, rows, extras, out)
        return col, rows, out

    workers = _workers(len(blocks), dev, threads)
    if workers <= 1:
        col, rows, out = run(blocks)
    else:
        # coarse-grained parallelism: each worker takes every workers-th block (causal cost grows
        # with the block index, so this balances) and runs its ops single-threaded. Per-op
        # intra-op threads would meet at a barrier after every small op, which stalls badly when
        # the cores are shared (measured: 3-20x slower at 2 threads on a loaded 2-core machine).
        prev = torch.get_num_threads()
        torch.set_num_threads(1)  # fresh worker threads pick this up on their first op
        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                parts = list(pool.map(run, [blocks[w::workers] for w in range(workers)]))
        finally:
            torch.set_num_threads(prev)
        col = torch.stack([p[0] for p in parts]).sum(0)
        rows = torch.stack([p[1] for p in parts]).sum(0)
        out = None if v is None else torch.stack([p[2] for p in parts]).sum(0)
    col, rows = col.reshape(b, H, n_buckets, T), rows.reshape(b, H) / T
    if v is None:
        return col, rows
    return col, rows, out.reshape(b, H, T, d)


@dataclass
class _Extras:
    """Per-call pieces of the logits beyond ``scale q . k``, laid out for the blocks ``[b, G, r, Q, K]``."""

    rule: ScoreRule
    G: int
    r: int
    device: Any
    v: Tensor | None

    def __post_init__(self) -> None:
        rule = self.rule
        self.alibi = None if rule.alibi is None else rule.alibi.to(self.device).reshape(self.G, self.r, 1, -1)
        self.sink_logits = None if rule.sink_logits is None else rule.sink_logits.to(self.device).reshape(1, self.G, self.r, 1)


def _workers(n_blocks: int, device: torch.device, threads: int | None) -> int:
    if device.type != "cpu":
        return 1
    want = torch.get_num_threads() if threads is None else int(threads)
    return max(1, min(want, n_blocks // 2))


def _one_block(
    qs: Tensor,
    kf: Tensor,
    a: int,
    e: int,
    bucket: int,
    mask: AttentionMask,
    with_lse: bool,
    col: Tensor,
    rows: Tensor,
    extras: _Extras,
    out: Tensor | None,
) -> None:
    """Add the column sums of queries ``a..e-1`` (all in one bucket) into ``col[..., bucket, :]``."""
    b, G, r, T, dq = qs.shape
    dev = qs.device
    Q = e - a
    span = mask.key_span(a, e, T)
    if isinstance(span, slice):
        lo, hi = span.start, span.stop
        kb = kf[:, :, lo:hi]
        keys = None
    else:
        lo = hi = 0
        keys = span.to(dev)
        kb = kf.index_select(2, keys)
    qb = qs[:, :, :, a:e].reshape(b, G, r * Q, dq)
    s = torch.matmul(qb, kb.transpose(-1, -2)).view(b, G, r, Q, kb.shape[2])
    rule = extras.rule
    s = softcap(s, rule.softcap)
    if extras.alibi is not None:
        s += extras.alibi[..., lo:hi] if keys is None else extras.alibi.index_select(-1, keys)

    # hide what these queries may not see, only in the columns where something is hidden
    if mask.is_causal:
        s[..., a - lo : e - lo].masked_fill_(torch.ones(Q, Q, dtype=torch.bool, device=dev).triu(1), float("-inf"))
    else:
        jpos = torch.arange(lo, hi, device=dev) if keys is None else keys
        hidden = ~mask.visible(torch.arange(a, e, device=dev), jpos)
        bad_cols = hidden.any(0).nonzero()
        if bad_cols.numel():
            c0, c1 = int(bad_cols[0]), int(bad_cols[-1]) + 1
            s[..., c0:c1].masked_fill_(hidden[:, c0:c1], float("-inf"))

    if with_lse:  # the scores already carry "- LSE_t"
        s.exp_()
        c = s.sum(3)
        rows += c.sum(-1)
    else:  # whole rows are here: take their maximum and sum (a sink logit joins both)
        m = s.amax(-1, keepdim=True)
        if extras.sink_logits is not None:
            sk = extras.sink_logits[..., None].expand(b, G, r, Q, 1)
            m = torch.maximum(m, sk)
        s.sub_(m).exp_()
        z = s.sum(-1)  # [b, G, r, Q]
        if extras.sink_logits is None:
            w = z.reciprocal_()
            rows += Q
        else:  # rows give exp(sink - m) / Z to the sink: their real keys sum to z / Z < 1
            w = (z + (sk - m).exp().squeeze(-1)).reciprocal_()
            rows += (z * w).sum(-1)
        c = torch.matmul(w.unsqueeze(-2), s).squeeze(-2)
        if out is not None:
            vb = extras.v[:, :, lo:hi] if keys is None else extras.v.index_select(2, keys)
            out[:, :, :, a:e] = torch.matmul(s * w.unsqueeze(-1), vb.unsqueeze(2))
    if keys is None:
        col[:, :, :, bucket, lo:hi] += c
    else:
        col[:, :, :, bucket].index_add_(-1, keys, c)
