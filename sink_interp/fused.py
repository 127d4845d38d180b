"""The fused engine: sink scores with fused attention, for measurement-only runs.

The TransformerBridge computes attention itself, eagerly (scores, mask,
softmax, pattern: four ``heads x T x T`` tensors per layer), so that its hooks
see every step; at T = 2048 that alone costs about 2.5x a plain forward.
A measurement that changes nothing does not need those hooks. This module runs
the Hugging Face model *inside* the bridge with its own attention function:

* a **twin**: the HF class of ``bridge.original_model`` built on the meta
  device (no memory, milliseconds) whose parameters and buffers are then *the
  bridge's own tensors* (``bridge.original_model`` wraps every HF module in
  place; the twin reaches through the wrappers to the original modules). No
  copy of the weights, and edits to the weights show in both.
* an attention function registered with transformers' ``AttentionInterface``
  (which the bridge ignores, but the twin, a plain HF model, honours). It calls a
  fused kernel that returns the row log-sum-exp — on the CPU
  ``torch.ops.aten._scaled_dot_product_flash_attention_for_cpu`` returns
  ``(output, logsumexp)``; elsewhere ``F.scaled_dot_product_attention`` runs and
  the row normaliser is taken inside the blockwise pass instead — and hands q, k
  and the LSE to :func:`sink_interp.blockwise.block_alpha`. After the last measured
  layer's attention the forward stops (no MLP, no unembedding).

Each layer's attention follows its description (:mod:`sink_interp.architecture`):
plain softmax layers run the fused kernel; layers with logit soft-capping,
learned sink logits or their own sliding window run the blockwise pass of
:mod:`sink_interp.lse`, which then also computes the layer's output (for a
windowed layer it only ever touches the keys inside the window).

It is used only when nothing can differ from the bridge (see
:func:`fused_supported`): no hooks on the bridge (interventions and traces use
hooks, so they keep using the hooks engine), a model whose attention runs
through transformers' attention interface (not Bloom's ALiBi), a model on one device (a ``device_map``
that splits or offloads it needs accelerate's hooks, which the twin does not carry), and a self-check
on a short slice of the input that compares the twin's scores with the bridge's
``hook_pattern`` (:func:`sink_interp.lse.self_check`).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._internal import distributed as dist
from ._internal import placement
from ._internal.errors import check_positive_int
from ._internal.probe import ProbeSet, as_tokens
from .architecture import AttentionSpec, describe_attention, unwrap
from .blockwise import BLOCK_BYTES, block_alpha, normalize_edges, score_rule
from .capture import model_device, user_hooks
from .masks import CAUSAL, AttentionMask, as_mask

ATTN_NAME = "sink_interp_fused"
CPU_KERNEL = "aten._scaled_dot_product_flash_attention_for_cpu"
SDPA = "F.scaled_dot_product_attention"
#: weight dtypes the fused engine runs. Half precision: the sink scores still accumulate in float32 (q and k are
#: cast up in :func:`sink_interp.blockwise.block_alpha`; on the CPU the kernel itself runs in float32), and the
#: self-check's tolerance is the dtype's (``ATTENTION_ATOL``), since eager and fused attention round differently.
HALF_DTYPES = (torch.bfloat16, torch.float16)
FUSED_DTYPES = (torch.float32, torch.float64, *HALF_DTYPES)
#: use the CPU flash kernel's logsumexp when it applies (False: F.scaled_dot_product_attention + blockwise LSE,
#: the path CUDA/MPS take)
USE_CPU_LSE_KERNEL = True

_ACTIVE: contextvars.ContextVar[_Run | None] = contextvars.ContextVar("sink_interp_fused_run", default=None)
_REGISTERED = False


class _Stop(Exception):
    """Raised after the last measured layer: the rest of the forward is not needed."""


@dataclass
class _Run:
    spec: AttentionSpec
    index: dict[int, int]
    last: int
    mask: AttentionMask
    edges: list[int]
    block_bytes: int
    col: Tensor
    rows: Tensor
    kernels: set[str] = field(default_factory=set)
    lse_from: set[str] = field(default_factory=set)
    seen: set[int] = field(default_factory=set)
    _dense: Tensor | None = None

    def additive_mask(self, length: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """One ``[T, T]`` additive mask shared by all layers (only for non-causal masks)."""
        if self._dense is None or self._dense.shape[-1] != length or self._dense.dtype != dtype:
            vis = self.mask.dense(length, device=device)
            self._dense = torch.zeros(length, length, dtype=dtype, device=device).masked_fill_(~vis, float("-inf"))
        return self._dense


def fused_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    scale: float,
    mask: AttentionMask = CAUSAL,
    additive: Tensor | None = None,
    want_lse: bool = True,
) -> tuple[Tensor, Tensor | None, str]:
    """Attention output ``[b, H, T, d]``, the row LSE when the kernel gives it (else None), and the kernel's name.

    GQA/MQA keys and values keep their own head count (the kernels broadcast them).
    """
    causal = mask.is_causal
    attn_mask = None if causal else additive
    if want_lse and USE_CPU_LSE_KERNEL and query.device.type == "cpu" and query.dtype == torch.float32:
        op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
        if op is not None:
            try:
                out, lse = op(query, key, value, 0.0, causal, attn_mask=attn_mask, scale=scale)
                return out, lse, CPU_KERNEL
            except RuntimeError:  # pragma: no cover - shapes/dtypes the kernel refuses: fall through
                pass
    enable_gqa = query.shape[1] != key.shape[1]
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attn_mask, is_causal=causal, scale=scale, enable_gqa=enable_gqa
    )
    return out, None, SDPA


def _attention(
    module: Any,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """The attention function the twin runs (transformers' AttentionInterface signature)."""
    scale = float(query.shape[-1] ** -0.5 if scaling is None else scaling)
    run = _ACTIVE.get()
    if run is None:  # the twin used on its own: plain fused causal attention
        if kwargs.get("sliding_window") is not None or kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
            raise NotImplementedError("the twin outside a measurement runs plain causal attention only")
        out, _, _ = fused_attention(query, key, value, scale, want_lse=False)
        return out.transpose(1, 2).contiguous(), None
    layer = int(module.layer_idx)
    la = run.spec.layer(layer)
    _check_agrees(la, kwargs)
    i = run.index.get(layer)
    mask = la.mask(run.mask)
    sinks = la.sink_logits()
    if la.softcap is not None or sinks is not None or la.window is not None:
        # no kernel computes this layer: the blockwise pass gives the output and the column sums at once
        rule = dataclasses.replace(score_rule(la, query.shape[-2], query.device), scale=scale)  # the twin's q carries HF's scale
        col, rows, out = block_alpha(query, key, rule, mask=mask, query_edges=run.edges, block_bytes=run.block_bytes, v=value)
        kernel, lse_from = "blockwise", "blockwise"
        out = out.to(query.dtype)
    else:
        T = query.shape[-2]
        additive = None if mask.is_causal else run.additive_mask(T, query.dtype, query.device)
        if query.dtype in HALF_DTYPES and query.device.type == "cpu":  # the CPU LSE kernel runs in float32
            up = None if additive is None else additive.float()
            out, lse, kernel = fused_attention(query.float(), key.float(), value.float(), scale, mask, up, want_lse=i is not None)
            out = out.to(query.dtype)
        else:
            out, lse, kernel = fused_attention(query, key, value, scale, mask, additive, want_lse=i is not None)
        lse_from = "kernel" if lse is not None else "blockwise"
        if i is not None:
            col, rows = block_alpha(query, key, scale, lse=lse, mask=mask, query_edges=run.edges, block_bytes=run.block_bytes)
    if i is not None:
        run.seen.add(layer)
        run.kernels.add(kernel)
        run.lse_from.add(lse_from)
        run.col[:, i] = col
        run.rows[:, i] = rows
    if layer == run.last:
        raise _Stop
    return out.transpose(1, 2).contiguous(), None


def _check_agrees(la: Any, kwargs: dict[str, Any]) -> None:
    """The twin's own arguments must say what the description says (else the self-check fails loudly)."""
    win = kwargs.get("sliding_window")
    if win is not None and la.window is not None and int(win) != la.window:
        raise NotImplementedError(f"layer {la.layer}: the model passes sliding_window={win}, the description says {la.window}")
    if win is not None and la.window is None:
        raise NotImplementedError(f"layer {la.layer}: the model passes sliding_window={win}, the description has none")
    cap = kwargs.get("softcap")
    if (cap is None) != (la.softcap is None) or (cap is not None and abs(float(cap) - la.softcap) > 1e-12):
        raise NotImplementedError(f"layer {la.layer}: the model passes softcap={cap}, the description says {la.softcap}")
    if (kwargs.get("s_aux") is None) != (la.sink_logits() is None):
        raise NotImplementedError(f"layer {la.layer}: sink logits differ between the model and its description")


def _no_mask(*args: Any, **kwargs: Any) -> None:
    """Mask builder for the twin: none (tokens carry no padding; the attention function applies the mask)."""
    return None


def _register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_NAME, _attention)
    AttentionMaskInterface.register(ATTN_NAME, _no_mask)
    _REGISTERED = True


# --------------------------------------------------------------------------- the twin


def _resolve(root: Any, dotted: str) -> Any:
    obj = root
    for part in dotted.split("."):
        obj = getattr(unwrap(obj), part)
    return obj


def hf_twin(model: Any) -> torch.nn.Module:
    """A plain HF model that shares every parameter and buffer with the bridge and runs the fused attention.

    Built on the meta device, then given the bridge's own tensors: no weights are copied.

    Examples:
        >>> import torch
        >>> from sink_interp import tiny_model
        >>> bridge = tiny_model()
        >>> twin = hf_twin(bridge)
        >>> twin.model.embed_tokens.weight is bridge.original_model.model.embed_tokens.original_component.weight
        True
    """
    orig = getattr(model, "original_model", None)
    if orig is None or not hasattr(orig, "config"):
        raise ValueError("the fused engine needs a TransformerBridge that wraps a Hugging Face model (model.original_model)")
    _register()
    cfg = copy.deepcopy(orig.config)
    cfg._attn_implementation = ATTN_NAME
    with torch.device("meta"):
        twin = type(orig)(cfg)
    items = [(n, True) for n, _ in twin.named_parameters(remove_duplicate=False)]
    items += [(n, False) for n, _ in twin.named_buffers(remove_duplicate=False)]
    for name, is_param in items:
        src = _resolve(orig, name)
        parent, _, leaf = name.rpartition(".")
        sub = twin.get_submodule(parent) if parent else twin
        if is_param:
            sub._parameters[leaf] = src
        else:
            sub._buffers[leaf] = src
    left = [n for n, p in list(twin.named_parameters()) + list(twin.named_buffers()) if p.is_meta]
    if left:  # pragma: no cover - an architecture whose wrappers hide a tensor
        raise ValueError(f"could not find the bridge's tensors for {left[:3]}")
    return twin.eval()


# --------------------------------------------------------------------------- when it applies


def fused_supported(model: Any, tokens: Tensor | ProbeSet, mask: AttentionMask | None = None) -> tuple[bool, str]:
    """Whether the fused engine can run this model, and why not.

    Checks: the bridge wraps an HF model; no hooks are attached (an intervention would be
    invisible to the twin); every layer's attention is one the fused attention function
    computes (no ALiBi, nothing the description cannot rebuild); float32/64 weights; the twin
    builds. :func:`sink_interp.lse.lse_column_sums` then runs the self-check on a short slice.
    """
    orig = getattr(model, "original_model", None)
    if orig is None or not hasattr(orig, "config") or not hasattr(model, "hook_dict"):
        return False, "not a TransformerBridge wrapping a Hugging Face model"
    if placement.split(model):
        return False, (
            f"the model is split or offloaded by a device_map ({placement.describe_map(model)}): the fused twin carries no "
            "accelerate hooks to move weights and activations, so the hooks engine runs"
        )
    hooks = user_hooks(model)
    if hooks:
        return False, f"hooks are attached to the model ({hooks[:3]}...); only the hooks engine sees their effect"
    spec = describe_attention(model)
    if spec.knobs:
        return False, f"training knobs run as hooks the fused twin cannot see ({', '.join(spec.knobs)})"
    blockers = [f"layer {la.layer}: ALiBi" for la in spec.layers if la.alibi] + [
        f"layer {la.layer}: {', '.join(la.unsupported)}" for la in spec.layers if la.unsupported
    ]
    if blockers:
        return False, "attention the fused engine does not compute: " + "; ".join(blockers[:2])
    dtype = next(model.parameters()).dtype
    if dtype not in FUSED_DTYPES:
        return False, f"weights in {dtype}: the fused kernels' rounding differs from the bridge's eager attention"
    try:
        hf_twin(model)
    except Exception as e:  # noqa: BLE001 - any failure means: use the hooks engine
        return False, f"could not build the HF twin ({e.__class__.__name__}: {e})"
    return True, "fused attention"


# --------------------------------------------------------------------------- running it


def default_batch_size(length: int) -> int:
    """Samples per forward for the fused engine: about 8k tokens per batch (memory grows with T, not T^2)."""
    return int(max(1, min(64, 8192 // max(1, length))))


@contextlib.contextmanager
def _active(run: _Run) -> Iterator[None]:
    token = _ACTIVE.set(run)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def _run_twin(
    twin: Any,
    model: Any,
    tokens: Tensor,
    layers: list[int],
    mask: AttentionMask,
    edges: list[int],
    batch_size: int,
    progress: bool,
    block_bytes: int,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    from tqdm.auto import tqdm

    n, T = tokens.shape
    H = int(model.cfg.n_heads)
    device = model_device(model)
    col = torch.zeros(n, len(layers), H, len(edges) - 1, T, dtype=torch.float32)
    rows = torch.zeros(n, len(layers), H, dtype=torch.float32)
    index = {layer: i for i, layer in enumerate(layers)}
    spec = describe_attention(model)
    kernels: set[str] = set()
    lse_from: set[str] = set()
    base = twin.base_model
    inputs = {"tokens": tokens, "batch_size": batch_size, "model": model, "layers": list(layers), "edges": list(edges)}
    mine = dist.shard((n + batch_size - 1) // batch_size, inputs)  # whole batches per rank inside sink_interp.distributed()
    start, stop = min(mine.start * batch_size, n), min(mine.stop * batch_size, n)
    bar = tqdm(
        total=stop - start, desc="sink scores (lse, fused)", unit="sample", disable=not (progress and dist.is_main()), leave=False
    )
    failed: BaseException | None = None
    try:
        with torch.no_grad():
            for s in (bi * batch_size for bi in mine):
                batch = tokens[s : s + batch_size].to(device)
                b = batch.shape[0]
                run = _Run(
                    spec,
                    index,
                    max(layers),
                    mask,
                    edges,
                    block_bytes,
                    torch.zeros(b, len(layers), H, len(edges) - 1, T, dtype=torch.float32, device=device),
                    torch.zeros(b, len(layers), H, dtype=torch.float32, device=device),
                )
                with _active(run):
                    try:
                        base(input_ids=batch, use_cache=False)
                    except _Stop:
                        pass
                if run.seen != set(index):
                    raise RuntimeError(f"the twin's attention ran for layers {sorted(run.seen)}, not {sorted(index)}")
                col[s : s + b] = run.col.cpu()
                rows[s : s + b] = run.rows.cpu()
                kernels |= run.kernels
                lse_from |= run.lse_from
                bar.update(b)
    except Exception as e:  # noqa: BLE001 - re-raised on every rank
        failed = e
    finally:
        bar.close()
    dist.raise_any(failed)
    dist.gather_rows({"col": col, "rows": rows}, start, stop)
    for ks, ls in dist.gather((kernels, lse_from)):
        kernels |= ks
        lse_from |= ls
    info = {"engine": "fused", "kernel": sorted(kernels), "lse": sorted(lse_from), "batch_size": batch_size}
    return col, rows, info


def fused_column_sums(
    model: Any,
    tokens: Tensor | ProbeSet,
    *,
    layers: Sequence[int],
    mask: AttentionMask,
    query_edges: Sequence[int],
    batch_size: int | None = None,
    progress: bool = True,
    block_bytes: int = BLOCK_BYTES,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Column sums ``[n, layers, heads, buckets, T]`` and row sums by the fused engine (see the module doc)."""
    tokens = as_tokens(tokens)
    n, T = tokens.shape
    bs = dist.decide(lambda: default_batch_size(T)) if batch_size is None else check_positive_int(batch_size, "batch_size")
    twin = hf_twin(model)
    edges = normalize_edges(query_edges, T)
    return _run_twin(twin, model, tokens, list(layers), as_mask(mask), edges, bs, progress, block_bytes)
