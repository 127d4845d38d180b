"""The analysis: :func:`patch_heads` (exact and attribution patching of every head) and the sink recipes
(:func:`corrupt_tokens`, :func:`patch_sink`)."""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from .._internal import distributed as dist
from .._internal import hooknames
from .._internal.errors import NonFiniteError, check_positive_int
from .._internal.probe import ProbeSet, as_tokens
from ..architecture import (
    UnsupportedAttention,
    check_head_counts,
    check_model_tokens,
    describe_attention,
    verify_attention,
)
from ..attribution import (
    ESTIMATORS,
    AttributionSettings,
    PatchProblem,
    estimate,
    estimate_graddrop,
    forward_capture,
    metric_value,
)
from ..capture import attach_hooks, model_device
from ..models import special_token_ids
from ..provenance import provenance
from .report import PatchReport
from .run import Cond, can_start_at_layer, conditions, edit_hooks, run_from, verify_screened
from .sites import CORRUPTIONS, DIRECTIONS, METHODS, METRIC_EXPECT, METRICS, Metric, Site, named_metric, site_of

# --------------------------------------------------------------------------- the analysis


def _whole_numbers(values: Any, name: str) -> list[int]:
    """``values`` (one index or a sequence) as ints; floats, bools and text are refused, never truncated."""
    items = [values] if isinstance(values, (int, np.integer)) or not isinstance(values, Iterable) else list(values)
    if isinstance(values, (str, bytes)) or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in items):
        raise ValueError(f"{name} must hold whole numbers (indices), got {values!r}; fix: e.g. {name}=[0, 1]")
    return [int(v) for v in items]


def _check_list(values: Sequence[int] | None, n: int, name: str) -> list[int]:
    if values is None:
        return list(range(n))
    out = _whole_numbers(values, name)
    bad = [v for v in out if not 0 <= v < n]
    if bad or not out:
        raise ValueError(f"{name} must be a non-empty list of indices in [0, {n}); got {out!r}")
    return sorted(set(out))


def _positions(positions: Sequence[int] | int | None, site: Site, T: int) -> tuple[int, ...] | None:
    if positions is None:
        return (0,) if site.sink else None
    ps = _whole_numbers(positions, "positions")
    if not ps:
        raise ValueError("positions is empty; fix: pass None (all positions) or a list of token positions")
    out = sorted({p + T if p < 0 else p for p in ps})
    if not all(0 <= p < T for p in out):
        raise ValueError(f"positions must lie in [0, {T}) (negative counts from the end); got {list(ps)!r}")
    return tuple(out)


def _default_chunk(model: Any, n: int, T: int, n_conds: int) -> int:
    """Conditions per forward: about 64 rows and 512 MB of logits, at most every condition of a layer."""
    per = 4 * int(model.cfg.d_vocab) * T * n
    return int(max(1, min(n_conds, 64 // max(n, 1), 512e6 // max(per, 1))))


def patch_heads(
    model: Any,
    clean: Tensor,
    corrupted: Tensor,
    metric: Metric | str,
    *,
    what: str = "z",
    direction: str = "noise",
    method: str = "exact",
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    positions: Sequence[int] | int | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    metric_from: int = 0,
    extra: dict[str, Any] | None = None,
    attribution: AttributionSettings | None = None,
) -> PatchReport:
    """Patch each head's ``what`` from one input into the other and report ``metric`` of the logits.

    Args:
        model: a TransformerBridge.
        clean: ``[n, T]`` token ids (row ``i`` pairs with row ``i`` of ``corrupted``).
        corrupted: ``[n, T]`` token ids of the same shape.
        metric: ``metric(logits [n, T, V]) -> scalar tensor`` (reduce over the batch inside it), or
            ``"logit_diff"``, ``"logprob"``, ``"kl"`` (see :func:`named_metric`).
        what: ``"z"`` (default), ``"q"``, ``"k"``, ``"v"``, ``"pattern"`` (query rows ``positions``),
            ``"k-sink"``, ``"v-sink"``, ``"pattern-sink"`` (key position 0 or ``positions``).
        direction: ``"noise"`` (default): run **clean**, write in the **corrupted** activation;
            ``"denoise"``: run corrupted, write in the clean activation.
        method: ``"exact"`` (patched forwards); estimates in ``estimate``, never in ``values``:
            ``"attribution"`` (AtP with the AtP* QK fix, one forward per input and one backward), ``"atp*"``
            (GradDrop too), ``"ig"`` (integrated gradients); estimates checked by exact patching: ``"fast"``
            (the best-screened ``budget`` of the heads patched exactly: the fast default of docs/patching.md),
            ``"verified"`` (until no head left can beat the ``top``-th exact effect); ``"both"`` (exact and an estimate).
        attribution: :class:`~sink_interp.attribution.AttributionSettings` (steps, estimator, top, budget).
        layers: layers to patch (default all).
        heads: query heads to patch (default all).
        positions: token positions where the activation is replaced (default all; the key column for the
            sink sites, default ``(0,)``).
        batch_size: conditions (patched heads) stacked in one forward, each a copy of all ``n`` inputs
            (default: about 64 rows, 512 MB of logits, at most one layer's conditions).
        progress: a progress bar over the patched forwards.
        metric_from: the named metrics ``"logprob"`` and ``"kl"`` read the predictions made at positions
            ``metric_from..T-2`` (default all); recorded in the metric's name.
        extra: more facts to record in the report.

    Returns:
        :class:`PatchReport`. The model carries exactly the hooks it had before, also after an exception.

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, patch_heads
        >>> model = tiny_model()
        >>> clean = torch.randint(4, 128, (2, 8), generator=torch.Generator().manual_seed(0))
        >>> rep = patch_heads(model, clean, clean.flip(0), "kl", what="v-sink", layers=[1], progress=False)
        >>> rep.values.shape, rep.kv_values.shape, rep.clean
        ((2, 4), (2, 2), 0.0)
    """
    site = site_of(what)
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'noise' (run clean, patch in corrupted) or 'denoise'; got {direction!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if attribution is not None and not isinstance(attribution, AttributionSettings):
        raise ValueError(
            f"attribution must be an AttributionSettings, got {type(attribution).__name__}; fix: "
            "attribution=AttributionSettings(steps=8)"
        )
    settings = attribution or AttributionSettings()
    clean_t = check_model_tokens(model, clean, min_length=2, name="clean")
    corr_t = check_model_tokens(model, corrupted, min_length=2, name="corrupted")
    if clean_t.shape != corr_t.shape:
        raise ValueError(
            f"corrupted has shape {tuple(corr_t.shape)}, clean {tuple(clean_t.shape)}; fix: pair every clean row "
            "with a corrupted row of the same length (sink_interp.patching.corrupt_tokens makes such pairs)"
        )
    if not (callable(metric) or isinstance(metric, str)):
        raise ValueError(f"metric must be a function of the logits or one of {METRICS}, got {type(metric).__name__}")
    if isinstance(metric, str) and metric not in METRICS:
        raise ValueError(f"metric must be a function of the logits or one of {METRICS}, got {metric!r}")
    spec = describe_attention(model)
    L, H, G = spec.n_layers, spec.n_heads, spec.n_kv_heads
    layers_ = _check_list(layers, L, "layers")
    heads_ = _check_list(heads, H, "heads")
    n, T = clean_t.shape
    pos_t = _positions(positions, site, T)
    H = check_head_counts(spec, layers_, f"patch_heads(what={what!r})")
    if site.base != "pattern":  # per-head q, k, v, z: the hooks must give them [b, T, heads, d] (not MLA's, not missing)
        bad_rows = [spec.layer(l_) for l_ in layers_ if not spec.layer(l_).qkv_readable or site.hook(l_) not in model.hook_dict]
        if bad_rows:
            la = bad_rows[0]
            raise UnsupportedAttention(
                f"patch_heads(what={what!r}): layer {la.layer} of this {spec.family} model uses "
                f"{', '.join(la.unsupported) or 'no hook ' + site.hook(la.layer)}, whose hooks do not give each head's "
                f"{site.base} as attention uses it; "
                + (
                    "fix: what='pattern'"
                    if la.scores_hookable
                    else "no head can be patched on this model (attention runs inside HF)"
                )
            )
    if site.base == "pattern" or (site.kv and site.base == "k" and G < H) or (site.qk and method != "exact"):
        bad = [l_ for l_ in layers_ if not spec.layer(l_).scores_hookable]
        if bad:
            raise ValueError(
                f"what={what!r}{' with attribution' if method != 'exact' else ''} edits or reads the attention pattern, "
                f"which layers {bad} of this {spec.family} model compute inside Hugging Face; fix: what='z', 'v' or "
                "'k' with method='exact'"
            )
    if (site.kv and site.base == "k" and G < H) or (site.qk and method != "exact"):
        verify_attention(model, layers_, f"patching {what!r}")
    chunk_arg = None if batch_size is None else check_positive_int(batch_size, "batch_size")
    if isinstance(metric_from, bool) or not isinstance(metric_from, (int, np.integer)) or not 0 <= metric_from <= T - 2:
        raise ValueError(
            f"metric_from must be a whole number in [0, {T - 2}] (a prediction with a next token), got {metric_from!r}"
        )
    metric_from = int(metric_from)
    dev = model_device(model)
    clean_t, corr_t = clean_t.to(dev), corr_t.to(dev)
    base_t, src_t = (clean_t, corr_t) if direction == "noise" else (corr_t, clean_t)
    pos: Any = slice(None) if pos_t is None else torch.tensor(pos_t, device=dev)

    # the two unpatched runs: baselines, the source's activations, the base's residual at each layer
    names_src = [site.hook(l_) for l_ in layers_]
    if site.kv and site.base == "k" and G < H:
        names_src += [spec.layer(l_).k_hook for l_ in layers_]
    if site.qk and method != "exact":
        names_src += [getattr(spec.layer(l_), f"{site.base}_hook") for l_ in layers_]
    if method == "ig" or (method in ("both", "fast", "verified") and settings.estimator == "ig"):
        names_src.append(hooknames.EMBED)
    t0 = time.perf_counter()
    src_logits, src = forward_capture(model, src_t, names_src)
    base_logits, base_cache = forward_capture(model, base_t, [hooknames.resid_pre(l_) for l_ in layers_])
    clean_logits = base_logits if direction == "noise" else src_logits
    expect = METRIC_EXPECT[metric] if isinstance(metric, str) else int(np.sign(getattr(metric, "expect", 0) or 0))
    if isinstance(metric, str):
        metric_name = metric if not metric_from else f"{metric}[{metric_from}:]"
        fn = named_metric(metric, clean_t, corr_t, clean_logits, start=metric_from)
    else:
        metric_name, fn = getattr(metric, "__name__", "metric"), metric
    base_name, src_name = (
        ("the clean input", "the corrupted input") if direction == "noise" else ("the corrupted input", "the clean input")
    )
    with torch.no_grad():
        base_value = metric_value(fn(base_logits), f"{base_name} (unpatched)")
        src_value = metric_value(fn(src_logits), f"{src_name} (unpatched)")
    clean_value, corr_value = (base_value, src_value) if direction == "noise" else (src_value, base_value)
    seconds = {"baselines": time.perf_counter() - t0}

    values = np.full((L, H), np.nan)
    kv_values = np.full((L, G), np.nan) if site.kv else np.zeros((0, 0))
    estimate_ = np.zeros((0, 0))
    estimate_linear = np.zeros((0, 0))
    kv_estimate = np.zeros((0, 0))
    verified: list[tuple[int, int]] = []
    screen = np.zeros((0, 0))
    meta: dict[str, Any] = {}

    kind = method if method in ESTIMATORS else (settings.estimator if method in ("both", "fast", "verified") else None)
    if kind is not None:
        if metric_name.startswith("kl") and direction == "noise" and kind != "ig":
            warnings.warn(
                "metric='kl' with direction='noise': the KL to the clean run is at its minimum (0) on the clean run, so its "
                "gradient there is 0 and the attribution estimate is ~0 for every head; use metric='logprob', "
                "direction='denoise' or method='ig' for attribution",
                stacklevel=2,
            )
        t0 = time.perf_counter()

        problem = PatchProblem(model, spec, site, layers_, heads_, base_t, src, fn, pos, T, n)

        def attribution() -> Any:
            with dist.local():  # forwards and backwards on one rank: rank 0 computes, the others receive
                if kind == "atp*":
                    return estimate_graddrop(problem)
                return estimate(problem, estimator=kind, steps=settings.steps)

        est, est_lin, kv_est, screen = dist.decide(attribution)
        seconds[kind] = time.perf_counter() - t0
        for name, arr in (("estimate", est), ("linear estimate", est_lin), ("KV estimate", kv_est)):
            ran = np.zeros(0) if arr is None else arr[np.ix_(layers_, heads_ if arr.shape[1] == H else range(arr.shape[1]))]
            if not np.isfinite(ran).all():
                raise NonFiniteError(
                    f"the attribution {name} is NaN/Inf for {int((~np.isfinite(ran)).sum())} patched heads (the metric's gradient "
                    "or the activations hold NaN/Inf): a report holds finite numbers only; fix: check the metric and the model, "
                    "or method='exact'"
                )
        estimate_ = est + base_value
        if est_lin is not None:
            estimate_linear = est_lin + base_value
        kv_estimate = kv_est + base_value if kv_est is not None else np.zeros((0, 0))

    if method in ("exact", "both", "fast", "verified"):
        t0 = time.perf_counter()
        skip = can_start_at_layer(model, base_t, base_logits, base_cache)
        meta["started_at_layer"] = skip
        from tqdm.auto import tqdm

        def run_exact(conds: list[Cond], tag: str) -> None:
            by_layer: dict[int, list[Cond]] = {}
            for c in conds:
                by_layer.setdefault(c.layer, []).append(c)
            plan = []
            for cs in by_layer.values():
                k = chunk_arg or _default_chunk(model, n, T, len(cs))
                plan += [cs[i : i + k] for i in range(0, len(cs), k)]
            # inside sink_interp.distributed() each rank runs a contiguous block of the patched forwards: the metric
            # reads all n samples' logits at once, so the conditions are split, not the samples
            inputs = {
                "clean": clean_t,
                "corrupted": corr_t,
                "model": model,
                "settings": [what, direction, method, metric_name, layers_, heads_, pos_t, [len(c) for c in plan], tag],
            }
            mine = dist.shard(len(plan), inputs)
            got: list[tuple[str, int, int, float]] = []
            bar = tqdm(
                total=len(mine), desc=f"patch {what}", unit="forward", disable=not (progress and dist.is_main()), leave=False
            )
            failed: BaseException | None = None
            try:
                for chunk in (plan[i] for i in mine):
                    l_ = chunk[0].layer
                    la = spec.layer(l_)
                    k = len(chunk)
                    hooks = edit_hooks(la, site, chunk, src, n, pos, T)
                    with attach_hooks(model, hooks), torch.no_grad():
                        resid = base_cache[hooknames.resid_pre(l_)]
                        logits = run_from(model, l_, resid.repeat(k, 1, 1), base_t.repeat(k, 1), skip)
                    with torch.no_grad():
                        for i, c in enumerate(chunk):
                            part = "KV head" if c.table == "kv_values" else "head"
                            where = f"{base_name} with layer {c.layer} {part} {c.index}'s {what} patched"
                            got.append((c.table, c.layer, c.index, metric_value(fn(logits[i * n : (i + 1) * n]), where)))
                    del logits
                    bar.update(1)
            except Exception as e:  # noqa: BLE001 - re-raised on every rank
                failed = e
            finally:
                bar.close()
            dist.raise_any(failed)
            for table, layer_, index, v in (g for rank_got in dist.gather(got) for g in rank_got):
                (values if table == "values" else kv_values)[layer_, index] = v
            if site.kv and G == H:  # one KV head per query head: the two tables are the same patches
                ran = [(c.layer, c.index) for c in conds]
                for l_, h in ran:
                    values[l_, h] = kv_values[l_, h]
            meta["forwards"] = meta.get("forwards", 0) + len(plan)

        if method in ("exact", "both"):
            run_exact(conditions(site, layers_, heads_, spec, H, G), "all")
        else:
            verified = verify_screened(
                site, spec, layers_, heads_, screen, values, base_value, settings, run_exact, method == "verified"
            )
            screen = np.fmax.reduce(screen)
        seconds["exact"] = time.perf_counter() - t0

    return PatchReport(
        values=values,
        kv_values=kv_values,
        estimate=estimate_,
        estimate_linear=estimate_linear,
        kv_estimate=kv_estimate,
        clean=clean_value,
        corrupted=corr_value,
        what=what,
        direction=direction,
        method=method,
        metric=metric_name,
        positions=pos_t,
        layers=tuple(layers_),
        heads=tuple(heads_),
        n_heads=H,
        n_kv_heads=G,
        seconds=seconds,
        n=n,
        length=T,
        provenance=provenance(model, clean),  # a ProbeSet says what the clean input is
        extra=dict(extra or {}),
        started_at_layer=meta.get("started_at_layer"),
        forwards=int(meta.get("forwards", 0)),
        expect=expect,
        estimator=kind or "",
        steps=settings.steps if kind == "ig" else 0,
        verified=tuple(verified),
        screen=screen if method in ("fast", "verified") else np.zeros((0, 0)),
    )


# --------------------------------------------------------------------------- sink recipes


def corrupt_tokens(model: Any, tokens: Tensor, how: str, *, move_to: int = 1) -> Tensor:
    """The corrupted partner of ``tokens`` for a sink experiment (same shape):

    * ``"bos"``: the first token (BOS) replaced by the row's second token: the same text without BOS;
    * ``"first-token"``: the first token moved to position ``move_to`` (tokens ``1..move_to`` shift left):
      the sink's token no longer comes first;
    * ``"shuffle"``: each row replaced by the next row (row ``i`` gets row ``i + 1``, the last the first):
      another sample, for patching a sink's key or value from it.

    Example:
        >>> import torch
        >>> t = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 10]])
        >>> corrupt_tokens(None, t, "first-token", move_to=2)[0].tolist(), corrupt_tokens(None, t, "bos")[0].tolist()
        ([5, 6, 1, 7], [5, 5, 6, 7])
    """
    said_bos = tokens.bos if isinstance(tokens, ProbeSet) else None  # what the probe says it made
    t = torch.as_tensor(as_tokens(tokens)).long()
    if how not in CORRUPTIONS:
        raise ValueError(f"corrupt must be one of {CORRUPTIONS}, got {how!r}")
    out = t.clone()
    if how == "bos":
        fix = "fix: probe_tokens(model, ..., bos=True) (CLI: --bos)"
        bos_id = special_token_ids(model).get("bos") if model is not None else None  # the tokenizer's, else the config's
        if said_bos is False:
            raise ValueError(f"corrupt='bos' removes the BOS token, but these tokens were made without BOS (bos=False); {fix}")
        if bos_id is not None and not bool((t[:, 0] == bos_id).all()):
            raise ValueError(f"corrupt='bos' needs tokens that start with BOS (id {bos_id}); {fix}")
        if bos_id is None and model is not None and said_bos is not True:
            raise ValueError(
                "corrupt='bos' removes the BOS token, but this model names no BOS id (no tokenizer, no bos_token_id in its "
                "config), so nothing shows that these tokens start with one; fix: pass a ProbeSet that says so, ProbeSet.of(tokens, bos=True), or "
                "corrupt='first-token' (move the first token)"
            )
        out[:, 0] = t[:, 1]
    elif how == "first-token":
        if not 1 <= move_to < t.shape[1]:
            raise ValueError(f"move_to must lie in [1, {t.shape[1]}), got {move_to}")
        out[:, :move_to] = t[:, 1 : move_to + 1]
        out[:, move_to] = t[:, 0]
    else:
        if t.shape[0] < 2:
            raise ValueError("corrupt='shuffle' needs at least 2 samples (row i is patched from row i + 1); fix: n >= 2")
        out = t.roll(-1, dims=0)
    return out


#: the direction each recipe patches in: from the input with the sink into the one without (denoise), or from another sample
RECIPE_DIRECTION = {"bos": "denoise", "first-token": "denoise", "shuffle": "noise"}


def patch_sink(
    model: Any,
    tokens: Tensor,
    corrupt: str = "bos",
    *,
    what: str = "z",
    method: str = "exact",
    metric: Metric | str = "logprob",
    move_to: int = 1,
    **kw: Any,
) -> PatchReport:
    """One sink experiment in one call: :func:`corrupt_tokens` makes the partner input, :func:`patch_heads` patches.

    * ``corrupt="bos"``: patch from the input with BOS into the same text without it (``direction="denoise"``:
      the run without BOS gets each head's activation from the run with BOS);
    * ``"first-token"``: patch from the input whose first token is the sink into one where it was moved to
      ``move_to`` (denoise);
    * ``"shuffle"``: patch each sample's ``what`` (e.g. ``"k-sink"``, ``"v-sink"``) from another sample (noise).

    ``tokens`` are the clean input; ``metric`` defaults to the log-prob of its next tokens, read after the
    positions the recipe changes (``metric_from``: 1 for ``"bos"``, ``move_to + 1`` for ``"first-token"``, 0 for
    ``"shuffle"``: predicting the next token from a replaced token says little about the heads); ``kw`` go to
    :func:`patch_heads` (``direction`` and ``metric_from`` override the recipe's).

    Example:
        >>> from sink_interp import tiny_model, probe_tokens
        >>> m = tiny_model()
        >>> rep = patch_sink(m, probe_tokens(m, "random", n=2, length=8, bos=True), "shuffle", what="v-sink", progress=False)
        >>> rep.direction, rep.positions, rep.recipe
        ('noise', (0,), 'shuffle')
    """
    check_model_tokens(model, tokens, min_length=2)
    corrupted = corrupt_tokens(model, tokens, corrupt, move_to=move_to)
    kw.setdefault("direction", RECIPE_DIRECTION[corrupt])
    kw.setdefault("metric_from", {"bos": 1, "first-token": move_to + 1, "shuffle": 0}[corrupt])
    rep = patch_heads(model, tokens, corrupted, metric, what=what, method=method, **kw)
    return dataclasses.replace(rep, recipe=corrupt, move_to=move_to if corrupt == "first-token" else 0)
