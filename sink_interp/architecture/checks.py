"""Check the description against the model and refuse what it cannot give: the self-checks
(:func:`check_attention`, :func:`verify_attention`), head-count, context and token checks."""

from __future__ import annotations

import weakref
from typing import Any, Sequence

import torch
from torch import Tensor

from .._internal import hooknames
from .._internal.probe import ProbeSet, as_tokens
from .describe import describe_attention
from .spec import AttentionSpec, LayerAttention, UnsupportedAttention


def check_head_counts(spec: AttentionSpec, layers: Sequence[int], what: str) -> int:
    """The query-head count shared by ``layers``; one line naming the counts where they differ (Laguna sets them per layer).

    Reports hold one ``[layer, head]`` grid, so an analysis runs on layers that share a head count.
    """
    counts: dict[int, list[int]] = {}
    for layer in layers:
        counts.setdefault(spec.layer(layer).n_heads, []).append(int(layer))
    if len(counts) > 1:
        groups = "; ".join(f"{h} heads: layers {ls}" for h, ls in sorted(counts.items()))
        first = next(iter(sorted(counts.items())))[1]
        raise UnsupportedAttention(
            f"{what}: this {spec.family} model has per-layer head counts ({groups}), and a report holds one head count "
            f"for all its layers; fix: analyse the layers of one head count at a time, e.g. layers={first}"
        )
    return next(iter(counts)) if counts else spec.n_heads


def qk_hooks(model: Any, layers: Sequence[int] | None = None) -> list[str]:
    """The hook names that carry every chosen layer's q and k (see :attr:`LayerAttention.q_hook`)."""
    spec = describe_attention(model)
    out: list[str] = []
    for l in range(spec.n_layers) if layers is None else layers:
        la = spec.layer(l)
        out += [la.q_hook, la.k_hook]
    return out


def check_attention(model: Any, tokens: Tensor | ProbeSet | None = None, *, length: int = 24, seed: int = 0) -> dict[int, float]:
    """``{layer: max |A_description - A_model|}``: the description against the model's own ``hook_pattern``.

    Runs one short forward (default: one random sample of ``length`` tokens) and rebuilds each
    layer's pattern from its q and k with :meth:`LayerAttention.pattern`. Layers the description
    cannot rebuild are left out.

    Examples:
        >>> from sink_interp import tiny_model
        >>> max(check_attention(tiny_model()).values()) < 1e-5
        True
    """
    from ..capture import Keep, model_device, run_reducers

    spec = describe_attention(model)
    if tokens is None:
        gen = torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, int(model.cfg.d_vocab), (1, length), generator=gen)
    tokens = as_tokens(tokens)
    layers = [la for la in spec.layers if not la.unsupported]
    names = [n for la in layers for n in (la.q_hook, la.k_hook, hooknames.pattern(la.layer))]
    keep = Keep(names, dtype=None)
    run_reducers(model, tokens.to(model_device(model)), [keep], progress=False, stop_early=True)
    got = keep.result()
    out = {}
    for la in layers:
        try:
            q, k = la.final_qk(got[la.q_hook], got[la.k_hook])
            A = la.pattern(q.transpose(1, 2), k.transpose(1, 2))
            out[la.layer] = float((A - got[hooknames.pattern(la.layer)].float()).abs().max())
        except (RuntimeError, ValueError, IndexError):  # q and k that do not fit together: not reproduced
            out[la.layer] = float("inf")
    return out


#: largest |difference| from the model's own attention weights or sink scores accepted as "the same", by weight dtype
ATTENTION_ATOL = {torch.float32: 1e-4, torch.float64: 1e-6, torch.float16: 2e-2, torch.bfloat16: 2e-2}


def attention_atol(model: Any) -> float:
    """The tolerance of :data:`ATTENTION_ATOL` for ``model``'s weight dtype."""
    return ATTENTION_ATOL.get(next(model.parameters()).dtype, 2e-2)


#: tokens of the check that gates rebuilding a layer's attention from q and k (more where a window is short)
VERIFY_TOKENS = 64
_VERIFIED: weakref.WeakKeyDictionary[Any, dict[int, float]] = weakref.WeakKeyDictionary()


def verify_attention(model: Any, layers: Sequence[int], what: str, fix: str | None = None) -> None:
    """Refuse, by name, to rebuild attention from q and k where the description does not reproduce the model.

    Interventions that form scores again from q and k (prefix masks; every edit on layers whose
    attention runs inside Hugging Face) call this first. The comparison with the model's own
    ``hook_pattern`` (:func:`check_attention`, once per model, on ``VERIFY_TOKENS`` tokens or past
    the shortest window) is cached.
    """
    spec = describe_attention(model)
    for layer in layers:
        spec.layer(layer).check_supported(what, fix)
    try:
        diffs = _VERIFIED.get(model)
    except TypeError:  # pragma: no cover - not weak-referenceable
        diffs = None
    if diffs is None:
        windows = [w for w in spec.windows if w]
        length = max(VERIFY_TOKENS, min(windows) + 16) if windows else VERIFY_TOKENS
        length = min(length, int(getattr(model.cfg, "n_ctx", length) or length))
        diffs = check_attention(model, length=length)
        try:
            _VERIFIED[model] = diffs
        except TypeError:  # pragma: no cover
            pass
    tol = attention_atol(model)
    bad = {layer: diffs[layer] for layer in layers if layer in diffs and not diffs[layer] <= tol}
    if bad:
        worst = max(bad.values())
        raise UnsupportedAttention(
            f"{what}: the description of layer(s) {sorted(bad)} does not reproduce this {spec.family} model's own "
            f"attention (max |diff| {worst:.2e}), so sink_interp will not rebuild it from q and k; fix: use analyses "
            "that read the model's own weights (method='pattern', AblateDims), and see docs/support.md"
        )


_REROTATED: weakref.WeakKeyDictionary[Any, dict[int, float]] = weakref.WeakKeyDictionary()


def rerotation_blockers(la: LayerAttention) -> list[str]:
    """What stops re-rotating layer ``la``'s queries to other positions from q before RoPE, in words (empty: nothing)."""
    out = []
    if la.position == "alibi":
        out.append("ALiBi (a bias by absolute key position)")
    elif la.position == "rope inside MLA":
        out.append("MLA's internal RoPE")
    elif la.position.startswith("rope inside "):
        out.append("RoPE applied " + la.position[5:])
    if la.position == "rope" and la.rotary is not None and la.rotary.module is None:
        out.append(f"{la.rotary.style} rotary without a table module")
    elif la.position == "rope" and la.rotary is not None and la.rotary.style not in ("half", "interleaved"):
        out.append(f"{la.rotary.style}-pair rotary, which sink_interp does not rotate itself")
    if la.query_scale:
        out.append(f"a position-dependent query scale ({la.query_scale})")
    if la.qk_norm_after_rope:
        out.append("QK-norm after RoPE")
    said = ("rotary embedding applied inside", "attention bridge MLA") if out else ("\0",)
    out.extend(u for u in la.unsupported if not u.startswith(said))
    return out


def verify_rerotation(model: Any, layers: Sequence[int], what: str) -> None:
    """Refuse, by name, to rotate queries to other positions where the description cannot rebuild the model's own.

    :class:`~sink_interp.StreamingWindow` with cache positions rotates each layer's queries (read before
    RoPE) to a new position. Features that rotation cannot carry (a position-dependent query scale,
    ALiBi, MLA's internal RoPE, RoPE inside a Hugging Face module) are refused by name; then, once per
    model, the queries rotated back to their own positions on a probe of ``VERIFY_TOKENS`` random tokens
    are compared with the model's own rotated queries, and a layer off by more than :func:`attention_atol`
    (relative to the largest query entry) is refused too.
    """
    spec = describe_attention(model)
    for layer in layers:
        why = rerotation_blockers(spec.layer(layer))
        if why:
            raise UnsupportedAttention(
                f"{what}: layer {layer} of this {spec.family} model uses {', '.join(why)}, which sink_interp cannot "
                "rebuild at other positions; fix: rope_positions='original' (only the mask changes)"
            )
    verify_attention(model, layers, what)
    rotated = [spec.layer(layer) for layer in layers if spec.layer(layer).rotary is not None]
    if not rotated:
        return
    try:
        errs = _REROTATED.get(model)
    except TypeError:  # pragma: no cover
        errs = None
    if errs is None:
        from ..capture import Keep, model_device, run_reducers

        gen = torch.Generator().manual_seed(0)
        length = min(VERIFY_TOKENS, int(getattr(model.cfg, "n_ctx", VERIFY_TOKENS) or VERIFY_TOKENS))
        tokens = torch.randint(0, int(model.cfg.d_vocab), (1, length), generator=gen)
        las = [la for la in spec.layers if la.rotary is not None and not rerotation_blockers(la)]
        keep = Keep(list(dict.fromkeys(n for la in las for n in (la.q_pre_rotary_hook, la.q_hook))), dtype=None)
        run_reducers(model, tokens.to(model_device(model)), [keep], progress=False, stop_early=True)
        got = keep.result()
        errs = {}
        for la in las:
            try:
                want = la.final(got[la.q_hook]).float()
                mine = la.rotary.apply(la.pre_rotary(got[la.q_pre_rotary_hook]).float())
                errs[la.layer] = float((mine - want).abs().max() / want.abs().max().clamp_min(1e-30))
            except (RuntimeError, ValueError, IndexError):
                errs[la.layer] = float("inf")
        try:
            _REROTATED[model] = errs
        except TypeError:  # pragma: no cover
            pass
    tol = attention_atol(model)
    bad = {la.layer: errs.get(la.layer, float("inf")) for la in rotated if not errs.get(la.layer, float("inf")) <= tol}
    if bad:
        raise UnsupportedAttention(
            f"{what}: on a probe, the queries of layer(s) {sorted(bad)} rotated from before RoPE differ from this "
            f"{spec.family} model's own by {max(bad.values()):.2e} (relative; tolerance {tol:g}), so sink_interp will not "
            "rotate them to other positions; fix: rope_positions='original' (only the mask changes)"
        )


_CONTEXT_WARNED: weakref.WeakSet[Any] = weakref.WeakSet()


def check_context(model: Any, length: int) -> None:
    """Refuse ``length`` beyond the context of a model with learned positions; warn once for other schemes.

    A learned position table has no row past ``model.cfg.n_ctx``; rotary, ALiBi and position-free
    models run at any length but were trained up to it, so their numbers past it describe extrapolation.

    Examples:
        >>> from sink_interp import tiny_model
        >>> m = tiny_model(attention="mha", positions="learned", norm="layer", n_ctx=32)
        >>> check_context(m, 32)
        >>> check_context(m, 33)
        Traceback (most recent call last):
        ...
        ValueError: length 33 exceeds the context of this model (32 tokens) and its positions are learned: there is no position embedding for tokens 33 on; fix: length <= 32 (CLI: --length 32)
    """
    n_ctx = int(getattr(model.cfg, "n_ctx", 0) or 0)
    if n_ctx <= 0 or length <= n_ctx:
        return
    positional = describe_attention(model).positional
    if positional == "learned":
        raise ValueError(
            f"length {length} exceeds the context of this model ({n_ctx} tokens) and its positions are learned: there is "
            f"no position embedding for tokens {n_ctx + 1} on; fix: length <= {n_ctx} (CLI: --length {n_ctx})"
        )
    try:
        if model in _CONTEXT_WARNED:
            return
        _CONTEXT_WARNED.add(model)
    except TypeError:  # pragma: no cover - not weak-referenceable
        pass
    import warnings

    warnings.warn(
        f"length {length} is beyond the context this model was built for ({n_ctx} tokens, {positional} positions): "
        "the numbers describe extrapolation past its training length",
        stacklevel=4,
    )


def check_model_tokens(model: Any, tokens: Any, min_length: int = 2, name: str = "tokens") -> Tensor:
    """:func:`sink_interp._internal.errors.check_tokens` for ``model``'s vocabulary, then :func:`check_context`.

    ``tokens`` is a tensor (or list) of ids or a :class:`~sink_interp.ProbeSet`; the checked plain tensor is returned.
    """
    from .._internal.errors import check_tokens

    toks = check_tokens(tokens, d_vocab=int(model.cfg.d_vocab), min_length=min_length, name=name)
    check_context(model, int(toks.shape[1]))
    return toks
