"""Sink scores from q, k and each row's log-sum-exp, blockwise: no T x T map.

The sink score needs only column sums of the attention. With scores
``s[t, j] = scale * q_t . k_j`` (masked entries at -inf) and each row's
log-sum-exp ``LSE_t = log sum_j exp(s[t, j])``,

    A[t, k] = exp(s[t, k] - LSE_t)        alpha_k = 1 / (T - k + 1) * sum_t A[t, k]

(k 1-indexed, as in :mod:`sink_interp.metrics`). The scores are formed as the
layer's description says (:mod:`sink_interp.architecture`: scale, logit
soft-capping, ALiBi, learned sink logits in the normaliser, the layer's own
sliding window). :func:`block_alpha` forms the scores for one block of queries
against the keys they can see, turns them into attention weights (with the
kernel's ``LSE`` when one is given, else with the block's own row maximum and
sum, which cover whole rows), and adds their column sums into a float32
accumulator. Only ``batch x heads x block x keys`` floats
exist at any time (about ``block_bytes``); GQA/MQA query heads meet their KV head
without copying it; fully hidden key ranges (causal future, outside a window)
are never scored.

Two engines feed it the rotated q and k of every layer:

* the **fused** engine (:mod:`sink_interp.fused`): the model's own HF modules run
  with fused attention (a kernel that also returns ``LSE``), no hooks;
* the **hooks** engine (:class:`LSEReducer`): q and k at the bridge hooks the
  description names (rotated there where the bridge fires no rotated hook)
  through :func:`sink_interp.capture.run_reducers`, so interventions on the
  bridge apply.

Either engine first reproduces the model's own ``hook_pattern`` on a short
slice of the input (``_SelfCheck``); a model whose scores the description
cannot rebuild is refused by name (``method="pattern"`` is then exact).

:func:`lse_column_sums` picks one; :func:`sink_interp.measure_sinks` with
``method="lse"`` uses it.

Query buckets: ``query_edges=[0, e1, ..., T]`` keeps the column sums of each
query bucket apart (``[b, H, buckets, T]``) — the blocks are cut at the bucket
edges, so this costs nothing extra. ``bucket_counts`` gives the matching
normalisers (queries ``t`` in the bucket with ``t >= k``), so the per-bucket
score is the mean attention that the bucket's queries pay to key ``k``.

Examples:
    >>> import torch
    >>> q, k = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8)      # GQA: 4 query heads, 2 KV heads
    >>> col, rows = block_alpha(q, k, 8 ** -0.5)  # a bare scale: plain softmax of scale q . k
    >>> pattern = torch.softmax((q @ k.repeat_interleave(2, 1).transpose(-1, -2)) * 8 ** -0.5
    ...                         + torch.full((6, 6), float("-inf")).triu(1), -1)
    >>> bool(torch.allclose(col[:, :, 0], pattern.sum(-2), atol=1e-6))
    True
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ._internal import hooknames
from ._internal.errors import NonFiniteError, check_positive_int
from ._internal.memory import available_bytes
from .architecture import UnsupportedAttention, attention_atol, describe_attention, qk_hooks
from .capture import Reduce, Reducer, auto_batch_size, explain_non_finite, model_device, run_reducers, user_hooks
from .masks import CAUSAL, AttentionMask, as_mask

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

    ``s = softcap(scale q . k) + alibi[h, j]``; ``sinks[h]`` joins each row's normaliser (gpt-oss).
    """

    scale: float
    softcap: float | None = None
    alibi: Tensor | None = None  # [H, T] bias added to key j's logit
    sinks: Tensor | None = None  # [H] sink logits

    @property
    def linear(self) -> bool:
        """True when logits are ``scale q . k`` (a fused kernel's LSE then applies)."""
        return self.softcap is None and self.alibi is None and self.sinks is None


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
    sinks = layer.sink_logits()
    if sinks is not None:
        sinks = sinks.detach().float().to(device)
    return ScoreRule(float(layer.scale), layer.softcap, alibi, sinks)


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
        max_keys = min(max_keys, mask.window + mask.sinks + _MAX_BLOCK)
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
        self.sinks = None if rule.sinks is None else rule.sinks.to(self.device).reshape(1, self.G, self.r, 1)


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
    if rule.softcap is not None:
        s = torch.tanh(s / rule.softcap).mul_(rule.softcap)
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
        if extras.sinks is not None:
            sk = extras.sinks[..., None].expand(b, G, r, Q, 1)
            m = torch.maximum(m, sk)
        s.sub_(m).exp_()
        z = s.sum(-1)  # [b, G, r, Q]
        if extras.sinks is None:
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


# --------------------------------------------------------------------------- hooks engine


class LSEReducer(Reducer):
    """Column sums from the q and k each layer's description names (:mod:`sink_interp.architecture`).

    The hooks carry q and k as they meet where the bridge fires them after RoPE (``hook_rot_q`` /
    ``hook_rot_k``); elsewhere the description's rotary embedding is applied to ``hook_q`` / ``hook_k``.
    Result: ``col [n, layers, heads, buckets, T]`` and ``row_sum [n, layers, heads]`` (float32, CPU).
    """

    def __init__(
        self,
        layers: Sequence[int] | None = None,
        mask: AttentionMask | None = None,
        query_edges: Sequence[int] | None = None,
        block_bytes: int = BLOCK_BYTES,
    ):
        self.layers = None if layers is None else list(layers)
        self.mask = as_mask(mask)
        self.query_edges = query_edges
        self.block_bytes = block_bytes

    def hook_names(self, model: Any) -> list[str]:
        return qk_hooks(model, self.layers)

    def begin(self, model: Any, n_samples: int, length: int) -> None:
        spec = describe_attention(model)
        if self.layers is None:
            self.layers = list(range(spec.n_layers))
        self._desc = [spec.layer(layer) for layer in self.layers]
        for la in self._desc:
            la.check_supported("method='lse'")
        self._names = {}
        for i, la in enumerate(self._desc):
            self._names.setdefault(la.q_hook, []).append((i, "q"))
            self._names.setdefault(la.k_hook, []).append((i, "k"))
        self.edges = normalize_edges(self.query_edges, length)
        H = spec.n_heads
        self.col = torch.zeros(n_samples, len(self.layers), H, len(self.edges) - 1, length, dtype=torch.float32)
        self.row_sum = torch.zeros(n_samples, len(self.layers), H, dtype=torch.float32)
        self._pending: dict[tuple[int, str], Tensor] = {}

    def update(self, name: str, tensor: Tensor) -> None:
        for i, kind in self._names[name]:
            self._pending[(i, kind)] = tensor.detach()
            if (i, "q") in self._pending and (i, "k") in self._pending:
                la = self._desc[i]
                q, k = la.final_qk(self._pending.pop((i, "q")), self._pending.pop((i, "k")))
                col, rows = block_alpha(
                    q.transpose(1, 2),
                    k.transpose(1, 2),
                    la,
                    mask=la.mask(self.mask),
                    query_edges=self.edges,
                    block_bytes=self.block_bytes,
                )
                s = self.batch_start
                self.col[s : s + col.shape[0], i] = col.cpu()
                self.row_sum[s : s + col.shape[0], i] = rows.cpu()

    def result(self) -> tuple[Tensor, Tensor]:
        return self.col, self.row_sum


# --------------------------------------------------------------------------- dispatch


@dataclass
class ColumnSums:
    """What :func:`lse_column_sums` computed: column sums per query bucket, row sums, and how."""

    col: Float[Tensor, "n layer head bucket T"]
    row_sum: Float[Tensor, "n layer head"]
    edges: list[int]
    layers: list[int]
    engine: str
    info: dict[str, Any] = field(default_factory=dict)

    def alpha(self) -> Float[Tensor, "n layer head T"]:
        """The sink score over all queries: ``sum_buckets col / (T - k + 1)``."""
        return column_alpha(self.col.sum(3))

    def bucket_alpha(self) -> Float[Tensor, "n layer head bucket T"]:
        """Per-bucket score: mean attention of the bucket's queries (``t >= k``) on key ``k``; NaN where none."""
        counts = bucket_counts(self.edges, self.col.shape[-1])
        return self.col / counts  # 0/0 -> NaN for keys after the bucket


def column_alpha(col: Float[Tensor, "... T"]) -> Float[Tensor, "... T"]:
    """Sink scores from column sums of attention over all queries: ``col_k / (T - k + 1)`` (the official normaliser)."""
    return col / torch.arange(col.shape[-1], 0, -1, dtype=torch.float32, device=col.device)


#: tokens of the self-check (more where a layer's own window is short, so the check crosses it)
SELF_CHECK_TOKENS = 32


class SelfCheckFailed(ValueError):
    """An lse engine did not reproduce the model's own attention on a short input."""


def pattern_alpha(model: Any, tokens: Tensor, mask: AttentionMask | None = None, layers: Sequence[int] | None = None) -> Tensor:
    """``alpha [n, layers, heads, T]`` straight from the model's ``hook_pattern`` (short inputs: keeps T x T per layer)."""
    from .interventions import masked

    L = int(model.cfg.n_layers)
    layers = list(range(L)) if layers is None else list(layers)
    names = [hooknames.pattern(layer) for layer in layers]
    out = torch.zeros(tokens.shape[0], len(layers), int(model.cfg.n_heads), tokens.shape[1])

    def fn(name: str, x: Tensor, start: int) -> None:
        out[start : start + x.shape[0], names.index(name)] = x.detach().float().sum(-2).cpu()

    reducer = Reduce(names, fn)
    with masked(model, as_mask(mask), layers):
        run_reducers(model, tokens, [reducer], batch_size=tokens.shape[0], progress=False)
    return column_alpha(out)


def self_check_tokens(model: Any, tokens: Tensor) -> Tensor:
    """The short slice the self-check runs on: the first sample, past the shortest model window when that is short."""
    windows = [w for w in describe_attention(model).windows if w]
    n = SELF_CHECK_TOKENS if not windows else max(SELF_CHECK_TOKENS, min(min(windows) + 16, 512))
    return tokens[:1, : min(n, tokens.shape[1])]


class _SelfCheck:
    """The short slice and the model's own sink scores on it (computed once), against which each engine is checked."""

    def __init__(self, model: Any, tokens: Tensor, mask: AttentionMask, layers: list[int]):
        self.model, self.mask, self.layers = model, mask, layers
        self.short = self_check_tokens(model, tokens).to(model_device(model))
        self.atol = attention_atol(model)
        self._ref: Tensor | None = None

    def __call__(self, engine: str, run: Any) -> str:
        """Run ``run(short_tokens) -> column sums [1, layers, heads, T]`` and compare; raise :class:`SelfCheckFailed`."""
        short = self.short
        try:
            if self._ref is None:
                self._ref = pattern_alpha(self.model, short, self.mask, self.layers)
            got = column_alpha(run(short))
        except (UnsupportedAttention, NonFiniteError):
            raise
        except Exception as e:  # noqa: BLE001 - any failure means: this engine cannot be trusted here
            raise SelfCheckFailed(f"self-check of the {engine} engine failed to run ({e.__class__.__name__}: {e})") from e
        diff = float((got - self._ref).abs().max())
        if not diff <= self.atol:
            raise SelfCheckFailed(
                f"self-check of the {engine} engine: its sink scores differ from the model's own attention by {diff:.2e} "
                f"(> {self.atol:g}) on {short.shape[1]} tokens; fix: method='pattern'"
            )
        return f"self-check on {short.shape[1]} tokens: max |diff| {diff:.1e}"


def lse_column_sums(
    model: Any,
    tokens: Tensor,
    *,
    layers: Sequence[int] | None = None,
    mask: AttentionMask | dict[str, Any] | None = None,
    query_edges: Sequence[int] | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    fused: bool | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> ColumnSums:
    """Column sums of every layer's and head's attention without T x T maps, by the fused or the hooks engine.

    ``fused=None`` uses the fused engine when it can (no hooks on the bridge, an HF model inside it
    that passes a short self-check) and the hooks engine otherwise; ``True`` requires it; ``False``
    uses the hooks engine. Either engine must first reproduce the model's own ``hook_pattern`` on a
    short slice of the input (``_SelfCheck``); when neither does, :class:`SelfCheckFailed` is raised
    (``method="pattern"`` is then the exact alternative). The engine, its self-check and the reason
    for not fusing are recorded in ``info``.
    """
    from . import fused as fused_mod

    mask = as_mask(mask)
    n, T = tokens.shape
    spec = describe_attention(model)
    L = spec.n_layers
    layer_list = list(range(L)) if layers is None else list(layers)
    bad = [layer for layer in layer_list if not 0 <= layer < L]
    if bad:
        raise ValueError(f"layers {bad} out of range; the model has layers 0..{L - 1}")
    for layer in layer_list:
        spec.layer(layer).check_supported("method='lse'")
    edges = normalize_edges(query_edges, T)

    self_check = _SelfCheck(model, tokens, mask, layer_list)
    reason = "fused=False"
    if fused is not False:
        ok, reason = fused_mod.fused_supported(model, tokens, mask)
        if ok:
            try:
                check = self_check(
                    "fused",
                    lambda short: fused_mod.fused_column_sums(
                        model,
                        short,
                        layers=layer_list,
                        mask=mask,
                        query_edges=None,
                        batch_size=1,
                        progress=False,
                        block_bytes=block_bytes,
                    )[0].sum(3),
                )
            except SelfCheckFailed as e:
                ok, reason = False, str(e)
        if not ok and fused:
            raise ValueError(f"the fused engine cannot run this model: {reason}; fix: fused=None or False (hooks engine)")
        if ok:
            col, rows, info = fused_mod.fused_column_sums(
                model,
                tokens,
                layers=layer_list,
                mask=mask,
                query_edges=edges,
                batch_size=batch_size,
                progress=progress,
                block_bytes=block_bytes,
            )
            info["self_check"] = check
            if not (bool(torch.isfinite(col).all()) and bool(torch.isfinite(rows).all())):
                first = (
                    int((~torch.isfinite(col.flatten(1))).any(1).nonzero()[0, 0]) if not bool(torch.isfinite(col).all()) else 0
                )
                raise NonFiniteError(
                    explain_non_finite(model, tokens[first : first + 1], seen_at="the fused engine's column sums")
                )
            return ColumnSums(col, rows, edges, layer_list, "fused", info)

    bs = auto_batch_size(model, T) if batch_size is None else check_positive_int(batch_size, "batch_size")

    def hooks_engine(toks: Tensor, edges_: list[int] | None, batch: int, show: bool) -> tuple[Tensor, Tensor]:
        from .interventions import masked

        reducer = LSEReducer(layers=layer_list, mask=mask, query_edges=edges_, block_bytes=block_bytes)
        with masked(model, mask):
            run_reducers(model, toks, [reducer], batch_size=batch, progress=show, desc="sink scores (lse)")
        return reducer.result()

    check = self_check("hooks", lambda short: hooks_engine(short, None, 1, False)[0].sum(3))
    col, rows = hooks_engine(tokens, edges, bs, progress)
    return ColumnSums(
        col, rows, edges, layer_list, "hooks", {"engine": "hooks", "why_not_fused": reason, "batch_size": bs, "self_check": check}
    )


# --------------------------------------------------------------------------- choosing a method

METHODS = ("auto", "pattern", "lse")
#: from this length on, ``method="auto"`` measures with ``"lse"``
LSE_MIN_LENGTH = 512
#: ``"auto"`` also takes ``"lse"`` when one layer's attention maps would need more than this share of free memory
PATTERN_MEMORY_SHARE = 0.25


def pattern_bytes(model: Any, length: int, batch: int) -> int:
    """Memory of one layer's eager attention maps in the bridge (scores, masked scores, softmax, pattern; float32)."""
    return int(4 * 4 * batch * int(model.cfg.n_heads) * length * length)


def attention_hooks(model: Any) -> list[str]:
    """Hook points that carry hooks able to change attention weights: scores and patterns, and ``hook_z``
    of layers whose attention runs inside Hugging Face (there, interventions rebuild attention at ``hook_z``)."""
    spec = describe_attention(model)
    names = []
    for la in spec.layers:
        names += [hooknames.attn_scores(la.layer), hooknames.pattern(la.layer)]
        if not la.scores_hookable:
            names.append(hooknames.z(la.layer))
    return user_hooks(model, names)


def lse_blockers(model: Any) -> list[str]:
    """Why the ``lse`` method cannot reproduce this model's scores from q and k (empty when it can)."""
    spec = describe_attention(model)
    return [f"layer {la.layer}: {', '.join(la.unsupported)}" for la in spec.layers if la.unsupported]


def choose_method(model: Any, tokens: Tensor, method: str = "auto", *, score: str = "auto", batch_size: int | None = None) -> str:
    """``"pattern"`` or ``"lse"`` for a measurement; validates an explicit choice.

    ``"auto"`` takes ``"lse"`` when ``T >= LSE_MIN_LENGTH`` or when one layer's attention maps
    (:func:`pattern_bytes` for the batch) would take more than ``PATTERN_MEMORY_SHARE`` of the free
    memory, unless something needs the pattern itself: a proxy ``score``, hooks that can change
    attention weights (:func:`attention_hooks`: an intervention), or a layer whose scores the
    description cannot rebuild from q and k (:func:`lse_blockers`). ``measure_sinks`` also falls
    back to ``"pattern"`` when the ``lse`` self-check fails.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    needs_pattern = []
    if score not in ("auto", "softmax"):
        needs_pattern.append(f"score={score!r}")
    hooked = attention_hooks(model)
    if hooked:
        needs_pattern.append(f"hooks on {hooked[:2]}")
    if method == "lse":
        if needs_pattern:
            raise ValueError(
                f"method='lse' scores softmax attention from q and k, but {' and '.join(needs_pattern)} "
                "need the attention pattern itself; fix: method='pattern'"
            )
        return "lse"
    if method == "pattern" or needs_pattern or lse_blockers(model):
        _check_pattern_fits(model, tokens, batch_size, lse_possible=not needs_pattern and not lse_blockers(model))
        return "pattern"
    n, T = tokens.shape
    bs = min(n, batch_size or auto_batch_size(model, T))
    if T >= LSE_MIN_LENGTH or pattern_bytes(model, T, bs) > PATTERN_MEMORY_SHARE * available_bytes(model_device(model)):
        return "lse"
    return "pattern"


def _check_pattern_fits(model: Any, tokens: Tensor, batch_size: int | None, lse_possible: bool) -> None:
    """Refuse the pattern method, before any forward pass, when one layer's maps for the smallest batch exceed free memory."""
    n, T = tokens.shape
    bs = min(n, batch_size) if batch_size else 1  # the automatic batch size goes down to 1
    need = pattern_bytes(model, T, bs)
    device = model_device(model)
    free = available_bytes(device)
    if need <= free:
        if need > PATTERN_MEMORY_SHARE * free and lse_possible:
            import warnings

            warnings.warn(
                f"method='pattern' holds about {need / 2**30:.1f} GiB of attention maps per layer ({free / 2**30:.1f} GiB "
                "free); method='lse' needs no T x T map",
                stacklevel=3,
            )
        return
    fix = "method='lse' (column sums without T x T maps; CLI --method lse)" if lse_possible else "shorter inputs"
    if bs > 1:
        fix += " or a smaller batch_size"
    raise ValueError(
        f"method='pattern' needs about {need / 2**30:.1f} GiB for one layer's attention maps ({bs} sample(s) x "
        f"{int(model.cfg.n_heads)} heads x {T}^2 positions; scores, masked scores, softmax and pattern in float32) "
        f"but {free / 2**30:.1f} GiB are free on {device}; fix: {fix}"
    )
