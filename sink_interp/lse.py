"""Sink scores from q, k and each row's log-sum-exp, blockwise: no T x T map.

The sink score needs only column sums of the attention. With scores
``s[t, j] = scale * q_t . k_j`` (masked entries at -inf) and each row's
log-sum-exp ``LSE_t = log sum_j exp(s[t, j])``,

    A[t, k] = exp(s[t, k] - LSE_t)        alpha_k = 1 / (T - k + 1) * sum_t A[t, k]

(k 1-indexed, as in :mod:`sink_interp.metrics`). The scores are formed as the
layer's description says (:mod:`sink_interp.architecture`: scale, logit
soft-capping, ALiBi, learned sink logits in the normaliser, the layer's own
sliding window). :func:`block_alpha` (in :mod:`sink_interp.blockwise`) forms the scores for one block of queries
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

:func:`lse_column_sums` picks one (:data:`LSE_METHODS`: ``method="lse"`` the fused engine when it
can, else the hooks; ``"lse-fused"`` requires the fused engine; ``"lse-hooks"`` the hooks engine);
:func:`sink_interp.measure_sinks` with one of these methods uses it.

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

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from . import fused as fused_mod
from ._internal import distributed as dist
from ._internal import hooknames
from ._internal.errors import NonFiniteError, check_positive_int
from ._internal.memory import available_bytes
from ._internal.probe import ProbeSet, as_tokens
from ._internal.provenance import LseEngine
from .architecture import UnsupportedAttention, attention_atol, describe_attention, qk_hooks

# the blockwise kernel (its own module, so that the fused engine needs nothing from here)
from .blockwise import (  # noqa: F401  (re-exported: sink_interp.lse.block_alpha etc.)
    BLOCK_BYTES,
    ScoreRule,
    block_alpha,
    bucket_counts,
    bucket_edges,
    normalize_edges,
    score_rule,
)
from .capture import Reduce, Reducer, auto_batch_size, explain_non_finite, model_device, run_reducers, user_hooks
from .masks import AttentionMask, as_mask

# --------------------------------------------------------------------------- hooks engine


class LSEReducer(Reducer):
    """Column sums from the q and k each layer's description names (:mod:`sink_interp.architecture`).

    The hooks carry q and k as they meet where the bridge fires them after RoPE (``hook_rot_q`` /
    ``hook_rot_k``); elsewhere the description's rotary embedding is applied to ``hook_q`` / ``hook_k``.
    Result: ``col [n, layers, heads, buckets, T]`` and ``row_sum [n, layers, heads]`` (float32, CPU).
    """

    shardable = True
    rows = ("col", "row_sum")

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
    info: LseEngine

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


def pattern_alpha(
    model: Any, tokens: Tensor | ProbeSet, mask: AttentionMask | None = None, layers: Sequence[int] | None = None
) -> Tensor:
    """``alpha [n, layers, heads, T]`` straight from the model's ``hook_pattern`` (short inputs: keeps T x T per layer)."""
    tokens = as_tokens(tokens)
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
    tokens: Tensor | ProbeSet,
    *,
    layers: Sequence[int] | None = None,
    mask: AttentionMask | dict[str, Any] | None = None,
    query_edges: Sequence[int] | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    method: str = "lse",
    block_bytes: int = BLOCK_BYTES,
) -> ColumnSums:
    """Column sums of every layer's and head's attention without T x T maps, by the fused or the hooks engine.

    ``method="lse"`` uses the fused engine when it can (no hooks on the bridge, an HF model inside it
    that passes a short self-check) and the hooks engine otherwise; ``"lse-fused"`` requires it;
    ``"lse-hooks"`` uses the hooks engine. Either engine must first reproduce the model's own ``hook_pattern`` on a
    short slice of the input (``_SelfCheck``); when neither does, :class:`SelfCheckFailed` is raised
    (``method="pattern"`` is then the exact alternative). The engine, its self-check and the reason
    for not fusing are recorded in ``info``.
    """
    if method not in LSE_METHODS:
        raise ValueError(
            f"method must be one of {LSE_METHODS}, got {method!r}; fix: method='lse' (fused when it can, else hooks)"
        )
    tokens = as_tokens(tokens)
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
    reason = "method='lse-hooks'"
    if method != "lse-hooks":

        def fused_decision() -> tuple[bool, str, str | None]:
            with dist.local():  # rank 0 checks on its own and tells the others (one engine everywhere)
                ok, reason = fused_mod.fused_supported(model, tokens, mask)
                check = None
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
            return ok, reason, check

        ok, reason, check = dist.decide(fused_decision)
        if not ok and method == "lse-fused":
            raise ValueError(
                f"method='lse-fused': the fused engine cannot run this model: {reason}; "
                "fix: method='lse' (fused when it can, else the hooks) or 'lse-hooks'"
            )
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
            bad = (~torch.isfinite(col.flatten(1))).any(1) | (~torch.isfinite(rows.flatten(1))).any(1)  # per sample
            if bool(bad.any()):
                first = int(bad.nonzero()[0, 0])
                raise NonFiniteError(
                    explain_non_finite(model, tokens[first : first + 1], seen_at="the fused engine's column sums")
                )
            return ColumnSums(col, rows, edges, layer_list, "fused", LseEngine.from_info(info))

    bs = dist.decide(lambda: auto_batch_size(model, T)) if batch_size is None else check_positive_int(batch_size, "batch_size")

    def hooks_engine(toks: Tensor, edges_: list[int] | None, batch: int, show: bool) -> tuple[Tensor, Tensor]:
        from .interventions import masked

        reducer = LSEReducer(layers=layer_list, mask=mask, query_edges=edges_, block_bytes=block_bytes)
        with masked(model, mask):
            run_reducers(model, toks, [reducer], batch_size=batch, progress=show, desc="sink scores (lse)")
        return reducer.result()

    def hooks_check() -> str:
        with dist.local():
            return self_check("hooks", lambda short: hooks_engine(short, None, 1, False)[0].sum(3))

    check = dist.decide(hooks_check)
    col, rows = hooks_engine(tokens, edges, bs, progress)
    info = LseEngine(engine="hooks", why_not_fused=reason, batch_size=bs, self_check=check)
    return ColumnSums(col, rows, edges, layer_list, "hooks", info)


# --------------------------------------------------------------------------- choosing a method

#: the engines of ``method="lse"``: the fused engine when it can, else the hooks; fused required; the hooks engine
LSE_METHODS = ("lse", "lse-fused", "lse-hooks")
#: what ``measure_sinks(method=...)`` takes: ``"auto"`` picks ``"pattern"`` or ``"lse"`` (:func:`choose_method`)
METHODS = ("auto", "pattern", *LSE_METHODS)
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


def choose_method(
    model: Any, tokens: Tensor | ProbeSet, method: str = "auto", *, score: str = "auto", batch_size: int | None = None
) -> str:
    """``"pattern"`` or ``"lse"`` for a measurement; validates an explicit choice (one of :data:`METHODS`;
    ``"lse-fused"`` and ``"lse-hooks"`` give ``"lse"``: they choose its engine).

    ``"auto"`` takes ``"lse"`` when ``T >= LSE_MIN_LENGTH`` or when one layer's attention maps
    (:func:`pattern_bytes` for the batch) would take more than ``PATTERN_MEMORY_SHARE`` of the free
    memory, unless something needs the pattern itself: a proxy ``score``, hooks that can change
    attention weights (:func:`attention_hooks`: an intervention), or a layer whose scores the
    description cannot rebuild from q and k (:func:`lse_blockers`). ``measure_sinks`` also falls
    back to ``"pattern"`` when the ``lse`` self-check fails.
    """
    tokens = as_tokens(tokens)
    if method not in METHODS:
        raise ValueError(
            f"method must be one of {METHODS}, got {method!r}; fix: method='auto' (pattern or lse by length and memory)"
        )
    needs_pattern = []
    if score not in ("auto", "softmax"):
        needs_pattern.append(f"score={score!r}")
    hooked = attention_hooks(model)
    if hooked:
        needs_pattern.append(f"hooks on {hooked[:2]}")
    if method in LSE_METHODS:
        if needs_pattern:
            raise ValueError(
                f"method={method!r} scores softmax attention from q and k, but {' and '.join(needs_pattern)} "
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
