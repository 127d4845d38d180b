"""Running the patched model: forwards that start at the patched layer, the conditions (one patched head each)
stacked in one forward, the hooks that write the other input's activation, and exact patching of the heads an
attribution screen ranks first (``method="fast"`` and ``"verified"``).
"""

from __future__ import annotations

import contextlib
import math
import types
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from .._internal import hooknames
from ..architecture import (
    LayerAttention,
)
from ..attribution import AttributionSettings, forward_capture
from .sites import Site

# --------------------------------------------------------------------------- running the model


def _identity_block(self: Any, *args: Any, **kwargs: Any) -> Any:
    return args[0] if args else kwargs["hidden_states"]


@contextlib.contextmanager
def _skip_blocks_below(model: Any, layer: int) -> Iterator[None]:
    """Blocks ``0..layer-1`` return their input untouched (the forward starts at ``layer`` from a given residual)."""
    done: list[tuple[Any, Any]] = []
    missing = object()
    try:
        for b in list(model.blocks)[:layer]:
            done.append((b, b.__dict__.get("forward", missing)))  # an instance-level forward (accelerate's hooks) is kept
            object.__setattr__(b, "forward", types.MethodType(_identity_block, b))
        yield
    finally:
        for b, before in done:
            if before is missing:
                b.__dict__.pop("forward", None)
            else:
                object.__setattr__(b, "forward", before)


_CAN_START: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def run_from(model: Any, layer: int, resid: Tensor, tokens: Tensor, skip: bool) -> Tensor:
    """Logits of the forward that enters block ``layer`` with ``resid`` (blocks below skipped), or of ``tokens``."""
    if not skip or layer == 0:
        return model(tokens, return_type="logits")
    with _skip_blocks_below(model, layer):
        return model(resid, start_at_layer=layer, return_type="logits")


def can_start_at_layer(model: Any, tokens: Tensor, logits: Tensor, cache: dict[str, Tensor] | None = None) -> bool:
    """Whether a forward that enters the last block with the residual the run of ``tokens`` had there (every
    block below skipped) gives that run's ``logits``; checked once per model (``cache`` may hold that residual).

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> m, t = tiny_model(), torch.randint(4, 128, (1, 6))
        >>> with torch.no_grad():
        ...     can_start_at_layer(m, t, m(t))
        True
    """
    try:
        cached = _CAN_START.get(model)
    except TypeError:  # pragma: no cover
        cached = None
    if cached is not None:
        return cached
    L = int(model.cfg.n_layers)
    name = hooknames.resid_pre(L - 1)
    try:
        resid = (cache or {}).get(name)
        if resid is None:
            _, got = forward_capture(model, tokens, [name])
            resid = got[name]
        with torch.no_grad():
            out = run_from(model, L - 1, resid, tokens, skip=True)
        ok = out.shape == logits.shape and bool(torch.allclose(out, logits, rtol=1e-5, atol=1e-5))
    except Exception:  # any family whose blocks cannot be skipped this way: run the whole model
        ok = False
    with contextlib.suppress(TypeError):
        _CAN_START[model] = ok
    return ok


# --------------------------------------------------------------------------- conditions


@dataclass(frozen=True)
class Cond:
    """One patched forward's condition: which head of which layer is patched, and the table its metric goes in."""

    layer: int
    kind: str  # "head" (site tensor, query head or KV head), "qk" (key of one query head), "qv" (value of one query head)
    index: int  # the head (query head, or KV head for kv sites with kind "head")
    table: str  # "values" or "kv_values"


def conditions(site: Site, layers: Sequence[int], heads: Sequence[int], spec: Any, H: int, G: int) -> list[Cond]:
    """Every condition of an exact sweep: one per head of ``layers``; for ``k``/``v`` sites one per KV head, and one
    per query head too where KV heads are shared (``G < H``)."""
    out: list[Cond] = []
    for l_ in layers:
        if not site.kv:
            out += [Cond(l_, "head", h, "values") for h in heads]
            continue
        la = spec.layer(l_)
        groups = sorted({la.kv_head(h) for h in heads})
        out += [Cond(l_, "head", g, "kv_values") for g in groups]
        if G < H:  # per query head: only that head sees the patched key/value
            out += [Cond(l_, "qk" if site.base == "k" else "qv", h, "values") for h in heads]
    return out


def edit_hooks(
    la: LayerAttention,
    site: Site,
    chunk: Sequence[Cond],
    src: dict[str, Tensor],
    n: int,
    pos: Any,
    T: int,
) -> list[tuple[str, Any]]:
    """Hooks that patch replica ``i`` (rows ``i*n:(i+1)*n``) of a stacked forward by condition ``chunk[i]``."""
    l_ = la.layer
    hooks: list[tuple[str, Any]] = []
    plain = [(i, c) for i, c in enumerate(chunk) if c.kind == "head"]
    if plain:
        name = site.hook(l_)
        s = src[name]

        def edit(x: Tensor, hook: Any) -> Tensor:
            x = x.clone()
            for i, c in plain:
                rows = slice(i * n, (i + 1) * n)
                x[site.index(rows, c.index, pos)] = s[site.index(slice(None), c.index, pos)].to(x.dtype)
            return x

        hooks.append((name, edit))
    live: dict[str, Tensor] = {}

    def grab(name: str) -> Any:
        def keep(x: Tensor, hook: Any) -> None:
            live[name] = x

        return keep

    qk = [(i, c) for i, c in enumerate(chunk) if c.kind == "qk"]
    if qk:
        k_src = src[la.k_hook]
        vis = la.mask().dense(T, device=k_src.device)

        def scores(x: Tensor, hook: Any) -> Tensor:
            x = x.clone()
            for i, c in qk:
                rows, g = slice(i * n, (i + 1) * n), la.kv_head(c.index)
                k_mix = live[la.k_hook][rows].clone()
                k_mix[:, pos] = k_src[:, pos].to(k_mix.dtype)
                qf = la.final(live[la.q_hook][rows])[:, :, c.index : c.index + 1]  # [n, T, 1, d]
                kf = la.final(k_mix)[:, :, g : g + 1]
                new = la.logits(qf.transpose(1, 2), kf.transpose(1, 2), check=False)[:, 0]  # [n, T, T]
                x[rows, c.index] = torch.where(vis, new.to(x.dtype), x[rows, c.index])
            return x

        hooks = [(la.q_hook, grab(la.q_hook)), (la.k_hook, grab(la.k_hook))] + hooks + [(hooknames.attn_scores(l_), scores)]
    qv = [(i, c) for i, c in enumerate(chunk) if c.kind == "qv"]
    if qv:
        v_src = src[hooknames.v(l_)]

        def z_edit(x: Tensor, hook: Any) -> Tensor:
            x = x.clone()
            A, v = live[hooknames.pattern(l_)], live[hooknames.v(l_)]
            for i, c in qv:
                rows, g = slice(i * n, (i + 1) * n), la.kv_head(c.index)
                dv = torch.zeros_like(v[rows][:, :, g])
                dv[:, pos] = (v_src[:, pos, g] - v[rows][:, pos, g]).to(dv.dtype)
                x[rows, :, c.index] += torch.einsum("bqk,bkd->bqd", A[rows, c.index].to(dv.dtype), dv).to(x.dtype)
            return x

        hooks = (
            [(hooknames.v(l_), grab(hooknames.v(l_))), (hooknames.pattern(l_), grab(hooknames.pattern(l_)))]
            + hooks
            + [(hooknames.z(l_), z_edit)]
        )
    return hooks


def verify_screened(
    site: Site,
    spec: Any,
    layers: Sequence[int],
    heads: Sequence[int],
    screens: np.ndarray,
    values: np.ndarray,
    base_value: float,
    settings: AttributionSettings,
    run_exact: Callable[[list[Cond], str], None],
    stop: bool,
) -> list[tuple[int, int]]:
    """Patch heads exactly, the best-screened first, ``settings.batch`` per round; the heads verified, in order.

    The order interleaves the screens' rankings (a head comes as early as its best rank in any screen: a head one
    screen misses, another may catch). ``stop`` (``"verified"``): until no head left has a screen value above the
    ``settings.top``-th largest exact ``|effect|`` so far (or ``max_verified``); else (``"fast"``) the first
    ``settings.budget`` of the heads."""
    H, G = spec.n_heads, spec.n_kv_heads
    heads_all = [(l_, h) for l_ in layers for h in heads]
    ranks = []
    for sc in screens:
        vals = np.array([float(sc[lh]) for lh in heads_all])
        vals = np.where(np.isfinite(vals), vals, -np.inf)
        r = np.empty(len(vals), int)
        r[np.argsort(-vals, kind="stable")] = np.arange(len(vals))
        ranks.append(r)
    best = np.min(ranks, axis=0)
    bound = np.fmax.reduce(screens)
    order = [heads_all[i] for i in sorted(range(len(heads_all)), key=lambda i: (best[i], -float(bound[heads_all[i]])))]
    if stop:
        cap = len(order) if settings.max_verified is None else min(settings.max_verified, len(order))
    else:
        cap = max(settings.top, math.ceil(settings.budget * len(order)))
        cap = min(cap, len(order))
    done: list[tuple[int, int]] = []

    def cond(l_: int, h: int) -> Cond:
        if not site.kv:
            return Cond(l_, "head", h, "values")
        if G == H:
            return Cond(l_, "head", h, "kv_values")
        return Cond(l_, "qk" if site.base == "k" else "qv", h, "values")

    while len(done) < cap:
        size = int(settings.batch) if stop else cap  # type: ignore[arg-type]
        batch = order[len(done) : min(len(done) + size, cap)]
        run_exact([cond(l_, h) for l_, h in batch], f"verify {len(done)}")
        done += batch
        if len(done) >= cap or not stop:
            break
        found = sorted((abs(float(values[lh] - base_value)) for lh in done), reverse=True)
        left = max(float(bound[lh]) for lh in order[len(done) :])
        if len(found) >= settings.top and left < found[settings.top - 1]:
            break
    return done
