"""Running interventions: :func:`intervene` and :func:`masked` blocks, how they nest, and the hooks they attach.

Every block on a model is one frame of that model's stack; only the innermost block's hooks run, and
they apply the interventions and the mask of every enclosing block plus its own, built as one
:class:`~sink_interp.pipeline.LayerPipeline` per layer. On exit a block removes exactly the hooks it
attached (through :func:`sink_interp.capture.attach_hooks`). The rules are in :mod:`sink_interp.interventions`.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from typing import Any, Callable, Iterable, Iterator, Sequence

from torch import Tensor

from ..capture import attach_hooks
from ..masks import AttentionMask, as_mask
from ..pipeline import LayerPipeline
from .base import Intervention
from .edits import AblateDims


def _sites(
    model: Any, flat: list[Intervention], mask: AttentionMask | None = None, layers: Sequence[int] | None = None
) -> tuple[list[LayerPipeline], list[tuple[str, Callable[..., Any]]]]:
    """Bind ``flat``, group them by layer into sites (plus ``mask`` on ``layers``, default all); return sites and residual hooks."""
    for iv in flat:
        iv.bind(model)
    per_layer: dict[int, list[Intervention]] = {}
    residual: list[tuple[str, Callable[..., Any]]] = []
    for iv in flat:
        residual.extend(iv.residual_hooks(model))
        if isinstance(iv, AblateDims):
            continue
        for layer in iv.layers:
            per_layer.setdefault(layer, []).append(iv)
    masked_layers: set[int] | None = None
    if mask is not None and not mask.is_causal:
        L = int(model.cfg.n_layers)
        masked_layers = {int(x) for x in (range(L) if layers is None else layers)}
        for layer in sorted(masked_layers):
            per_layer.setdefault(layer, [])
    # the mask acts on its own layers only, also where an intervention shares a site with it
    sites = [
        LayerPipeline(model, layer, ivs, mask if masked_layers is not None and layer in masked_layers else None)
        for layer, ivs in sorted(per_layer.items())
    ]
    return sites, residual


# --------------------------------------------------------------------------- nested blocks


class _Frame:
    """One active :func:`intervene` or :func:`masked` block on a model: what it asked for, and whether its hooks run.

    Only the innermost block's hooks run: they apply the interventions and the mask of every
    enclosing block plus its own, built as one pipeline (see :func:`_compose`).
    """

    __slots__ = ("enabled", "ivs", "mask", "mask_layers")

    def __init__(self, ivs: list[Intervention], mask: AttentionMask | None = None, mask_layers: tuple[int, ...] | None = None):
        self.ivs, self.mask, self.mask_layers, self.enabled = ivs, mask, mask_layers, True


# model -> its active blocks, outermost first
_STACKS: weakref.WeakKeyDictionary[Any, list[_Frame]] = weakref.WeakKeyDictionary()


def active_interventions(model: Any) -> list[Intervention]:
    """The interventions active on ``model`` (enclosing :func:`intervene` blocks, outermost first).

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, intervene, MaskKey, ZeroValue
        >>> m = tiny_model()
        >>> with intervene(m, MaskKey()):
        ...     with intervene(m, ZeroValue(layers=[1])):
        ...         [type(iv).__name__ for iv in active_interventions(m)]
        ['MaskKey', 'ZeroValue']
    """
    return [iv for f in _STACKS.get(model, ()) for iv in f.ivs]


def _compose(model: Any, frames: list[_Frame]) -> tuple[list[LayerPipeline], list[tuple[str, Callable[..., Any]]]]:
    """One pipeline for ``frames`` flattened: their interventions in order (outer blocks first) and their mask."""
    flat = [iv for f in frames for iv in f.ivs]
    seen: set[int] = set()
    for iv in flat:
        if id(iv) in seen:
            raise ValueError(
                f"{iv.label} is given twice (in one intervene() call or in nested blocks); each object applies once: "
                "drop the repeat, or make a second object to apply the same edit twice"
            )
        seen.add(id(iv))
    for other, stack in list(_STACKS.items()):
        if other is not model and any(id(iv) in seen for f in stack for iv in f.ivs):
            busy = next(iv for f in stack for iv in f.ivs if id(iv) in seen)
            raise ValueError(
                f"{busy.label} is active in an intervene() block on another model; make a second object for this one"
            )
    mask: AttentionMask | None = None
    layers: set[int] | None = set()
    for f in frames:
        if f.mask is None:
            continue
        if mask is not None and f.mask != mask:
            raise ValueError(
                f"masked() blocks with different masks do not nest ({mask.describe()} outside, {f.mask.describe()} inside); "
                "pass the one AttentionMask that says which keys each query sees"
            )
        mask = f.mask
        layers = None if layers is None or f.mask_layers is None else layers | set(f.mask_layers)
    return _sites(model, flat, mask, None if layers is None else sorted(layers))


def _gated(frame: _Frame, fn: Callable[..., Any]) -> Callable[..., Any]:
    def hook(x: Tensor, hook: Any) -> Any:
        return fn(x, hook) if frame.enabled else None

    return hook


_RAW = "_sink_interp_raw_mask"


def _raw_mask_hook_points(model: Any) -> list[str]:
    """Hook points carrying hooks made by :func:`mask_hooks` (they do not take part in nesting)."""
    out = []
    for name, hp in model.hook_dict.items():
        if any(getattr(getattr(h, "user_hook", None), _RAW, False) for h in getattr(hp, "fwd_hooks", None) or []):
            out.append(name)
    return out


@contextlib.contextmanager
def _block(
    model: Any, ivs: list[Intervention], mask: AttentionMask | None = None, mask_layers: Sequence[int] | None = None
) -> Iterator[Any]:
    """Push a block on ``model``'s stack: attach the hooks of all active blocks plus this one, pause the enclosing
    block's hooks; on exit (also after an exception) remove exactly these hooks and let the enclosing block run again."""
    raw = _raw_mask_hook_points(model)
    if raw:
        raise ValueError(
            f"hooks from mask_hooks() are attached to this model ({raw[0]}, ...); they do not compose with intervene(): "
            "use `with masked(model, mask):` instead, which nests exactly"
        )
    stack = _STACKS.get(model, [])
    frame = _Frame(ivs, mask, None if mask_layers is None else tuple(int(x) for x in mask_layers))
    sites, residual = _compose(model, [*stack, frame])  # raises before anything on the model changes
    hooks = [(name, _gated(frame, fn)) for name, fn in residual + [h for s in sites for h in s.hooks()]]
    outer = stack[-1] if stack else None
    stack.append(frame)
    _STACKS[model] = stack
    try:
        with attach_hooks(model, hooks), _quiet_post_hoc():
            if outer is not None:
                outer.enabled = False
            yield model
    finally:
        for s in sites:
            s.ctx.clear()
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is frame:
                del stack[i]
                break
        if stack and stack[-1] is outer and outer is not None:
            outer.enabled = True
        if not stack:
            _STACKS.pop(model, None)


@contextlib.contextmanager
def _quiet_post_hoc() -> Iterator[None]:
    """Silence the bridge's warning that a delegated layer's reported pattern was replaced (we report the rebuilt one)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"A hook on .*hook_(pattern|attn_scores) returned a modified tensor")
        yield


@contextlib.contextmanager
def intervene(model: Any, *interventions: Intervention | Sequence[Intervention]) -> Iterator[Any]:
    """Run ``model`` with ``interventions`` inside a ``with`` block; restore it exactly on exit.

    Interventions are applied in the stage order described in :mod:`sink_interp.interventions`;
    within a stage, in the order given. Lists are flattened, so a
    composed intervention can be passed as one item. Yields the model.

    Blocks nest: inside ``with intervene(model, *inner)`` within
    ``with intervene(model, *outer)`` the model runs exactly as with
    ``intervene(model, *outer, *inner)`` (the outer block's interventions come
    first within each stage). The inner block pauses the outer block's hooks and
    attaches the flattened composition; on exit, also after an exception, it
    removes exactly its hooks and the outer block's own hooks run again. A
    :func:`masked` block, inside or outside, adds its mask to stage 1 of the
    composition. Each intervention object applies once: giving the same object
    twice, in one call or in nested blocks, is a ``ValueError`` (make a second
    object to apply an edit twice). Close blocks in reverse order (``with`` does).

    Example:
        >>> import torch
        >>> from sink_interp import tiny_model, intervene, KVBias, MaskKey, ZeroValue
        >>> model = tiny_model()
        >>> bias = KVBias(per_head=True)
        >>> with intervene(model, MaskKey(), bias) as m:
        ...     logits = m(torch.randint(4, 128, (1, 6)))
        >>> len(list(bias.parameters()))  # one k* per layer
        2
        >>> x, zero = torch.randint(4, 128, (1, 6)), ZeroValue(positions=[1])
        >>> with intervene(model, bias), intervene(model, zero):  # nested == one call with both
        ...     nested = model(x)
        >>> with intervene(model, bias, zero):
        ...     torch.equal(model(x), nested)
        True
    """
    with _block(model, flatten_interventions(interventions)) as m:
        yield m


def mask_hooks(
    model: Any, mask: AttentionMask | dict[str, Any] | None, layers: Sequence[int] | None = None
) -> list[tuple[str, Callable[..., Any]]]:
    """Hooks that make a TransformerBridge attend with ``mask`` (pass them to :func:`sink_interp.capture.attach_hooks`).

    These raw hooks do not compose with :func:`intervene`: asking for them inside an
    ``intervene``/``masked`` block, or entering one while they are attached, is a ``ValueError``;
    :func:`masked` gives the same mask and nests exactly.

    Masks that only hide keys (window, sinks) set the hidden scores to the dtype's minimum; a prefix
    LM also *shows* keys the causal mask hid, so the scores are formed again from the layer's q and k
    by its description. Each layer keeps its own sliding window. Layers whose attention runs inside
    Hugging Face are rebuilt at ``hook_z`` (see :mod:`sink_interp.interventions`).

    Examples:
        >>> import torch
        >>> from sink_interp import tiny_model, AttentionMask
        >>> from sink_interp.capture import attach_hooks
        >>> m = tiny_model()
        >>> with attach_hooks(m, mask_hooks(m, AttentionMask(window=2))):
        ...     _, cache = m.run_with_cache(torch.randint(4, 128, (1, 5)), names_filter="blocks.0.attn.hook_pattern")
        >>> (cache["blocks.0.attn.hook_pattern"][0, 0, 4] > 0).int().tolist()
        [0, 0, 0, 1, 1]
    """
    mask = as_mask(mask)
    if mask.is_causal:
        return []
    if _STACKS.get(model):
        raise ValueError(
            "mask_hooks() does not compose with the intervene()/masked() block active on this model; "
            "use `with masked(model, mask):` inside it, which nests exactly"
        )
    sites, _ = _sites(model, [], mask, layers)
    hooks = [h for s in sites for h in s.hooks()]
    for _, fn in hooks:
        setattr(fn, _RAW, True)
    return hooks


@contextlib.contextmanager
def masked(model: Any, mask: AttentionMask | dict[str, Any] | None, layers: Sequence[int] | None = None) -> Iterator[Any]:
    """Run ``model`` with ``mask`` (:func:`mask_hooks`) inside a ``with`` block; nothing to do for a causal mask.

    Nests with :func:`intervene` either way round: the mask is stage 1 of every intervention's
    pipeline (see :mod:`sink_interp.interventions`). Nested ``masked`` blocks must give the same mask
    (their layers add up); different masks are a ``ValueError``. The raw :func:`mask_hooks`
    do not nest: use this.

    Examples:
        >>> import torch
        >>> from sink_interp import tiny_model, AttentionMask
        >>> m = tiny_model()
        >>> with masked(m, AttentionMask(prefix=3)):
        ...     _, cache = m.run_with_cache(torch.randint(4, 128, (1, 5)), names_filter="blocks.0.attn.hook_pattern")
        >>> bool(cache["blocks.0.attn.hook_pattern"][0, 0, 0, 2] > 0)  # the prefix sees itself both ways
        True
    """
    mask = as_mask(mask)
    if mask.is_causal:
        yield model
        return
    with _block(model, [], mask, layers) as m:
        yield m


def flatten_interventions(items: Iterable[Any]) -> list[Intervention]:
    out: list[Intervention] = []
    for it in items:
        if isinstance(it, Intervention):
            out.append(it)
        elif isinstance(it, (list, tuple)):
            out.extend(flatten_interventions(it))
        else:
            raise TypeError(f"intervene() takes Intervention objects (ZeroValue, MaskKey, KVBias, ...), got {type(it).__name__}")
    return out
